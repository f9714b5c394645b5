//! `custody report`: the auditor's report of a period, as self-contained
//! HTML (for print), Markdown or JSON.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

use crate::client::Client;
use crate::commands::Output;
use crate::Failure;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Html,
    Md,
    Json,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The first day (YYYY-MM-DD, inclusive) or an RFC 3339 time.
    #[arg(long)]
    from: String,
    /// The last day (YYYY-MM-DD, inclusive) or an RFC 3339 time (exclusive).
    #[arg(long)]
    to: String,
    /// The report's format.
    #[arg(long, value_enum, default_value = "html")]
    format: Format,
    /// Write to this file (standard output by default).
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
}

/// A day or a time as RFC 3339; a day given as `--to` means its end.
fn instant(text: &str, end_of_day: bool) -> Result<String, Failure> {
    if let Ok(time) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(time.format(&Rfc3339).unwrap_or_default());
    }
    let day = Date::parse(text, format_description!("[year]-[month]-[day]"))
        .map_err(|_| Failure::input(format!("{text:?} is neither a day (YYYY-MM-DD) nor an RFC 3339 time")))?;
    let day = if end_of_day { day.next_day().unwrap_or(day) } else { day };
    Ok(day.midnight().assume_utc().format(&Rfc3339).unwrap_or_default())
}

/// custody's controls, and the requirements each supports.
fn controls() -> Value {
    json!([
        {
            "control": "Independent review before merge",
            "how": "A change merges only with approvals, at its current head, from people who are not its authors (pushers, commit authors, committers, co-authors); the gate comes from the target branch, and custody alone moves protected branches.",
            "sox": "Change management: changes are authorised and approved before implementation",
            "pci": "6.5.1 changes approved by authorised parties; 6.5.2 confirmed after change",
            "nist_ac5": "Author and reviewer are different people",
            "nist_cm5": "No person, admin included, writes a protected branch",
            "soc2": "Changes are authorised, designed, reviewed and approved"
        },
        {
            "control": "Builds by the build service only",
            "how": "Only custody's builder builds merged mainline commits, in a sandbox, and signs SLSA provenance with the builder key; there is no upload path for artifacts.",
            "sox": "Only approved code reaches the release artifacts",
            "pci": "6.5.1 documented, controlled implementation of changes",
            "nist_ac5": "Builder is a service identity, never a person",
            "nist_cm5": "Artifact repository is writable by the builder alone",
            "soc2": "Changes are implemented as approved"
        },
        {
            "control": "Gated deployments in environment order",
            "how": "A deploy script from the reviewed source deploys; environments are passed in order; gated environments need approvers and testers who wrote no change of the release and did not request it. A deployment passes the environment's gate as the mainline, the commit live there and the release each define it, so a change that weakens a gate never governs its own deployment, and every weakening is an open finding.",
            "sox": "Testing and approval before production; segregation of development and production",
            "pci": "6.5.1 testing and approval; 6.5.3 pre-production separated from production; 6.5.4 roles separated so only reviewed and approved changes are deployed",
            "nist_ac5": "Approver, tester and author are different people",
            "nist_cm5": "Deploying is restricted to the deploy service",
            "soc2": "Changes are tested and approved before deployment"
        },
        {
            "control": "Break-glass with review",
            "how": "An emergency deployment may skip soak and manual tests, never approvals; it is marked in the log and stays an open finding until an uninvolved admin reviews it.",
            "sox": "Emergency changes are approved and reviewed after the fact",
            "pci": "6.5.1 emergency changes follow the same approval trail",
            "nist_ac5": "The requester cannot approve their own emergency",
            "nist_cm5": "Emergency access is logged and reviewed",
            "soc2": "Emergency changes are documented and reviewed"
        },
        {
            "control": "Two admins for every grant",
            "how": "Granting users, groups, project membership, admin rights, secrets or branch settings takes a second admin who did not ask for it; the single-admin bootstrap window ends for good.",
            "sox": "Access to change the system is authorised",
            "pci": "6.5.4 roles and functions separated",
            "nist_ac5": "No admin grants duties alone",
            "nist_cm5": "Privileges to change are granted under dual control",
            "soc2": "Logical access to change is restricted"
        },
        {
            "control": "Tamper-evident evidence",
            "how": "Every state change writes an audit event in the same transaction; events form an RFC 6962 Merkle tree with checkpoints signed by the ledger key; evidence bundles verify offline against the trust file.",
            "sox": "Complete, accurate evidence of each change",
            "pci": "6.5.1 changes documented",
            "nist_ac5": "Duties of each release are shown and checkable",
            "nist_cm5": "Records of changes cannot be altered unnoticed",
            "soc2": "Change activity is recorded and monitored"
        }
    ])
}

fn names(value: &Value) -> String {
    match value.as_array() {
        Some(list) if !list.is_empty() => list.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "),
        _ => value.as_str().map(str::to_owned).unwrap_or_else(|| "—".into()),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "—".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Text made safe in HTML, in element content and in attributes quoted
/// either way.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn authors(d: &Value) -> String {
    let mut all: Vec<String> = Vec::new();
    for c in d["changes"].as_array().into_iter().flatten() {
        for a in c["authors"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if !all.iter().any(|x| x == a) {
                all.push(a.to_owned());
            }
        }
    }
    if all.is_empty() {
        "—".into()
    } else {
        all.join(", ")
    }
}

fn markdown(data: &Value) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "# Segregation of duties report: {}\n\nPeriod: {} to {}  \nGenerated: {}  \nAudit log checkpoint: {} events\n\n",
        text(&data["instance"]),
        text(&data["from"]),
        text(&data["to"]),
        text(&data["generated_at"]),
        text(&data["checkpoint_size"])
    ));
    let deployments = data["deployments"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!("## Production deployments ({})\n\n", deployments.len()));
    if deployments.is_empty() {
        out.push_str("None in this period.\n\n");
    }
    for d in &deployments {
        out.push_str(&format!(
            "### {} deployment {} to {}\n\nFinished {}; build {} of commit `{}`.\n\n",
            text(&d["project"]),
            text(&d["number"]),
            text(&d["environment"]),
            text(&d["finished_at"]),
            text(&d["build"]),
            text(&d["commit"])
        ));
        out.push_str("| duty | who |\n|---|---|\n");
        out.push_str(&format!("| author | {} |\n", authors(d)));
        for c in d["changes"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "| reviewer of change {} | {} |\n| merge asked by (change {}) | {} |\n",
                text(&c["number"]),
                names(&c["reviewers"]),
                text(&c["number"]),
                text(&c["merged_by"])
            ));
        }
        out.push_str("| builder | custody build service (signed provenance) |\n");
        out.push_str(&format!("| requester | {} |\n", names(&d["requester"])));
        out.push_str(&format!("| approvers | {} |\n", names(&d["approvers"])));
        out.push_str(&format!("| testers | {} |\n", names(&d["testers"])));
        out.push_str("| deployer | custody deploy service (signed attestation) |\n");
        if !d["break_glass"].is_null() {
            out.push_str(&format!("\n**Break-glass:** {}\n", text(&d["break_glass"])));
        }
        out.push_str(&format!(
            "\nEvidence: `custody evidence export {} --deployment {} -o bundle.json`, then `custody verify bundle.json --trust trust.json`.\n\n",
            text(&d["project"]),
            text(&d["number"])
        ));
    }
    let findings = data["findings"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!("## Findings ({})\n\n", findings.len()));
    if findings.is_empty() {
        out.push_str("None in this period.\n\n");
    } else {
        out.push_str("| when | kind | subject | what | resolution |\n|---|---|---|---|---|\n");
        for f in &findings {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                text(&f["at"]),
                text(&f["kind"]),
                text(&f["subject"]),
                text(&f["summary"]).replace('|', "\\|"),
                text(&f["resolution"])
            ));
        }
        out.push('\n');
    }
    out.push_str("## Controls and the requirements they support\n\n");
    out.push_str("| control | how | SOX ITGC change management | PCI DSS 4.0 req. 6.5 | NIST 800-53 AC-5 | NIST 800-53 CM-5 | SOC 2 CC8.1 |\n|---|---|---|---|---|---|---|\n");
    for c in data["controls"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            text(&c["control"]),
            text(&c["how"]),
            text(&c["sox"]),
            text(&c["pci"]),
            text(&c["nist_ac5"]),
            text(&c["nist_cm5"]),
            text(&c["soc2"])
        ));
    }
    out
}

const STYLE: &str = "body{font:11pt/1.4 Georgia,serif;color:#111;margin:2em auto;max-width:60em}\
h1{font-size:18pt;margin:0 0 .3em}h2{font-size:14pt;border-bottom:1px solid #444;margin-top:1.6em}\
h3{font-size:12pt;margin:1.2em 0 .4em}table{border-collapse:collapse;width:100%;margin:.4em 0 1em}\
th,td{border:1px solid #999;padding:.25em .5em;text-align:left;vertical-align:top;font-size:10pt}\
th{background:#eee}code{font:9pt monospace}.meta{color:#444}.glass{font-weight:bold;color:#900}\
section.deployment{page-break-inside:avoid;break-inside:avoid}\
@page{size:A4;margin:18mm 15mm}\
@media print{body{margin:0;max-width:none}h2{page-break-after:avoid;break-after:avoid}\
h2.new-page{page-break-before:always;break-before:page}thead{display:table-header-group}tr{page-break-inside:avoid}}";

fn html(data: &Value) -> String {
    let e = |v: &Value| escape(&text(v));
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str(&format!("<title>Segregation of duties report: {}</title>", e(&data["instance"])));
    out.push_str(&format!("<style>{STYLE}</style></head><body>\n"));
    out.push_str(&format!("<h1>Segregation of duties report: {}</h1>\n", e(&data["instance"])));
    out.push_str(&format!(
        "<p class=\"meta\">Period {} to {}. Generated {}. Audit log checkpoint: {} events.</p>\n",
        e(&data["from"]),
        e(&data["to"]),
        e(&data["generated_at"]),
        e(&data["checkpoint_size"])
    ));
    let deployments = data["deployments"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!("<h2>Production deployments ({})</h2>\n", deployments.len()));
    if deployments.is_empty() {
        out.push_str("<p>None in this period.</p>\n");
    }
    for d in &deployments {
        out.push_str("<section class=\"deployment\">");
        out.push_str(&format!(
            "<h3>{} deployment {} to {}</h3><p>Finished {}; build {} of commit <code>{}</code>.</p>",
            e(&d["project"]),
            e(&d["number"]),
            e(&d["environment"]),
            e(&d["finished_at"]),
            e(&d["build"]),
            e(&d["commit"])
        ));
        out.push_str("<table><thead><tr><th>duty</th><th>who</th></tr></thead><tbody>");
        out.push_str(&format!("<tr><td>author</td><td>{}</td></tr>", escape(&authors(d))));
        for c in d["changes"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "<tr><td>reviewer of change {}</td><td>{}</td></tr><tr><td>merge asked by (change {})</td><td>{}</td></tr>",
                e(&c["number"]),
                escape(&names(&c["reviewers"])),
                e(&c["number"]),
                e(&c["merged_by"])
            ));
        }
        out.push_str("<tr><td>builder</td><td>custody build service (signed provenance)</td></tr>");
        out.push_str(&format!("<tr><td>requester</td><td>{}</td></tr>", escape(&names(&d["requester"]))));
        out.push_str(&format!("<tr><td>approvers</td><td>{}</td></tr>", escape(&names(&d["approvers"]))));
        out.push_str(&format!("<tr><td>testers</td><td>{}</td></tr>", escape(&names(&d["testers"]))));
        out.push_str("<tr><td>deployer</td><td>custody deploy service (signed attestation)</td></tr></tbody></table>");
        if !d["break_glass"].is_null() {
            out.push_str(&format!("<p class=\"glass\">Break-glass: {}</p>", e(&d["break_glass"])));
        }
        out.push_str(&format!(
            "<p class=\"meta\">Evidence: <code>custody evidence export {} --deployment {} -o bundle.json</code>, then <code>custody verify bundle.json --trust trust.json</code>.</p></section>\n",
            e(&d["project"]),
            e(&d["number"])
        ));
    }
    let findings = data["findings"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!("<h2 class=\"new-page\">Findings ({})</h2>\n", findings.len()));
    if findings.is_empty() {
        out.push_str("<p>None in this period.</p>\n");
    } else {
        out.push_str("<table><thead><tr><th>when</th><th>kind</th><th>subject</th><th>what</th><th>resolution</th></tr></thead><tbody>");
        for f in &findings {
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                e(&f["at"]),
                e(&f["kind"]),
                e(&f["subject"]),
                e(&f["summary"]),
                e(&f["resolution"])
            ));
        }
        out.push_str("</tbody></table>\n");
    }
    out.push_str("<h2 class=\"new-page\">Controls and the requirements they support</h2>\n");
    out.push_str("<table><thead><tr><th>control</th><th>how</th><th>SOX ITGC change management</th><th>PCI DSS 4.0 req. 6.5</th><th>NIST 800-53 AC-5</th><th>NIST 800-53 CM-5</th><th>SOC 2 CC8.1</th></tr></thead><tbody>");
    for c in data["controls"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e(&c["control"]),
            e(&c["how"]),
            e(&c["sox"]),
            e(&c["pci"]),
            e(&c["nist_ac5"]),
            e(&c["nist_cm5"]),
            e(&c["soc2"])
        ));
    }
    out.push_str("</tbody></table>\n</body></html>\n");
    out
}

pub async fn report(client: &Client, args: ReportArgs, out: Output) -> Result<(), Failure> {
    let from = instant(&args.from, false)?;
    let to = instant(&args.to, true)?;
    let mut data = client.get(&format!("/api/v1/report?from={}&to={}", encode(&from), encode(&to))).await?;
    data["controls"] = controls();
    let rendered = match args.format {
        Format::Json => serde_json::to_string_pretty(&data).unwrap_or_default() + "\n",
        Format::Md => markdown(&data),
        Format::Html => html(&data),
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, rendered)
                .map_err(|e| Failure::input(format!("cannot write {}: {e}", path.display())))?;
            let summary = json!({
                "output": path.display().to_string(),
                "deployments": data["deployments"].as_array().map(Vec::len),
                "findings": data["findings"].as_array().map(Vec::len),
            });
            out.show(&summary, |s| {
                format!(
                    "wrote {} ({} production deployments, {} findings)",
                    text(&s["output"]),
                    text(&s["deployments"]),
                    text(&s["findings"])
                )
            });
        }
        None => print!("{rendered}"),
    }
    Ok(())
}

/// Percent-encodes what a time may hold that a query cannot (`+`, `:`).
fn encode(s: &str) -> String {
    s.replace('%', "%25").replace('+', "%2B").replace(':', "%3A")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_report_escapes_every_character_markup_needs() {
        assert_eq!(
            super::escape("<a href='x' title=\"y\">&</a>"),
            "&lt;a href=&#39;x&#39; title=&quot;y&quot;&gt;&amp;&lt;/a&gt;"
        );
    }
}
