//! Writing HTML: one escaping helper that every interpolated value goes
//! through, the page's frame, and the pieces many pages share (a rule list
//! with pass or fail, a list of reasons, a form with its CSRF token).

use std::fmt::{self, Display, Write as _};

use axum::response::Html;
use custody_domain::gate::RuleOutcome;
use custody_domain::status::{BuildStatus, ChangeState, CheckStatus, DeploymentStatus};
use custody_domain::{Reason, Timestamp};

use super::session::Visitor;

/// Text made safe for HTML, in element content and in quoted attributes.
pub struct Esc<'a>(&'a str);

/// Escapes `text` for HTML.
pub fn esc(text: &str) -> Esc<'_> {
    Esc(text)
}

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..at])?;
            f.write_str(match rest.as_bytes()[at] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}

/// Text for a path segment of a link: everything but unreserved characters
/// percent-encoded (the result needs no further escaping in an attribute).
pub fn seg(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// Appends formatted text to a page being written.
pub fn push(out: &mut String, args: fmt::Arguments<'_>) {
    let _ = out.write_fmt(args);
}

/// The first characters of a commit id or digest.
pub fn short(id: &str) -> &str {
    id.get(..10).unwrap_or(id)
}

/// A time as people read it, in UTC.
pub fn when(at: Timestamp) -> String {
    let text = at.to_rfc3339();
    // 2025-01-02T03:04:05.678Z → 2025-01-02 03:04:05 UTC
    match (text.get(..10), text.get(11..19)) {
        (Some(day), Some(time)) => format!("{day} {time} UTC"),
        _ => text,
    }
}

/// A status as a coloured label.
pub fn status(text: &str) -> String {
    let class = match text {
        "approved" | "approve" | "test_passed" | "active" => "ok",
        "rejected" | "reject" | "test_failed" | "request_changes" => "bad",
        "pending" => "wait",
        _ => "plain",
    };
    format!("<span class=\"badge {class}\">{}</span>", esc(&text.replace('_', " ")))
}

/// How a state looks on a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    /// Done and good.
    Ok,
    /// Failed or refused.
    Bad,
    /// Still to happen.
    Wait,
    /// Neither.
    Plain,
}

impl Tone {
    /// Its CSS class.
    pub fn class(self) -> &'static str {
        match self {
            Tone::Ok => "ok",
            Tone::Bad => "bad",
            Tone::Wait => "wait",
            Tone::Plain => "plain",
        }
    }
}

/// A status a page shows. Every status enum says how each of its states
/// looks, exhaustively, so that a new state cannot go unstyled and no page
/// compares a status as text.
pub trait Shown: Copy {
    /// Its name, as stored and sent.
    fn name(self) -> &'static str;
    /// How it looks.
    fn tone(self) -> Tone;
}

impl Shown for ChangeState {
    fn name(self) -> &'static str {
        self.as_str()
    }
    fn tone(self) -> Tone {
        match self {
            ChangeState::Open => Tone::Wait,
            ChangeState::Merged => Tone::Ok,
            ChangeState::Closed => Tone::Plain,
        }
    }
}

impl Shown for CheckStatus {
    fn name(self) -> &'static str {
        self.as_str()
    }
    fn tone(self) -> Tone {
        match self {
            CheckStatus::Queued | CheckStatus::Running => Tone::Wait,
            CheckStatus::Passed => Tone::Ok,
            CheckStatus::Failed | CheckStatus::Error => Tone::Bad,
            CheckStatus::NotRequired => Tone::Plain,
        }
    }
}

impl Shown for BuildStatus {
    fn name(self) -> &'static str {
        self.as_str()
    }
    fn tone(self) -> Tone {
        match self {
            BuildStatus::Queued | BuildStatus::Running => Tone::Wait,
            BuildStatus::Succeeded => Tone::Ok,
            BuildStatus::Failed | BuildStatus::Error => Tone::Bad,
            BuildStatus::Skipped => Tone::Plain,
        }
    }
}

impl Shown for DeploymentStatus {
    fn name(self) -> &'static str {
        self.as_str()
    }
    fn tone(self) -> Tone {
        match self {
            DeploymentStatus::Pending | DeploymentStatus::Queued | DeploymentStatus::Running => Tone::Wait,
            DeploymentStatus::Succeeded => Tone::Ok,
            DeploymentStatus::Failed | DeploymentStatus::Rejected => Tone::Bad,
            DeploymentStatus::Cancelled => Tone::Plain,
        }
    }
}

/// A status as a badge.
pub fn badge(state: impl Shown) -> String {
    format!("<span class=\"badge {}\">{}</span>", state.tone().class(), esc(&state.name().replace('_', " ")))
}

/// A list of rules, each passed or failed, with what would satisfy a failed one.
pub fn rules(rules: &[RuleOutcome]) -> String {
    let mut out = String::from("<ul class=\"rules\">");
    for rule in rules {
        let (class, mark) = if rule.passed { ("pass", "✓ pass") } else { ("fail", "✗ fail") };
        push(
            &mut out,
            format_args!(
                "<li class=\"rule {class}\" data-rule=\"{}\"><span class=\"mark\">{mark}</span> \
                 <span class=\"message\">{}</span> <code class=\"rule-name\">{}</code>",
                esc(&rule.rule),
                esc(&rule.message),
                esc(&rule.rule)
            ),
        );
        if let Some(satisfy) = &rule.satisfy {
            push(&mut out, format_args!("<div class=\"satisfy\">To pass: {}</div>", esc(satisfy)));
        }
        out.push_str("</li>");
    }
    out.push_str("</ul>");
    out
}

/// The reasons of a refusal, each naming its rule and what would satisfy it.
pub fn reasons(reasons: &[Reason]) -> String {
    if reasons.is_empty() {
        return String::new();
    }
    let mut out = String::from("<ul class=\"rules reasons\">");
    for reason in reasons {
        push(
            &mut out,
            format_args!(
                "<li class=\"rule fail\" data-rule=\"{}\"><span class=\"mark\">✗ refused</span> \
                 <span class=\"message\">{}</span> <code class=\"rule-name\">{}</code>",
                esc(&reason.rule),
                esc(&reason.message),
                esc(&reason.rule)
            ),
        );
        if let Some(satisfy) = &reason.satisfy {
            push(&mut out, format_args!("<div class=\"satisfy\">What would satisfy it: {}</div>", esc(satisfy)));
        }
        out.push_str("</li>");
    }
    out.push_str("</ul>");
    out
}

/// A reason shown next to a button that is disabled because of it.
pub fn refusal_note(reason: &Reason) -> String {
    let mut out = format!(
        "<div class=\"refusal\" data-rule=\"{}\"><strong>Not yours to take:</strong> {} <code class=\"rule-name\">{}</code>",
        esc(&reason.rule),
        esc(&reason.message),
        esc(&reason.rule)
    );
    if let Some(satisfy) = &reason.satisfy {
        push(&mut out, format_args!("<div class=\"satisfy\">What would satisfy it: {}</div>", esc(satisfy)));
    }
    out.push_str("</div>");
    out
}

/// A refused decision's reasons, each as a refusal note.
pub fn refusal_notes(decision: &custody_domain::Decision) -> String {
    decision.reasons.iter().map(refusal_note).collect()
}

/// The opening of a POST form to `action` with the visitor's CSRF token.
pub fn form(action: &str, visitor: &Visitor, class: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\" class=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(action),
        esc(class),
        esc(visitor.csrf())
    )
}

/// A whole page around markup made by a template.
pub fn page(title: &str, visitor: Option<&Visitor>, body: maud::Markup) -> Html<String> {
    document(title, visitor, &body.into_string())
}

/// A whole page: the frame (navigation, who is signed in) around `body`.
pub fn document(title: &str, visitor: Option<&Visitor>, body: &str) -> Html<String> {
    let mut out = String::with_capacity(body.len() + 2048);
    push(
        &mut out,
        format_args!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{} · custody</title><link rel=\"stylesheet\" href=\"/static/custody.css\">\
             <script src=\"/static/custody.js\" defer></script></head><body>\
             <header class=\"top\"><a class=\"brand\" href=\"/work\">custody</a>",
            esc(title)
        ),
    );
    if let Some(visitor) = visitor {
        out.push_str(
            "<nav><a href=\"/work\" id=\"nav-work\">My work <span class=\"count\" id=\"work-count\" hidden></span></a>\
             <a href=\"/projects\">Projects</a>",
        );
        if visitor.auth.reads_everything() {
            out.push_str("<a href=\"/audit\">Audit</a>");
        }
        if visitor.auth.is_admin {
            out.push_str("<a href=\"/admin\">Admin</a>");
        }
        push(
            &mut out,
            format_args!(
                "</nav><div class=\"who\">Signed in as <strong id=\"signed-in-as\">{}</strong>{}\
                 <button type=\"submit\" class=\"link\">Sign out</button></form></div>",
                esc(visitor.auth.name.as_str()),
                form("/logout", visitor, "inline")
            ),
        );
    }
    out.push_str("</header><main>");
    out.push_str(body);
    out.push_str("</main><footer>custody · segregation of duties from commit to production</footer></body></html>\n");
    Html(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_status_is_shown_by_its_own_tone_not_by_its_spelling() {
        assert_eq!(badge(DeploymentStatus::Rejected), "<span class=\"badge bad\">rejected</span>");
        assert_eq!(badge(CheckStatus::NotRequired), "<span class=\"badge plain\">not required</span>");
        assert_eq!(badge(ChangeState::Merged), "<span class=\"badge ok\">merged</span>");
        assert_eq!(BuildStatus::Running.tone(), Tone::Wait);
    }

    #[test]
    fn every_character_that_could_open_markup_is_escaped() {
        let title = "<script>alert('x')</script> & \"quoted\"";
        assert_eq!(esc(title).to_string(), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;quoted&quot;");
        assert_eq!(esc("plain text é").to_string(), "plain text é");
    }

    #[test]
    fn a_rule_with_markup_in_its_message_is_rendered_as_text() {
        let rendered = rules(&[RuleOutcome {
            rule: "gate.x".into(),
            passed: false,
            message: "<img src=x onerror=alert(1)>".into(),
            satisfy: Some("<b>".into()),
        }]);
        assert!(!rendered.contains("<img"), "{rendered}");
        assert!(rendered.contains("&lt;img src=x onerror=alert(1)&gt;"), "{rendered}");
        assert!(rendered.contains("To pass: &lt;b&gt;"), "{rendered}");
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(seg("a b/\"c\""), "a%20b%2F%22c%22");
        assert_eq!(seg("release-1.0_x"), "release-1.0_x");
    }
}
