//! What can go wrong, said so that the reader knows what to do.

use std::path::PathBuf;

use crate::Digest;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The stored bytes do not hash to the digest they are stored under.
    #[error(
        "blob sha256:{digest} is damaged: its bytes hash to sha256:{actual}; \
         do not use it; restore the blob from a backup, or remove it and build the artifact again"
    )]
    Damaged { digest: Digest, actual: Digest },

    #[error("blob sha256:{0} is not in the artifact store")]
    NotFound(Digest),

    #[error("{} is not a regular file (a symbolic link, directory or device); only regular files are stored", .0.display())]
    NotARegularFile(PathBuf),

    #[error("\"{0}\" is not a sha256 digest: write 64 hexadecimal characters, optionally after \"sha256:\"")]
    BadDigest(String),

    #[error("blob store \"{0}\" is not understood: write s3://BUCKET/PREFIX, file:///DIRECTORY or a directory path")]
    BadUrl(String),

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{what}: {source}")]
    Store {
        what: String,
        #[source]
        source: object_store::Error,
    },
}

impl BlobError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BlobError {
        let what = what.into();
        move |source| BlobError::Io { what, source }
    }

    pub(crate) fn store(what: impl Into<String>) -> impl FnOnce(object_store::Error) -> BlobError {
        let what = what.into();
        move |source| BlobError::Store { what, source }
    }
}
