//! The accept loop: HTTP/1.1 ([`super::server`]) and h2c with prior knowledge
//! ([`super::h2c`]) on one port, told apart by the first bytes (read when they arrive, then
//! handed on to the protocol); `TCP_NODELAY` on every accepted socket; graceful shutdown
//! (stop accepting, let in-flight requests and streams finish within the grace period, then
//! close what is left).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::rewind::Rewind;
use super::send_timeout::SendTimeout;
use super::server::{self, Handler, Timeouts};

/// What the accept loop serves: a handler per connection, and the limits in force when it
/// was accepted (read per connection, so a reload changes them for new connections).
pub trait Service: Send + Sync + 'static {
    type Handler: Handler<Body: Unpin + 'static> + Clone + Send + Sync + 'static;

    fn connection(&self, peer: SocketAddr) -> (Self::Handler, Timeouts);

    /// How long in-flight requests may take to finish once shutdown begins.
    fn shutdown_grace(&self) -> Duration;
}

/// Serves until `shutdown` resolves, then drains for at most the service's grace period.
pub async fn serve<S: Service>(
    listener: TcpListener,
    service: Arc<S>,
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
                let stop = draining.subscribe();
                let h2 = h2.clone();
                let (handler, timeouts) = service.connection(peer);
                tokio::spawn(async move {
                    match sniff(&stream, timeouts.header_read).await {
                        None => {}
                        Some((Protocol::Http1, read)) => {
                            server::serve_tcp(stream, read, timeouts, stop, handler).await;
                        }
                        Some((Protocol::Http2, read)) => {
                            // hyper reads the preface again, from the buffer first; writes that
                            // stay blocked for `send` end the connection, as on HTTP/1.1.
                            let io = Rewind::new(read.freeze(), stream);
                            let io = SendTimeout::new(io, timeouts.send);
                            let (keep_alive, send) = (timeouts.keep_alive, timeouts.send);
                            super::h2c::serve(io, &h2, keep_alive, send, stop, handler, peer)
                                .await;
                        }
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }

    drop(listener);
    let grace = service.shutdown_grace();
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

/// The first read's room: a usual request head fits (it becomes the HTTP/1.1 server's read
/// buffer).
const FIRST_READ: usize = 4 * 1024;

/// Which protocol a new connection speaks, from its first bytes, and those bytes (read, for
/// the protocol's reader to start from: [`server::serve_tcp`]'s buffer, or a [`Rewind`] under
/// hyper). Waits for readability, never polls: a connection that sent part of the preface and
/// stopped costs nothing until it sends more or `within` runs out. No buffer is allocated
/// before the first bytes arrive. `None`: the client closed, failed, or did not send the
/// preface or another protocol's first bytes within `within` (the head's own timeout starts
/// when its first read leaves it incomplete, so a first head may take up to twice
/// `header_read_timeout`).
async fn sniff(stream: &TcpStream, within: Duration) -> Option<(Protocol, BytesMut)> {
    let look = async {
        let mut read = BytesMut::new();
        loop {
            stream.readable().await.ok()?;
            if read.capacity() == read.len() {
                read.reserve(FIRST_READ);
            }
            match stream.try_read_buf(&mut read) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return None,
            }
            let seen = read.len().min(H2_PREFACE.len());
            if read[..seen] != H2_PREFACE[..seen] {
                return Some((Protocol::Http1, read));
            }
            if seen == H2_PREFACE.len() {
                return Some((Protocol::Http2, read));
            }
        }
    };
    tokio::time::timeout(within, look).await.ok().flatten()
}
