//! What the server answers: each operation's body, as the store builds it
//! or the server composes it, and as the command line reads it.

mod audit;
mod builds;
mod changes;
mod deploys;
mod error;
mod people;
mod projects;
mod report;

pub use audit::*;
pub use builds::*;
pub use changes::*;
pub use deploys::*;
pub use error::*;
pub use people::*;
pub use projects::*;
pub use report::*;

use serde::{Deserialize, Serialize};

/// One page of a list, and where the next one starts.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// The items on this page.
    pub items: Vec<T>,
    /// Pass as `after` to read the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<i64>,
}
