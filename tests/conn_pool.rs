//! The pooled plain-HTTP upstream connections: reused when they can be, never when they
//! cannot, and a connection the upstream closed while idle costs the client nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use sophgate::mock::{self, MockOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Keep-alive: many requests per connection.
    KeepAlive,
    /// Answers with `Connection: close`, then closes.
    AnnouncedClose,
    /// Answers as if keeping the connection, then closes it silently 50 ms later.
    SilentClose,
}

/// A raw HTTP/1.1 upstream that counts the connections it accepted and the requests it read.
struct Upstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    /// Connections open right now.
    open: Arc<AtomicUsize>,
}

async fn upstream(mode: Mode) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let (c, r, o) = (connections.clone(), requests.clone(), open.clone());
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            o.fetch_add(1, Ordering::SeqCst);
            let (r, o) = (r.clone(), o.clone());
            tokio::spawn(async move {
                serve(sock, mode, r).await;
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Upstream {
        addr,
        connections,
        requests,
        open,
    }
}

async fn serve(mut sock: TcpStream, mode: Mode, requests: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    loop {
        // Head, then as many body bytes as Content-Length says.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + len);
        let n = requests.fetch_add(1, Ordering::SeqCst) + 1;
        let body = format!(
            "{{\"id\":\"r{n}\",\"object\":\"chat.completion\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"ok {n}\"}},\"finish_reason\":\"stop\"}}]}}"
        );
        let close = if mode == Mode::AnnouncedClose {
            "connection: close\r\n"
        } else {
            ""
        };
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{close}\r\n{body}",
            body.len()
        );
        if sock.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
        match mode {
            Mode::KeepAlive => {}
            Mode::AnnouncedClose => return,
            Mode::SilentClose => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
        }
    }
}

async fn gateway_for(up: &Upstream, extra: &str) -> Env {
    let unused = mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap();
    let yaml = base_yaml(up.addr, extra);
    start_gateway(unused, &yaml, "127.0.0.1:0".parse().unwrap()).await
}

async fn ask(env: &Env, i: usize) {
    let resp = post_chat(env, CLIENT_KEY, chat_body("m", false)).await;
    assert_eq!(resp.status(), 200, "request {i}");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("ok "));
}

#[tokio::test]
async fn keep_alive_upstream_connection_is_reused() {
    let up = upstream(Mode::KeepAlive).await;
    let env = gateway_for(&up, "").await;
    for i in 0..20 {
        ask(&env, i).await;
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 20);
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrent_requests_each_get_a_connection_and_all_return_to_the_pool() {
    let up = upstream(Mode::KeepAlive).await;
    let env = Arc::new(gateway_for(&up, "").await);
    for round in 0..3 {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let env = env.clone();
                tokio::spawn(async move { ask(&env, round * 8 + i).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 24);
    // Eight at once need at most eight connections; later rounds reuse them.
    assert!(up.connections.load(Ordering::SeqCst) <= 8);
}

#[tokio::test]
async fn announced_close_is_respected() {
    let up = upstream(Mode::AnnouncedClose).await;
    let env = gateway_for(&up, "").await;
    for i in 0..10 {
        ask(&env, i).await;
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn connection_closed_by_the_upstream_while_idle_is_not_used() {
    let up = upstream(Mode::SilentClose).await;
    let env = gateway_for(&up, "").await;
    for i in 0..5 {
        ask(&env, i).await;
        // Long enough for the upstream's close to arrive.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 5);
    assert_eq!(up.connections.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn force_close_never_reuses() {
    let up = upstream(Mode::KeepAlive).await;
    let env = gateway_for(&up, "force_close: true").await;
    for i in 0..5 {
        ask(&env, i).await;
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn idle_connections_expire_after_keepalive_timeout() {
    let up = upstream(Mode::KeepAlive).await;
    let env = gateway_for(&up, "keepalive_timeout: 0.2").await;
    ask(&env, 0).await;
    ask(&env, 1).await;
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    ask(&env, 2).await;
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn expired_idle_connections_are_closed_without_new_traffic() {
    let up = upstream(Mode::KeepAlive).await;
    let env = gateway_for(&up, "keepalive_timeout: 0.2").await;
    ask(&env, 0).await;
    let open = up.open.clone();
    assert_eq!(open.load(Ordering::SeqCst), 1);
    // No request after this: only the sweeper can close it.
    assert!(eventually(3.0, || open.load(Ordering::SeqCst) == 0).await);
}

/// A `Write` into a shared buffer, to read back what the in-process gateway logged.
#[derive(Clone, Default)]
struct LogBuf(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn answers_with_content_length_end_cleanly_and_reuse_the_connection() {
    // The client side stops polling after Content-Length bytes; the relay must still see the
    // end: the access log says "ok" (not client_disconnected) and the connection is reused.
    let logs = LogBuf::default();
    let w = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || w.clone())
        .finish();
    // `#[tokio::test]` runs every task on this thread, so a thread-local default sees them all.
    let _guard = tracing::subscriber::set_default(subscriber);
    let up = upstream(Mode::KeepAlive).await;
    let env = gateway_for(&up, "").await;
    for i in 0..3 {
        ask(&env, i).await;
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let outcomes: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "sophgate::access")
        .map(|v| v["fields"]["outcome"].as_str().unwrap_or("?").to_owned())
        .collect();
    assert_eq!(outcomes, ["ok", "ok", "ok"], "{text}");
}
