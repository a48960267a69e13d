//! The request pipeline. Every request runs the same fixed order of stages, each a small
//! module with one job, against the one generation it loaded at the start:
//!
//! ```text
//! route ─► ip_acl ─► method ─► auth ─► request_body ─► defaults (+ field_aliases) ─► forward
//! ```
//!
//! A stage either lets the request continue or answers it (an `Err(GatewayError)` here).
//! The access log record travels with the response body and is written when it ends.

pub mod access_log;
pub mod auth;
pub mod conn_pool;
pub mod defaults;
pub mod fallback;
pub mod forward;
pub mod http1;
pub mod ip_acl;
pub mod json_scan;
pub mod models;
pub mod policy;
pub mod request_body;
pub mod routing;
pub mod scripts;
pub mod sse;
pub mod transport;
pub mod usage;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response};

use crate::body::ResponseBody;
use crate::error::GatewayError;
use crate::routes::{route, Route};
use crate::runtime::Generation;

use access_log::AccessLog;
use auth::Principal;
use routing::Plan;

/// A static name: inserting a `&str` name builds (and allocates) a `HeaderName` every time.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How much of a request body a DEBUG log line shows.
const DEBUG_BODY_BYTES: usize = 2048;

/// The first `max` bytes of `body` as text, marked when cut.
fn truncated(body: &[u8], max: usize) -> String {
    let cut = &body[..body.len().min(max)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if body.len() > max {
        s.push_str(&format!("…[{} more bytes]", body.len() - max));
    }
    s
}

/// How long a client may take to send its body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A request's id: the client's own `x-request-id` when it is short and plain, else a new one.
/// Kept as the header value that goes upstream and back to the client (and is read as text by
/// the logs): one allocation per request, and clones (the access log's) share it.
#[derive(Clone, Debug)]
pub struct RequestId(HeaderValue);

impl RequestId {
    pub fn of(headers: &http::HeaderMap) -> Self {
        if let Some(v) = headers.get(&REQUEST_ID) {
            let b = v.as_bytes();
            if (1..=128).contains(&b.len())
                && b.iter()
                    .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
            {
                // Copied: a slice of the request head would keep the connection's read buffer
                // alive for as long as the id lives (a stream's access log holds it).
                if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::copy_from_slice(b)) {
                    return RequestId(v);
                }
            }
        }
        static PREFIX: OnceLock<u32> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let prefix = *PREFIX.get_or_init(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
                .unwrap_or(0);
            t ^ std::process::id().rotate_left(16)
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // `req-` + 8 hex digits of the prefix + 12 of the counter, without `format!` (which was
        // the single most expensive call of the request path in an instruction count).
        let mut id = [0u8; 24];
        id[..4].copy_from_slice(b"req-");
        hex_into(&mut id[4..12], u64::from(prefix));
        hex_into(&mut id[12..], n);
        RequestId(
            HeaderValue::from_maybe_shared(Bytes::from_owner(id))
                .unwrap_or_else(|_| HeaderValue::from_static("req-unknown")),
        )
    }

    /// The id as text: always plain ASCII (checked or made so above).
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("req-unknown")
    }

    pub fn header(&self) -> &HeaderValue {
        &self.0
    }

    pub fn into_header(self) -> HeaderValue {
        self.0
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Writes the low `out.len()` hex digits of `v` into `out`.
pub(crate) fn hex_into(out: &mut [u8], mut v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

fn json_response(status: http::StatusCode, body: Bytes) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Runs one request through the pipeline. Never fails: every error becomes a response.
///
/// Not an `async fn`: one of those keeps its arguments in its future next to the locals they
/// move into. Split here, the request's head is held once, in this future, and the stages
/// below borrow it, so the boxed future (see `server::dispatch`) stays small to allocate and
/// to move.
pub fn handle<B>(
    generation: Arc<Generation>,
    peer: IpAddr,
    req: Request<B>,
) -> impl std::future::Future<Output = Response<ResponseBody>>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut head, body) = req.into_parts();
    async move {
        let rid = RequestId::of(&head.headers);
        // On the stack: boxed and attached to the body only when access logging is on.
        let mut log = AccessLog::new(
            generation.config.logging.access_log,
            rid.clone(),
            head.method.clone(),
            head.uri.path(),
        );
        let mut resp = match run(&generation, peer, &mut head, body, &rid, &mut log).await {
            Ok(resp) => resp,
            Err(e) => {
                if e.status().is_server_error() {
                    tracing::warn!(request_id = %rid, status = e.status().as_u16(), code = e.code, "{}", e.message);
                } else {
                    tracing::debug!(request_id = %rid, status = e.status().as_u16(), code = e.code, "{}", e.message);
                }
                log.outcome = e.code;
                e.into_response()
            }
        };
        log.status = resp.status().as_u16();
        log.stream = resp.body().is_event_stream();
        resp.headers_mut().insert(&REQUEST_ID, rid.into_header());
        if log.enabled {
            resp.body_mut().set_log(Box::new(log));
        }
        resp
    }
}

/// What the stages before `forward` decided: answer now, or send this upstream.
pub enum Step {
    Respond(Response<ResponseBody>),
    Forward(Box<Prepared>, Plan),
}

/// Where on an upstream a request goes.
#[derive(Debug, Clone)]
pub enum Target {
    Chat,
    /// `/v1/<rest>` under the upstream's base URL.
    V1(String),
    /// A path (with query) a script chose, on the upstream's origin.
    Path(String),
}

impl Target {
    pub fn url<'u>(&self, upstream: &'u forward::Upstream, query: Option<&str>) -> Cow<'u, str> {
        match self {
            Target::Chat => upstream.chat_url(query),
            Target::V1(rest) => Cow::Owned(upstream.url_for(rest, query)),
            Target::Path(path) => Cow::Owned(format!("{}{}", upstream.origin(), path)),
        }
    }

    /// Path and query of [`Target::url`] (what scripts see as `req.path`).
    pub fn path(&self, upstream: &forward::Upstream, query: Option<&str>) -> String {
        match self {
            Target::Path(p) => p.clone(),
            _ => {
                let url = self.url(upstream, query);
                url.strip_prefix(upstream.origin())
                    .unwrap_or(&url)
                    .to_owned()
            }
        }
    }
}

/// A request that passed every stage and is ready for the upstream.
pub struct Prepared {
    pub principal: Arc<Principal>,
    pub method: http::Method,
    pub target: Target,
    pub query: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// Concurrency slot of the key, held until the response ends.
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Whether the gateway (not the client) asked for `stream_options.include_usage`.
    pub injected_usage: bool,
    /// What `on_request` hooks left in `req.ctx`, for the response hooks.
    pub script_ctx: Option<rhai::Map>,
}

async fn run<B>(
    generation: &Generation,
    peer: IpAddr,
    head: &mut http::request::Parts,
    body: B,
    rid: &RequestId,
    log: &mut AccessLog,
) -> Result<Response<ResponseBody>, GatewayError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Taken apart within this statement: a `match` on the awaited step itself would keep the
    // step (and the `?`'s result) in this future for as long as the upstream call runs.
    let (mut p, plan) = match prepare(generation, peer, head, body, rid.as_str(), log).await? {
        Step::Respond(resp) => return Ok(resp),
        Step::Forward(p, plan) => (p, plan),
    };
    // 6. forward (with fallback across the plan's upstreams)
    let principal = p.principal.clone();
    let permit = p.permit.take();
    let injected_usage = p.injected_usage;
    let mut ctx = p.script_ctx.take();
    let sent = fallback::send(generation, &p, &plan, rid).await;
    // The request head is on the wire: its map serves the next message's head.
    http1::recycle_header_map(std::mem::take(&mut p.headers));
    drop(p);
    let mut resp = sent?;
    let plugins = &generation.plugins;
    let is_sse = resp.body().is_event_stream();
    if is_sse && plugins.has_on_event() {
        if let Some(relay) = resp.body_mut().relay_mut() {
            relay.filter(Box::new(scripts::ScriptEventFilter::new(
                plugins.clone(),
                ctx.take().unwrap_or_default(),
            )));
        }
    }
    if let Some(relay) = resp.body_mut().relay_mut() {
        if let Some(permit) = permit {
            relay.guard(Box::new(permit));
        }
        if let Some(tpm) = principal.policy.as_ref().and_then(|pol| pol.tpm.clone()) {
            let meter = policy::UsageMeter::new(tpm);
            if relay.is_sse() {
                relay.filter(Box::new(usage::UsageFilter::new(meter, injected_usage)));
            } else {
                relay.observe(Box::new(usage::UsageObserver::new(meter)));
            }
        }
    }
    if !is_sse && plugins.has_on_response() {
        resp = scripts::on_response(
            plugins,
            resp,
            ctx.unwrap_or_default(),
            generation.config.limits.max_body_bytes,
        )
        .await?;
    }
    Ok(resp)
}

/// Runs every stage before `forward` (route, ip_acl, auth, policy, body, defaults, routing).
/// Public so the benchmarks can time the whole request path without sockets.
///
/// Takes the request's head by reference (its headers are taken out for the upstream) so
/// that the head is not copied into every future of the pipeline.
pub async fn prepare<B>(
    generation: &Generation,
    peer: IpAddr,
    parts: &mut http::request::Parts,
    body: B,
    rid: &str,
    log: &mut AccessLog,
) -> Result<Step, GatewayError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let cfg = &generation.config;
    let path = parts.uri.path();
    let route = route(path);

    match route {
        Route::NotFound => return Err(GatewayError::not_found(path)),
        Route::Health => {
            if !route.allows(&parts.method) {
                return Err(GatewayError::method_not_allowed(&parts.method, path));
            }
            return Ok(Step::Respond(json_response(
                http::StatusCode::OK,
                Bytes::from_static(br#"{"status":"ok"}"#),
            )));
        }
        _ => {}
    }

    // 1. ip_acl
    let client_ip = generation.acl.client_ip(peer, &parts.headers);
    log.client_ip = Some(client_ip);
    generation.acl.check(client_ip)?;

    if !route.allows(&parts.method) {
        return Err(GatewayError::method_not_allowed(&parts.method, path));
    }

    // 2. auth
    let principal = generation.keys.authenticate(&parts.headers)?;
    log.principal = Some(principal.label.clone());

    if route == Route::Models {
        // Boxed: a rare route whose fetch future would otherwise widen every request's state.
        let body = Box::pin(models::list_for(generation, &principal)).await?;
        return Ok(Step::Respond(json_response(http::StatusCode::OK, body)));
    }

    // 3. body
    let content_length = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok());
    let mut bytes = request_body::read(
        body,
        content_length,
        cfg.limits.max_body_bytes,
        BODY_READ_TIMEOUT,
    )
    .await?;

    if tracing::enabled!(target: "sophgate::body", tracing::Level::DEBUG) {
        tracing::debug!(
            target: "sophgate::body",
            request_id = %rid,
            bytes = bytes.len(),
            body = %truncated(&bytes, DEBUG_BODY_BYTES),
            "request body"
        );
    }

    let policy = principal.policy.as_ref();
    let plugins = &generation.plugins;
    let hooks = plugins.has_on_request();
    let mut injected_usage = false;
    let mut headers = std::mem::take(&mut parts.headers);
    let mut script_ctx: Option<rhai::Map> = None;
    // `body_changed`: whether `body_value` differs from `bytes` (else bytes go as they came).
    let (mut target, plan, body_value, mut body_changed) = match route {
        Route::ChatCompletions => {
            let (peek, renames) = request_body::peek_chat_scanning(&bytes, &cfg.field_aliases)?;
            // Borrowed from the body: an owned copy is made only for the access log.
            let model = peek.model.as_deref().or(cfg.defaults.model.as_deref());
            if let Some(pol) = policy {
                pol.check_model(model)?;
            }
            let plan = routing::plan(generation, &principal, model)?;
            let needs_defaults = defaults::needed(&cfg.defaults, &peek);
            // tpm counts real usage: make sure a stream reports it.
            injected_usage = policy.is_some_and(|p| p.tpm.is_some())
                && peek.stream == Some(true)
                && !peek.include_usage();
            let rename = plan.rename_to.is_some();
            if log.enabled {
                log.model = model.map(str::to_owned);
            }
            drop(peek);
            let aliases = !cfg.field_aliases.is_empty();
            // 4. defaults, field aliases, route renaming: parse only when something changes.
            // Aliases alone are renamed in the text, without a tree (unless a case needs one).
            let text_only = aliases && !(needs_defaults || rename || injected_usage || hooks);
            let value = if text_only && rename_scanned(&mut bytes, renames, &cfg.field_aliases) {
                (None, false)
            } else if needs_defaults || rename || injected_usage || aliases || hooks {
                let mut value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                    GatewayError::bad_request("invalid_json", format!("Invalid JSON body: {e}"))
                })?;
                if let Some(obj) = value.as_object_mut() {
                    defaults::apply(&cfg.defaults, obj);
                    if let Some(to) = &plan.rename_to {
                        obj.insert("model".into(), serde_json::Value::String(to.clone()));
                    }
                    if injected_usage {
                        let opts = obj
                            .entry("stream_options")
                            .or_insert_with(|| serde_json::json!({}));
                        if let Some(o) = opts.as_object_mut() {
                            o.insert("include_usage".into(), serde_json::Value::Bool(true));
                        }
                    }
                }
                let renamed = defaults::rename_fields(&mut value, &cfg.field_aliases);
                let changed = needs_defaults || rename || injected_usage || renamed;
                (Some(value), changed)
            } else {
                (None, false)
            };
            (Target::Chat, plan, value.0, value.1)
        }
        Route::V1(rest) => {
            // Other endpoints (embeddings, …) name a model too: the key's globs and the routes
            // apply to it. Bodies that are not a JSON object have no model.
            let restricted = policy.is_some_and(|p| !p.models.is_empty());
            let scanned = request_body::peek_model_scanning(&bytes, &cfg.field_aliases);
            let (model, valid_json, renames) = match scanned {
                Ok((m, renames)) => (m, true, renames),
                Err(e) if restricted => return Err(e),
                Err(_) => (None, false, request_body::Renames::NotScanned),
            };
            if let (Some(pol), Some(m)) = (policy, model.as_deref()) {
                pol.check_model(Some(m))?;
            }
            let plan = routing::plan(generation, &principal, model.as_deref())?;
            log.model = model;
            // Scripts see a JSON body when there is one; other bodies pass untouched.
            let rename = plan.rename_to.is_some();
            let aliases = !cfg.field_aliases.is_empty();
            // Aliases alone: renamed in the text when it is valid JSON (see the chat route).
            let text_done = aliases
                && !hooks
                && !rename
                && valid_json
                && rename_scanned(&mut bytes, renames, &cfg.field_aliases);
            let mut value = if !text_done && (hooks || rename || aliases) {
                serde_json::from_slice::<serde_json::Value>(&bytes).ok()
            } else {
                None
            };
            let mut changed = false;
            if let Some(v) = value.as_mut() {
                if let (Some(obj), Some(to)) = (v.as_object_mut(), &plan.rename_to) {
                    obj.insert("model".into(), serde_json::Value::String(to.clone()));
                    changed = true;
                }
                changed |= defaults::rename_fields(v, &cfg.field_aliases);
            }
            (Target::V1(rest.to_owned()), plan, value, changed)
        }
        Route::Health | Route::Models | Route::NotFound => {
            return Err(GatewayError::internal("unreachable route"))
        }
    };

    // 5. scripts: on_request sees (and may change) body, headers and upstream path.
    let mut body_value = body_value;
    if hooks {
        let planned_path = plan
            .upstreams
            .first()
            .map(|u| target.path(u, parts.uri.query()))
            .unwrap_or_default();
        let had_body = body_value.is_some();
        let mut sreq = crate::scripting::ScriptRequest {
            body: body_value.take().unwrap_or(serde_json::Value::Null),
            headers: scripts::visible_headers(&headers),
            path: planned_path.clone(),
            method: parts.method.as_str().to_owned(),
            client_ip: client_ip.to_string(),
            key: principal.label.to_string(),
            ctx: rhai::Map::new(),
        };
        plugins
            .on_request(&mut sreq)
            .map_err(scripts::failure_to_error)?;
        if sreq.path != planned_path {
            target = Target::Path(sreq.path.clone());
        }
        headers = sreq.headers;
        if had_body || !sreq.body.is_null() {
            body_value = Some(sreq.body);
            body_changed = true;
        }
        script_ctx = Some(sreq.ctx);
    }
    if let Some(value) = body_value.filter(|_| body_changed) {
        bytes = Bytes::from(
            serde_json::to_vec(&value)
                .map_err(|_| GatewayError::internal("could not encode the request"))?,
        );
    }

    // Limits last, so a refused request does not use up the key's budget.
    let permit = match policy {
        Some(pol) => pol.admit()?,
        None => None,
    };

    Ok(Step::Forward(
        Box::new(Prepared {
            principal,
            method: parts.method.clone(),
            target,
            query: parts.uri.query().map(str::to_owned),
            headers,
            body: bytes,
            permit,
            injected_usage,
            script_ctx,
        }),
        plan,
    ))
}

/// Applies `field_aliases` to the body's text when that needs no tree, with the keys the body
/// stage's scan found (or scanning now, where serde_json peeked instead); `false` leaves the
/// body as it was for the tree path (see [`defaults::rename_keys_in_text`]).
fn rename_scanned(
    bytes: &mut Bytes,
    renames: request_body::Renames<'_>,
    aliases: &[(String, String)],
) -> bool {
    let renamed = match renames {
        request_body::Renames::NotScanned => defaults::rename_keys_in_text(bytes, aliases),
        request_body::Renames::InText(found) => defaults::apply_renames(bytes, &found),
        request_body::Renames::NeedsTree => defaults::TextRename::NeedsTree,
    };
    match renamed {
        defaults::TextRename::Unchanged => true,
        defaults::TextRename::Renamed(v) => {
            *bytes = Bytes::from(v);
            true
        }
        defaults::TextRename::NeedsTree => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_id(h: &http::HeaderMap) -> String {
        let id = RequestId::of(h);
        assert_eq!(id.header().as_bytes(), id.as_str().as_bytes());
        id.to_string()
    }

    #[test]
    fn generated_request_ids_are_unique_hex() {
        let h = http::HeaderMap::new();
        let a = request_id(&h);
        let b = request_id(&h);
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert_eq!(id.len(), 24, "{id}");
            let hex = id.strip_prefix("req-").unwrap();
            assert!(hex
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        }
    }

    #[test]
    fn a_plain_client_request_id_is_kept() {
        let mut h = http::HeaderMap::new();
        h.insert(&REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(&REQUEST_ID, HeaderValue::from_static("bad id"));
        assert!(request_id(&h).starts_with("req-"));
    }
}
