//! The accept loop: HTTP/1.1 and h2c (prior knowledge) on one port, `TCP_NODELAY` on every
//! accepted socket, a header read timeout, and graceful shutdown (stop accepting, let in-flight
//! requests and streams finish within the grace period, then close what is left).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::pipeline;
use crate::runtime::Runtime;

/// Serves until `shutdown` resolves, then drains for at most the configured grace period.
pub async fn serve(
    listener: TcpListener,
    runtime: Arc<Runtime>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = runtime.current().config.limits.clone();
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new());
    let builders = Arc::new((h1, h2));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let rt = runtime.clone();
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let rt = rt.clone();
                    async move {
                        if req.uri().path().starts_with("/admin/") {
                            // Boxed: rare, and its reload future would widen every request's.
                            let admin = Box::pin(crate::admin::handle(&rt, peer.ip(), req));
                            return Ok::<_, Infallible>(admin.await);
                        }
                        let generation = rt.current();
                        // Boxed: hyper keeps room for this future for every open connection,
                        // idle or streaming; boxed, that is a pointer, and the request's ~4 KB
                        // are allocated only while it runs (freed before its answer streams).
                        let handled = Box::pin(pipeline::handle(generation, peer.ip(), req));
                        Ok::<_, Infallible>(handled.await)
                    }
                });
                let watcher = graceful.watcher();
                let builders = builders.clone();
                let sniff_within = limits.header_read_timeout;
                tokio::spawn(async move {
                    let (h1, h2) = &*builders;
                    let served = match sniff(&stream, sniff_within).await {
                        None => return,
                        Some(Protocol::Http1) => {
                            watcher.watch(h1.serve_connection(TokioIo::new(stream), service)).await
                        }
                        Some(Protocol::Http2) => {
                            watcher.watch(h2.serve_connection(TokioIo::new(stream), service)).await
                        }
                    };
                    if let Err(e) = served {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }

    drop(listener);
    let grace = runtime.current().config.limits.shutdown_grace;
    tracing::info!(
        grace_s = grace.as_secs_f64(),
        "shutting down: draining in-flight requests"
    );
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing the remaining connections"),
    }
}

/// What an HTTP/2 client with prior knowledge (h2c) sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

enum Protocol {
    Http1,
    Http2,
}

/// Which protocol a new connection speaks, from its first bytes, peeked: they stay in the
/// socket for hyper to read. Why not hyper-util's auto builder: it reads the first bytes and
/// hands them back through a rewind wrapper, so hyper's first HTTP/1 read returns only those
/// (up to 24) bytes and its read buffer grows to 16 KiB on the next read: 8 KiB more for every
/// open connection. `None`: the client closed, failed, or sent nothing within `within`
/// (hyper's own header timeout then starts with the first byte, so a first head may take up to
/// twice `header_read_timeout`; auto's version read had no limit at all).
async fn sniff(stream: &TcpStream, within: Duration) -> Option<Protocol> {
    let look = async {
        let mut first = [0u8; H2_PREFACE.len()];
        loop {
            let n = stream.peek(&mut first).await.ok()?;
            if n == 0 {
                return None;
            }
            if !H2_PREFACE.starts_with(&first[..n]) {
                return Some(Protocol::Http1);
            }
            if n == H2_PREFACE.len() {
                return Some(Protocol::Http2);
            }
            // Part of the preface so far (rare): peeking at once would see the same bytes.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(within, look).await.ok().flatten()
}

/// A server running on a background task (tests, demo, benchmarks).
pub struct ServerHandle {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl ServerHandle {
    /// Stops accepting and waits for the drain to finish.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Binds `addr` (port 0 for any) and serves `runtime` on a background task.
pub async fn spawn(runtime: Arc<Runtime>, addr: SocketAddr) -> std::io::Result<ServerHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, runtime, async move {
        let _ = rx.await;
    }));
    Ok(ServerHandle {
        addr,
        shutdown: Some(tx),
        task,
    })
}
