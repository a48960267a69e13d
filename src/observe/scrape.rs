//! `GET /metrics`: who may scrape (a client in `metrics.allow`, or `Authorization: Bearer
//! <admin.key>`; anyone else gets the 404 of an unknown path), the answer, and the separate
//! listener `metrics.listen` serves it on.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use sha2::{Digest, Sha256};

use crate::config::MetricsConfig;
use crate::error::{ErrorKind, GatewayError};
use crate::gateway::relay::body::ResponseBody;
use crate::gateway::stages::auth::bearer_token;
use crate::http::listener::{self, Service};
use crate::http::server::{Handled, Handler, HeadError, RequestBody, Timeouts};
use crate::reload::Runtime;
use crate::secret::Secret;

pub const PATH: &str = "/metrics";
const CONTENT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether this client may read the metrics.
pub fn allowed(
    cfg: &MetricsConfig,
    admin_key: Option<&Secret>,
    peer: IpAddr,
    headers: &HeaderMap,
) -> bool {
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
        v4 => v4,
    };
    if cfg.allow.iter().any(|n| n.contains(&peer)) {
        return true;
    }
    let Some(key) = admin_key else {
        return false;
    };
    headers
        .get(AUTHORIZATION)
        .and_then(|v| bearer_token(v.as_bytes()))
        .is_some_and(|given| Sha256::digest(given) == Sha256::digest(key.expose().as_bytes()))
}

/// The answer to a scrape on the main listener, or `None` when the request is not one this
/// gateway serves there (metrics off, served on `metrics.listen`, or not allowed): it then
/// goes on like any request and meets the 404 of an unknown path.
pub fn on_main_listener(
    runtime: &Runtime,
    peer: IpAddr,
    req: &Request<impl Sized>,
) -> Option<Response<ResponseBody>> {
    let generation = runtime.current();
    let cfg = &generation.config.metrics;
    if !cfg.enabled
        || cfg.listen.is_some()
        || !allowed(
            cfg,
            generation.config.admin_key.as_ref(),
            peer,
            req.headers(),
        )
    {
        return None;
    }
    Some(answer(req.method()))
}

/// The exposition for an allowed client.
pub fn answer(method: &Method) -> Response<ResponseBody> {
    if method != Method::GET && method != Method::HEAD {
        return GatewayError::method_not_allowed(method, PATH).into_response();
    }
    match super::metrics::render() {
        Ok(text) => {
            let body = if method == Method::HEAD {
                Bytes::new()
            } else {
                Bytes::from(text)
            };
            let mut resp = Response::new(ResponseBody::full(body));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT));
            resp
        }
        Err(_) => GatewayError::internal("could not encode the metrics").into_response(),
    }
}

/// One connection on the metrics listener.
#[derive(Clone)]
pub struct MetricsHandler {
    runtime: Arc<Runtime>,
    peer: IpAddr,
}

impl Handler for MetricsHandler {
    type Body = ResponseBody;

    fn handle<'c>(&self, req: Request<RequestBody<'c>>) -> Handled<'c, ResponseBody> {
        let generation = self.runtime.current();
        let cfg = &generation.config.metrics;
        let path = req.uri().path();
        let resp = if path == PATH
            && cfg.enabled
            && allowed(
                cfg,
                generation.config.admin_key.as_ref(),
                self.peer,
                req.headers(),
            ) {
            answer(req.method())
        } else {
            GatewayError::not_found(path).into_response()
        };
        Box::pin(async move { resp })
    }

    fn reject(&self, error: HeadError) -> Response<ResponseBody> {
        let kind = if error.status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE {
            ErrorKind::HeaderTooLarge
        } else {
            ErrorKind::BadRequest
        };
        GatewayError::new(kind, error.code, error.message).into_response()
    }
}

struct MetricsService {
    runtime: Arc<Runtime>,
}

impl Service for MetricsService {
    type Handler = MetricsHandler;

    fn connection(&self, peer: SocketAddr) -> (MetricsHandler, Timeouts) {
        let limits = &self.runtime.current().config.limits;
        let timeouts = Timeouts {
            header_read: limits.header_read_timeout,
            keep_alive: limits.keep_alive_timeout,
            send: limits.send_timeout,
        };
        (
            MetricsHandler {
                runtime: self.runtime.clone(),
                peer: peer.ip(),
            },
            timeouts,
        )
    }

    fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(1)
    }
}

/// Serves `/metrics` alone on `listener` (the `metrics.listen` address) until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    runtime: Arc<Runtime>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    listener::serve(listener, Arc::new(MetricsService { runtime }), shutdown).await
}
