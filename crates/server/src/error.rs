//! API errors: `{"error": {"code", "message", "reasons"?}}` with a fitting status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use custody_api::{ErrorBody, ErrorDetail};
use custody_app::AppError;
use custody_domain::Reason;
use custody_store::StoreError;

/// An error as the API returns it.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, machine-readable code.
    pub code: &'static str,
    /// What happened and what to do, for people.
    pub message: String,
    /// The rules that refused, when a decision did.
    pub reasons: Vec<Reason>,
    /// Seconds to wait before trying again: rate limits, and failures that
    /// are not the request's (the database unreachable or full, a race).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), reasons: Vec::new(), retry_after: None }
    }

    /// The same error, telling the client to try again in `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 400: the request is malformed or breaks an input rule.
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_input", message)
    }

    /// 401: no valid credentials.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    /// 403: authenticated, but not allowed.
    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 500: something on the server failed; logged, and said.
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!(%message, "internal error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// 404: nothing by that name.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 429, with how long to wait.
    pub fn rate_limited(retry_after: u64) -> Self {
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many attempts; try again in {retry_after} s"),
        );
        error.retry_after = Some(retry_after);
        error
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Refused(decision) => {
                let mut api = ApiError::new(StatusCode::FORBIDDEN, "refused", format!("refused: {decision}"));
                api.reasons = decision.reasons;
                api
            }
            StoreError::NotFound { .. } => ApiError::not_found(error.to_string()),
            StoreError::Conflict(message) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            StoreError::TargetMoved | StoreError::FactsMoved => {
                ApiError::new(StatusCode::CONFLICT, "conflict", error.to_string())
            }
            StoreError::Invalid(invalid) => ApiError::invalid(invalid.to_string()),
            StoreError::Unauthenticated(message) => ApiError::unauthenticated(message),
            StoreError::Unavailable(_) | StoreError::Closed => {
                tracing::error!(%error, "store unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is unavailable; nothing was changed; try again shortly",
                )
                .retry_after(2)
            }
            StoreError::Database(_) if error.is_transient() => {
                tracing::error!(%error, "the database could not write");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database could not take the write (unreachable, full or busy); nothing was changed; \
                     try again shortly",
                )
                .retry_after(2)
            }
            StoreError::Tampered(what) => {
                // Not the caller's fault, and nothing was done: the writer
                // stops until an operator looks.
                tracing::error!(%what, "the database was changed around custody; refusing to write");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "tampered",
                    format!("the database was changed around custody, so nothing is written until an operator looks: {what}"),
                )
            }
            StoreError::Database(_) | StoreError::Corrupt(_) => {
                tracing::error!(%error, "store failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; the server log has the details",
                )
            }
        }
    }
}

impl From<AppError> for ApiError {
    fn from(error: AppError) -> Self {
        match error {
            AppError::Store(error) => error.into(),
            AppError::Conflict(message) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            AppError::InvalidPipeline(message) => ApiError::new(StatusCode::CONFLICT, "invalid_pipeline", message),
            AppError::Busy { message, retry_after } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message).retry_after(retry_after)
            }
            AppError::Unavailable(message) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message),
            AppError::NoRelease(message) => ApiError::new(StatusCode::CONFLICT, "no_environment", message),
            AppError::Repository(message) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        }
    }
}

impl From<custody_domain::InvalidInput> for ApiError {
    fn from(error: custody_domain::InvalidInput) -> Self {
        ApiError::invalid(error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_client_error() {
            tracing::debug!(status = self.status.as_u16(), code = self.code, message = %self.message, "request refused");
        }
        let body = ErrorBody {
            error: ErrorDetail { code: self.code.to_owned(), message: self.message, reasons: self.reasons },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"custody\", Basic realm=\"custody\""),
            );
        }
        if let Some(seconds) = self.retry_after {
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// A result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
