//! The gateway: every request runs the same fixed phases against the one generation it
//! loaded at the start. [`prepare`] and [`run`] state their order, and are the only place
//! that does:
//!
//! ```text
//! route ─► ip_acl ─► auth ─► body ─► routing ─► budget ─► rewrite ─► scripts ─► policy ─► upstream ─► relay
//! ```
//!
//! Each phase is a stage module under [`stages`] (or [`upstream`], [`relay`]) that takes the
//! narrow table it needs and the request's [`RequestCtx`]. A phase either lets the request
//! continue or answers it (an `Err(GatewayError)` here). The access log record travels with
//! the response body and is written when it ends.

pub mod admin;
pub mod ctx;
pub mod generation;
pub mod relay;
pub mod request_id;
pub mod routes;
pub mod server;
pub mod stages;
pub mod upstream;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response};

use crate::error::GatewayError;
use crate::http::headers::recycle_header_map;
use ctx::RequestCtx;
use generation::Generation;
use relay::access_log::AccessLog;
use relay::body::ResponseBody;
use request_id::RequestId;
use routes::{route, Route};
use stages::{body, rewrite, scripts};
use upstream::prepared::{Prepared, Target};
use upstream::{fallback, models};

pub use upstream::prepared::Step;

/// How much of a request body a DEBUG log line shows.
const DEBUG_BODY_BYTES: usize = 2048;

/// How long a client may take to send its body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

fn json_response(status: http::StatusCode, body: Bytes) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Runs one request through the gateway. Never fails: every error becomes a response.
///
/// Not an `async fn`: one of those keeps its arguments in its future next to the locals they
/// move into. Split here, the request's head is held once, in this future, and the phases
/// borrow it, so the boxed future (see `server::dispatch`) stays small to allocate and move.
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
        // On the stack until `finish` attaches it to the body: it becomes the end record
        // (live statistics; the access log and the metrics when on).
        let log = AccessLog::new(
            generation.config.logging.access_log,
            rid.clone(),
            head.method.clone(),
            head.uri.path(),
        )
        .metered(
            generation.config.metrics.enabled,
            route(head.uri.path()).label(),
        );
        let mut ctx = RequestCtx::new(peer, rid, log);
        if let Some(t) = &generation.tracing {
            ctx.trace = Some(Box::new(t.start(
                &head.headers,
                &head.method,
                head.uri.path(),
            )));
        }
        let resp = match run(&generation, &mut ctx, &mut head, body).await {
            Ok(resp) => resp,
            Err(e) => ctx.failed(e),
        };
        ctx.finish(resp)
    }
}

/// The phases of a request, in order: those before the upstream ([`prepare`]), then the
/// upstream call and the relay of its answer.
async fn run<B>(
    generation: &Generation,
    ctx: &mut RequestCtx,
    head: &mut http::request::Parts,
    body: B,
) -> Result<Response<ResponseBody>, GatewayError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Taken apart within this statement: a `match` on the awaited step itself would keep the
    // step (and the `?`'s result) in this future for as long as the upstream call runs.
    let mut p = match prepare(generation, ctx, head, body).await? {
        Step::Respond(resp) => return Ok(resp),
        Step::Forward(p) => p,
    };
    // 9. upstream: credentials and the attempt loop across the plan's upstreams
    // The request's meter reads the answer's usage (the usage taps): the metrics' tap then
    // only times a stream (a plain answer's first byte is the record's own), and the end
    // record takes the tokens from the meter's tally.
    let usage_read_by_meter = p.usage.is_some();
    let taps = relay::Taps::take(&mut p);
    ctx.log.tally = taps.usage_tally();
    if let Some(t) = ctx.trace.as_deref() {
        t.request_params(&p.body);
    }
    let mut sent = fallback::send(
        &generation.credentials,
        &p,
        &ctx.rid,
        ctx.trace.as_deref_mut(),
    )
    .await;
    // The request head is on the wire: its map serves the next message's head.
    recycle_header_map(std::mem::take(&mut p.headers));
    drop(p);
    if let (Ok(resp), Some(start)) = (sent.as_mut(), ctx.log.start.filter(|_| ctx.log.metrics)) {
        if let Some(relay) = resp
            .body_mut()
            .relay_mut()
            .filter(|r| r.is_sse() || !usage_read_by_meter)
        {
            let tap = crate::observe::stream_tap::StreamTap::new(start);
            relay.tap(if usage_read_by_meter {
                tap.without_usage()
            } else {
                tap
            });
        }
    }
    // 10. relay: stream filters (scripts.on_event, usage), on_response, the key's slot
    taps.attach(
        &generation.plugins,
        generation.config.limits.max_body_bytes,
        sent?,
    )
    .await
}

/// The phases before the upstream: route, ip_acl, auth, body, routing, budget, rewrite,
/// scripts, policy. Public so the benchmarks can time the whole request path without sockets.
///
/// Takes the request's head by reference (its headers are taken out for the upstream) so
/// that the head is not copied into every future of the pipeline.
pub async fn prepare<B>(
    generation: &Generation,
    ctx: &mut RequestCtx,
    parts: &mut http::request::Parts,
    body: B,
) -> Result<Step, GatewayError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let cfg = &generation.config;

    // 1. route
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

    // 2. ip_acl (before the method check: a refused client learns nothing of the routes)
    let client_ip = generation.acl.client_ip(ctx.peer, &parts.headers)?;
    ctx.set_client_ip(client_ip);
    if let Some(t) = ctx.trace.as_deref() {
        t.client_address(client_ip);
    }
    generation.acl.check(client_ip)?;
    if !route.allows(&parts.method) {
        return Err(GatewayError::method_not_allowed(&parts.method, path));
    }

    // 3. auth
    let principal = generation.keys.authenticate(&parts.headers)?;
    ctx.log.principal = Some(principal.label.clone());
    if let Some(t) = ctx.trace.as_deref() {
        t.key_label(&principal.label);
    }
    if route == Route::Models {
        // Boxed: a rare route whose fetch future would otherwise widen every request's state.
        let list = Box::pin(models::list_for(
            &generation.routing,
            &generation.credentials,
            generation.static_models.as_ref(),
            cfg.models_cache_ttl,
            &principal,
        ))
        .await;
        return match list {
            Ok(list) => Ok(Step::Respond(json_response(http::StatusCode::OK, list))),
            // The upstream refused this key's credential: its answer, as for any request.
            Err(models::ModelsError::Refused { status, body }) => {
                Ok(Step::Respond(json_response(status, body)))
            }
            Err(models::ModelsError::Gateway(e)) => Err(e),
        };
    }

    ctx.usage = Some(crate::usage::RequestMeter::new(principal.label.clone()));

    // 4. body: read whole, then one pass for the model and what the rewrite needs
    let content_length = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok());
    let mut bytes = body::read(
        body,
        content_length,
        cfg.limits.max_body_bytes,
        BODY_READ_TIMEOUT,
    )
    .await?;
    body::log_debug(&bytes, ctx.rid.as_str(), DEBUG_BODY_BYTES);
    let policy = principal.policy.as_ref();
    let restricted = policy.is_some_and(|p| !p.models.is_empty());
    // With no native aliases, the one scan looks for the keys rename-only hooks will most
    // likely rename instead, so the plugin stage need not scan the body again.
    let expected = Some(generation.plugins.expected_renames())
        .filter(|_| cfg.field_aliases.is_empty())
        .flatten();
    let scan_for = expected.unwrap_or(&cfg.field_aliases);
    let peeked = body::peek(&route, &bytes, scan_for, restricted)?;
    let model = match &route {
        Route::ChatCompletions => peeked.model.as_deref().or(cfg.defaults.model.as_deref()),
        _ => peeked.model.as_deref(),
    };
    if let Some(meter) = ctx.usage.as_mut() {
        meter.set_model(model);
    }
    if let Some(pol) = policy {
        if model.is_some() || route == Route::ChatCompletions {
            pol.check_model(model)?;
        }
    }

    // 5. routing
    let plan = generation.routing.plan(&principal, model)?;
    if let Some(t) = ctx.trace.as_deref_mut() {
        t.request_model(model);
    }
    ctx.log.model = model.map(str::to_owned);
    let mut facts = peeked.facts;
    let expected_found = expected.map(|aliases| scripts::Scanned {
        aliases,
        found: std::mem::replace(&mut facts.renames, body::Renames::NotScanned),
    });

    // 5b. budget: a key over its budget for this period goes no further
    stages::budget::admit(&principal, model, &cfg.pricing, ctx.usage.as_mut()).await?;

    // 6. rewrite: defaults, field_aliases, the route's rename, the usage event metering needs
    let hooks = generation.plugins.has_on_request();
    // Usage (the ledger, budgets, tpm) counts real tokens: make sure a stream reports them.
    let injected_usage = facts.streams_without_usage();
    let text_renames = hooks && scripts::renames_in_text(&generation.plugins, facts.json, &bytes);
    let rewritten = rewrite::apply(
        &mut bytes,
        facts,
        &rewrite::Edits {
            defaults: &cfg.defaults,
            aliases: &cfg.field_aliases,
            rename_to: plan.rename_to.as_deref(),
            inject_usage: injected_usage,
            tree_for_scripts: generation.plugins.request_body_reached() && !text_renames,
        },
    )?;
    let mut target = match route {
        Route::V1(rest) => Target::V1(rest.to_owned()),
        _ => Target::Chat,
    };

    // 7. scripts: on_request sees (and may change) body, headers and upstream path
    let mut headers = std::mem::take(&mut parts.headers);
    // The client headers `forward_headers` keeps from the upstream are gone before the
    // scripts: what a script leaves (or sets) is what goes.
    cfg.forward_headers.strip(&mut headers);
    let mut script_ctx = None;
    let (mut body_value, mut body_changed) = (rewritten.tree, rewritten.changed);
    let mut text_edited = rewritten.text_edited;
    if hooks {
        let out = scripts::on_request(
            &generation.plugins,
            scripts::RequestView {
                plan: &plan,
                target: &target,
                query: parts.uri.query(),
                method: &parts.method,
                client_ip,
                key: &principal.label,
            },
            headers,
            body_value.take(),
            text_renames.then_some(&mut bytes),
            expected_found.filter(|_| !text_edited),
        )?;
        if let Some(path) = out.path {
            target = Target::Path(path);
        }
        headers = out.headers;
        if let Some(v) = out.body {
            body_value = Some(v);
        }
        body_changed |= out.body_changed;
        text_edited |= out.text_edited;
        script_ctx = Some(out.ctx);
    }
    let reencoded = match body_value.filter(|_| body_changed) {
        Some(value) => {
            bytes = Bytes::from(
                serde_json::to_vec(&value)
                    .map_err(|_| GatewayError::internal("could not encode the request"))?,
            );
            true
        }
        None => false,
    };
    if text_edited || reencoded {
        // The gateway wrote this body: it is JSON, whatever the client called its own.
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }

    // 8. policy: limits last, so a refused request does not use up the key's budget
    let permit = match policy {
        Some(pol) => pol.admit(&principal.label).await?,
        None => None,
    };

    Ok(Step::Forward(Box::new(Prepared {
        principal,
        method: parts.method.clone(),
        target,
        query: parts.uri.query().map(str::to_owned),
        headers,
        body: bytes,
        permit,
        usage: ctx.usage.take(),
        injected_usage,
        script_ctx,
        plan,
    })))
}
