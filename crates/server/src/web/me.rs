//! Me: my account, my tokens (made with no scope the session lacks, for
//! at most 90 days, and only after my password is entered again; revoked
//! at a click), my password, and my sessions (signed out everywhere else
//! at a click). E-mail addresses stay with the admins: an address decides
//! who is an author.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use custody_domain::{Scope, Scopes};
use custody_store::{PageRequest, TokenView};
use maud::{html, Markup};

use super::html;
use super::session::{see_other, Posted, Visitor};
use super::{WebError, WebPath, WebResult};
use crate::proxies::ClientAddress;
use crate::AppState;

/// The longest a token made on this page lives.
const TOKEN_DAYS_MAX: i64 = 90;

/// The names the sign-ins give their tokens: these are sessions.
const SESSION_NAMES: [&str; 2] = ["password login", "web sign-in"];

const DAY_MS: i64 = 24 * 3600 * 1000;

fn active(token: &TokenView, now: i64) -> bool {
    token.revoked_at.is_none() && token.expires_at.is_none_or(|t| t.millis() > now)
}

fn is_session(token: &TokenView) -> bool {
    SESSION_NAMES.contains(&token.name.as_str())
}

fn scopes_shown(scopes: Scopes) -> String {
    scopes.to_vec().iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

async fn my_tokens(state: &AppState, visitor: &Visitor) -> WebResult<Vec<TokenView>> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = state.store().list_tokens(&visitor.auth, PageRequest::new(after, Some(PageRequest::MAX))).await?;
        all.extend(page.items);
        match page.next_cursor {
            Some(next) => after = Some(next),
            None => return Ok(all),
        }
    }
}

/// The page.
pub(crate) async fn show(State(state): State<AppState>, visitor: Visitor) -> WebResult<Response> {
    let me = state.store().get_user(&visitor.auth.name).await?;
    let tokens = my_tokens(&state, &visitor).await?;
    let now = custody_store::now_ms();
    let (sessions, tokens): (Vec<&TokenView>, Vec<&TokenView>) = tokens.iter().partition(|t| is_session(t));
    let sessions: Vec<&TokenView> = sessions.into_iter().filter(|t| active(t, now)).collect();
    let others = sessions.iter().filter(|t| t.id != visitor.auth.token_id).count();
    let body = html! {
        h1 { "Me" }
        section {
            h2 { "Account" }
            dl.facts #account {
                dt { "Name" } dd { (me.name) }
                dt { "Shown as" } dd { (me.display_name) }
                dt { "E-mail addresses" } dd { (me.emails.join(", ")) }
                dt { "Groups" } dd { (if me.groups.is_empty() { "—".to_owned() } else { me.groups.join(", ") }) }
                dt { "This session may" } dd { (scopes_shown(visitor.auth.scopes)) }
            }
            p.hint { "An e-mail address decides who is an author of a commit, so only an admin changes yours." }
        }
        section #sessions {
            h2 { "Sessions" }
            table.list {
                thead { tr { th { "Signed in" } th { "Until" } th { "Last used" } th { "" } } }
                tbody {
                    @for t in &sessions {
                        tr data-token=(t.id) {
                            td { (html::when(t.created_at)) }
                            td { (t.expires_at.map(html::when).unwrap_or_default()) }
                            td { (t.last_used_at.map(html::when).unwrap_or_else(|| "—".into())) }
                            td { @if t.id == visitor.auth.token_id { strong { "this session" } } }
                        }
                    }
                }
            }
            @if others > 0 {
                (html::post_form("/me/sessions/end", &visitor, "end-sessions", html! {
                    button type="submit" #end-other-sessions { "Sign out everywhere else (" (others) ")" }
                }))
            } @else {
                p.hint { "No other session." }
            }
        }
        section #tokens {
            h2 { "Tokens" }
            @if tokens.is_empty() { p.empty { "No token." } } @else {
                table.list {
                    thead { tr { th { "Name" } th { "Scopes" } th { "Made" } th { "Expires" } th { "Last used" } th { "State" } } }
                    tbody {
                        @for t in &tokens {
                            tr data-token=(t.id) {
                                td { (t.name) }
                                td { (scopes_shown(t.scopes)) }
                                td { (html::when(t.created_at)) }
                                td { (t.expires_at.map(html::when).unwrap_or_else(|| "never".into())) }
                                td { (t.last_used_at.map(html::when).unwrap_or_else(|| "—".into())) }
                                td {
                                    @if t.revoked_at.is_some() { (html::status("revoked")) }
                                    @else if !active(t, now) { (html::status("expired")) }
                                    @else {
                                        (html::post_form(&format!("/me/tokens/{}/revoke", super::html::seg(&t.id)), &visitor, "inline", html! {
                                            button type="submit" class="revoke-token" aria-label={ "Revoke " (t.name) } { "Revoke" }
                                        }))
                                    }
                                }
                            }
                        }
                    }
                }
            }
            (token_form(&visitor))
        }
        section #password-section {
            h2 { "Password" }
            (html::post_form("/me/password", &visitor, "password", html! {
                label { "Current password (without one: a sign-in of the last ten minutes) " input type="password" name="current" #current-password autocomplete="current-password"; }
                label { "New password " input type="password" name="password" #new-password autocomplete="new-password" minlength="12" required; }
                label { "New password again " input type="password" name="again" #new-password-again autocomplete="new-password" required; }
                div.buttons { button type="submit" #change-password { "Change my password" } }
            }))
        }
    };
    Ok(html::page("Me", Some(&visitor), body).into_response())
}

fn token_form(visitor: &Visitor) -> Markup {
    html! {
        h3 { "Make a token" }
        p.hint {
            "A token may do no more than this session (" (scopes_shown(visitor.auth.scopes)) ") and lives at most "
            (TOKEN_DAYS_MAX) " days. It is shown once."
        }
        (html::post_form("/me/tokens", visitor, "make-token", html! {
            label { "Name " input name="name" #token-name required maxlength="64"; }
            fieldset {
                legend { "Scopes" }
                @for scope in Scope::ALL.into_iter().filter(|s| visitor.auth.has_scope(*s)) {
                    label.inline { input type="checkbox" name="scope" value=(scope.as_str()) checked[scope != Scope::Admin]; " " (scope.as_str()) }
                }
            }
            label { "Expires after " select name="days" #token-days {
                @for days in [1, 7, 30, TOKEN_DAYS_MAX] { option value=(days) selected[days == 30] { (days) " days" } }
            } }
            label { "Your password, again (without one: a sign-in of the last ten minutes) " input type="password" name="password" #token-password autocomplete="current-password"; }
            div.buttons { button type="submit" class="primary" #make-token { "Make the token" } }
        }))
    }
}

/// How recent a sign-in counts as fresh, for someone with no password.
const FRESH_MS: i64 = 10 * 60 * 1000;

/// How the visitor proved again that they are who the session says.
#[derive(PartialEq)]
enum Proof {
    /// Their password, entered again: as good as a sign-in.
    Password,
    /// A session made in the last ten minutes, for someone with no password.
    FreshSession,
}

/// Checks that the visitor is who the session says: by their password
/// entered again (rate-limited as a sign-in is), or, for someone who has
/// none, by a session made in the last ten minutes.
async fn reauthenticate(
    state: &AppState,
    client: std::net::IpAddr,
    visitor: &Visitor,
    password: String,
) -> WebResult<Proof> {
    let name = visitor.auth.name.as_str();
    if state.store().password_hash(&visitor.auth.name).await?.is_none() {
        let session = my_tokens(state, visitor).await?.into_iter().find(|t| t.id == visitor.auth.token_id);
        let fresh = session.is_some_and(|t| custody_store::now_ms() - t.created_at.millis() <= FRESH_MS);
        if fresh {
            return Ok(Proof::FreshSession);
        }
        return Err(WebError::forbidden(
            "you have no password, so sign in again with your token and do this within ten minutes",
        )
        .back("/me"));
    }
    state.logins().check_source(client).map_err(WebError::from)?;
    tokio::time::sleep(state.logins().delay(name)).await;
    match crate::api::people::check_password(state, name, password).await? {
        Some((_, user_id)) if user_id == visitor.auth.user_id => {
            state.logins().succeeded(name);
            Ok(Proof::Password)
        }
        _ => {
            state.logins().failed(client, Some(name));
            Err(WebError::forbidden("that is not your password: enter it again to go on").back("/me"))
        }
    }
}

/// Makes a token and shows it once.
pub(crate) async fn make_token(
    State(state): State<AppState>,
    ClientAddress(client): ClientAddress,
    posted: Posted,
) -> WebResult<Response> {
    let visitor = &posted.visitor;
    let mut scopes = Vec::new();
    for (name, value) in posted.fields() {
        if name == "scope" {
            let scope = Scope::ALL
                .into_iter()
                .find(|s| s.as_str() == value)
                .ok_or_else(|| WebError::invalid(format!("{value:?} is no scope: read, write or admin")).back("/me"))?;
            if !visitor.auth.has_scope(scope) {
                return Err(WebError::forbidden(format!(
                    "this session lacks the {scope} scope, so it cannot make a token that has it"
                ))
                .back("/me"));
            }
            scopes.push(scope);
        }
    }
    if scopes.is_empty() {
        return Err(WebError::invalid("choose at least one scope").back("/me"));
    }
    let days: i64 = posted
        .text("days")
        .parse()
        .ok()
        .filter(|d| (1..=TOKEN_DAYS_MAX).contains(d))
        .ok_or_else(|| WebError::invalid(format!("a token lives 1 to {TOKEN_DAYS_MAX} days")).back("/me"))?;
    let proof = reauthenticate(&state, client, visitor, posted.get("password").unwrap_or_default().to_owned()).await?;
    // A token never outlives the one that made it; a password entered
    // again counts as a sign-in (as `custody login` does), so the token is
    // bound by its own expiry, not the session's.
    let mut maker = visitor.auth.clone();
    if proof == Proof::Password {
        maker.expires_at = None;
    }
    let expires = custody_store::now_ms() + days * DAY_MS;
    let made = state
        .store()
        .create_token(&maker, posted.text("name"), Scopes::of(&scopes), Some(expires))
        .await
        .map_err(|e| WebError::from(e).back("/me"))?;
    let body = html! {
        h1 { "Your new token" }
        p.lead { "Copy it now: custody keeps only its hash and shows it never again." }
        pre.log #new-token { (made.token) }
        p { "Use it with " code { "custody login --token" } " or as " code { "Authorization: Bearer …" } "." }
        p { a href="/me" { "Back to Me" } }
    };
    Ok(html::page("Your new token", Some(visitor), body).into_response())
}

/// Revokes one of the visitor's tokens.
pub(crate) async fn revoke_token(
    State(state): State<AppState>,
    WebPath(id): WebPath<String>,
    posted: Posted,
) -> WebResult<Response> {
    // The store refuses another's token as unknown, admins aside; on this
    // page a visitor revokes only their own.
    let mine = my_tokens(&state, &posted.visitor).await?.iter().any(|t| t.id == id);
    if !mine {
        return Err(WebError::new(axum::http::StatusCode::NOT_FOUND, "you have no such token").back("/me"));
    }
    state.store().revoke_token(&posted.visitor.auth, &id).await.map_err(|e| WebError::from(e).back("/me"))?;
    if id == posted.visitor.auth.token_id {
        return Ok(super::session::to_login(None));
    }
    Ok(see_other("/me#tokens"))
}

/// Signs the visitor out of every other session.
pub(crate) async fn end_sessions(State(state): State<AppState>, posted: Posted) -> WebResult<Response> {
    let now = custody_store::now_ms();
    for token in my_tokens(&state, &posted.visitor).await? {
        if is_session(&token) && active(&token, now) && token.id != posted.visitor.auth.token_id {
            state.store().revoke_token(&posted.visitor.auth, &token.id).await?;
        }
    }
    Ok(see_other("/me#sessions"))
}

/// Changes the visitor's password, the current one entered again.
pub(crate) async fn change_password(
    State(state): State<AppState>,
    ClientAddress(client): ClientAddress,
    posted: Posted,
) -> WebResult<Response> {
    let visitor = &posted.visitor;
    if !visitor.auth.has_scope(Scope::Write) {
        return Err(WebError::forbidden("this session may only read").back("/me"));
    }
    let new = posted.get("password").unwrap_or_default().to_owned();
    if posted.get("again") != Some(new.as_str()) {
        return Err(WebError::invalid("the new password and its repetition differ: type them again").back("/me"));
    }
    reauthenticate(&state, client, visitor, posted.get("current").unwrap_or_default().to_owned()).await?;
    let hash = crate::api::people::hash_new_password(new).await.map_err(|e| WebError::from(e).back("/me"))?;
    state.store().set_password_hash(&visitor.auth, hash).await?;
    let body = html! {
        h1 { "Password changed" }
        p.lead #password-changed { "Your password is changed. Your sessions and tokens stay as they were; sign out everywhere else from Me if someone else knew the old one." }
        p { a href="/me" { "Back to Me" } }
    };
    Ok(html::page("Password changed", Some(visitor), body).into_response())
}
