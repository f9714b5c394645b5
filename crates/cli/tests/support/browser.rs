//! A real headless Chromium, driven over WebDriver by the system's
//! `chromedriver` on loopback: open a page, find elements by CSS selector,
//! click, type, read text and attributes, read cookies, take screenshots.
//!
//! With `CI=true` a missing browser fails the test; elsewhere it is skipped
//! with a message, like PostgreSQL and bubblewrap.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

/// The key under which WebDriver names an element.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// A headless Chromium with its own fresh profile, and the chromedriver
/// driving it; both end when this is dropped.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a browser; a test without them fails and
    /// names `scripts/setup`.
    pub fn start() -> Option<Browser> {
        let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"]);
        let driver = find_program(&["chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            panic!("chromium and chromedriver are not installed: run scripts/setup");
        };
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut browser = Browser { driver: child, base, session: String::new(), _profile: profile };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && browser.raw("GET", "/status", None)["value"]["ready"] == true;
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--no-first-run".to_owned(),
            "--window-size=1280,1000".to_owned(),
            format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let made = browser.raw(
            "POST",
            "/session",
            Some(json!({ "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": { "binary": chromium.to_string_lossy(), "args": args },
            }}})),
        );
        browser.session =
            made["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {made}")).to_owned();
        Some(browser)
    }

    /// One WebDriver request. chromedriver keeps connections open, so the
    /// answer is read by its `Content-Length`, not to the connection's end.
    fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let authority = self.base.trim_start_matches("http://");
        let mut stream = TcpStream::connect(authority).expect("connect to chromedriver");
        stream.set_read_timeout(Some(Duration::from_secs(90))).expect("read timeout");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("send to chromedriver");
        let mut reader = BufReader::new(stream);
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("read chromedriver's answer");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().expect("a length");
                }
            }
        }
        let mut answer = vec![0; length];
        reader.read_exact(&mut answer).expect("read chromedriver's answer");
        serde_json::from_slice(&answer)
            .unwrap_or_else(|e| panic!("chromedriver answered {} ({e})", String::from_utf8_lossy(&answer)))
    }

    /// A WebDriver command of this session; panics with the driver's error.
    #[track_caller]
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let answer = self.raw(method, &format!("/session/{}{path}", self.session), body);
        if let Some(error) = answer["value"]["error"].as_str() {
            panic!("WebDriver {method} {path}: {error}: {}", answer["value"]["message"]);
        }
        answer["value"].clone()
    }

    /// The text of an open alert, prompt or confirm dialog; `None` when no
    /// dialog is open.
    pub fn alert_text(&self) -> Option<String> {
        let answer = self.raw("GET", &format!("/session/{}/alert/text", self.session), None);
        match answer["value"]["error"].as_str() {
            Some("no such alert") => None,
            Some(error) => Some(format!("{error}: {}", answer["value"]["message"])),
            None => Some(answer["value"].as_str().unwrap_or_default().to_owned()),
        }
    }

    /// Opens `url` and waits for it to load.
    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// The current URL.
    pub fn url(&self) -> String {
        self.call("GET", "/url", None).as_str().unwrap_or_default().to_owned()
    }

    /// The page's title.
    pub fn title(&self) -> String {
        self.call("GET", "/title", None).as_str().unwrap_or_default().to_owned()
    }

    fn try_find(&self, css: &str) -> Option<String> {
        let answer = self.raw(
            "POST",
            &format!("/session/{}/element", self.session),
            Some(json!({ "using": "css selector", "value": css })),
        );
        answer["value"][ELEMENT].as_str().map(str::to_owned)
    }

    /// Whether an element matches `css`.
    pub fn exists(&self, css: &str) -> bool {
        self.try_find(css).is_some()
    }

    /// The element matching `css`; panics with the page's text when none does.
    #[track_caller]
    pub fn find(&self, css: &str) -> String {
        self.try_find(css).unwrap_or_else(|| panic!("no element {css} on {}:\n{}", self.url(), self.source()))
    }

    /// Clicks the element matching `css` (a link or a form's button) and
    /// waits until the page it leads to has loaded.
    #[track_caller]
    pub fn click(&self, css: &str) {
        let element = self.find(css);
        self.execute("window.custodyPageBeforeClick = true;", json!([]));
        self.call("POST", &format!("/element/{element}/click"), Some(json!({})));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let loaded = self.execute(
                "return window.custodyPageBeforeClick === undefined && document.readyState === 'complete';",
                json!([]),
            );
            if loaded == true {
                return;
            }
            assert!(Instant::now() < deadline, "clicking {css} led to no new page: {}", self.url());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Clicks the element matching `css` where it is, without leaving the
    /// page (a `<summary>` opening its details, a checkbox).
    #[track_caller]
    pub fn click_here(&self, css: &str) {
        let element = self.find(css);
        self.call("POST", &format!("/element/{element}/click"), Some(json!({})));
    }

    /// Types `text` into the element matching `css`.
    #[track_caller]
    pub fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css);
        self.call("POST", &format!("/element/{element}/clear"), Some(json!({})));
        self.call("POST", &format!("/element/{element}/value"), Some(json!({ "text": text })));
    }

    /// The rendered text of the element matching `css`.
    #[track_caller]
    pub fn text(&self, css: &str) -> String {
        let element = self.find(css);
        self.call("GET", &format!("/element/{element}/text"), None).as_str().unwrap_or_default().to_owned()
    }

    /// The page's HTML as the browser holds it.
    pub fn source(&self) -> String {
        self.call("GET", "/source", None).as_str().unwrap_or_default().to_owned()
    }

    /// The whole page's rendered text.
    pub fn body_text(&self) -> String {
        match self.try_find("body") {
            Some(element) => {
                let answer = self.raw("GET", &format!("/session/{}/element/{element}/text", self.session), None);
                answer["value"].as_str().unwrap_or_default().to_owned()
            }
            None => String::new(),
        }
    }

    /// An attribute of the element matching `css`.
    #[track_caller]
    pub fn attribute(&self, css: &str, name: &str) -> Option<String> {
        let element = self.find(css);
        self.call("GET", &format!("/element/{element}/attribute/{name}"), None).as_str().map(str::to_owned)
    }

    /// Whether the element matching `css` is enabled.
    #[track_caller]
    pub fn enabled(&self, css: &str) -> bool {
        let element = self.find(css);
        self.call("GET", &format!("/element/{element}/enabled"), None) == true
    }

    /// Runs a script in the page (what a visitor could do with the
    /// browser's developer tools), with `args`.
    pub fn execute(&self, script: &str, args: Value) -> Value {
        self.call("POST", "/execute/sync", Some(json!({ "script": script, "args": args })))
    }

    /// Runs `script` in the page until it calls its last argument: what it
    /// passed.
    pub fn execute_async(&self, script: &str, args: Value) -> Value {
        self.call("POST", "/execute/async", Some(json!({ "script": script, "args": args })))
    }

    /// Every cookie the browser holds for the page, HttpOnly ones included.
    pub fn cookies(&self) -> Vec<Value> {
        self.call("GET", "/cookie", None).as_array().cloned().unwrap_or_default()
    }

    /// The cookie `name`, if the browser holds it.
    pub fn cookie(&self, name: &str) -> Option<Value> {
        self.cookies().into_iter().find(|c| c["name"] == name)
    }

    /// Sets the window's size.
    pub fn resize(&self, width: u32, height: u32) {
        self.call("POST", "/window/rect", Some(json!({ "width": width, "height": height })));
    }

    /// Saves what the window shows as a PNG.
    pub fn screenshot(&self, file: &Path) {
        let encoded = self.call("GET", "/screenshot", None);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap_or_default())
            .expect("a base64 PNG");
        assert!(bytes.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        std::fs::write(file, bytes).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Ends the browser; a driver that is already gone must not turn
            // a failing test's panic into an abort.
            let path = format!("/session/{}", self.session);
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.raw("DELETE", &path, None)));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
