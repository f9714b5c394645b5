//! `custody hook pre-receive|post-receive`: run by git inside
//! `receive-pack`, never by people. The hook reads the ref updates, lists
//! the commits they bring (the quarantined objects are visible here), and
//! asks the server, with this push's one-time capability, to decide or to
//! record. Whatever the server says goes to the pusher as `remote:` lines.

use std::io::BufReader;
use std::path::Path;

use clap::Subcommand;
use custody_git::hook::{self, CAPABILITY_VAR, URL_VAR};
use serde_json::{json, Value};

use crate::Failure;

#[derive(Subcommand, Debug)]
pub enum HookCommand {
    /// Decides a push before any ref moves.
    PreReceive,
    /// Records a push after its refs moved.
    PostReceive,
}

pub async fn run(command: HookCommand) -> Result<(), Failure> {
    let (Ok(url), Ok(capability)) = (std::env::var(URL_VAR), std::env::var(CAPABILITY_VAR)) else {
        return Err(Failure::input("`custody hook` is run by git during a push to custody, not by hand"));
    };
    let updates =
        hook::read_updates(BufReader::new(std::io::stdin().lock())).map_err(|e| Failure::internal(e.to_string()))?;
    let (path, body) = match command {
        HookCommand::PreReceive => {
            // No object larger than the instance allows lands, whatever the
            // pack's size.
            if let Some(max) = std::env::var(hook::MAX_OBJECT_VAR).ok().and_then(|v| v.parse::<u64>().ok()) {
                let oversized = hook::oversized_objects(Path::new("."), &updates, max)
                    .map_err(|e| Failure::internal(e.to_string()))?;
                if let Some((id, path, size)) = oversized.first() {
                    let what = if path.is_empty() { format!("object {id}") } else { format!("{path} ({id})") };
                    return Err(Failure {
                        code: 1,
                        message: format!(
                            "custody refused this push [push.object_size]: {what} is {size} bytes, and this instance \
                             takes objects of at most {max} bytes ({} too large in all); keep large files out of git \
                             (an artifact store, or git LFS elsewhere)",
                            oversized.len()
                        ),
                        body: None,
                    });
                }
            }
            let commits = hook::new_commits(Path::new("."), &updates).map_err(|e| Failure::internal(e.to_string()))?;
            ("/internal/hooks/pre-receive", json!({ "updates": updates, "commits": commits }))
        }
        HookCommand::PostReceive => ("/internal/hooks/post-receive", json!({ "updates": updates })),
    };
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{url}{path}"))
        .bearer_auth(capability)
        .json(&body)
        .send()
        .await
        .map_err(|e| Failure::internal(format!("custody could not decide this push: {e}")))?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let message = answer["error"]["message"].as_str().unwrap_or("the server refused the hook");
        return Err(Failure { code: 1, message: format!("custody refused this push: {message}"), body: None });
    }
    if answer["allowed"] == Value::Bool(false) {
        let lines: Vec<&str> =
            answer["message"].as_array().map(|m| m.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        return Err(Failure { code: 1, message: lines.join("\n"), body: None });
    }
    Ok(())
}
