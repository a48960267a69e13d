//! `/admin/*`: `POST /admin/reload`, `GET /admin/status`, `GET /admin/live` and `GET
//! /admin/usage`, guarded by `admin.key` (a Bearer key compared by digest) and by the IP
//! lists; the status page (`GET /admin` and its assets) holds no data and needs only the IP
//! lists. Without `admin.key` the routes do not exist (404), so an unconfigured gateway
//! exposes nothing.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::GatewayError;
use crate::gateway::relay::access_log::{outcome, AccessLog};
use crate::gateway::relay::body::ResponseBody;
use crate::gateway::request_id::{RequestId, REQUEST_ID};
use crate::gateway::stages::auth::bearer_token;
use crate::observe::finished::route;
use crate::observe::status_page;
use crate::reload::Runtime;

/// RFC 3339 (UTC, seconds) without a date-time crate.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    crate::usage::period::rfc3339(secs)
}

fn json_response(status: StatusCode, v: serde_json::Value) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub async fn handle<B>(
    runtime: &Arc<Runtime>,
    peer: IpAddr,
    req: Request<B>,
) -> Response<ResponseBody> {
    let rid = RequestId::of(req.headers());
    // Only the end record (the admin line below is the access log's).
    let mut record = AccessLog::new(false, rid.clone(), req.method().clone(), "")
        .metered(runtime.current().config.metrics.enabled, route::ADMIN);
    record.client_ip = Some(peer);
    let mut resp = match run(runtime, peer, &req).await {
        Ok(r) => r,
        Err(e) => {
            record.outcome = Some(outcome::REJECTED);
            record.error = Some(e.code);
            e.into_response()
        }
    };
    record.status = resp.status().as_u16();
    record
        .outcome
        .get_or_insert(outcome::of_status(record.status));
    record.emit();
    resp.headers_mut().insert(&REQUEST_ID, rid.header().clone());
    tracing::info!(
        target: crate::gateway::relay::access_log::TARGET,
        request_id = %rid,
        method = %req.method(),
        path = %req.uri().path(),
        status = resp.status().as_u16(),
        "admin request"
    );
    resp
}

async fn run<B>(
    runtime: &Arc<Runtime>,
    peer: IpAddr,
    req: &Request<B>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let generation = runtime.current();
    let path = req.uri().path();
    let Some(admin_key) = generation.config.admin_key.as_ref() else {
        return Err(GatewayError::not_found(path));
    };
    let client_ip = generation.acl.client_ip(peer, req.headers())?;
    generation.acl.check(client_ip)?;
    if let Some((content_type, body)) = status_page::asset(path) {
        return page(req.method(), path, content_type, body);
    }
    let (route_ok, method_ok) = match path {
        "/admin/reload" => (true, req.method() == Method::POST),
        "/admin/status" => (true, req.method() == Method::GET),
        "/admin/live" => (true, req.method() == Method::GET),
        "/admin/usage" => (true, req.method() == Method::GET),
        _ => (false, false),
    };
    if !route_ok {
        return Err(GatewayError::not_found(path));
    }
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| bearer_token(v.as_bytes()))
        .map(Sha256::digest);
    if given != Some(Sha256::digest(admin_key.expose().as_bytes())) {
        return Err(GatewayError::unauthorized("Invalid admin key"));
    }
    if !method_ok {
        return Err(GatewayError::method_not_allowed(req.method(), path));
    }
    if path == "/admin/reload" {
        return Ok(match runtime.reload_async("admin").await {
            Ok(n) => json_response(StatusCode::OK, json!({"reloaded": true, "generation": n})),
            Err(e) => json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": {
                    "message": format!("reload failed; the previous configuration keeps serving: {e}"),
                    "type": "invalid_request_error", "param": null, "code": "reload_failed"
                }}),
            ),
        });
    }
    if path == "/admin/live" {
        let mut resp = json_response(StatusCode::OK, live(runtime));
        status_page::harden(resp.headers_mut());
        return Ok(resp);
    }
    if path == "/admin/usage" {
        let usage = crate::usage::report::usage(&generation.config, req.uri().query()).await?;
        return Ok(json_response(StatusCode::OK, usage));
    }
    Ok(json_response(StatusCode::OK, status(runtime)))
}

/// One of the status page's files.
fn page(
    method: &Method,
    path: &str,
    content_type: &'static str,
    body: &'static str,
) -> Result<Response<ResponseBody>, GatewayError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(GatewayError::method_not_allowed(method, path));
    }
    let mut r = Response::new(ResponseBody::full(Bytes::from_static(body.as_bytes())));
    let (name, value) = status_page::content_type(content_type);
    r.headers_mut().insert(name, value);
    status_page::harden(r.headers_mut());
    Ok(r)
}

/// The body of `GET /admin/live`: the live statistics, the configured upstreams' recent
/// outcomes, the config generation and the last reload's result.
pub fn live(runtime: &Runtime) -> serde_json::Value {
    let g = runtime.current();
    let upstreams: Vec<&str> = g
        .routing
        .upstreams
        .iter()
        .map(|u| u.name.as_str())
        .collect();
    let snapshot = crate::observe::live::snapshot(&upstreams);
    let mut v = serde_json::to_value(&snapshot).unwrap_or_else(|_| json!({}));
    let last = runtime.last_reload().map(|r| {
        json!({
            "at": rfc3339(r.at),
            "trigger": r.trigger,
            "ok": r.error.is_none(),
            "error": r.error,
        })
    });
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "config".into(),
            json!({
                "generation": g.number,
                "loaded_at": rfc3339(g.loaded_at),
                "sha256": g.config_sha256,
                "last_reload": last,
                "reloads": {
                    "succeeded": runtime.reloads_ok.load(Ordering::Relaxed),
                    "failed": runtime.reloads_failed.load(Ordering::Relaxed),
                },
            }),
        );
    }
    v
}

/// The body of `GET /admin/status`.
pub fn status(runtime: &Runtime) -> serde_json::Value {
    let g = runtime.current();
    let plugins: Vec<_> = g
        .plugin_sources
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "file": p.file.as_ref().map(|f| f.display().to_string()),
                "bundled": p.file.is_none(),
                "sha256": p.sha256,
            })
        })
        .collect();
    let last = runtime.last_reload().map(|r| {
        json!({
            "at": rfc3339(r.at),
            "trigger": r.trigger,
            "ok": r.error.is_none(),
            "error": r.error,
        })
    });
    json!({
        "generation": g.number,
        "loaded_at": rfc3339(g.loaded_at),
        "config": {
            "file": runtime.config_path().map(|p| p.display().to_string()),
            "sha256": g.config_sha256,
        },
        "plugins": plugins,
        "upstreams": g.routing.upstreams.iter().map(|u| u.name.clone()).collect::<Vec<_>>(),
        "credentials": g.credentials.names(),
        "keys": g.keys.len(),
        "last_reload": last,
        "last_reload_error": runtime.last_error(),
        "reloads": {
            "succeeded": runtime.reloads_ok.load(Ordering::Relaxed),
            "failed": runtime.reloads_failed.load(Ordering::Relaxed),
        },
        "log": { "dropped_lines": crate::logging::dropped_lines() },
        "store": g.store.as_ref().map(|s| s.status()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_801_396_800 + 3661)),
            "2027-01-31T13:01:01Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
