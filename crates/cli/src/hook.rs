//! `custody hook pre-receive|post-receive`: run by git inside
//! `receive-pack`, never by people. The hook reads the ref updates, lists
//! the commits they bring (the quarantined objects are visible here), and
//! asks the server, with this push's one-time capability, to decide or to
//! record. Whatever the server says goes to the pusher as `remote:` lines.

use std::io::BufReader;
use std::path::Path;

use clap::Subcommand;
use custody_domain::RefUpdate;
use custody_git::hook::{self, CAPABILITY_VAR, URL_VAR};
use custody_server::git::{HookAnswer, PostReceive, PreReceive};
use serde::Serialize;

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
    match command {
        HookCommand::PreReceive => {
            let push = PreReceive { commits: pushed_commits(&updates)?, updates };
            let answer = send(&url, &capability, "/internal/hooks/pre-receive", &push).await?;
            decided(&answer)
        }
        HookCommand::PostReceive => {
            send(&url, &capability, "/internal/hooks/post-receive", &PostReceive { updates }).await?;
            Ok(())
        }
    }
}

/// The commits the updates bring in, once no object is larger than the
/// instance allows, whatever the pack's size.
fn pushed_commits(updates: &[RefUpdate]) -> Result<Vec<custody_domain::project::PushedCommit>, Failure> {
    if let Some(max) = std::env::var(hook::MAX_OBJECT_VAR).ok().and_then(|v| v.parse::<u64>().ok()) {
        let oversized =
            hook::oversized_objects(Path::new("."), updates, max).map_err(|e| Failure::internal(e.to_string()))?;
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
    hook::new_commits(Path::new("."), updates).map_err(|e| Failure::internal(e.to_string()))
}

/// Presents the push to the server with its capability; the answer's text,
/// or the refusal it says.
async fn send(url: &str, capability: &str, path: &str, push: &impl Serialize) -> Result<String, Failure> {
    let response = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .bearer_auth(capability)
        .json(push)
        .send()
        .await
        .map_err(|e| Failure::internal(format!("custody could not decide this push: {e}")))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        let answer = serde_json::from_str::<custody_api::ErrorBody>(&text).ok();
        let message = answer.map_or_else(|| "the server refused the hook".to_owned(), |a| a.error.message);
        return Err(Failure { code: 1, message: format!("custody refused this push: {message}"), body: None });
    }
    Ok(text)
}

/// The pre-receive decision: the push goes on, or the pusher reads why not.
/// An answer that says neither refuses it.
fn decided(text: &str) -> Result<(), Failure> {
    let answer: HookAnswer = serde_json::from_str(text)
        .map_err(|e| Failure::internal(format!("custody could not decide this push: {e}")))?;
    if !answer.allowed {
        return Err(Failure { code: 1, message: answer.message.join("\n"), body: None });
    }
    Ok(())
}
