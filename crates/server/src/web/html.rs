//! Writing HTML with maud templates, which escape every interpolated value
//! and are checked when custody compiles: the page's frame, and the pieces
//! many pages share (a rule list with pass or fail, a list of reasons, a
//! form with its CSRF token).

use std::fmt::Write as _;

use axum::response::Html;
use custody_domain::gate::RuleOutcome;
use custody_domain::status::{BuildStatus, ChangeState, CheckStatus, DeploymentStatus};
use custody_domain::{Reason, Timestamp};
use maud::{html, Markup, DOCTYPE};

use super::session::Visitor;

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
pub fn status(text: &str) -> Markup {
    let class = match text {
        "approved" | "approve" | "test_passed" | "active" => "ok",
        "rejected" | "reject" | "test_failed" | "request_changes" => "bad",
        "pending" => "wait",
        _ => "plain",
    };
    html! { span class={ "badge " (class) } { (text.replace('_', " ")) } }
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
pub fn badge(state: impl Shown) -> Markup {
    html! { span class={ "badge " (state.tone().class()) } { (state.name().replace('_', " ")) } }
}

/// A list of rules, each passed or failed, with what would satisfy a failed one.
pub fn rules(rules: &[RuleOutcome]) -> Markup {
    html! {
        ul.rules {
            @for rule in rules {
                li class={ "rule " (if rule.passed { "pass" } else { "fail" }) } data-rule=(rule.rule) {
                    span.mark { (if rule.passed { "✓ pass" } else { "✗ fail" }) }
                    " " span.message { (rule.message) } " " code.rule-name { (rule.rule) }
                    @if let Some(satisfy) = &rule.satisfy { div.satisfy { "To pass: " (satisfy) } }
                }
            }
        }
    }
}

/// The reasons of a refusal, each naming its rule and what would satisfy it.
pub fn reasons(reasons: &[Reason]) -> Markup {
    html! {
        @if !reasons.is_empty() {
            ul.rules.reasons {
                @for reason in reasons {
                    li.rule.fail data-rule=(reason.rule) {
                        span.mark { "✗ refused" } " " span.message { (reason.message) } " "
                        code.rule-name { (reason.rule) }
                        @if let Some(satisfy) = &reason.satisfy { div.satisfy { "What would satisfy it: " (satisfy) } }
                    }
                }
            }
        }
    }
}

/// A reason shown next to a button that is disabled because of it.
pub fn refusal_note(reason: &Reason) -> Markup {
    html! {
        div.refusal data-rule=(reason.rule) {
            strong { "Not yours to take:" } " " (reason.message) " " code.rule-name { (reason.rule) }
            @if let Some(satisfy) = &reason.satisfy { div.satisfy { "What would satisfy it: " (satisfy) } }
        }
    }
}

/// A refused decision's reasons, each as a refusal note.
pub fn refusal_notes(decision: &custody_domain::Decision) -> Markup {
    html! { @for reason in &decision.reasons { (refusal_note(reason)) } }
}

/// The CSRF token field every form carries.
pub fn csrf(visitor: &Visitor) -> Markup {
    html! { input type="hidden" name="csrf" value=(visitor.csrf()); }
}

/// A POST form to `action` with the visitor's CSRF token around `fields`.
pub fn post_form(action: &str, visitor: &Visitor, class: &str, fields: Markup) -> Markup {
    html! { form method="post" action=(action) class=(class) { (csrf(visitor)) (fields) } }
}

/// A whole page around markup made by a template.
pub fn page(title: &str, visitor: Option<&Visitor>, body: Markup) -> Html<String> {
    frame(title, visitor, body, None)
}

/// A page of something still running: without scripts it reloads itself
/// every `seconds`; with them, its script follows what changes in place.
pub fn live_page(title: &str, visitor: Option<&Visitor>, body: Markup, seconds: u32) -> Html<String> {
    frame(title, visitor, body, Some(seconds))
}

fn frame(title: &str, visitor: Option<&Visitor>, body: Markup, refresh: Option<u32>) -> Html<String> {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · custody" }
                link rel="stylesheet" href="/static/custody.css";
                script src="/static/custody.js" defer {}
                @if let Some(seconds) = refresh { noscript { meta http-equiv="refresh" content=(seconds); } }
            }
            body {
                header.top {
                    a.brand href="/work" { "custody" }
                    @if let Some(visitor) = visitor {
                        nav aria-label="Main" {
                            a #nav-work href="/work" { "My work " span.count #work-count hidden {} }
                            a href="/projects" { "Projects" }
                            @if visitor.auth.reads_everything() { a href="/audit" { "Audit" } }
                            @if visitor.auth.is_admin { a href="/admin" { "Admin" } }
                        }
                        div.who {
                            "Signed in as " a #nav-me href="/me" title="Me: tokens, password, sessions" { strong #signed-in-as { (visitor.auth.name.as_str()) } }
                            (post_form("/logout", visitor, "inline", html! { button type="submit" class="link" { "Sign out" } }))
                        }
                    }
                }
                main { (body) }
                footer { "custody · segregation of duties from commit to production" }
            }
        }
    };
    Html(page.into_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_status_is_shown_by_its_own_tone_not_by_its_spelling() {
        assert_eq!(badge(DeploymentStatus::Rejected).into_string(), "<span class=\"badge bad\">rejected</span>");
        assert_eq!(badge(CheckStatus::NotRequired).into_string(), "<span class=\"badge plain\">not required</span>");
        assert_eq!(badge(ChangeState::Merged).into_string(), "<span class=\"badge ok\">merged</span>");
        assert_eq!(BuildStatus::Running.tone(), Tone::Wait);
    }

    #[test]
    fn a_rule_with_markup_in_its_message_is_rendered_as_text() {
        let rendered = rules(&[RuleOutcome {
            rule: "gate.x".into(),
            passed: false,
            message: "<img src=x onerror=alert(1)>".into(),
            satisfy: Some("<b>".into()),
        }])
        .into_string();
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
