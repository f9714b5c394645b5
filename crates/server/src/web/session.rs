//! Signing in and out of the pages, and CSRF protection of their forms.
//!
//! A sign-in (by password, or by presenting a token) makes a new token of
//! the visitor's, valid for a day at most, and sets it as the
//! `custody_session` cookie: `Secure`, `HttpOnly`, `SameSite=Strict`. It is
//! stored like every token (a SHA-256 hash, compared in constant time), so
//! disabling the user or revoking it ends the session at once; signing out
//! revokes it. Each form carries the session's CSRF token, derived from the
//! session's secret (SHA-256 under a label of its own), and every POST is
//! refused unless it carries it; `Origin` and `Sec-Fetch-Site`, when
//! present, must say the form came from this site. The sign-in form, before
//! there is a session, is protected the same way by a random value held in
//! a short-lived cookie of its own.

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use custody_domain::{Scope, Scopes};
use custody_store::Authenticated;
use serde::Deserialize;
use sha2::Digest as _;

use super::html;
use super::{WebError, WebQuery, WebResult};
use crate::proxies::ClientAddress;
use crate::AppState;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "custody_session";
/// The sign-in form's cookie.
const LOGIN_COOKIE: &str = "custody_login";
/// How long a session lasts at most.
const SESSION_MS: i64 = 24 * 3600 * 1000;

/// Someone signed in to the pages.
#[derive(Clone, Debug)]
pub struct Visitor {
    /// Who, as their session token establishes.
    pub auth: Authenticated,
    csrf: String,
}

impl Visitor {
    /// The CSRF token every form of this session carries.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// The CSRF token of the session whose secret is `session`.
fn csrf_of(session: &str) -> String {
    let mut hash = sha2::Sha256::new();
    hash.update(b"custody web form\0");
    hash.update(session.as_bytes());
    hex::encode(hash.finalize())
}

/// Whether two strings are equal, in time that depends only on their lengths.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of cookie `name`, if the request carries it.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

fn set_cookie(name: &str, value: &str, path: &str, max_age: Option<i64>) -> HeaderValue {
    let age = max_age.map(|s| format!("; Max-Age={s}")).unwrap_or_default();
    HeaderValue::from_str(&format!("{name}={value}; Path={path}; Secure; HttpOnly; SameSite=Strict{age}"))
        .unwrap_or_else(|_| HeaderValue::from_static("custody_invalid=; Max-Age=0"))
}

/// A redirect to the sign-in page, which returns to `next` (a page, not a
/// form's target) afterwards.
pub fn to_login(next: Option<&str>) -> Response {
    match next.filter(|n| !n.is_empty()) {
        Some(next) if next_or_home(Some(next)) == next => see_other(&format!("/login?next={}", html::seg(next))),
        _ => see_other("/login"),
    }
}

/// A 303 to `to`.
pub fn see_other(to: &str) -> Response {
    let location = HeaderValue::from_str(to).unwrap_or_else(|_| HeaderValue::from_static("/projects"));
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

impl FromRequestParts<AppState> for Visitor {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        // Back to this page after signing in, when it is one to go back to.
        let here = match parts.method {
            axum::http::Method::GET => parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default(),
            _ => String::new(),
        };
        let unauthenticated = || WebError::new(StatusCode::UNAUTHORIZED, "sign in first").back(here.clone());
        let session = cookie(&parts.headers, SESSION_COOKIE).ok_or_else(unauthenticated)?;
        let auth = state.store().authenticate(session).await.map_err(|_| unauthenticated())?;
        Ok(Visitor { auth, csrf: csrf_of(session) })
    }
}

/// Refuses a POST whose `Origin` or `Sec-Fetch-Site` says it came from
/// another site.
fn same_site(headers: &HeaderMap) -> Result<(), WebError> {
    let refused = |why: &str| {
        WebError::forbidden(format!("this form was refused: {why}; open the page on this site and send it from there"))
    };
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return Err(refused("it was sent from another site"));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let from = origin.split_once("://").map(|(_, authority)| authority);
        if from != Some(host) {
            return Err(refused("it was sent from another origin"));
        }
    }
    Ok(())
}

fn check_token(expected: &str, fields: &[(String, String)]) -> Result<(), WebError> {
    let sent = fields.iter().find(|(name, _)| name == "csrf").map(|(_, value)| value.as_str());
    match sent {
        Some(sent) if same(sent, expected) => Ok(()),
        Some(_) => Err(WebError::forbidden(
            "this form's security token does not match your session (it may be from an earlier sign-in); \
             reload the page and send the form again",
        )),
        None => Err(WebError::forbidden(
            "this form was sent without its security token (CSRF protection), so nothing was done; \
             reload the page and send the form from there",
        )),
    }
}

async fn fields(request: Request, state: &AppState) -> Result<Vec<(String, String)>, WebError> {
    axum::Form::<Vec<(String, String)>>::from_request(request, state)
        .await
        .map(|axum::Form(fields)| fields)
        .map_err(|rejection| WebError::invalid(format!("the form could not be read: {}", rejection.body_text())))
}

/// A form posted by a signed-in visitor, its CSRF token checked.
pub struct Posted {
    /// Who sent it.
    pub visitor: Visitor,
    fields: Vec<(String, String)>,
}

impl Posted {
    /// A field's value, if the form has it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Every field, in the form's order (a name may come more than once).
    pub fn fields(&self) -> &[(String, String)] {
        &self.fields
    }

    /// A field's value, trimmed; empty when absent.
    pub fn text(&self, name: &str) -> String {
        self.get(name).unwrap_or_default().trim().to_owned()
    }
}

impl FromRequest<AppState> for Posted {
    type Rejection = WebError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let visitor = Visitor::from_request_parts(&mut parts, state).await?;
        same_site(&parts.headers)?;
        let fields = fields(Request::from_parts(parts, body), state).await?;
        check_token(visitor.csrf(), &fields)?;
        Ok(Posted { visitor, fields })
    }
}

#[derive(Deserialize)]
pub(crate) struct LoginQuery {
    next: Option<String>,
}

/// A local path to return to after signing in, or the visitor's work.
fn next_or_home(next: Option<&str>) -> String {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && path.len() < 512
                && path.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            path.to_owned()
        }
        _ => "/work".to_owned(),
    }
}

fn login_form(nonce: &str, next: &str, error: Option<&str>) -> Response {
    let hidden = maud::html! {
        input type="hidden" name="csrf" value=(nonce);
        input type="hidden" name="next" value=(next);
    };
    let body = maud::html! {
        section.signin {
            h1 { "Sign in to custody" }
            @if let Some(error) = error { p.refusal #error { (error) } }
            form method="post" action="/login" class="card" #password-form {
                (hidden)
                input type="hidden" name="method" value="password";
                h2 { "With your password" }
                label { "Name " input name="name" #name autocomplete="username" required; }
                label { "Password " input name="password" #password type="password" autocomplete="current-password" required; }
                button type="submit" #sign-in { "Sign in" }
            }
            form method="post" action="/login" class="card" #token-form {
                (hidden)
                input type="hidden" name="method" value="token";
                h2 { "With a token" }
                label { "Token " input name="token" #token type="password" autocomplete="off" placeholder="cst_…" required; }
                button type="submit" #sign-in-token { "Sign in with the token" }
                p.hint {
                    "The token stays with you: signing in makes a session of its own, valid for a day at most, which \
                     signing out ends."
                }
            }
        }
    };
    let status = if error.is_some() { StatusCode::UNAUTHORIZED } else { StatusCode::OK };
    let mut response = (status, html::page("Sign in", None, body)).into_response();
    response.headers_mut().append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, nonce, "/login", Some(3600)));
    response
}

/// The sign-in page.
pub(crate) async fn login_page(
    State(state): State<AppState>,
    WebQuery(query): WebQuery<LoginQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(session) = cookie(&headers, SESSION_COOKIE) {
        if state.store().authenticate(session).await.is_ok() {
            return see_other(&next_or_home(query.next.as_deref()));
        }
    }
    login_form(&custody_store::random_secret(), &next_or_home(query.next.as_deref()), None)
}

/// Signs in by password or token.
pub(crate) async fn login(
    State(state): State<AppState>,
    ClientAddress(client): ClientAddress,
    request: Request,
) -> WebResult {
    let headers = request.headers().clone();
    same_site(&headers)?;
    let nonce = cookie(&headers, LOGIN_COOKIE).unwrap_or_default().to_owned();
    let fields = fields(request, &state).await?;
    if nonce.is_empty() {
        return Err(WebError::forbidden(
            "the sign-in form was sent without the cookie it was served with; \
             open the sign-in page again and sign in from there",
        ));
    }
    check_token(&nonce, &fields)?;
    let field = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or_default();
    let next = next_or_home(Some(&field("next")));
    let fresh = custody_store::random_secret();
    let made = match field("method").as_str() {
        "password" => {
            let name = field("name");
            state.logins().check_source(client).map_err(WebError::from)?;
            tokio::time::sleep(state.logins().delay(name.trim())).await;
            match crate::api::people::check_password(&state, name.trim(), field("password")).await? {
                Some((name, user_id)) => {
                    state.logins().succeeded(name.as_str());
                    let admin = state.store().get_user(&name).await?.admin;
                    let mut scopes = vec![Scope::Read, Scope::Write];
                    if admin {
                        scopes.push(Scope::Admin);
                    }
                    state.store().create_token_after_login(user_id, &name, Scopes::of(&scopes)).await?
                }
                None => {
                    state.logins().failed(client, Some(name.trim()));
                    tracing::info!(source = %client, name = %name, "failed sign-in");
                    return Ok(login_form(&fresh, &next, Some("Wrong name or password.")));
                }
            }
        }
        "token" => {
            state.logins().check_source(client).map_err(WebError::from)?;
            let Ok(auth) = state.store().authenticate(field("token").trim()).await else {
                state.logins().failed(client, None);
                return Ok(login_form(&fresh, &next, Some("That token is invalid, expired or revoked.")));
            };
            let expires = custody_store::now_ms() + SESSION_MS;
            state.store().create_token(&auth, "web sign-in".into(), auth.scopes, Some(expires)).await?
        }
        _ => return Err(WebError::invalid("sign in with a password or a token")),
    };
    let mut response = see_other(&next);
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, &made.token, "/", None));
    headers.append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", "/login", Some(0)));
    Ok(response)
}

/// Signs out: the session's token is revoked, the cookie cleared.
pub(crate) async fn logout(State(state): State<AppState>, posted: Posted) -> WebResult {
    state.store().revoke_token(&posted.visitor.auth, &posted.visitor.auth.token_id).await?;
    let mut response = to_login(None);
    response.headers_mut().append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", "/", Some(0)));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_returned_to_after_sign_in() {
        assert_eq!(next_or_home(Some("/projects/payments")), "/projects/payments");
        assert_eq!(next_or_home(Some("//evil.example/")), "/work");
        assert_eq!(next_or_home(Some("https://evil.example/")), "/work");
        assert_eq!(next_or_home(Some("/\\evil")), "/work");
        assert_eq!(next_or_home(None), "/work");
    }

    #[test]
    fn a_form_from_another_origin_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:8080"));
        assert!(same_site(&headers).is_ok());
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert_eq!(same_site(&headers).map_err(|e| e.status), Err(StatusCode::FORBIDDEN));
        headers.remove(header::ORIGIN);
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert_eq!(same_site(&headers).map_err(|e| e.status), Err(StatusCode::FORBIDDEN));
    }

    #[test]
    fn the_csrf_token_is_bound_to_the_session() {
        let token = csrf_of("cst_a_b");
        assert_ne!(token, csrf_of("cst_a_c"));
        let fields = vec![("csrf".to_owned(), token.clone())];
        assert!(check_token(&token, &fields).is_ok());
        assert!(check_token(&csrf_of("cst_a_c"), &fields).is_err());
        assert!(check_token(&token, &[]).is_err());
    }
}
