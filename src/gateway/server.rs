//! The gateway on the HTTP layer: one [`Handler`] per connection that sends `/admin/*` to the
//! admin endpoint and everything else through [`super::handle`], and the listener's
//! [`Service`] that makes them from the live generation.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::relay::access_log::{outcome, AccessLog};
use super::relay::body::ResponseBody;
use super::request_id::{RequestId, REQUEST_ID};
use crate::error::{ErrorKind, GatewayError};
use crate::http::listener::{self, Service};
use crate::http::server::{Handled, Handler, HeadError, RequestBody, Timeouts};
use crate::observe::finished::route;
use crate::reload::Runtime;

/// Runs the requests of one connection.
#[derive(Clone)]
pub struct Gateway {
    runtime: Arc<Runtime>,
    peer: IpAddr,
}

impl Gateway {
    pub fn new(runtime: Arc<Runtime>, peer: IpAddr) -> Self {
        Gateway { runtime, peer }
    }
}

impl Handler for Gateway {
    type Body = ResponseBody;

    fn handle<'c>(&self, req: http::Request<RequestBody<'c>>) -> Handled<'c, ResponseBody> {
        dispatch(self.runtime.clone(), self.peer, req)
    }

    fn reject(&self, error: HeadError) -> http::Response<ResponseBody> {
        tracing::debug!(%error, "refused a request head");
        let kind = if error.status == http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE {
            ErrorKind::HeaderTooLarge
        } else {
            ErrorKind::BadRequest
        };
        let mut resp = GatewayError::new(kind, error.code, error.message).into_response();
        let rid = RequestId::of(&HeaderMap::new());
        if self.runtime.current().config.metrics.enabled {
            // A head refused before routing still counts as a request the client got an
            // answer to.
            // The head was not read: no method or path to tell.
            let mut record = AccessLog::new(false, rid.clone(), http::Method::GET, "")
                .metered(true, route::OTHER);
            record.client_ip = Some(self.peer);
            record.status = resp.status().as_u16();
            record.outcome = Some(outcome::REJECTED);
            record.error = Some(error.code);
            record.emit();
        }
        resp.headers_mut().insert(&REQUEST_ID, rid.into_header());
        resp
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
    if req.uri().path() == crate::observe::scrape::PATH {
        if let Some(resp) = crate::observe::scrape::on_main_listener(&runtime, peer, &req) {
            return Box::pin(async move { resp });
        }
    }
    if req.uri().path().starts_with("/admin/") || req.uri().path() == "/admin" {
        // The admin endpoint reads no body.
        let req = req.map(|_| ());
        return Box::pin(async move { super::admin::handle(&runtime, peer, req).await });
    }
    Box::pin(super::handle(runtime.current(), peer, req))
}

/// The listener's view of the gateway: the live generation's connection limits.
struct GatewayService {
    runtime: Arc<Runtime>,
}

impl Service for GatewayService {
    type Handler = Gateway;

    fn connection(&self, peer: SocketAddr) -> (Gateway, Timeouts) {
        let limits = &self.runtime.current().config.limits;
        let timeouts = Timeouts {
            header_read: limits.header_read_timeout,
            keep_alive: limits.keep_alive_timeout,
            send: limits.send_timeout,
        };
        (Gateway::new(self.runtime.clone(), peer.ip()), timeouts)
    }

    fn shutdown_grace(&self) -> Duration {
        self.runtime.current().config.limits.shutdown_grace
    }
}

/// Serves `runtime` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    runtime: Arc<Runtime>,
    shutdown: impl Future<Output = ()>,
) {
    listener::serve(listener, Arc::new(GatewayService { runtime }), shutdown).await
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
