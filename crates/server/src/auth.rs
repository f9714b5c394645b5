//! Authentication as an extractor, rate limits, and the JSON body extractor.
//!
//! A handler that takes [`Auth`] runs only for a valid token; one that takes
//! [`Body`] runs only for a well-formed JSON body of the expected shape.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine as _;
use custody_domain::Scope;
use custody_store::Authenticated;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::AppState;

/// The authenticated caller.
#[derive(Clone, Debug)]
pub struct Auth(pub Authenticated);

impl Auth {
    /// Refuses unless the token carries `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.0.has_scope(scope) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this token lacks the {scope} scope; create one with `custody token create --scope {scope}`"
            )))
        }
    }

    /// Refuses unless the caller may read everything (admins, auditors).
    pub fn require_overseer(&self) -> Result<(), ApiError> {
        self.require(Scope::Read)?;
        if self.0.reads_everything() {
            Ok(())
        } else {
            Err(ApiError::forbidden("only admins and auditors may read this"))
        }
    }
}

/// The token presented: `Authorization: Bearer TOKEN`, or HTTP Basic with
/// the token as the password (what git clients send).
pub(crate) fn presented_token(parts: &Parts) -> Result<Option<String>, ApiError> {
    let Some(value) = parts.headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| ApiError::unauthenticated("the Authorization header is not valid text"))?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Ok(Some(token.trim().to_owned()));
    }
    if let Some(encoded) = value.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| ApiError::unauthenticated("the Basic credentials are not valid base64 text"))?;
        let (_, password) =
            decoded.split_once(':').ok_or_else(|| ApiError::unauthenticated("Basic credentials must be USER:TOKEN"))?;
        return Ok(Some(password.to_owned()));
    }
    Err(ApiError::unauthenticated("use `Authorization: Bearer TOKEN`"))
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = presented_token(parts)?.ok_or_else(|| {
            ApiError::unauthenticated("this needs a token: send `Authorization: Bearer TOKEN` (see `custody login`)")
        })?;
        Ok(Auth(state.store().authenticate(&token).await?))
    }
}

/// A JSON request body. Malformed JSON, a wrong shape, unknown fields and
/// oversized bodies become clear 4xx errors.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // JSON is UTF-8: a body announced in another charset is refused
        // rather than read as if it were UTF-8.
        let content_type = req.headers().get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        if let Some(charset) = content_type.and_then(charset_of) {
            if !charset.eq_ignore_ascii_case("utf-8") && !charset.eq_ignore_ascii_case("utf8") {
                return Err(ApiError::new(
                    axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!("the body is announced as {charset}; send JSON as UTF-8 (charset=utf-8, or none)"),
                ));
            }
        }
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// The `charset` parameter of a `Content-Type`, if it names one.
fn charset_of(content_type: &str) -> Option<&str> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim().eq_ignore_ascii_case("charset").then(|| value.trim().trim_matches('"'))
    })
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let message = match &rejection {
        JsonRejection::JsonDataError(e) => format!("the JSON body has the wrong shape: {}", e.body_text()),
        JsonRejection::JsonSyntaxError(e) => format!("the body is not valid JSON: {}", e.body_text()),
        JsonRejection::MissingJsonContentType(_) => "send the body with `Content-Type: application/json`".to_owned(),
        _ if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
            format!("the body is larger than the limit of {} bytes", crate::BODY_LIMIT)
        }
        other => other.body_text(),
    };
    let code = match status {
        axum::http::StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ => "invalid_input",
    };
    ApiError::new(status, code, message)
}

/// Counts attempts per key in a sliding window and refuses past a limit.
pub struct RateLimiter {
    max: u32,
    window: Duration,
    hits: Mutex<HashMap<String, Vec<Instant>>>,
}

impl RateLimiter {
    /// At most `max` counted attempts per key within `window`.
    pub fn new(max: u32, window: Duration) -> Self {
        RateLimiter { max, window, hits: Mutex::new(HashMap::new()) }
    }

    /// Refuses if any of `keys` is over its limit, with the seconds to wait.
    pub fn check(&self, keys: &[String]) -> Result<(), ApiError> {
        let now = Instant::now();
        let mut hits = self.hits.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            if let Some(times) = hits.get_mut(key) {
                times.retain(|t| now.duration_since(*t) < self.window);
                if times.len() as u32 >= self.max {
                    let oldest = times[0];
                    let wait = self.window.saturating_sub(now.duration_since(oldest));
                    return Err(ApiError::rate_limited(wait.as_secs().max(1)));
                }
            }
        }
        Ok(())
    }

    /// Counts one attempt against each of `keys`.
    pub fn record(&self, keys: &[String]) {
        let now = Instant::now();
        let mut hits = self.hits.lock().unwrap_or_else(|e| e.into_inner());
        if hits.len() > 100_000 {
            // Forget keys whose attempts have all aged out, so the table
            // cannot grow without bound under a spray of sources.
            hits.retain(|_, times| times.last().is_some_and(|t| now.duration_since(*t) < self.window));
        }
        for key in keys {
            hits.entry(key.clone()).or_default().push(now);
        }
    }
}

/// How password sign-ins are throttled: by source, a hard limit (past it,
/// 429 with the seconds to wait); by name, a growing delay before the
/// password is checked, never a lockout, so that nobody can lock an owner
/// out of their account by failing on purpose from elsewhere.
pub struct LoginThrottle {
    sources: RateLimiter,
    names: Mutex<HashMap<String, Vec<Instant>>>,
    free: u32,
    base: Duration,
    window: Duration,
}

impl LoginThrottle {
    /// The longest a sign-in naming someone waits.
    pub const MOST: Duration = Duration::from_secs(8);

    /// `per_source` failures per source in `window`; a name's failures past
    /// `per_source` in the window delay each attempt naming it, from `base`
    /// doubling to [`LoginThrottle::MOST`].
    pub fn new(per_source: u32, window: Duration, base: Duration) -> Self {
        LoginThrottle {
            sources: RateLimiter::new(per_source, window),
            names: Mutex::new(HashMap::new()),
            free: per_source,
            base,
            window,
        }
    }

    /// Refuses a source past its limit.
    pub fn check_source(&self, source: IpAddr) -> Result<(), ApiError> {
        self.sources.check(&limit_keys(source, None))
    }

    /// How long an attempt naming `name` waits before its password is checked.
    pub fn delay(&self, name: &str) -> Duration {
        let now = Instant::now();
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        let Some(times) = names.get_mut(name) else { return Duration::ZERO };
        times.retain(|t| now.duration_since(*t) < self.window);
        slowdown(times.len() as u32, self.free, self.base)
    }

    /// Counts a failure against the source and, when given, the name.
    pub fn failed(&self, source: IpAddr, name: Option<&str>) {
        self.sources.record(&limit_keys(source, None));
        let Some(name) = name else { return };
        let now = Instant::now();
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if names.len() > 100_000 {
            names.retain(|_, times| times.last().is_some_and(|t| now.duration_since(*t) < self.window));
        }
        names.entry(name.to_owned()).or_default().push(now);
    }

    /// The owner got in: their name's failures are forgotten.
    pub fn succeeded(&self, name: &str) {
        self.names.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
    }
}

/// The delay after `failures` of a name: none for the first `free`, then
/// `base` doubling with each failure, up to [`LoginThrottle::MOST`].
pub fn slowdown(failures: u32, free: u32, base: Duration) -> Duration {
    match failures.checked_sub(free) {
        None => Duration::ZERO,
        Some(over) => base.saturating_mul(1u32 << over.min(16)).min(LoginThrottle::MOST),
    }
}

/// The keys an attempt from `source` naming `name` is counted under.
pub fn limit_keys(source: IpAddr, name: Option<&str>) -> Vec<String> {
    let mut keys = vec![format!("source:{source}")];
    if let Some(name) = name {
        keys.push(format!("name:{name}"));
    }
    keys
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{slowdown, LoginThrottle};

    #[test]
    fn a_names_failures_slow_it_down_to_a_bound_and_never_stop_it() {
        let base = Duration::from_millis(250);
        assert_eq!(slowdown(0, 10, base), Duration::ZERO);
        assert_eq!(slowdown(9, 10, base), Duration::ZERO);
        assert_eq!(slowdown(10, 10, base), base);
        assert_eq!(slowdown(12, 10, base), base * 4);
        assert_eq!(slowdown(1_000_000, 10, base), LoginThrottle::MOST);
        // The owner getting in forgets the name's failures.
        let throttle = LoginThrottle::new(1, Duration::from_secs(60), base);
        let source = std::net::IpAddr::from([127, 0, 0, 9]);
        throttle.failed(source, Some("alice"));
        throttle.failed(source, Some("alice"));
        assert_eq!(throttle.delay("alice"), base * 2);
        assert!(throttle.check_source(source).is_err());
        assert!(throttle.check_source(std::net::IpAddr::from([127, 0, 0, 1])).is_ok());
        throttle.succeeded("alice");
        assert_eq!(throttle.delay("alice"), Duration::ZERO);
    }
}
