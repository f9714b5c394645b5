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

// ---------------------------------------------------------------------------
// The report as one model, rendered as Markdown or as HTML
// ---------------------------------------------------------------------------

/// A piece of running text.
enum Inline {
    Text(String),
    Code(String),
    Strong(String),
}

/// A part of the report.
enum Block {
    Title(String),
    /// Facts about the report itself, one per line.
    Meta(Vec<String>),
    /// A chapter; `new_page` starts it on a new printed page.
    Heading {
        text: String,
        new_page: bool,
    },
    Subheading(String),
    Paragraph {
        inlines: Vec<Inline>,
        class: Option<&'static str>,
    },
    Table {
        header: Vec<&'static str>,
        rows: Vec<Vec<String>>,
    },
    /// Blocks kept together on a printed page.
    Together(Vec<Block>),
}

fn paragraph(inlines: Vec<Inline>) -> Block {
    Block::Paragraph { inlines, class: None }
}

/// The report's model, read once from the API's answer and the controls.
fn model(data: &Value) -> Vec<Block> {
    let mut blocks = vec![
        Block::Title(format!("Segregation of duties report: {}", text(&data["instance"]))),
        Block::Meta(vec![
            format!("Period {} to {}", text(&data["from"]), text(&data["to"])),
            format!("Generated {}", text(&data["generated_at"])),
            format!("Audit log checkpoint: {} events", text(&data["checkpoint_size"])),
        ]),
    ];
    let deployments = data["deployments"].as_array().cloned().unwrap_or_default();
    blocks.push(Block::Heading { text: format!("Production deployments ({})", deployments.len()), new_page: false });
    if deployments.is_empty() {
        blocks.push(paragraph(vec![Inline::Text("None in this period.".into())]));
    }
    blocks.extend(deployments.iter().map(deployment));
    let findings = data["findings"].as_array().cloned().unwrap_or_default();
    blocks.push(Block::Heading { text: format!("Findings ({})", findings.len()), new_page: true });
    if findings.is_empty() {
        blocks.push(paragraph(vec![Inline::Text("None in this period.".into())]));
    } else {
        blocks.push(Block::Table {
            header: vec!["when", "kind", "subject", "what", "resolution"],
            rows: findings
                .iter()
                .map(|f| ["at", "kind", "subject", "summary", "resolution"].iter().map(|k| text(&f[*k])).collect())
                .collect(),
        });
    }
    blocks.push(Block::Heading { text: "Controls and the requirements they support".into(), new_page: true });
    blocks.push(Block::Table {
        header: vec![
            "control",
            "how",
            "SOX ITGC change management",
            "PCI DSS 4.0 req. 6.5",
            "NIST 800-53 AC-5",
            "NIST 800-53 CM-5",
            "SOC 2 CC8.1",
        ],
        rows: data["controls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                ["control", "how", "sox", "pci", "nist_ac5", "nist_cm5", "soc2"].iter().map(|k| text(&c[*k])).collect()
            })
            .collect(),
    });
    blocks
}

/// One production deployment: who held each duty, and how to check it.
fn deployment(d: &Value) -> Block {
    let mut duties = vec![vec!["author".to_owned(), authors(d)]];
    for c in d["changes"].as_array().into_iter().flatten() {
        let number = text(&c["number"]);
        duties.push(vec![format!("reviewer of change {number}"), names(&c["reviewers"])]);
        duties.push(vec![format!("merge asked by (change {number})"), text(&c["merged_by"])]);
    }
    duties.push(vec!["builder".into(), "custody build service (signed provenance)".into()]);
    duties.push(vec!["requester".into(), names(&d["requester"])]);
    duties.push(vec!["approvers".into(), names(&d["approvers"])]);
    duties.push(vec!["testers".into(), names(&d["testers"])]);
    duties.push(vec!["deployer".into(), "custody deploy service (signed attestation)".into()]);
    let mut blocks = vec![
        Block::Subheading(format!(
            "{} deployment {} to {}",
            text(&d["project"]),
            text(&d["number"]),
            text(&d["environment"])
        )),
        paragraph(vec![
            Inline::Text(format!("Finished {}; build {} of commit ", text(&d["finished_at"]), text(&d["build"]))),
            Inline::Code(text(&d["commit"])),
            Inline::Text(".".into()),
        ]),
        Block::Table { header: vec!["duty", "who"], rows: duties },
    ];
    if !d["break_glass"].is_null() {
        blocks.push(Block::Paragraph {
            inlines: vec![Inline::Strong("Break-glass:".into()), Inline::Text(format!(" {}", text(&d["break_glass"])))],
            class: Some("glass"),
        });
    }
    blocks.push(Block::Paragraph {
        inlines: vec![
            Inline::Text("Evidence: ".into()),
            Inline::Code(format!(
                "custody evidence export {} --deployment {} -o bundle.json",
                text(&d["project"]),
                text(&d["number"])
            )),
            Inline::Text(", then ".into()),
            Inline::Code("custody verify bundle.json --trust trust.json".into()),
            Inline::Text(".".into()),
        ],
        class: Some("meta"),
    });
    Block::Together(blocks)
}

fn markdown(blocks: &[Block]) -> String {
    // A table cell is one line, and a bar in it is text, not a border.
    let cell = |s: &str| s.replace('|', "\\|").replace(['\r', '\n'], " ");
    let inline = |inlines: &[Inline]| -> String {
        inlines
            .iter()
            .map(|i| match i {
                Inline::Text(t) => t.replace(['\r', '\n'], " "),
                Inline::Code(t) => format!("`{}`", t.replace(['\r', '\n'], " ")),
                Inline::Strong(t) => format!("**{}**", t.replace(['\r', '\n'], " ")),
            })
            .collect()
    };
    let mut out = String::new();
    for block in blocks {
        match block {
            Block::Title(t) => out.push_str(&format!("# {t}\n\n")),
            Block::Meta(lines) => out.push_str(&format!("{}\n\n", lines.join("  \n"))),
            Block::Heading { text, .. } => out.push_str(&format!("## {text}\n\n")),
            Block::Subheading(t) => out.push_str(&format!("### {t}\n\n")),
            Block::Paragraph { inlines, .. } => out.push_str(&format!("{}\n\n", inline(inlines))),
            Block::Table { header, rows } => {
                out.push_str(&format!("| {} |\n|{}\n", header.join(" | "), "---|".repeat(header.len())));
                for row in rows {
                    let cells: Vec<String> = row.iter().map(|c| cell(c)).collect();
                    out.push_str(&format!("| {} |\n", cells.join(" | ")));
                }
                out.push('\n');
            }
            Block::Together(inner) => out.push_str(&markdown(inner)),
        }
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

/// The report as one self-contained HTML page (for print): every value
/// escaped, no external assets.
fn html(blocks: &[Block]) -> String {
    let title = blocks.iter().find_map(|b| if let Block::Title(t) = b { Some(t.as_str()) } else { None });
    let mut out = String::from("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str(&format!("<title>{}</title>", escape(title.unwrap_or("Segregation of duties report"))));
    out.push_str(&format!("<style>{STYLE}</style></head><body>\n"));
    html_blocks(&mut out, blocks);
    out.push_str("</body></html>\n");
    out
}

fn html_blocks(out: &mut String, blocks: &[Block]) {
    let inline = |inlines: &[Inline]| -> String {
        inlines
            .iter()
            .map(|i| match i {
                Inline::Text(t) => escape(t),
                Inline::Code(t) => format!("<code>{}</code>", escape(t)),
                Inline::Strong(t) => format!("<strong>{}</strong>", escape(t)),
            })
            .collect()
    };
    for block in blocks {
        match block {
            Block::Title(t) => out.push_str(&format!("<h1>{}</h1>\n", escape(t))),
            Block::Meta(lines) => out.push_str(&format!("<p class=\"meta\">{}.</p>\n", escape(&lines.join(". ")))),
            Block::Heading { text, new_page } => {
                let class = if *new_page { " class=\"new-page\"" } else { "" };
                out.push_str(&format!("<h2{class}>{}</h2>\n", escape(text)));
            }
            Block::Subheading(t) => out.push_str(&format!("<h3>{}</h3>", escape(t))),
            Block::Paragraph { inlines, class } => {
                let class = class.map(|c| format!(" class=\"{c}\"")).unwrap_or_default();
                out.push_str(&format!("<p{class}>{}</p>\n", inline(inlines)));
            }
            Block::Table { header, rows } => {
                out.push_str("<table><thead><tr>");
                for h in header {
                    out.push_str(&format!("<th>{}</th>", escape(h)));
                }
                out.push_str("</tr></thead><tbody>");
                for row in rows {
                    out.push_str("<tr>");
                    for c in row {
                        out.push_str(&format!("<td>{}</td>", escape(c)));
                    }
                    out.push_str("</tr>");
                }
                out.push_str("</tbody></table>\n");
            }
            Block::Together(inner) => {
                out.push_str("<section class=\"deployment\">");
                html_blocks(out, inner);
                out.push_str("</section>\n");
            }
        }
    }
}

pub async fn report(client: &Client, args: ReportArgs, out: Output) -> Result<(), Failure> {
    let from = instant(&args.from, false)?;
    let to = instant(&args.to, true)?;
    let mut data: Value = client.get(&format!("/api/v1/report?from={}&to={}", encode(&from), encode(&to))).await?;
    data["controls"] = controls();
    let rendered = match args.format {
        Format::Json => serde_json::to_string_pretty(&data).unwrap_or_default() + "\n",
        Format::Md => markdown(&model(&data)),
        Format::Html => html(&model(&data)),
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
    use super::*;

    #[test]
    fn the_report_escapes_every_character_markup_needs() {
        assert_eq!(
            super::escape("<a href='x' title=\"y\">&</a>"),
            "&lt;a href=&#39;x&#39; title=&quot;y&quot;&gt;&amp;&lt;/a&gt;"
        );
    }

    fn hostile() -> Value {
        let name = "<img src=x onerror='alert(1)'>|evil";
        json!({
            "instance": name, "from": "2026-01-01", "to": "2026-02-01", "generated_at": "now", "checkpoint_size": 9,
            "deployments": [{
                "project": "payments", "number": 4, "environment": "production", "finished_at": "then",
                "build": 2, "commit": "abc", "requester": name, "approvers": ["carol"], "testers": [],
                "break_glass": "outage\n| forged | row |",
                "changes": [{ "number": 1, "authors": ["alice"], "reviewers": ["bob"], "merged_by": "alice" }],
            }],
            "findings": [{ "at": "t", "kind": "break_glass", "subject": name, "summary": "a | b", "resolution": null }],
            "controls": controls(),
        })
    }

    #[test]
    fn both_renderings_say_the_same_and_neither_lets_a_name_out_of_its_cell() {
        let blocks = model(&hostile());
        let (md, page) = (markdown(&blocks), html(&blocks));
        for needle in ["| approvers | carol |", "| reviewer of change 1 | bob |", "NIST 800-53 AC-5"] {
            assert!(md.contains(needle), "{needle}: {md}");
        }
        for needle in
            ["<td>approvers</td><td>carol</td>", "<td>reviewer of change 1</td><td>bob</td>", "NIST 800-53 AC-5"]
        {
            assert!(page.contains(needle), "{needle}: {page}");
        }
        // The same facts, from the one model.
        for fact in ["Findings (1)", "Production deployments (1)", "custody verify bundle.json --trust trust.json"] {
            assert!(md.contains(fact) && page.contains(fact), "{fact}");
        }
        assert!(!page.contains("<img") && !page.contains("'alert"), "{page}");
        assert!(md.contains("\\|evil"), "{md}");
        assert!(!md.lines().any(|line| line.starts_with("| forged")), "a value cannot start a row: {md}");
    }
}
