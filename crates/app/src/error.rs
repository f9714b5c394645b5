//! What a use case can fail with, for each entry point to render.

use custody_store::StoreError;

/// Why a use case did not complete.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The store refused or failed; it says which.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request cannot be carried out in the state things are in (a
    /// change that does not merge cleanly).
    #[error("{0}")]
    Conflict(String),
    /// Others kept winning a race; nothing was changed. Try again after
    /// `retry_after` seconds.
    #[error("{message}")]
    Busy {
        /// What happened.
        message: String,
        /// Seconds to wait.
        retry_after: u64,
    },
    /// The mainline's pipeline file does not read; it says why.
    #[error("{0}")]
    InvalidPipeline(String),
    /// This process cannot do it (it holds no gate key, say).
    #[error("{0}")]
    Unavailable(String),
    /// A release has no gate to pass: no pipeline file that governs it
    /// defines the environment, one does not read, or the mainline below it
    /// holds a commit custody recorded no merge of. It says which.
    #[error("{0}")]
    NoRelease(String),
    /// Reading or writing a repository failed; logged where it happened.
    #[error("{0}")]
    Repository(String),
}

impl AppError {
    /// A repository failure, logged with its cause; the caller is told
    /// only that the repository could not be read.
    pub(crate) fn repository(error: impl std::fmt::Display) -> AppError {
        tracing::error!(%error, "git");
        AppError::Repository("reading the repository failed".into())
    }
}
