//! What a connection may cost the server: clients that trickle headers or
//! bodies, hold idle connections or open too many are cut off or refused,
//! while a slow but steady push still lands and `/healthz` keeps answering.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use support::hosted::Hosted;
use support::{Sandbox, Server};

/// A connection to the server from the loopback address `source`
/// (127.0.0.x: every one of them reaches a server on 127.0.0.1).
fn connect_from(source: &str, server: &Server) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.bind(format!("{source}:0").parse().expect("an address")).expect("bind the source address");
        let target: SocketAddr = format!("127.0.0.1:{}", server.port()).parse().expect("an address");
        socket.connect(target).await.expect("connect")
    });
    let stream = stream.into_std().expect("a std stream");
    stream.set_nonblocking(false).expect("blocking");
    stream
}

/// Waits up to `limit` for the server to close `stream`: how long it took,
/// and everything it sent meanwhile.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<(Duration, String)> {
    let started = Instant::now();
    let mut received = Vec::new();
    stream.set_read_timeout(Some(Duration::from_millis(50))).expect("a read timeout");
    let mut chunk = [0u8; 4096];
    while started.elapsed() < limit {
        match stream.read(&mut chunk) {
            Ok(0) => return Some((started.elapsed(), String::from_utf8_lossy(&received).into_owned())),
            Ok(read) => received.extend_from_slice(&chunk[..read]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some((started.elapsed(), String::from_utf8_lossy(&received).into_owned())),
        }
    }
    None
}

/// A GET of `/healthz` on its own connection from `source`: the status line
/// and headers and body as one text.
fn healthz_from(source: &str, server: &Server) -> String {
    let mut stream = connect_from(source, server);
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: custody\r\nConnection: close\r\n\r\n").expect("send");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("a read timeout");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// A connection from `source` that was answered 200 and is kept alive.
fn served_and_kept(source: &str, server: &Server) -> Option<TcpStream> {
    let mut stream = connect_from(source, server);
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: custody\r\n\r\n").ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).contains('}') {
        let read = stream.read(&mut chunk).ok()?;
        if read == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..read]);
    }
    String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200").then_some(stream)
}

fn serve(extra: &[&str]) -> (Sandbox, Server) {
    let sandbox = Sandbox::new();
    let server = sandbox.serve_with("data", None, &[], extra);
    (sandbox, server)
}

#[test]
fn a_client_trickling_its_headers_is_cut_off_at_the_header_timeout() {
    let (_sandbox, server) = serve(&["--header-timeout", "2s"]);
    let mut stream = connect_from("127.0.0.1", &server);
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: custody\r\n").expect("send");
    let started = Instant::now();
    // One header line a second, never the blank line that ends them.
    let writer = {
        let mut stream = stream.try_clone().expect("a second handle");
        thread::spawn(move || {
            for line in 0..30 {
                thread::sleep(Duration::from_secs(1));
                if stream.write_all(format!("X-Trickle-{line}: {line}\r\n").as_bytes()).is_err() {
                    return;
                }
            }
        })
    };
    let (after, answer) =
        closed_within(&mut stream, Duration::from_secs(20)).expect("the trickling client is disconnected");
    let total = started.elapsed();
    assert!(total >= Duration::from_millis(1900), "cut off before the timeout: {total:?}");
    assert!(after < Duration::from_secs(6), "held for {after:?} with a 2 s header timeout");
    assert!(!answer.contains("200 OK"), "the trickled request was served: {answer}");
    drop(stream);
    let _ = writer.join();
    // Anyone else is served.
    assert!(healthz_from("127.0.0.1", &server).starts_with("HTTP/1.1 200"));
}

#[test]
fn a_connection_that_sends_nothing_or_idles_after_an_answer_is_closed() {
    let (_sandbox, server) = serve(&["--header-timeout", "2s", "--idle-timeout", "3s"]);
    // Connected, nothing sent: the first request's headers are late.
    let mut silent = connect_from("127.0.0.1", &server);
    let (after, _) = closed_within(&mut silent, Duration::from_secs(20)).expect("a silent connection is closed");
    assert!(after >= Duration::from_millis(1900) && after < Duration::from_secs(6), "closed after {after:?}");

    // Kept alive after an answer, then idle: closed after the idle timeout.
    let mut kept = connect_from("127.0.0.1", &server);
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: custody\r\n\r\n").expect("send");
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    kept.set_read_timeout(Some(Duration::from_secs(10))).expect("a read timeout");
    while !String::from_utf8_lossy(&answer).contains("\"ok\"") {
        let read = kept.read(&mut chunk).expect("the answer");
        assert!(read > 0, "closed before answering: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&chunk[..read]);
    }
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    let (_, more) = closed_within(&mut kept, Duration::from_secs(20)).expect("an idle connection is closed");
    let idle = started.elapsed();
    assert!(more.is_empty(), "{more}");
    assert!(idle >= Duration::from_millis(2900) && idle < Duration::from_secs(8), "closed after {idle:?} idle");
}

#[test]
fn a_request_body_trickled_below_the_minimum_rate_is_cut_off() {
    let (_sandbox, server) = serve(&["--body-min-rate", "20000", "--body-grace", "1s"]);
    let mut stream = connect_from("127.0.0.1", &server);
    stream
        .write_all(
            b"POST /api/v1/auth/token HTTP/1.1\r\nHost: custody\r\nContent-Type: application/json\r\n\
              Content-Length: 200000\r\n\r\n{\"name\":\"",
        )
        .expect("send");
    let writer = {
        let mut stream = stream.try_clone().expect("a second handle");
        thread::spawn(move || {
            // Ten bytes every tenth of a second: 100 bytes a second.
            for _ in 0..300 {
                thread::sleep(Duration::from_millis(100));
                if stream.write_all(b"aaaaaaaaaa").is_err() {
                    return;
                }
            }
        })
    };
    let (after, answer) = closed_within(&mut stream, Duration::from_secs(25)).expect("the trickled body is cut off");
    assert!(after < Duration::from_secs(8), "held for {after:?}");
    assert!(!answer.contains("200 OK"), "{answer}");
    drop(stream);
    let _ = writer.join();
}

#[test]
fn connections_beyond_the_caps_are_answered_503_with_retry_after() {
    let (_sandbox, server) = serve(&["--max-connections", "6", "--max-connections-per-source", "4"]);
    let held: Vec<TcpStream> = (0..4).map(|_| connect_from("127.0.0.2", &server)).collect();
    // Let the server take them all.
    thread::sleep(Duration::from_millis(300));

    let refused = healthz_from("127.0.0.2", &server);
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.to_ascii_lowercase().contains("retry-after: 5"), "{refused}");
    assert!(refused.contains("\"code\":\"unavailable\"") && refused.contains("this address"), "{refused}");

    // Another address is served: the cap is per source.
    assert!(healthz_from("127.0.0.1", &server).starts_with("HTTP/1.1 200"));

    // Six in all: the seventh, from anywhere, is refused. The two from
    // 127.0.0.3 are served and kept alive, so both are known to be admitted
    // (one refused while the last connection's place was still being freed
    // is asked again).
    let more: Vec<TcpStream> = (0..2)
        .map(|_| support::flow::eventually(|| served_and_kept("127.0.0.3", &server)).expect("admitted"))
        .collect();
    let full = healthz_from("127.0.0.1", &server);
    assert!(full.starts_with("HTTP/1.1 503") && full.contains("the server holds"), "{full}");

    // Closing connections frees their places.
    drop(more);
    drop(held);
    let served = support::flow::eventually(|| {
        let answer = healthz_from("127.0.0.2", &server);
        answer.starts_with("HTTP/1.1 200").then_some(answer)
    });
    assert!(served.is_some(), "closed connections never freed their places");
}

#[test]
fn a_thousand_idle_connections_do_not_stop_healthz_answering() {
    let (_sandbox, server) = serve(&["--max-connections-per-source", "2000", "--max-connections", "4096"]);
    let idle: Vec<TcpStream> = (0..1000).map(|_| connect_from("127.0.0.2", &server)).collect();
    thread::sleep(Duration::from_millis(500));
    let mut took = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        let answer = healthz_from("127.0.0.1", &server);
        took.push(started.elapsed());
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    took.sort();
    let (median, slowest) = (took[took.len() / 2], took[took.len() - 1]);
    eprintln!("healthz beside 1,000 idle connections: median {median:?}, slowest {slowest:?}");
    assert!(median < Duration::from_millis(100), "median {median:?}");
    assert!(slowest < Duration::from_secs(1), "slowest {slowest:?}");
    // The idle connections were held, not refused: one of them is still served.
    let mut last = idle.into_iter().last().expect("a connection");
    last.write_all(b"GET /healthz HTTP/1.1\r\nHost: custody\r\nConnection: close\r\n\r\n").expect("send");
    let mut answer = String::new();
    last.set_read_timeout(Some(Duration::from_secs(10))).expect("a read timeout");
    let _ = last.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// A proxy to the server that forwards what the client sends at `rate`
/// bytes a second, steadily; answers pass at full speed.
fn throttled_proxy(server_port: u16, rate: u64) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a proxy port");
    let port = listener.local_addr().expect("an address").port();
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(upstream) = TcpStream::connect(("127.0.0.1", server_port)) else { return };
            let (mut client_in, mut upstream_out) =
                (client.try_clone().expect("clone"), upstream.try_clone().expect("clone"));
            let (mut upstream_in, mut client_out) = (upstream, client);
            thread::spawn(move || {
                let started = Instant::now();
                let mut sent = 0u64;
                let mut chunk = vec![0u8; 16 * 1024];
                loop {
                    let read = match client_in.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(read) => read,
                    };
                    for piece in chunk[..read].chunks(4096) {
                        sent += piece.len() as u64;
                        let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            thread::sleep(wait);
                        }
                        if upstream_out.write_all(piece).is_err() {
                            return;
                        }
                    }
                }
                let _ = upstream_out.shutdown(std::net::Shutdown::Write);
            });
            thread::spawn(move || {
                let _ = std::io::copy(&mut upstream_in, &mut client_out);
                let _ = client_out.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

/// How much a slow push brings: `CUSTODY_SLOW_PUSH_MB` megabytes (4 unless
/// set; `bench/slow_push.sh` pushes 200), in files of 8 MB at most.
fn slow_push_bytes() -> u64 {
    std::env::var("CUSTODY_SLOW_PUSH_MB").ok().and_then(|mb| mb.parse::<u64>().ok()).unwrap_or(4) << 20
}

#[test]
fn a_large_push_over_a_slow_steady_link_lands() {
    let total = slow_push_bytes();
    // The rate the link keeps, and the least the server accepts: a quarter of it.
    let rate = std::env::var("CUSTODY_SLOW_PUSH_RATE").ok().and_then(|r| r.parse::<u64>().ok()).unwrap_or(1 << 20);
    let floor = (rate / 4).to_string();
    let hosted = Hosted::with_args(&["--body-min-rate", &floor, "--body-grace", "2s", "--idle-timeout", "5s"]);
    let work = hosted.workspace("slow", "alice", &hosted.alice);
    let mut left = total;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut file = 0;
    while left > 0 {
        let size = left.min(8 << 20) as usize;
        // Incompressible content, so the pack is as large as the files.
        let mut content = Vec::with_capacity(size);
        while content.len() < size {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            content.extend_from_slice(&seed.to_le_bytes());
        }
        content.truncate(size);
        std::fs::write(work.dir.join(format!("blob-{file}.bin")), &content).expect("write a file");
        left -= size as u64;
        file += 1;
    }
    work.ok(&["add", "."]);
    work.ok(&["commit", "-q", "-m", "a large import"]);
    let proxy = throttled_proxy(hosted.server.port(), rate);
    let url = format!("http://alice:{}@127.0.0.1:{proxy}/payments.git", hosted.alice);
    let started = Instant::now();
    let expected = Duration::from_secs_f64(total as f64 / rate as f64);
    let mut push =
        support::hosted::git_command(&hosted.sandbox.path("home"), &work.dir, ("alice", "alice@example.com"));
    push.args(["push", &url, "HEAD:refs/heads/import"]);
    let pushed = support::run_within(push, None, support::COMMAND_TIMEOUT + expected * 3);
    let took = started.elapsed();
    assert_eq!(pushed.code(), Some(0), "{pushed:#?}");
    eprintln!("pushed {} MiB through a {} KiB/s link in {took:?}", total >> 20, rate >> 10);
    assert!(took >= expected.mul_f64(0.8), "the link was not slow: {took:?} for {total} bytes at {rate} B/s");
    let head = work.ok(&["rev-parse", "HEAD"]).trim().to_owned();
    assert_eq!(hosted.server_ref("refs/heads/import").as_deref(), Some(head.as_str()));
}
