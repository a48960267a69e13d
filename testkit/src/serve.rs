//! The accept loop behind the token mock: serves a handler on every connection and, when the
//! [`ServerGuard`] drops, closes every open connection too (a server that really goes away).
//! A small copy of sophgate's `loopback` module, which this crate cannot depend on.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Stops the server (and closes its connections) when dropped.
pub struct ServerGuard {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

/// Serves `handler` on `listener` in the background until the returned guard drops.
pub fn spawn<H, Fut>(listener: TcpListener, handler: H) -> ServerGuard
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<http_body_util::Full<bytes::Bytes>>> + Send + 'static,
{
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Typically out of file descriptors: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = stop.changed() => {}
                }
            });
        }
    });
    ServerGuard { task, stop }
}
