//! A real S3-protocol server on loopback for tests (feature `testing`):
//! moto's server, one per test.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Blobs;

/// A running moto server, stopped when dropped.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto's server (what `python3 -m moto.server` runs) handling one request at
/// a time. Threaded, as `moto.server` starts it, moto checks a conditional
/// write's `If-None-Match: *` and then writes in two steps without a lock, so
/// two racing writes can both pass; S3 makes that check and the write one
/// atomic step, and one request at a time is what gives moto the same
/// guarantee. (Single-threaded, the server also answers with HTTP/1.0 and
/// closes each connection, so one client cannot hold it.)
const SERVE: &str = "
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
run_simple('127.0.0.1', int(sys.argv[1]), DomainDispatcherApplication(create_backend_app), threaded=False)
";

/// Starts moto's S3 server on a free loopback port; a test without it fails
/// and names `scripts/setup`.
pub fn moto() -> Option<Moto> {
    let present = Command::new("python3")
        .args(["-c", "import moto.server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(present, "moto's S3 server is not installed: run scripts/setup");
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("python3")
        .args(["-c", SERVE, &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto");
    let moto = Moto { child, endpoint: format!("http://127.0.0.1:{port}") };
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "moto did not start listening on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(moto)
}

impl Moto {
    /// The AWS_* variables that point a client at this server.
    pub fn vars(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing-secret"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Creates a bucket.
    pub async fn create_bucket(&self, bucket: &str) {
        let response = reqwest::Client::new().put(format!("{}/{bucket}", self.endpoint)).send().await.unwrap();
        assert!(response.status().is_success(), "creating bucket {bucket}: {}", response.status());
    }

    /// A blob store in a new bucket, under a prefix.
    pub async fn blobs(&self, bucket: &str, unused_local: &Path) -> Blobs {
        self.create_bucket(bucket).await;
        Blobs::from_url_and_vars(&format!("s3://{bucket}/artifacts"), unused_local, self.vars()).unwrap()
    }

    /// A plain S3 client on the same bucket, for changing objects behind the store's back.
    pub fn raw(&self, bucket: &str) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing-secret")
            .build()
            .unwrap()
    }
}
