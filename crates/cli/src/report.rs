//! `custody report`: the auditor's report of a period, as self-contained
//! HTML (for print), Markdown or JSON.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use custody_api::{ReportData, ReportDeployment, ReportFinding};
use serde::Serialize;
use serde_json::json;
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

/// One of custody's controls, and the requirements it supports.
#[derive(Serialize)]
struct Control {
    control: &'static str,
    how: &'static str,
    sox: &'static str,
    pci: &'static str,
    nist_ac5: &'static str,
    nist_cm5: &'static str,
    soc2: &'static str,
}

impl Control {
    /// The control's row in the report's table.
    fn row(&self) -> Vec<String> {
        [self.control, self.how, self.sox, self.pci, self.nist_ac5, self.nist_cm5, self.soc2]
            .map(str::to_owned)
            .to_vec()
    }
}

/// custody's controls, and the requirements each supports.
const CONTROLS: [Control; 6] = [
    Control {
        control: "Independent review before merge",
        how: "A change merges only with approvals, at its current head, from people who are not its authors (pushers, commit authors, committers, co-authors); the gate comes from the target branch, and custody alone moves protected branches.",
        sox: "Change management: changes are authorised and approved before implementation",
        pci: "6.5.1 changes approved by authorised parties; 6.5.2 confirmed after change",
        nist_ac5: "Author and reviewer are different people",
        nist_cm5: "No person, admin included, writes a protected branch",
        soc2: "Changes are authorised, designed, reviewed and approved",
    },
    Control {
        control: "Builds by the build service only",
        how: "Only custody's builder builds merged mainline commits, in a sandbox, and signs SLSA provenance with the builder key; there is no upload path for artifacts.",
        sox: "Only approved code reaches the release artifacts",
        pci: "6.5.1 documented, controlled implementation of changes",
        nist_ac5: "Builder is a service identity, never a person",
        nist_cm5: "Artifact repository is writable by the builder alone",
        soc2: "Changes are implemented as approved",
    },
    Control {
        control: "Gated deployments in environment order",
        how: "A deploy script from the reviewed source deploys; environments are passed in order; gated environments need approvers and testers who wrote no change of the release and did not request it. A deployment passes the environment's gate as the mainline, the commit live there and the release each define it, so a change that weakens a gate never governs its own deployment, and every weakening is an open finding.",
        sox: "Testing and approval before production; segregation of development and production",
        pci: "6.5.1 testing and approval; 6.5.3 pre-production separated from production; 6.5.4 roles separated so only reviewed and approved changes are deployed",
        nist_ac5: "Approver, tester and author are different people",
        nist_cm5: "Deploying is restricted to the deploy service",
        soc2: "Changes are tested and approved before deployment",
    },
    Control {
        control: "Break-glass with review",
        how: "An emergency deployment may skip soak and manual tests, never approvals; it is marked in the log and stays an open finding until an uninvolved admin reviews it.",
        sox: "Emergency changes are approved and reviewed after the fact",
        pci: "6.5.1 emergency changes follow the same approval trail",
        nist_ac5: "The requester cannot approve their own emergency",
        nist_cm5: "Emergency access is logged and reviewed",
        soc2: "Emergency changes are documented and reviewed",
    },
    Control {
        control: "Two admins for every grant",
        how: "Granting users, groups, project membership, admin rights, secrets or branch settings takes a second admin who did not ask for it; the single-admin bootstrap window ends for good.",
        sox: "Access to change the system is authorised",
        pci: "6.5.4 roles and functions separated",
        nist_ac5: "No admin grants duties alone",
        nist_cm5: "Privileges to change are granted under dual control",
        soc2: "Logical access to change is restricted",
    },
    Control {
        control: "Tamper-evident evidence",
        how: "Every state change writes an audit event in the same transaction; events form an RFC 6962 Merkle tree with checkpoints signed by the ledger key; evidence bundles verify offline against the trust file.",
        sox: "Complete, accurate evidence of each change",
        pci: "6.5.1 changes documented",
        nist_ac5: "Duties of each release are shown and checkable",
        nist_cm5: "Records of changes cannot be altered unnoticed",
        soc2: "Change activity is recorded and monitored",
    },
];

/// The report as `--format json` writes it: the API's answer and the controls.
#[derive(Serialize)]
struct ReportDocument<'a> {
    #[serde(flatten)]
    data: &'a ReportData,
    controls: &'a [Control],
}

/// Names joined, or a dash for none.
fn names(names: &[String]) -> String {
    if names.is_empty() {
        "—".into()
    } else {
        names.join(", ")
    }
}

/// A value that may be missing, or a dash.
fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "—".into(), |value| value.to_string())
}

/// Text made safe in HTML, in element content and in attributes quoted
/// either way.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// Everyone who wrote a change the deployment released, once each.
fn authors(deployment: &ReportDeployment) -> String {
    let mut all: Vec<String> = Vec::new();
    for author in deployment.changes.iter().flat_map(|change| &change.authors) {
        if !all.contains(author) {
            all.push(author.clone());
        }
    }
    names(&all)
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
fn model(data: &ReportData) -> Vec<Block> {
    let mut blocks = vec![
        Block::Title(format!("Segregation of duties report: {}", data.instance)),
        Block::Meta(vec![
            format!("Period {} to {}", data.from, data.to),
            format!("Generated {}", data.generated_at),
            format!("Audit log checkpoint: {} events", or_dash(data.checkpoint_size)),
        ]),
    ];
    let deployments = &data.deployments;
    blocks.push(Block::Heading { text: format!("Production deployments ({})", deployments.len()), new_page: false });
    if deployments.is_empty() {
        blocks.push(paragraph(vec![Inline::Text("None in this period.".into())]));
    }
    blocks.extend(deployments.iter().map(deployment));
    blocks.push(Block::Heading { text: format!("Findings ({})", data.findings.len()), new_page: true });
    if data.findings.is_empty() {
        blocks.push(paragraph(vec![Inline::Text("None in this period.".into())]));
    } else {
        blocks.push(findings_table(&data.findings));
    }
    blocks.push(Block::Heading { text: "Controls and the requirements they support".into(), new_page: true });
    blocks.push(controls_table(&CONTROLS));
    blocks
}

fn findings_table(findings: &[ReportFinding]) -> Block {
    Block::Table {
        header: vec!["when", "kind", "subject", "what", "resolution"],
        rows: findings
            .iter()
            .map(|f| {
                let resolution = or_dash(f.resolution.as_deref());
                vec![f.at.to_string(), f.kind.clone(), f.subject.clone(), f.summary.clone(), resolution]
            })
            .collect(),
    }
}

fn controls_table(controls: &[Control]) -> Block {
    Block::Table {
        header: vec![
            "control",
            "how",
            "SOX ITGC change management",
            "PCI DSS 4.0 req. 6.5",
            "NIST 800-53 AC-5",
            "NIST 800-53 CM-5",
            "SOC 2 CC8.1",
        ],
        rows: controls.iter().map(Control::row).collect(),
    }
}

/// Who held each duty of a deployment, one row a duty.
fn duties(d: &ReportDeployment) -> Vec<Vec<String>> {
    let mut duties = vec![vec!["author".to_owned(), authors(d)]];
    for change in &d.changes {
        let number = change.number;
        duties.push(vec![format!("reviewer of change {number}"), names(&change.reviewers)]);
        duties.push(vec![format!("merge asked by (change {number})"), change.merged_by.clone()]);
    }
    duties.push(vec!["builder".into(), "custody build service (signed provenance)".into()]);
    duties.push(vec!["requester".into(), or_dash(d.requester.as_deref())]);
    duties.push(vec!["approvers".into(), names(&d.approvers)]);
    duties.push(vec!["testers".into(), names(&d.testers)]);
    duties.push(vec!["deployer".into(), "custody deploy service (signed attestation)".into()]);
    duties
}

/// One production deployment: who held each duty, and how to check it.
fn deployment(d: &ReportDeployment) -> Block {
    let mut blocks = vec![
        Block::Subheading(format!("{} deployment {} to {}", d.project, d.number, d.environment)),
        paragraph(vec![
            Inline::Text(format!("Finished {}; build {} of commit ", d.finished_at, d.build)),
            Inline::Code(d.commit.clone()),
            Inline::Text(".".into()),
        ]),
        Block::Table { header: vec!["duty", "who"], rows: duties(d) },
    ];
    if let Some(reason) = &d.break_glass {
        blocks.push(Block::Paragraph {
            inlines: vec![Inline::Strong("Break-glass:".into()), Inline::Text(format!(" {reason}"))],
            class: Some("glass"),
        });
    }
    blocks.push(Block::Paragraph {
        inlines: vec![
            Inline::Text("Evidence: ".into()),
            Inline::Code(format!("custody evidence export {} --deployment {} -o bundle.json", d.project, d.number)),
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
    let data: ReportData = client.get(&format!("/api/v1/report?from={}&to={}", encode(&from), encode(&to))).await?;
    let rendered = match args.format {
        Format::Json => {
            let document = ReportDocument { data: &data, controls: &CONTROLS };
            serde_json::to_string_pretty(&document).unwrap_or_default() + "\n"
        }
        Format::Md => markdown(&model(&data)),
        Format::Html => html(&model(&data)),
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, rendered)
                .map_err(|e| Failure::input(format!("cannot write {}: {e}", path.display())))?;
            let output = path.display().to_string();
            let (deployments, findings) = (data.deployments.len(), data.findings.len());
            let summary = json!({ "output": &output, "deployments": deployments, "findings": findings });
            out.show(&summary, |_| {
                format!("wrote {output} ({deployments} production deployments, {findings} findings)")
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
    use custody_api::ReportChange;

    #[test]
    fn the_report_escapes_every_character_markup_needs() {
        assert_eq!(
            super::escape("<a href='x' title=\"y\">&</a>"),
            "&lt;a href=&#39;x&#39; title=&quot;y&quot;&gt;&amp;&lt;/a&gt;"
        );
    }

    fn hostile() -> ReportData {
        let name = "<img src=x onerror='alert(1)'>|evil";
        let at = custody_domain::Timestamp::from_millis(1_767_225_600_000);
        ReportData {
            instance: name.into(),
            from: at,
            to: at,
            generated_at: at,
            checkpoint_size: Some(9),
            deployments: vec![ReportDeployment {
                project: "payments".into(),
                number: 4,
                environment: "production".into(),
                after: None,
                build: 2,
                commit: "abc".into(),
                artifacts: Vec::new(),
                finished_at: at,
                requester: Some(name.into()),
                approvers: vec!["carol".into()],
                testers: Vec::new(),
                break_glass: Some("outage\n| forged | row |".into()),
                gate: None,
                changes: vec![ReportChange {
                    number: 1,
                    authors: vec!["alice".into()],
                    reviewers: vec!["bob".into()],
                    merged_by: "alice".into(),
                    merge_commit: None,
                    merged_at: at,
                    seq: 3,
                }],
                envelope_sha256: None,
                seq: 5,
            }],
            findings: vec![ReportFinding {
                kind: "break_glass".into(),
                at,
                seq: None,
                subject: name.into(),
                actor: None,
                summary: "a | b".into(),
                resolved_by: None,
                resolution: None,
            }],
        }
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
