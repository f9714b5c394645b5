//! The artifact store against real local files and a real S3-protocol server (moto) on loopback.

use std::path::{Path, PathBuf};

use custody_blobs::{BlobError, Blobs, Digest, Verdict};
use futures_util::StreamExt;
use object_store::ObjectStore;

/// Deterministic, incompressible-looking bytes.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Reads a blob through to its end: the bytes, or the error that ended the stream.
async fn download(blobs: &Blobs, digest: &Digest) -> Result<Vec<u8>, BlobError> {
    let mut reader = blobs.read(digest).await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = reader.next().await {
        bytes.extend_from_slice(&chunk?);
    }
    assert_eq!(bytes.len() as u64, reader.size());
    Ok(bytes)
}

async fn a_file_reads_back_byte_for_byte(blobs: &Blobs, len: usize) {
    let work = tempfile::tempdir().unwrap();
    let bytes = content(len, len as u64);
    let file = write(work.path(), "artifact.tar", &bytes);
    let ingested = blobs.ingest(&file).await.unwrap();
    assert_eq!(ingested.digest, Digest::of(&bytes));
    assert_eq!(ingested.size, len as u64);
    assert!(ingested.created);
    assert_eq!(blobs.size(&ingested.digest).await.unwrap(), Some(len as u64));
    assert_eq!(download(blobs, &ingested.digest).await.unwrap(), bytes);
    let copy = work.path().join("copy");
    assert_eq!(blobs.copy_to_file(&ingested.digest, &copy).await.unwrap(), len as u64);
    assert_eq!(std::fs::read(&copy).unwrap(), bytes);
    assert_eq!(blobs.verify(&ingested.digest).await.unwrap(), Verdict::Intact);
    assert_eq!(blobs.list().await.unwrap(), vec![(ingested.digest, len as u64)]);
}

/// The store's answers for a blob whose stored bytes no longer hash to its digest.
async fn an_altered_blob_is_refused(blobs: &Blobs, digest: Digest, altered: &[u8]) {
    let actual = Digest::of(altered);
    let err = download(blobs, &digest).await.unwrap_err();
    assert!(matches!(err, BlobError::Damaged { digest: d, actual: a } if d == digest && a == actual), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&format!("blob sha256:{digest} is damaged")), "{message}");
    assert!(message.contains(&format!("hash to sha256:{actual}")), "{message}");

    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("deploy.tar");
    let err = blobs.copy_to_file(&digest, &dest).await.unwrap_err();
    assert!(matches!(err, BlobError::Damaged { .. }), "{err:?}");
    assert!(!dest.exists(), "the partial download is removed");

    assert_eq!(blobs.verify(&digest).await.unwrap(), Verdict::Damaged { actual });
}

async fn a_missing_blob_is_not_found(blobs: &Blobs) {
    let digest = Digest::of(b"never stored");
    assert!(matches!(blobs.read(&digest).await, Err(BlobError::NotFound(d)) if d == digest));
    assert_eq!(blobs.size(&digest).await.unwrap(), None);
    assert_eq!(blobs.verify(&digest).await.unwrap(), Verdict::Missing);
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("x");
    let err = blobs.copy_to_file(&digest, &dest).await.unwrap_err();
    assert!(err.to_string().contains(&format!("blob sha256:{digest} is not in the artifact store")), "{err}");
    assert!(!dest.exists());
}

async fn concurrent_ingests_create_one_blob(blobs: &Blobs) {
    let work = tempfile::tempdir().unwrap();
    let bytes = content(12 << 20, 7);
    let files: Vec<_> = (0..8).map(|i| write(work.path(), &format!("copy{i}"), &bytes)).collect();
    let tasks = files.into_iter().map(|f| {
        let blobs = blobs.clone();
        tokio::spawn(async move { blobs.ingest(&f).await })
    });
    let results: Vec<_> = futures_util::future::join_all(tasks).await.into_iter().map(|r| r.unwrap()).collect();
    let created = results.iter().filter(|r| r.as_ref().unwrap().created).count();
    assert_eq!(created, 1, "{results:?}");
    assert_eq!(blobs.list().await.unwrap(), vec![(Digest::of(&bytes), bytes.len() as u64)]);
    assert_eq!(download(blobs, &Digest::of(&bytes)).await.unwrap(), bytes);
}

fn local_blob_path(root: &Path, digest: &Digest) -> PathBuf {
    let hex = digest.to_string();
    root.join("sha256").join(&hex[..2]).join(&hex)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_ingested_into_local_files_reads_back_byte_for_byte() {
    let root = tempfile::tempdir().unwrap();
    let blobs = Blobs::local(root.path()).unwrap();
    a_file_reads_back_byte_for_byte(&blobs, 100_000).await;
    let digest = blobs.list().await.unwrap()[0].0;
    assert!(local_blob_path(root.path(), &digest).is_file(), "stored at sha256/<2 hex>/<64 hex>");
    let staging = root.path().join("staging");
    assert_eq!(std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0), 0, "no staging file is left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mib_artifact_goes_to_local_files_in_parts_and_reads_back() {
    let root = tempfile::tempdir().unwrap();
    a_file_reads_back_byte_for_byte(&Blobs::local(root.path()).unwrap(), 20 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_file_is_a_blob_too() {
    let root = tempfile::tempdir().unwrap();
    a_file_reads_back_byte_for_byte(&Blobs::local(root.path()).unwrap(), 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_content_ingested_twice_locally_is_stored_once_and_never_overwritten() {
    use std::os::unix::fs::MetadataExt;
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let blobs = Blobs::local(root.path()).unwrap();
    let bytes = content(50_000, 1);
    let first = blobs.ingest(&write(work.path(), "a", &bytes)).await.unwrap();
    let stored = local_blob_path(root.path(), &first.digest);
    let inode = std::fs::metadata(&stored).unwrap().ino();
    let second = blobs.ingest(&write(work.path(), "b", &bytes)).await.unwrap();
    assert_eq!((second.digest, second.size, second.created), (first.digest, first.size, false));
    assert_eq!(std::fs::metadata(&stored).unwrap().ino(), inode, "the stored file is the first one");

    // Even an existing object with the wrong bytes is not replaced (the
    // store is create-only), and the ingest says it is damaged instead of
    // passing it off as this file's copy.
    std::fs::write(&stored, b"altered").unwrap();
    let third = blobs.ingest(&write(work.path(), "c", &bytes)).await.unwrap_err();
    assert!(matches!(third, BlobError::Damaged { digest, .. } if digest == first.digest), "{third}");
    assert_eq!(std::fs::read(&stored).unwrap(), b"altered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ingests_of_one_content_into_local_files_create_it_once() {
    let root = tempfile::tempdir().unwrap();
    concurrent_ingests_create_one_blob(&Blobs::local(root.path()).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_altered_on_disk_fails_its_download_naming_the_digest() {
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let blobs = Blobs::local(root.path()).unwrap();
    let mut bytes = content(1 << 20, 2);
    let digest = blobs.ingest(&write(work.path(), "a", &bytes)).await.unwrap().digest;
    bytes[654_321] ^= 1;
    std::fs::write(local_blob_path(root.path(), &digest), &bytes).unwrap();
    an_altered_blob_is_refused(&blobs, digest, &bytes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrub_of_the_store_reports_each_damaged_blob_and_only_those() {
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let blobs = Blobs::local(root.path()).unwrap();
    let mut digests = Vec::new();
    for i in 0..4 {
        let bytes = content(10_000 + i, i as u64);
        digests.push(blobs.ingest(&write(work.path(), &format!("f{i}"), &bytes)).await.unwrap().digest);
    }
    std::fs::write(local_blob_path(root.path(), &digests[1]), b"bit rot").unwrap();
    std::fs::write(local_blob_path(root.path(), &digests[3]), b"").unwrap();
    let mut expected: Vec<_> = digests.iter().map(|d| (*d, Verdict::Intact)).collect();
    expected[1].1 = Verdict::Damaged { actual: Digest::of(b"bit rot") };
    expected[3].1 = Verdict::Damaged { actual: Digest::of(b"") };
    expected.sort_by_key(|(d, _)| *d);
    assert_eq!(blobs.verify_all().await.unwrap(), expected);
}

#[test]
fn a_store_handle_and_a_blob_stream_can_cross_threads() {
    fn shared<T: Clone + Send + Sync + 'static>() {}
    fn sent<T: Send + 'static>() {}
    shared::<Blobs>();
    sent::<custody_blobs::BlobReader>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_truncated_on_disk_is_reported_damaged() {
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let blobs = Blobs::local(root.path()).unwrap();
    let bytes = content(300_000, 3);
    let digest = blobs.ingest(&write(work.path(), "a", &bytes)).await.unwrap().digest;
    std::fs::write(local_blob_path(root.path(), &digest), &bytes[..1000]).unwrap();
    an_altered_blob_is_refused(&blobs, digest, &bytes[..1000]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_local_blob_is_not_found_and_verifies_as_missing() {
    let root = tempfile::tempdir().unwrap();
    a_missing_blob_is_not_found(&Blobs::local(root.path()).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_a_directory_or_a_fifo_is_refused_as_an_artifact() {
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let blobs = Blobs::local(root.path()).unwrap();
    let secret = write(work.path(), "signing.key", b"secret");
    let link = work.path().join("artifact.tar");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let dir = work.path().join("out");
    std::fs::create_dir(&dir).unwrap();
    let fifo = work.path().join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for path in [&link, &dir, &fifo] {
        let err = blobs.ingest(path).await.unwrap_err();
        assert!(matches!(err, BlobError::NotARegularFile(ref p) if p == path), "{err:?}");
        assert!(err.to_string().contains("is not a regular file"), "{err}");
    }
    assert!(blobs.list().await.unwrap().is_empty());
    let err = blobs.ingest(&work.path().join("absent")).await.unwrap_err();
    assert!(err.to_string().starts_with("cannot open"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_shows_every_blob_with_its_size_and_nothing_else() {
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let blobs = Blobs::local(root.path()).unwrap();
    let mut expected = Vec::new();
    for i in 0..5 {
        let bytes = content(1000 * i + 1, i as u64);
        let ingested = blobs.ingest(&write(work.path(), &format!("f{i}"), &bytes)).await.unwrap();
        expected.push((ingested.digest, ingested.size));
    }
    std::fs::write(root.path().join("sha256").join("stray-file"), b"x").unwrap();
    expected.sort();
    assert_eq!(blobs.list().await.unwrap(), expected);
}

#[test]
fn a_store_is_named_by_a_url_or_a_path_and_a_bad_one_says_what_to_write() {
    let root = tempfile::tempdir().unwrap();
    let default = root.path().join("blobs");
    let none = Vec::<(String, String)>::new;

    let blobs = Blobs::from_url_and_vars("", &default, none()).unwrap();
    assert_eq!(blobs.describe(), format!("local files in {}", default.display()));
    assert!(default.is_dir());

    let other = root.path().join("other");
    let blobs = Blobs::from_url_and_vars(&format!("file://{}", other.display()), &default, none()).unwrap();
    assert_eq!(blobs.describe(), format!("local files in {}", other.display()));
    let plain = root.path().join("plain");
    let blobs = Blobs::from_url_and_vars(plain.to_str().unwrap(), &default, none()).unwrap();
    assert_eq!(blobs.describe(), format!("local files in {}", plain.display()));

    let vars = vec![
        ("AWS_ACCESS_KEY_ID".to_string(), "AKIDEXAMPLE".to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), "very-secret".to_string()),
        ("AWS_ENDPOINT_URL".to_string(), "http://127.0.0.1:9".to_string()),
        ("AWS_ALLOW_HTTP".to_string(), "true".to_string()),
    ];
    let blobs = Blobs::from_url_and_vars("s3://artifacts/custody/prod/", &default, vars).unwrap();
    assert_eq!(blobs.describe(), "s3://artifacts/custody/prod at http://127.0.0.1:9");
    assert!(!format!("{blobs:?}").contains("very-secret"));
    let digest = Digest::of(b"");
    assert_eq!(blobs.key(&digest), format!("custody/prod/sha256/e3/{digest}"));

    for bad in ["s3://", "s3:///prefix", "gs://bucket/x", "http://example/x", "file://relative"] {
        let err = Blobs::from_url_and_vars(bad, &default, none()).unwrap_err();
        assert!(matches!(err, BlobError::BadUrl(_)), "{bad}: {err:?}");
        assert!(err.to_string().contains("write s3://BUCKET/PREFIX, file:///DIRECTORY or a directory path"), "{err}");
    }
}

// The same stories against a real S3-protocol server.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_ingested_into_s3_reads_back_byte_for_byte() {
    let Some(moto) = custody_blobs::testing::moto() else { return };
    let local = tempfile::tempdir().unwrap();
    let blobs = moto.blobs("roundtrip", local.path()).await;
    a_file_reads_back_byte_for_byte(&blobs, 100_000).await;
    assert!(blobs.describe().starts_with("s3://roundtrip/artifacts at http://127.0.0.1:"), "{}", blobs.describe());
    let digest = blobs.list().await.unwrap()[0].0;
    let keys: Vec<String> = moto.raw("roundtrip").list(None).map(|m| m.unwrap().location.to_string()).collect().await;
    assert_eq!(keys, vec![format!("artifacts/sha256/{}/{digest}", &digest.to_string()[..2])], "no staging object left");
    assert_eq!(std::fs::read_dir(local.path()).unwrap().count(), 0, "nothing written locally");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mib_artifact_goes_to_s3_in_a_multipart_upload_and_reads_back() {
    let Some(moto) = custody_blobs::testing::moto() else { return };
    let local = tempfile::tempdir().unwrap();
    // Ingest uploads in 8 MiB parts: three here, the last one short.
    let blobs = moto.blobs("big", local.path()).await;
    a_file_reads_back_byte_for_byte(&blobs, 20 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_file_is_a_blob_in_s3_too() {
    let Some(moto) = custody_blobs::testing::moto() else { return };
    let local = tempfile::tempdir().unwrap();
    a_file_reads_back_byte_for_byte(&moto.blobs("empty", local.path()).await, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_content_ingested_twice_into_s3_is_stored_once_and_never_overwritten() {
    let Some(moto) = custody_blobs::testing::moto() else { return };
    let local = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let blobs = moto.blobs("twice", local.path()).await;
    let bytes = content(50_000, 1);
    let first = blobs.ingest(&write(work.path(), "a", &bytes)).await.unwrap();
    let second = blobs.ingest(&write(work.path(), "b", &bytes)).await.unwrap();
    assert_eq!((second.digest, second.size, second.created), (first.digest, first.size, false));

    // Even an existing object with the wrong bytes is not replaced, and the
    // ingest says it is damaged.
    let key = object_store::path::Path::parse(blobs.key(&first.digest)).unwrap();
    let raw = moto.raw("twice");
    raw.put(&key, b"altered".to_vec().into()).await.unwrap();
    let third = blobs.ingest(&write(work.path(), "c", &bytes)).await.unwrap_err();
    assert!(matches!(third, BlobError::Damaged { digest, .. } if digest == first.digest), "{third}");
    assert_eq!(raw.get(&key).await.unwrap().bytes().await.unwrap().as_ref(), b"altered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_create_only_copy_never_replaces_an_object_that_appeared_meanwhile() {
    let Some(moto) = custody_blobs::testing::moto() else { return };
    // The operation ingest relies on, against the server itself: a copy to an
    // existing key fails and leaves the key's bytes alone.
    moto.create_bucket("cas").await;
    let store = Blobs::from_url_and_vars("s3://cas", Path::new("unused"), moto.vars()).unwrap();
    let raw = moto.raw("cas");
    let (from, to) = (object_store::path::Path::from("staging/x"), object_store::path::Path::from("final"));
    raw.put(&from, b"new".to_vec().into()).await.unwrap();
    raw.put(&to, b"old".to_vec().into()).await.unwrap();
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("cas")
        .with_endpoint(&moto.endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("testing")
        .with_secret_access_key("testing-secret")
        .with_copy_if_not_exists(object_store::aws::S3CopyIfNotExists::Multipart)
        .build()
        .unwrap();
    let err = s3.copy_if_not_exists(&from, &to).await.unwrap_err();
    assert!(matches!(err, object_store::Error::AlreadyExists { .. }), "{err:?}");
    assert_eq!(raw.get(&to).await.unwrap().bytes().await.unwrap().as_ref(), b"old");
    s3.copy_if_not_exists(&from, &object_store::path::Path::from("fresh")).await.unwrap();
    assert_eq!(raw.get(&"fresh".into()).await.unwrap().bytes().await.unwrap().as_ref(), b"new");
    drop(store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ingests_of_one_content_into_s3_create_it_once() {
    let Some(moto) = custody_blobs::testing::moto() else { return };
    let local = tempfile::tempdir().unwrap();
    concurrent_ingests_create_one_blob(&moto.blobs("race", local.path()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_altered_in_the_bucket_fails_its_download_naming_the_digest() {
    let Some(moto) = custody_blobs::testing::moto() else { return };
    let local = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let blobs = moto.blobs("altered", local.path()).await;
    let mut bytes = content(1 << 20, 2);
    let digest = blobs.ingest(&write(work.path(), "a", &bytes)).await.unwrap().digest;
    bytes[4321] ^= 0x80;
    let key = object_store::path::Path::parse(blobs.key(&digest)).unwrap();
    moto.raw("altered").put(&key, bytes.clone().into()).await.unwrap();
    an_altered_blob_is_refused(&blobs, digest, &bytes).await;
    assert_eq!(blobs.verify_all().await.unwrap(), vec![(digest, Verdict::Damaged { actual: Digest::of(&bytes) })]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_blob_in_s3_is_not_found_and_verifies_as_missing() {
    let Some(moto) = custody_blobs::testing::moto() else { return };
    let local = tempfile::tempdir().unwrap();
    a_missing_blob_is_not_found(&moto.blobs("missing", local.path()).await).await;
}

/// The instance marker reads back as written, is not a blob, and is not
/// listed as one.
async fn the_marker_is_beside_the_blobs(blobs: &Blobs, work: &Path) {
    assert_eq!(blobs.marker().await.unwrap(), None, "a fresh store has no marker");
    let ingested = blobs.ingest(&write(work, "artifact", b"an artifact")).await.unwrap();
    blobs.write_marker(b"custody instance storage one\n").await.unwrap();
    assert_eq!(blobs.marker().await.unwrap().as_deref(), Some(&b"custody instance storage one\n"[..]));
    assert_eq!(blobs.list().await.unwrap(), vec![(ingested.digest, ingested.size)], "the marker is listed as a blob");
    let as_blob = Digest::of(b"custody instance storage one\n");
    assert_eq!(blobs.size(&as_blob).await.unwrap(), None, "the marker is served as a blob");
}

#[tokio::test]
async fn the_instance_marker_sits_beside_local_blobs_and_is_never_one() {
    let (root, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    the_marker_is_beside_the_blobs(&Blobs::local(root.path()).unwrap(), work.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_marker_sits_beside_the_blobs_in_s3_and_is_never_one() {
    let Some(moto) = custody_blobs::testing::moto() else { return };
    let (local, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    the_marker_is_beside_the_blobs(&moto.blobs("marker", local.path()).await, work.path()).await;
}
