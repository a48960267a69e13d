//! The accept loop: HTTP/1.1 (our own, [`http1`]) and h2c (prior knowledge, hyper) on one
//! port, `TCP_NODELAY` on every accepted socket, a header read timeout, and graceful shutdown
//! (stop accepting, let in-flight requests and streams finish within the grace period, then
//! close what is left).

pub mod http1;
mod http2;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::body::ResponseBody;
use crate::pipeline;
use crate::runtime::Runtime;

/// Runs a request: `/admin/*` on the admin endpoint, everything else through the pipeline.
struct Gateway {
    runtime: Arc<Runtime>,
    peer: IpAddr,
}

impl http1::Handler for Gateway {
    fn handle<'c>(&self, req: http::Request<http1::RequestBody<'c>>) -> http1::Handled<'c> {
        dispatch(self.runtime.clone(), self.peer, req)
    }
}

/// The request's future, boxed: its ~2 KB are allocated only while it runs (freed before
/// its answer streams), not kept for every open connection or stream. Boxed here, where the
/// route is known, so no wrapper future copies the pipeline's state once more.
fn dispatch<'a, B>(
    runtime: Arc<Runtime>,
    peer: IpAddr,
    req: http::Request<B>,
) -> std::pin::Pin<Box<dyn Future<Output = http::Response<ResponseBody>> + Send + 'a>>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'a,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if req.uri().path().starts_with("/admin/") {
        // The admin endpoint reads no body.
        let req = req.map(|_| ());
        return Box::pin(async move { crate::admin::handle(&runtime, peer, req).await });
    }
    Box::pin(pipeline::handle(runtime.current(), peer, req))
}

/// Serves until `shutdown` resolves, then drains for at most the configured grace period.
pub async fn serve(
    listener: TcpListener,
    runtime: Arc<Runtime>,
    shutdown: impl Future<Output = ()>,
) {
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new());
    let h2 = Arc::new(h2);
    // `true` once shutting down; every connection holds a receiver, so the drain is over when
    // the last one is dropped.
    let (draining, _) = watch::channel(false);
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
                let runtime = runtime.clone();
                let stop = draining.subscribe();
                let h2 = h2.clone();
                // Read per connection, so a reload changes them for new connections.
                let limits = runtime.current().config.limits.clone();
                let within = limits.header_read_timeout;
                tokio::spawn(async move {
                    match sniff(&stream, within).await {
                        None => {}
                        Some(Protocol::Http1) => {
                            let gateway = Gateway { runtime, peer: peer.ip() };
                            let timeouts = http1::Timeouts {
                                header_read: limits.header_read_timeout,
                                keep_alive: limits.keep_alive_timeout,
                            };
                            http1::serve(stream, timeouts, stop, gateway).await;
                        }
                        Some(Protocol::Http2) => {
                            http2::serve(stream, &h2, limits.keep_alive_timeout, stop, runtime, peer.ip())
                                .await;
                        }
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
    draining.send_replace(true);
    tokio::select! {
        _ = draining.closed() => tracing::info!("all connections drained"),
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
/// socket for the protocol's reader (hyper's h2, or [`http1::serve`]), which reads them into
/// its own buffer; no rewind wrapper. `None`: the client closed, failed, or sent nothing within
/// `within` (the head's own timeout starts when its first read leaves it incomplete, so a
/// first head may take up to twice `header_read_timeout`).
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
