//! Stage 5, the plugin stage: runs the generation's Rhai hooks — `on_request` before the
//! request goes upstream, `on_response` on a non-streamed answer, `on_event` on each event of
//! a streamed one. A request that meets no hook pays nothing here: the caller checks
//! `has_on_*` first. A body or event data no hook can reach is not parsed, and one no hook
//! changed goes on as the bytes that came.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;

use crate::error::{ErrorKind, GatewayError};
use crate::gateway::relay::access_log::outcome;
use crate::gateway::relay::body::{EventAction, EventFilter, ResponseBody};
use crate::gateway::relay::sse::error_event;
use crate::gateway::stages::body::Renames;
use crate::gateway::stages::rewrite::{
    apply_renames, rename_fields, rename_keys_in_text, TextRename,
};
use crate::gateway::stages::routing::Plan;
use crate::gateway::upstream::prepared::Target;
use crate::http::headers::is_hop_by_hop;
use crate::scripting::{
    Aliases, EventStream, EventVerdict, Plugins, ScriptFailure, ScriptRequest, ScriptResponse,
};

/// The one mapping from a script failure to what the client sees: a thrown status and
/// message as they are, anything else a 500 naming only the plugin (details are in the log).
pub fn failure_to_error(f: ScriptFailure) -> GatewayError {
    failure_in("", f)
}

/// [`failure_to_error`] for a failure in `hook`, counted in `sophgate_script_errors_total`.
fn failure_in(hook: &'static str, f: ScriptFailure) -> GatewayError {
    if let ScriptFailure::Error { plugin } = &f {
        if !hook.is_empty() {
            crate::observe::metrics::script_error(plugin, hook);
        }
    }
    match f {
        ScriptFailure::Thrown { status, message } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            GatewayError::new(ErrorKind::Script(status), "script_rejected", message)
        }
        ScriptFailure::Error { plugin } => GatewayError::new(
            ErrorKind::Internal,
            "script_error",
            format!("script error in plugin {plugin}"),
        ),
    }
}

/// Headers as scripts see them: the client's, minus credentials and hop-by-hop headers.
pub fn visible_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let hidden = is_hop_by_hop(name)
            || matches!(
                name.as_str(),
                "authorization" | "proxy-authorization" | "host" | "content-length"
            );
        if !hidden {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// What `on_request` sees of the request besides its headers and body.
pub struct RequestView<'a> {
    pub plan: &'a Plan,
    pub target: &'a Target,
    pub query: Option<&'a str>,
    pub method: &'a http::Method,
    pub client_ip: std::net::IpAddr,
    pub key: &'a str,
}

/// What `on_request` hooks changed.
pub struct RequestEdits {
    /// The upstream path, when a hook changed it.
    pub path: Option<String>,
    /// The headers that go upstream.
    pub headers: HeaderMap,
    /// The body, when there was one or a hook set one.
    pub body: Option<serde_json::Value>,
    /// Whether a hook changed the body (else it goes on as it came).
    pub body_changed: bool,
    /// Whether keys were renamed in the body's text (given as `text`), which then goes on.
    pub text_edited: bool,
    /// `req.ctx`, for the response hooks.
    pub ctx: rhai::Map,
}

/// Whether the `on_request` hooks only rename keys in the body (the bundled
/// `field_aliases.rhai`) and the body is a JSON object (`json`: known to be valid JSON): then
/// it is not parsed for them, and [`on_request`] renames its keys in the text as the native
/// `field_aliases` key does.
pub fn renames_in_text(plugins: &Plugins, json: bool, bytes: &[u8]) -> bool {
    json && plugins.request_body_renamed_only() && bytes.trim_ascii_start().first() == Some(&b'{')
}

/// What the body phase's scan found of the keys the hooks were expected to rename
/// ([`Plugins::expected_renames`]) in the body's text, still as it came.
pub struct Scanned<'k> {
    pub aliases: &'k [(String, String)],
    pub found: Renames<'k>,
}

/// Runs the `on_request` hooks over the request's headers and (parsed) body. `text` is the
/// body's bytes when [`renames_in_text`] holds and no body was parsed: the hooks see a
/// stand-in object and the keys are renamed in these bytes (with the positions `scanned`
/// found, when the hooks renamed first with the aliases it looked for).
pub fn on_request(
    plugins: &Plugins,
    view: RequestView<'_>,
    headers: HeaderMap,
    body: Option<serde_json::Value>,
    text: Option<&mut Bytes>,
    scanned: Option<Scanned<'_>>,
) -> Result<RequestEdits, GatewayError> {
    // Only the fields a hook can name are built: the others it can neither read nor change.
    let reaches = |name: &str| plugins.request_reaches(name);
    let planned_path = match view.plan.upstreams.first() {
        Some(u) if reaches("path") => view.target.path(u, view.query),
        _ => String::new(),
    };
    let text = text.filter(|_| body.is_none());
    let had_body = body.is_some();
    let stand_in = || match text {
        Some(_) => serde_json::Value::Object(serde_json::Map::new()),
        None => serde_json::Value::Null,
    };
    let mut sreq = ScriptRequest {
        body: body.unwrap_or_else(stand_in),
        headers: if reaches("headers") || headers.contains_key(CONNECTION) {
            visible_headers(&headers)
        } else {
            // Hooks that never name the headers cannot see them: they go on as they came,
            // with no copy. The upstream stage never sends a header `visible_headers` hides,
            // so it sends the same lines in the same order; only the names a `Connection`
            // header lists differ (it drops them unless `visible_headers` dropped the
            // `Connection` header first), hence the copy when there is one.
            headers
        },
        path: planned_path.clone(),
        method: if reaches("method") {
            view.method.as_str().to_owned()
        } else {
            String::new()
        },
        client_ip: if reaches("client_ip") {
            view.client_ip.to_string()
        } else {
            String::new()
        },
        key: if reaches("key") {
            view.key.to_owned()
        } else {
            String::new()
        },
        ctx: rhai::Map::new(),
    };
    let (edited, renames) = plugins
        .on_request_renames(&mut sreq)
        .map_err(|f| failure_in("on_request", f))?;
    let mut edits = RequestEdits {
        path: (sreq.path != planned_path).then_some(sreq.path),
        headers: sreq.headers,
        body: (had_body || edited.body).then_some(sreq.body),
        body_changed: edited.body,
        text_edited: false,
        ctx: sreq.ctx,
    };
    if let Some(bytes) = text {
        rename_text(bytes, &renames, scanned, &mut edits)?;
    }
    Ok(edits)
}

/// Applies the hooks' `renames` to the body's text in place, or, where the text edit does not
/// cover a case (see [`TextRename::NeedsTree`]), to the parsed body, which then goes on.
fn rename_text(
    bytes: &mut Bytes,
    renames: &[Aliases],
    mut scanned: Option<Scanned<'_>>,
    edits: &mut RequestEdits,
) -> Result<(), GatewayError> {
    for (i, aliases) in renames.iter().enumerate() {
        // The scan's positions hold for the text as it came: only for the first renaming.
        let found = scanned.take().filter(|s| aliases.is(s.aliases));
        let renamed = match found.map(|s| s.found) {
            Some(Renames::InText(found)) => apply_renames(bytes, &found),
            Some(Renames::NeedsTree) => TextRename::NeedsTree,
            Some(Renames::NotScanned) | None => rename_keys_in_text(bytes, &aliases.to_vec()),
        };
        match renamed {
            TextRename::Unchanged => {}
            TextRename::Renamed(v) => {
                *bytes = Bytes::from(v);
                edits.text_edited = true;
            }
            TextRename::NeedsTree => {
                let mut tree: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
                    GatewayError::bad_request("invalid_json", format!("Invalid JSON body: {e}"))
                })?;
                let mut changed = edits.text_edited;
                for aliases in renames.iter().skip(i) {
                    changed |= rename_fields(&mut tree, &aliases.to_vec());
                }
                edits.body = Some(tree);
                edits.body_changed = changed;
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Buffers a non-streamed answer, runs `on_response`, and rebuilds the response.
pub async fn on_response(
    plugins: &Plugins,
    resp: Response<ResponseBody>,
    ctx: rhai::Map,
    limit: usize,
) -> Result<Response<ResponseBody>, GatewayError> {
    let (mut parts, body) = resp.into_parts();
    let collected = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|_| {
            GatewayError::new(
                ErrorKind::BadGateway,
                "upstream_error",
                "The upstream answer could not be read",
            )
        })?
        .to_bytes();
    // Parsed only when a hook can see it.
    let json: Option<serde_json::Value> = plugins
        .response_body_reached()
        .then(|| serde_json::from_slice(&collected).ok())
        .flatten();
    let had_json = json.is_some();
    let mut res = ScriptResponse {
        status: parts.status.as_u16(),
        headers: std::mem::take(&mut parts.headers),
        body: json.unwrap_or(serde_json::Value::Null),
        ctx,
    };
    let edited = plugins
        .on_response_edited(&mut res)
        .map_err(|f| failure_in("on_response", f))?;
    parts.status = StatusCode::from_u16(res.status).unwrap_or(parts.status);
    parts.headers = res.headers;
    let bytes = if edited.body {
        let b = serde_json::to_vec(&res.body)
            .map_err(|_| GatewayError::internal("could not encode the response"))?;
        if !had_json {
            parts
                .headers
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        Bytes::from(b)
    } else {
        collected
    };
    parts.headers.remove(CONTENT_LENGTH);
    parts
        .headers
        .remove(HeaderName::from_static("content-encoding"));
    Ok(Response::from_parts(parts, ResponseBody::full(bytes)))
}

/// The `error.type` of the event that ends a stream whose `on_event` hook failed.
pub const SCRIPT_ERROR_TYPE: &str = "script_error";

/// Runs `on_event` over each event of a stream, carrying `ctx` from event to event.
pub struct ScriptEventFilter {
    plugins: Arc<Plugins>,
    stream: EventStream,
}

impl ScriptEventFilter {
    pub fn new(plugins: Arc<Plugins>, ctx: rhai::Map) -> Self {
        ScriptEventFilter {
            plugins,
            stream: EventStream::new(ctx),
        }
    }
}

impl EventFilter for ScriptEventFilter {
    fn on_event(&mut self, event: &[u8]) -> EventAction {
        let Ok(text) = std::str::from_utf8(event) else {
            return EventAction::Keep;
        };
        // The event's data, joined per the SSE spec: borrowed from the event when it has one
        // `data:` line (the usual case), so a hook that never reads it costs no copy.
        let mut data: Option<std::borrow::Cow<'_, str>> = None;
        for v in text.lines().filter_map(|line| line.strip_prefix("data:")) {
            let v = v.strip_prefix(' ').unwrap_or(v);
            match &mut data {
                Some(d) => {
                    let d = d.to_mut();
                    d.push('\n');
                    d.push_str(v);
                }
                None => data = Some(std::borrow::Cow::Borrowed(v)),
            }
        }
        let Some(data) = data else {
            return EventAction::Keep;
        };
        match self.plugins.on_stream_event(&data, &mut self.stream) {
            Ok(EventVerdict::Drop) => EventAction::Drop,
            Ok(EventVerdict::Unchanged) => EventAction::Keep,
            Ok(EventVerdict::Changed(data)) => {
                let new = data.to_data_string();
                // The event's other fields, as they came.
                let mut out = String::new();
                for line in text.lines() {
                    if !line.is_empty() && !line.starts_with("data:") {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
                for line in new.split('\n') {
                    out.push_str("data: ");
                    out.push_str(line);
                    out.push('\n');
                }
                out.push('\n');
                EventAction::Replace(Bytes::from(out))
            }
            Err(f) => {
                // The script failed, not the upstream: the closing event says so.
                let e = failure_in("on_event", f);
                EventAction::Stop {
                    event: error_event(&e.message, SCRIPT_ERROR_TYPE, e.code),
                    outcome: outcome::SCRIPT_ERROR,
                    code: e.code,
                }
            }
        }
    }
}
