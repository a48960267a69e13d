//! A raw HTTP/1.1 upstream for connection-level tests: counts the connections it accepted, the
//! requests it read and the connections open now, and closes connections as told.
//! `gateway_for` and `ask` (which need sophgate's types) are in `tests/it/common.rs`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    /// Keep-alive: many requests per connection.
    KeepAlive,
    /// Answers with `Connection: close`, then closes.
    AnnouncedClose,
    /// Answers as if keeping the connection, then closes it silently 50 ms later.
    SilentClose,
    /// Answers every request with these exact bytes; closes after each answer if `true`.
    Raw(&'static [u8], bool),
    /// Answers with an event stream that ends at the close: `.0` bursts of `.1` events, a
    /// pause of `.2` ms after each burst, then `data: [DONE]`.
    Bursts(usize, usize, u64),
}

/// A raw HTTP/1.1 upstream that counts the connections it accepted and the requests it read.
pub struct Upstream {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    /// Connections open right now.
    pub open: Arc<AtomicUsize>,
    /// Every request read, head and body, byte for byte as it arrived, in order.
    pub received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Upstream {
    /// The requests read so far, byte for byte.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

pub async fn upstream(mode: Mode) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(Mutex::new(Vec::new()));
    let (c, r, o) = (connections.clone(), requests.clone(), open.clone());
    let log = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            o.fetch_add(1, Ordering::SeqCst);
            let (r, o, log) = (r.clone(), o.clone(), log.clone());
            tokio::spawn(async move {
                serve(sock, mode, r, log).await;
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Upstream {
        addr,
        connections,
        requests,
        open,
        received,
    }
}

async fn serve(
    mut sock: TcpStream,
    mode: Mode,
    requests: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
) {
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
        let request: Vec<u8> = buf.drain(..head_end + len).collect();
        received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(request);
        let n = requests.fetch_add(1, Ordering::SeqCst) + 1;
        if let Mode::Raw(answer, close) = mode {
            if sock.write_all(answer).await.is_err() || close {
                return;
            }
            continue;
        }
        if let Mode::Bursts(bursts, events, pause_ms) = mode {
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
            if sock.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for b in 0..bursts {
                let burst: String = (0..events)
                    .map(|e| {
                        format!(
                            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{b}.{e}\"}}}}]}}\n\n"
                        )
                    })
                    .collect();
                if sock.write_all(burst.as_bytes()).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            }
            let _ = sock.write_all(b"data: [DONE]\n\n").await;
            return;
        }
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
            Mode::KeepAlive | Mode::Raw(..) | Mode::Bursts(..) => {}
            Mode::AnnouncedClose => return,
            Mode::SilentClose => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
        }
    }
}
