//! A client of custody's JSON API.

use custody_api::{ErrorBody, Page};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::config::Credentials;
use crate::Failure;

/// The server and token client commands use.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client of `server`, presenting `token` when given.
    pub fn new(server: &str, token: Option<String>) -> Result<Client, Failure> {
        let base = server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::input(format!("server {server:?} must be a URL such as http://127.0.0.1:8080")));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("custody/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::internal(e.to_string()))?;
        Ok(Client { http, base, token })
    }

    /// The server from `--server`/`CUSTODY_SERVER` or `custody login`, and
    /// the token from `CUSTODY_TOKEN` or `custody login`.
    pub fn from_env(server: Option<String>) -> Result<Client, Failure> {
        let stored = Credentials::load()?;
        let server = server
            .or(stored.server)
            .ok_or_else(|| Failure::input("no server: run `custody login --server URL`, or set CUSTODY_SERVER"))?;
        let token = std::env::var("CUSTODY_TOKEN").ok().filter(|t| !t.is_empty()).or(stored.token);
        Client::new(&server, token)
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request and reads the JSON answer as `R` (a 204 reads as
    /// null). An answer of another shape is a failure that says so, never
    /// a field read as empty.
    pub async fn call<R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<R, Failure> {
        let text = self.send(method, path, body).await?;
        let text = if text.is_empty() { "null" } else { text.as_str() };
        serde_json::from_str(text).map_err(|e| Failure::internal(format!("the server's answer to {path} is not what this command line reads ({e}); is the server a different version?")))
    }

    /// Sends a request with the token; a server that cannot be reached is a failure.
    async fn request(&self, method: Method, path: &str, body: Option<&Value>) -> Result<reqwest::Response, Failure> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.map_err(|e| Failure {
            code: 3,
            message: format!("cannot reach custody at {}: {}", self.base, root_cause(&e)),
            body: None,
        })
    }

    /// Sends a request and returns the answer's text, or the failure it reports.
    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Result<String, Failure> {
        let response = self.request(method, path, body).await?;
        let status = response.status();
        let text = response.text().await.map_err(|e| Failure {
            code: 3,
            message: format!("the answer from {} broke off: {e}", self.base),
            body: None,
        })?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(failure_from(status, &text))
        }
    }

    /// GET of a body to be read a chunk at a time; a failure status is
    /// reported as the failure it says.
    pub async fn stream(&self, path: &str) -> Result<reqwest::Response, Failure> {
        let response = self.request(Method::GET, path, None).await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        Err(failure_from(status, &text))
    }

    /// GET of a text answer and the value of one of its headers.
    pub async fn text_with_header(&self, path: &str, name: &str) -> Result<(String, Option<String>), Failure> {
        let response = self.stream(path).await?;
        let value = response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let text = response.text().await.map_err(|e| Failure {
            code: 3,
            message: format!("the answer from {} broke off: {e}", self.base),
            body: None,
        })?;
        Ok((text, value))
    }

    /// GET.
    pub async fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R, Failure> {
        self.call(Method::GET, path, None).await
    }

    /// POST with no body of note.
    pub async fn post<R: DeserializeOwned>(&self, path: &str) -> Result<R, Failure> {
        self.call(Method::POST, path, Some(&Value::Null)).await
    }

    /// POST of one of the API's request types.
    pub async fn submit<R: DeserializeOwned>(&self, path: &str, request: &impl Serialize) -> Result<R, Failure> {
        self.submit_as(Method::POST, path, request).await
    }

    /// `method` with one of the API's request types as its body.
    pub async fn submit_as<R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        request: &impl Serialize,
    ) -> Result<R, Failure> {
        let body =
            serde_json::to_value(request).map_err(|e| Failure::internal(format!("cannot encode the request: {e}")))?;
        self.call(method, path, Some(&body)).await
    }

    /// Every item of a paginated list, following `next_cursor`.
    pub async fn list<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, Failure> {
        let mut items = Vec::new();
        let separator = if path.contains('?') { '&' } else { '?' };
        let mut after: Option<i64> = None;
        loop {
            let page_path = match after {
                Some(cursor) => format!("{path}{separator}limit=500&after={cursor}"),
                None => format!("{path}{separator}limit=500"),
            };
            let page: Page<T> = self.get(&page_path).await?;
            items.extend(page.items);
            match page.next_cursor {
                Some(cursor) => after = Some(cursor),
                None => return Ok(items),
            }
        }
    }
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Maps an error answer to an exit code and a message with every reason.
fn failure_from(status: StatusCode, text: &str) -> Failure {
    let body: Option<Value> = serde_json::from_str(text).ok();
    let error = body.clone().and_then(|b| serde_json::from_value::<ErrorBody>(b).ok()).map(|b| b.error);
    let message = match error {
        Some(error) if !error.reasons.is_empty() => {
            let mut message = "refused:".to_owned();
            for reason in &error.reasons {
                message.push_str(&format!("\n  - {} [{}]", reason.message, reason.rule));
                if let Some(satisfy) = &reason.satisfy {
                    message.push_str(&format!("\n    to satisfy: {satisfy}"));
                }
            }
            message
        }
        Some(error) => error.message,
        None => format!("the server answered {status}"),
    };
    let code = match status.as_u16() {
        401 | 403 | 429 => 1,
        400..=499 => 2,
        _ => 3,
    };
    Failure { code, message, body }
}

#[cfg(test)]
mod tests {
    /// Where `text` indexes a JSON value by a field name (`v["field"]`), by
    /// line; array literals (`["a", "b"]`) follow no name and are not.
    fn field_reads(text: &str) -> Vec<usize> {
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let bytes = code.as_bytes();
        (1..bytes.len().saturating_sub(1))
            .filter(|&i| bytes[i] == b'[' && bytes[i + 1] == b'"')
            .filter(|&i| bytes[i - 1].is_ascii_alphanumeric() || matches!(bytes[i - 1], b'_' | b']' | b')'))
            .map(|i| code[..i].matches('\n').count() + 1)
            .collect()
    }

    #[test]
    fn the_command_line_reads_every_answer_as_its_api_type_never_a_field_by_name() {
        assert_eq!(field_reads("let t = v[\"title\"].as_str();\nlet f = [\"a\", \"b\"];"), [1]);
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("the sources") {
            let path = entry.expect("an entry").path();
            if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("a source file");
                for line in field_reads(&text) {
                    found.push(format!("{}:{line}", path.display()));
                }
            }
        }
        assert!(found.is_empty(), "answers read as untyped JSON (use the custody-api type): {found:#?}");
    }
}
