//! The artifact blob store: content-addressed by sha256 and create-only.
//!
//! A blob is stored under `<prefix>/sha256/<first 2 hex>/<64 hex>` through
//! [`object_store`], in local files (the default) or in an S3-compatible
//! bucket. Ingest hashes while it streams the file into a staging object and
//! only then makes the final key exist with a create-only operation (a hard
//! link for local files, a multipart copy completed with `If-None-Match: *`
//! for S3), so an existing digest is never overwritten and a partial object
//! never appears under a final key. Local ingests are durable when they
//! return (file and directories fsynced). Every read re-hashes while
//! streaming and fails with [`BlobError::Damaged`], naming the digest, before
//! it would signal the end of a blob whose bytes do not match its name.
//!
//! Limits: Amazon S3 copies at most 5 GiB in one part, so on S3 an artifact
//! larger than that fails its ingest (with S3's error) rather than being
//! stored. On local files, only the last component of an ingested path is
//! refused if it is a symbolic link; the caller chooses the directories.
//!
//! **Architecture invariant:** this crate knows nothing about the database,
//! HTTP servers, people or policy. It stores and returns bytes by digest;
//! who may write (only the builder) is decided by its callers.

#![forbid(unsafe_code)]

mod digest;
mod error;
#[cfg(feature = "testing")]
pub mod testing;

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path as FsPath, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3CopyIfNotExists};
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::{GetResultPayload, ObjectStore, WriteMultipart};
use sha2::{Digest as _, Sha256};

pub use digest::Digest;
pub use error::BlobError;

/// Size of the parts an ingest reads, hashes and uploads to S3 (at least 5 MiB there).
const S3_PART: usize = 8 << 20;
/// Size of the parts an ingest reads, hashes and writes to a local file.
/// Measured (bench/ingest.sh): 1 MiB writes ingest 1 GiB two to three times
/// faster than 2 MiB or 8 MiB ones on the reference machine.
const LOCAL_PART: usize = 1 << 20;
/// How many bytes an ingest reads ahead of the upload.
const READ_AHEAD: usize = 16 << 20;
/// Size of the chunks a read of a local blob yields.
const READ_CHUNK: usize = 256 << 10;

/// The outcome of an ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    pub digest: Digest,
    pub size: u64,
    /// False when an intact blob of that digest was stored already; it was left untouched.
    pub created: bool,
}

/// The outcome of verifying one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Intact,
    Damaged { actual: Digest },
    Missing,
}

/// A handle on the blob store; cheap to clone.
#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// Set for local files: the same store, to reach the files for fsync.
    local: Option<Arc<LocalFileSystem>>,
    prefix: Key,
    description: String,
    /// Size of an ingest's parts.
    part: usize,
    /// Parts uploading at once during an ingest.
    concurrency: usize,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs").field("store", &self.description).finish()
    }
}

impl Blobs {
    /// Local files under `dir`, created if missing: the default store.
    pub fn local(dir: &FsPath) -> Result<Blobs, BlobError> {
        std::fs::create_dir_all(dir).map_err(BlobError::io(format!("cannot create {}", dir.display())))?;
        let fs = Arc::new(
            LocalFileSystem::new_with_prefix(dir)
                .map_err(BlobError::store(format!("cannot use {} for blobs", dir.display())))?,
        );
        Ok(Blobs {
            store: fs.clone(),
            local: Some(fs),
            prefix: Key::default(),
            description: format!("local files in {}", dir.display()),
            part: LOCAL_PART,
            concurrency: 2,
        })
    }

    /// The store named by `--blob-store`: `s3://BUCKET/PREFIX` (credentials,
    /// region and endpoint from the usual `AWS_*` environment variables),
    /// `file:///DIRECTORY`, a directory path, or the empty string for
    /// `local_default`.
    pub fn from_url(url: &str, local_default: &FsPath) -> Result<Blobs, BlobError> {
        Blobs::from_url_and_vars(url, local_default, std::env::vars())
    }

    /// [`Blobs::from_url`] with the variables given instead of the process
    /// environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL` (or
    /// `AWS_ENDPOINT`), `AWS_ALLOW_HTTP`, `AWS_COPY_IF_NOT_EXISTS`, ...
    pub fn from_url_and_vars(
        url: &str,
        local_default: &FsPath,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Blobs, BlobError> {
        let url = url.trim();
        if url.is_empty() {
            return Blobs::local(local_default);
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            return Blobs::s3(url, rest, vars);
        }
        if let Some(dir) = url.strip_prefix("file://") {
            if !dir.starts_with('/') {
                return Err(BlobError::BadUrl(url.to_string()));
            }
            return Blobs::local(FsPath::new(dir));
        }
        if url.contains("://") {
            return Err(BlobError::BadUrl(url.to_string()));
        }
        Blobs::local(FsPath::new(url))
    }

    fn s3(url: &str, rest: &str, vars: impl IntoIterator<Item = (String, String)>) -> Result<Blobs, BlobError> {
        let bad = || BlobError::BadUrl(url.to_string());
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        if bucket.is_empty() {
            return Err(bad());
        }
        let prefix = Key::parse(prefix).map_err(|_| bad())?;
        let mut builder = AmazonS3Builder::new();
        for (name, value) in vars {
            if name.starts_with("AWS_") {
                if let Ok(key) = name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                    builder = builder.with_config(key, value);
                }
            }
        }
        if builder.get_config_value(&AmazonS3ConfigKey::CopyIfNotExists).is_none() {
            // Amazon S3's own create-only copy: a multipart upload of one
            // copied part, completed with `If-None-Match: *`.
            builder = builder.with_copy_if_not_exists(S3CopyIfNotExists::Multipart);
        }
        let endpoint = builder.get_config_value(&AmazonS3ConfigKey::Endpoint);
        let store = builder
            .with_bucket_name(bucket)
            .build()
            .map_err(BlobError::store(format!("cannot use the S3 bucket of {url}")))?;
        let mut description =
            if prefix.as_ref().is_empty() { format!("s3://{bucket}") } else { format!("s3://{bucket}/{prefix}") };
        if let Some(endpoint) = endpoint {
            description.push_str(&format!(" at {endpoint}"));
        }
        Ok(Blobs { store: Arc::new(store), local: None, prefix, description, part: S3_PART, concurrency: 4 })
    }

    /// Where the blobs are, without secrets: "local files in DIR" or "s3://BUCKET/PREFIX".
    pub fn describe(&self) -> String {
        self.description.clone()
    }

    /// The object key of a digest: `<prefix>/sha256/<first 2 hex>/<64 hex>`.
    pub fn key(&self, digest: &Digest) -> String {
        self.key_of(digest).to_string()
    }

    fn key_of(&self, digest: &Digest) -> Key {
        let hex = digest.hex();
        self.prefix.child("sha256").child(&hex[..2]).child(hex.as_str())
    }

    /// Stores the regular file at `file` under its sha256, hashing while it
    /// streams. Durable when it returns. If a blob of that digest exists it is
    /// re-hashed and left as it is, and `created` is false; if it no longer
    /// holds those bytes the ingest fails with [`BlobError::Damaged`]. Symbolic links (at the last component of
    /// `file`), directories, FIFOs and devices are refused.
    ///
    /// The bytes go first to a staging object under `<prefix>/staging/`,
    /// deleted afterwards. An ingest cut short (the process killed, the future
    /// dropped) can leave a staging object or, on S3, an incomplete multipart
    /// upload behind, never a final key: a bucket lifecycle rule on
    /// `<prefix>/staging/` and on incomplete uploads clears those.
    pub async fn ingest(&self, file: &FsPath) -> Result<Ingested, BlobError> {
        let path = file.to_path_buf();
        let source = tokio::task::spawn_blocking(move || open_regular(&path)).await.expect("open does not panic")?;
        let staging = self.prefix.child("staging").child(random_name());
        let result = self.ingest_through(source, file, &staging).await;
        // The staging object is garbage whatever happened; a failure to
        // delete it only leaves garbage, never a wrong blob.
        let _ = self.store.delete(&staging).await;
        result
    }

    async fn ingest_through(&self, source: File, file: &FsPath, staging: &Key) -> Result<Ingested, BlobError> {
        let upload = self.store.put_multipart(staging).await.map_err(BlobError::store(format!(
            "cannot start storing {} in {}",
            file.display(),
            self.description
        )))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(READ_AHEAD / self.part);
        let path = file.to_path_buf();
        let part = self.part;
        let reading = tokio::task::spawn_blocking(move || read_and_hash(source, &path, part, tx));
        let mut upload_error = None;
        while let Some(part) = rx.recv().await {
            if let Err(e) = writer.wait_for_capacity(self.concurrency).await {
                upload_error = Some(e);
                break;
            }
            writer.put(part);
        }
        drop(rx);
        let read = reading.await.expect("reading does not panic");
        let stored = format!("cannot store {} in {}", file.display(), self.description);
        if let Some(e) = upload_error {
            let _ = writer.abort().await;
            return Err(BlobError::Store { what: stored, source: e });
        }
        let (digest, size) = match read {
            Ok(read) => read,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(e);
            }
        };
        writer.finish().await.map_err(BlobError::store(stored.clone()))?;
        if let Some(local) = &self.local {
            let staged = local.path_to_filesystem(staging).map_err(BlobError::store(stored.clone()))?;
            fsync(staged).await?;
        }

        let key = self.key_of(&digest);
        // On S3, looking first saves copying a blob that is there already.
        // Locally the create-only link is as cheap as the look, so it alone decides.
        let present = match &self.local {
            Some(_) => false,
            None => match self.store.head(&key).await {
                Ok(_) => true,
                Err(object_store::Error::NotFound { .. }) => false,
                Err(e) => return Err(BlobError::Store { what: stored, source: e }),
            },
        };
        let created = !present
            && match self.store.copy_if_not_exists(staging, &key).await {
                Ok(()) => true,
                Err(object_store::Error::AlreadyExists { .. }) => false,
                Err(e) => return Err(BlobError::Store { what: stored, source: e }),
            };
        if !created {
            // A blob stored already is kept only if it still holds these
            // bytes: a damaged one is never passed off as this file's copy.
            match self.verify(&digest).await? {
                Verdict::Intact => {}
                Verdict::Damaged { actual } => return Err(BlobError::Damaged { digest, actual }),
                Verdict::Missing => return Err(BlobError::NotFound(digest)),
            }
        }
        if let Some(local) = &self.local {
            // The new name and the directories on its way must survive a crash too.
            let blob = local.path_to_filesystem(&key).map_err(BlobError::store(stored))?;
            let root = local.path_to_filesystem(&self.prefix.child("sha256")).ok();
            let mut dir = blob.parent();
            while let Some(d) = dir {
                fsync(d.to_path_buf()).await?;
                if root.as_deref().is_none_or(|root| d == root) {
                    fsync(d.parent().unwrap_or(d).to_path_buf()).await?;
                    break;
                }
                dir = d.parent();
            }
        }
        Ok(Ingested { digest, size, created })
    }

    /// Writes the marker that ties this store to its instance: an object
    /// beside the blobs (`<prefix>/instance`), never listed or served as one.
    pub async fn write_marker(&self, content: &[u8]) -> Result<(), BlobError> {
        let key = self.prefix.child("instance");
        let payload = object_store::PutPayload::from(Bytes::copy_from_slice(content));
        self.store
            .put(&key, payload)
            .await
            .map_err(BlobError::store(format!("cannot write the instance marker in {}", self.description)))?;
        Ok(())
    }

    /// The marker [`Blobs::write_marker`] wrote, or `None` when there is none.
    pub async fn marker(&self) -> Result<Option<Vec<u8>>, BlobError> {
        let what = format!("cannot read the instance marker in {}", self.description);
        match self.store.get(&self.prefix.child("instance")).await {
            Ok(got) => Ok(Some(got.bytes().await.map_err(BlobError::store(what))?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(BlobError::Store { what, source: e }),
        }
    }

    /// The size of a stored blob, or `None` when there is none of that digest.
    pub async fn size(&self, digest: &Digest) -> Result<Option<u64>, BlobError> {
        match self.store.head(&self.key_of(digest)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(BlobError::Store { what: format!("cannot look up blob sha256:{digest}"), source: e }),
        }
    }

    /// Streams a blob, re-hashing it: the stream yields
    /// [`BlobError::Damaged`] instead of ending if the bytes do not hash to
    /// `digest`.
    pub async fn read(&self, digest: &Digest) -> Result<BlobReader, BlobError> {
        let what = format!("cannot read blob sha256:{digest}");
        let got = match self.store.get(&self.key_of(digest)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Err(BlobError::NotFound(*digest)),
            Err(e) => return Err(BlobError::Store { what, source: e }),
        };
        let size = got.meta.size;
        let inner = match got.payload {
            GetResultPayload::File(file, _) => chunks_of(file, what),
            GetResultPayload::Stream(stream) => {
                stream.map_err(move |source| BlobError::Store { what: what.clone(), source }).boxed()
            }
        };
        Ok(BlobReader { digest: *digest, size, inner, hasher: Some(Sha256::new()), held: None })
    }

    /// Writes a blob to `dest` (created or truncated), verified on the way.
    /// On any failure, a damaged blob included, `dest` is removed.
    pub async fn copy_to_file(&self, digest: &Digest, dest: &FsPath) -> Result<u64, BlobError> {
        let mut blob = self.read(digest).await?;
        let mut out =
            tokio::fs::File::create(dest).await.map_err(BlobError::io(format!("cannot create {}", dest.display())))?;
        let result = async {
            use tokio::io::AsyncWriteExt;
            let mut written = 0u64;
            while let Some(chunk) = blob.next().await {
                let chunk = chunk?;
                out.write_all(&chunk).await.map_err(BlobError::io(format!("cannot write {}", dest.display())))?;
                written += chunk.len() as u64;
            }
            out.flush().await.map_err(BlobError::io(format!("cannot write {}", dest.display())))?;
            Ok(written)
        }
        .await;
        drop(out);
        if result.is_err() {
            let _ = tokio::fs::remove_file(dest).await;
        }
        result
    }

    /// Reads a blob through and says whether it is intact.
    pub async fn verify(&self, digest: &Digest) -> Result<Verdict, BlobError> {
        let mut blob = match self.read(digest).await {
            Ok(blob) => blob,
            Err(BlobError::NotFound(_)) => return Ok(Verdict::Missing),
            Err(e) => return Err(e),
        };
        while let Some(chunk) = blob.next().await {
            match chunk {
                Ok(_) => {}
                Err(BlobError::Damaged { actual, .. }) => return Ok(Verdict::Damaged { actual }),
                Err(e) => return Err(e),
            }
        }
        Ok(Verdict::Intact)
    }

    /// Scrubs the store: reads every blob through and returns each one's
    /// verdict, in digest order. Damage is reported, not raised; an error
    /// means the store itself could not be listed or read.
    pub async fn verify_all(&self) -> Result<Vec<(Digest, Verdict)>, BlobError> {
        let mut verdicts = Vec::new();
        for (digest, _) in self.list().await? {
            verdicts.push((digest, self.verify(&digest).await?));
        }
        Ok(verdicts)
    }

    /// Every stored blob with its size, in digest order. Objects under the
    /// blob prefix whose names are not digests are left out.
    pub async fn list(&self) -> Result<Vec<(Digest, u64)>, BlobError> {
        let root = self.prefix.child("sha256");
        let mut listing = self.store.list(Some(&root));
        let mut found = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(BlobError::store(format!("cannot list the blobs in {}", self.description)))?;
            let parts: Vec<_> = meta.location.parts().collect();
            let [.., dir, name] = parts.as_slice() else { continue };
            let Ok(digest) = name.as_ref().parse::<Digest>() else { continue };
            let canonical = digest.hex();
            if name.as_ref() == canonical && dir.as_ref() == &canonical[..2] {
                found.push((digest, meta.size));
            }
        }
        found.sort();
        Ok(found)
    }
}

/// A blob being read: a stream of its bytes, re-hashed on the way.
///
/// When the bytes are all read and do not hash to the digest, the last item
/// is `Err(BlobError::Damaged)` instead of the end of the stream: a consumer
/// that stops at the first error never mistakes a damaged blob for a whole one.
/// The last byte read is held back until the hash is checked, so that a
/// damaged blob never reaches its consumer whole, even one that ignores the
/// error (an HTTP client counting bytes against `Content-Length`).
pub struct BlobReader {
    digest: Digest,
    size: u64,
    inner: BoxStream<'static, Result<Bytes, BlobError>>,
    hasher: Option<Sha256>,
    held: Option<Bytes>,
}

impl BlobReader {
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The size the store reports for the blob.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Stream for BlobReader {
    type Item = Result<Bytes, BlobError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            let Some(hasher) = this.hasher.as_mut() else {
                // Checked: what was held back is whole.
                return Poll::Ready(this.held.take().map(Ok));
            };
            match this.inner.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(mut chunk))) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    hasher.update(&chunk);
                    // Sends everything but the last byte read so far.
                    let last = chunk.split_off(chunk.len() - 1);
                    let before = match this.held.replace(last) {
                        Some(held) => [held, chunk].concat().into(),
                        None => chunk,
                    };
                    if !before.is_empty() {
                        return Poll::Ready(Some(Ok(before)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.hasher = None;
                    this.held = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    let hasher = this.hasher.take().expect("checked above");
                    let actual = Digest::from_bytes(hasher.finalize().into());
                    if actual != this.digest {
                        this.held = None;
                        return Poll::Ready(Some(Err(BlobError::Damaged { digest: this.digest, actual })));
                    }
                }
            }
        }
    }
}

/// Opens `path` for reading only if it is a regular file, not following a
/// symbolic link at its last component and not blocking on a FIFO.
fn open_regular(path: &FsPath) -> Result<File, BlobError> {
    let file =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).map_err(
            |e| match e.raw_os_error() {
                Some(libc::ELOOP) => BlobError::NotARegularFile(path.to_path_buf()),
                _ => BlobError::Io { what: format!("cannot open {}", path.display()), source: e },
            },
        )?;
    let meta = file.metadata().map_err(BlobError::io(format!("cannot inspect {}", path.display())))?;
    if !meta.is_file() {
        return Err(BlobError::NotARegularFile(path.to_path_buf()));
    }
    Ok(file)
}

/// Reads `file` in parts of `part` bytes, hashing each and sending it on.
/// The part buffers are reused once the upload has dropped them.
fn read_and_hash(
    mut file: File,
    path: &FsPath,
    part: usize,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) -> Result<(Digest, u64), BlobError> {
    let pool: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        let mut buf = pool.lock().expect("pool lock").pop().unwrap_or_else(|| vec![0; part]);
        let mut filled = 0;
        while filled < part {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(BlobError::Io { what: format!("cannot read {}", path.display()), source: e }),
            }
        }
        if filled == 0 {
            break;
        }
        hasher.update(&buf[..filled]);
        size += filled as u64;
        let chunk = Bytes::from_owner(Pooled { buf, len: filled, pool: pool.clone() });
        if tx.blocking_send(chunk).is_err() {
            // The upload stopped; its error is the one to report.
            return Err(BlobError::Io {
                what: format!("cannot store {}", path.display()),
                source: std::io::Error::other("the upload stopped"),
            });
        }
        if filled < part {
            break;
        }
    }
    Ok((Digest::from_bytes(hasher.finalize().into()), size))
}

/// A part buffer that goes back to its pool when the upload is done with it.
struct Pooled {
    buf: Vec<u8>,
    len: usize,
    pool: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Ok(mut pool) = self.pool.lock() {
            pool.push(std::mem::take(&mut self.buf));
        }
    }
}

/// A local blob file as a stream of chunks, read to its end (whatever size
/// it had when opened) on a blocking thread that stays a few chunks ahead, so
/// that reading the next chunk overlaps hashing this one.
fn chunks_of(mut file: File, what: String) -> BoxStream<'static, Result<Bytes, BlobError>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, BlobError>>(4);
    tokio::task::spawn_blocking(move || loop {
        let mut buf = vec![0; READ_CHUNK];
        let mut filled = 0;
        let end = loop {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break true,
                Ok(n) => {
                    filled += n;
                    if filled == READ_CHUNK {
                        break false;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(BlobError::Io { what, source: e }));
                    return;
                }
            }
        };
        buf.truncate(filled);
        // A closed channel means the reader was dropped: stop reading.
        if (filled > 0 && tx.blocking_send(Ok(Bytes::from(buf))).is_err()) || end {
            return;
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }).boxed()
}

async fn fsync(path: PathBuf) -> Result<(), BlobError> {
    tokio::task::spawn_blocking(move || {
        File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(BlobError::io(format!("cannot make {} durable", path.display())))
    })
    .await
    .expect("fsync does not panic")
}

fn random_name() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reader_of_a_damaged_blob_never_yields_all_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::local(&dir.path().join("blobs")).unwrap();
        let file = dir.path().join("app.tar.gz");
        std::fs::write(&file, vec![7u8; 300_000]).unwrap();
        let stored = blobs.ingest(&file).await.unwrap();
        let mut whole = Vec::new();
        let mut reader = blobs.read(&stored.digest).await.unwrap();
        while let Some(chunk) = reader.next().await {
            whole.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(whole.len(), 300_000, "a sound blob comes whole");
        let path = dir.path().join("blobs").join(blobs.key(&stored.digest));
        let mut altered = vec![7u8; 300_000];
        altered[150_000] = 8;
        std::fs::write(&path, &altered).unwrap();
        let mut reader = blobs.read(&stored.digest).await.unwrap();
        let mut received = 0;
        let mut ended = None;
        while let Some(chunk) = reader.next().await {
            match chunk {
                Ok(bytes) => received += bytes.len(),
                Err(error) => ended = Some(error),
            }
        }
        assert!(matches!(ended, Some(BlobError::Damaged { .. })), "{ended:?}");
        assert!(received < altered.len(), "all {received} bytes of a damaged blob were handed out");
    }

    #[tokio::test]
    async fn an_ingest_never_passes_off_a_damaged_blob_as_its_copy() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::local(&dir.path().join("blobs")).unwrap();
        let file = dir.path().join("app.tar.gz");
        std::fs::write(&file, b"the artifact").unwrap();
        let first = blobs.ingest(&file).await.unwrap();
        assert!(first.created);
        let again = blobs.ingest(&file).await.unwrap();
        assert_eq!((again.digest, again.created), (first.digest, false));

        let stored = dir.path().join("blobs").join(blobs.key(&first.digest));
        std::fs::write(&stored, b"the artifacT").unwrap();
        let refused = blobs.ingest(&file).await.unwrap_err();
        assert!(matches!(refused, BlobError::Damaged { digest, .. } if digest == first.digest), "{refused}");
        assert_eq!(std::fs::read(&stored).unwrap(), b"the artifacT", "the damaged blob is left for inspection");

        // Once it is removed, the next ingest stores the bytes anew.
        std::fs::remove_file(&stored).unwrap();
        assert!(blobs.ingest(&file).await.unwrap().created);
        assert_eq!(blobs.verify(&first.digest).await.unwrap(), Verdict::Intact);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("blobs").join("staging"))
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
