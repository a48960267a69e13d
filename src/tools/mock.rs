//! An OpenAI-compatible mock upstream: a real HTTP server for the demo, the tests and the
//! benchmarks. It answers `POST …/chat/completions` (JSON or SSE, paced by `ttft`/`itl`),
//! `GET …/models`, `POST …/embeddings`, `…/completions` and `…/moderations` (deterministic;
//! see [`endpoints`]), streams a tool call split over several deltas when the request has `tools`,
//! honours `stream_options.include_usage`, and injects faults chosen by model name:
//!
//! | model        | behaviour                                              |
//! |--------------|--------------------------------------------------------|
//! | `mock-429`   | 429 with `Retry-After: 1`                              |
//! | `mock-500`   | 500                                                    |
//! | `mock-401`   | 401                                                    |
//! | `mock-drop`  | starts answering, then drops the connection mid-way    |
//! | `mock-slow`  | first token after 2 s                                  |
//! | `mock-hang`  | never answers (until the client goes away)             |
//!
//! It counts what it sees (`MockStats`) so in-process tests can check what reached it,
//! including streams the client cancelled.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::tools::loopback::{self, ServerGuard};

mod endpoints;

pub const MOCK_MODELS: &[&str] = &[
    "mock-model",
    "mock-429",
    "mock-500",
    "mock-401",
    "mock-drop",
    "mock-slow",
    "mock-hang",
];

#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Delay before the first token (or the whole JSON answer).
    pub ttft: Duration,
    /// Delay between streamed tokens.
    pub itl: Duration,
    /// Content tokens per answer.
    pub tokens: usize,
    /// When set, requests must carry `Authorization: Bearer <key>` or get 401.
    pub require_key: Option<String>,
    /// When set, requests must carry `Authorization: Bearer <token>` with a token this check
    /// accepts (e.g. one the token mock issued and has not revoked), or get 401.
    pub token_check: Option<TokenCheck>,
}

/// A predicate over bearer tokens, shared with a token server.
#[derive(Clone)]
pub struct TokenCheck(pub Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl std::fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCheck")
    }
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            ttft: Duration::ZERO,
            itl: Duration::ZERO,
            tokens: 8,
            require_key: None,
            token_check: None,
        }
    }
}

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Debug, Default)]
pub struct MockStats {
    pub requests: AtomicU64,
    pub streams_started: AtomicU64,
    pub streams_completed: AtomicU64,
    /// Streams whose reader went away before the last event.
    pub streams_cancelled: AtomicU64,
    /// Non-streamed answers whose caller went away while the mock was still "thinking".
    pub answers_abandoned: AtomicU64,
    /// When non-zero, every chat completion is answered with this status (an upstream that is
    /// down or rate limited), with `Retry-After: 1` on 429.
    pub force_status: std::sync::atomic::AtomicU16,
    pub last: Mutex<Option<RecordedRequest>>,
}

impl MockStats {
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.last.lock().ok().and_then(|l| l.clone())
    }
    pub fn get(&self, counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }
}

pub struct MockHandle {
    pub addr: SocketAddr,
    pub stats: Arc<MockStats>,
    /// Stops the mock and closes its connections when the handle drops.
    _server: ServerGuard,
}

impl MockHandle {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Binds `addr` and serves the mock on a background task.
pub async fn spawn(addr: SocketAddr, opts: MockOptions) -> std::io::Result<MockHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(MockStats::default());
    let server = loopback::spawn(listener, handler(opts, stats.clone()));
    Ok(MockHandle {
        addr,
        stats,
        _server: server,
    })
}

/// Serves the mock on `listener` forever.
pub async fn serve(listener: TcpListener, opts: MockOptions, stats: Arc<MockStats>) {
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    loopback::serve(listener, handler(opts, stats), stop_rx).await;
}

fn handler(
    opts: MockOptions,
    stats: Arc<MockStats>,
) -> impl Fn(
    Request<hyper::body::Incoming>,
) -> Pin<Box<dyn std::future::Future<Output = Response<MockBody>> + Send>>
       + Clone
       + Send
       + Sync
       + 'static {
    let opts = Arc::new(opts);
    move |req| {
        let opts = opts.clone();
        let stats = stats.clone();
        Box::pin(async move { handle(req, &opts, &stats).await })
    }
}

/// Body of a mock answer: a fixed buffer or a channel fed by a pacing task.
pub enum MockBody {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Result<Bytes, std::io::Error>>),
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            MockBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Channel(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }
}

fn json_resp(status: StatusCode, v: &Value) -> Response<MockBody> {
    let mut r = Response::new(MockBody::Full(Some(Bytes::from(v.to_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn error_resp(status: StatusCode, message: &str, typ: &str, code: &str) -> Response<MockBody> {
    json_resp(
        status,
        &json!({"error": {"message": message, "type": typ, "param": null, "code": code}}),
    )
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    opts: &MockOptions,
    stats: &Arc<MockStats>,
) -> Response<MockBody> {
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error_resp(
                StatusCode::BAD_REQUEST,
                "body read failed",
                "invalid_request_error",
                "bad_body",
            )
        }
    };
    let path = parts.uri.path().to_owned();
    if let Ok(mut last) = stats.last.lock() {
        *last = Some(RecordedRequest {
            method: parts.method.clone(),
            path: path.clone(),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
    }
    if let Some(key) = &opts.require_key {
        let expected = format!("Bearer {key}");
        let ok = parts
            .headers
            .get("authorization")
            .is_some_and(|v| v.as_bytes() == expected.as_bytes());
        if !ok {
            return error_resp(
                StatusCode::UNAUTHORIZED,
                "mock upstream: wrong upstream key",
                "invalid_request_error",
                "invalid_api_key",
            );
        }
    }
    if let Some(check) = &opts.token_check {
        let token = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !(check.0)(token) {
            return error_resp(
                StatusCode::UNAUTHORIZED,
                "mock upstream: token not valid",
                "invalid_request_error",
                "invalid_api_key",
            );
        }
    }
    if path.ends_with("/models") && parts.method == Method::GET {
        let data: Vec<Value> = MOCK_MODELS
            .iter()
            .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": "mock"}))
            .collect();
        return json_resp(StatusCode::OK, &json!({"object": "list", "data": data}));
    }
    if let Some(endpoint) = endpoints::Endpoint::of(&path) {
        return other_endpoint(endpoint, &parts.method, &body);
    }
    if !path.ends_with("/chat/completions") {
        return error_resp(
            StatusCode::NOT_FOUND,
            &format!("mock upstream: no route {path}"),
            "invalid_request_error",
            "not_found",
        );
    }
    let forced = stats.force_status.load(Ordering::SeqCst);
    if forced != 0 {
        let status = StatusCode::from_u16(forced).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = error_resp(
            status,
            "mock upstream: forced failure",
            "server_error",
            "forced",
        );
        if status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut()
                .insert("retry-after", http::HeaderValue::from_static("1"));
        }
        return r;
    }
    if parts.method != Method::POST {
        return error_resp(
            StatusCode::METHOD_NOT_ALLOWED,
            "mock upstream: use POST",
            "invalid_request_error",
            "method_not_allowed",
        );
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error_resp(
                StatusCode::BAD_REQUEST,
                &format!("mock upstream: invalid JSON: {e}"),
                "invalid_request_error",
                "invalid_json",
            )
        }
    };
    let model = req
        .get("model")
        .or_else(|| req.get("model_id"))
        .and_then(Value::as_str)
        .unwrap_or("mock-model")
        .to_owned();
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = req
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let tool = req
        .get("tools")
        .and_then(Value::as_array)
        .and_then(|t| t.first())
        .map(|t| {
            let name = t
                .pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or("tool")
                .to_owned();
            let arg = t
                .pointer("/function/parameters/properties")
                .and_then(Value::as_object)
                .and_then(|p| p.keys().next().cloned())
                .unwrap_or_else(|| "input".into());
            (name, arg)
        });

    match model.as_str() {
        "mock-429" => {
            let mut r = error_resp(
                StatusCode::TOO_MANY_REQUESTS,
                "mock upstream: rate limited",
                "rate_limit_error",
                "rate_limit_exceeded",
            );
            r.headers_mut()
                .insert("retry-after", http::HeaderValue::from_static("1"));
            return r;
        }
        "mock-500" => {
            return error_resp(
                StatusCode::INTERNAL_SERVER_ERROR,
                "mock upstream: internal error",
                "server_error",
                "internal_error",
            )
        }
        "mock-401" => {
            return error_resp(
                StatusCode::UNAUTHORIZED,
                "mock upstream: bad key",
                "invalid_request_error",
                "invalid_api_key",
            )
        }
        _ => {}
    }
    let ttft = match model.as_str() {
        "mock-slow" => Duration::from_secs(2),
        "mock-hang" => Duration::from_secs(86_400),
        _ => opts.ttft,
    };
    let plan = Plan {
        // Derived from the request so the same request gets byte-identical answers, direct or
        // through the gateway (tests compare the two).
        id: format!("chatcmpl-mock-{:016x}", fnv1a(&body)),
        created: MOCK_CREATED,
        model: model.clone(),
        tokens: opts.tokens.max(1),
        tool,
        drop_midway: model == "mock-drop",
        include_usage,
        prompt_tokens: (body.len() / 4).max(1) as u64,
    };

    if !stream {
        if !ttft.is_zero() {
            // Dropped with the handler future when the caller disconnects mid-wait.
            let guard = AbandonGuard(stats.clone());
            tokio::time::sleep(ttft).await;
            std::mem::forget(guard);
        }
        if plan.drop_midway {
            let (tx, rx) = mpsc::channel(1);
            let _ = tx.try_send(Err(std::io::Error::other("mock drop")));
            let mut r = Response::new(MockBody::Channel(rx));
            r.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/json"),
            );
            return r;
        }
        return json_resp(StatusCode::OK, &plan.completion());
    }

    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    stats.streams_started.fetch_add(1, Ordering::Relaxed);
    let itl = opts.itl;
    let stats = stats.clone();
    tokio::spawn(async move {
        let counter = match plan.stream(tx, ttft, itl).await {
            StreamEnd::Completed => &stats.streams_completed,
            StreamEnd::Cancelled => &stats.streams_cancelled,
            StreamEnd::Dropped => &stats.streams_completed,
        };
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let mut r = Response::new(MockBody::Channel(rx));
    let h = r.headers_mut();
    h.insert(
        "content-type",
        http::HeaderValue::from_static("text/event-stream"),
    );
    h.insert("cache-control", http::HeaderValue::from_static("no-cache"));
    r
}

/// `/embeddings`, `/completions`, `/moderations` (see [`endpoints`]).
fn other_endpoint(
    endpoint: endpoints::Endpoint,
    method: &Method,
    body: &[u8],
) -> Response<MockBody> {
    if method != Method::POST {
        return error_resp(
            StatusCode::METHOD_NOT_ALLOWED,
            "mock upstream: use POST",
            "invalid_request_error",
            "method_not_allowed",
        );
    }
    let req: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return error_resp(
                StatusCode::BAD_REQUEST,
                &format!("mock upstream: invalid JSON: {e}"),
                "invalid_request_error",
                "invalid_json",
            )
        }
    };
    match endpoints::answer(endpoint, &req, body) {
        Ok(endpoints::Answer::Json(v)) => json_resp(StatusCode::OK, &v),
        Ok(endpoints::Answer::Events(bytes)) => {
            let mut r = Response::new(MockBody::Full(Some(bytes)));
            r.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("text/event-stream"),
            );
            r
        }
        Err(message) => error_resp(
            StatusCode::BAD_REQUEST,
            &format!("mock upstream: {message}"),
            "invalid_request_error",
            "invalid_request",
        ),
    }
}

struct AbandonGuard(Arc<MockStats>);

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        self.0.answers_abandoned.fetch_add(1, Ordering::SeqCst);
    }
}

/// `created` of every mock answer: fixed, so answers are reproducible.
const MOCK_CREATED: u64 = 1_767_225_600;

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

enum StreamEnd {
    Completed,
    /// The reader went away first.
    Cancelled,
    /// The mock broke the stream on purpose (`mock-drop`).
    Dropped,
}

struct Plan {
    id: String,
    created: u64,
    model: String,
    tokens: usize,
    /// (function name, argument name) of the first tool, when the request has tools.
    tool: Option<(String, String)>,
    drop_midway: bool,
    include_usage: bool,
    prompt_tokens: u64,
}

const WORDS: &[&str] = &[
    "Hello",
    " from",
    " the",
    " sophgate",
    " mock",
    " upstream",
    ".",
    " Tokens",
    " arrive",
    " one",
    " by",
    " one",
    ",",
    " paced",
    " as",
    " configured",
    ".",
];

impl Plan {
    fn word(i: usize) -> &'static str {
        WORDS[i % WORDS.len()]
    }

    fn arguments(&self, arg: &str) -> String {
        json!({ arg: "Paris" }).to_string()
    }

    fn usage(&self) -> Value {
        let completion = self.tokens as u64;
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion
        })
    }

    fn completion(&self) -> Value {
        let (message, finish) = match &self.tool {
            Some((name, arg)) => (
                json!({"role": "assistant", "content": null, "tool_calls": [{
                    "id": "call_mock_0", "type": "function",
                    "function": {"name": name, "arguments": self.arguments(arg)}
                }]}),
                "tool_calls",
            ),
            None => {
                let content: String = (0..self.tokens).map(Self::word).collect();
                (json!({"role": "assistant", "content": content}), "stop")
            }
        };
        json!({
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": self.usage(),
        })
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Bytes {
        let v = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        Bytes::from(format!("data: {v}\n\n"))
    }

    /// The events of the answer, in order (without `[DONE]`).
    fn events(&self) -> Vec<Bytes> {
        let mut out = Vec::with_capacity(self.tokens + 4);
        match &self.tool {
            Some((name, arg)) => {
                out.push(self.chunk(
                    json!({"role": "assistant", "content": null, "tool_calls": [{
                        "index": 0, "id": "call_mock_0", "type": "function",
                        "function": {"name": name, "arguments": ""}}]}),
                    None,
                ));
                let args = self.arguments(arg);
                let pieces = self.tokens.clamp(2, args.len().max(2));
                let step = args.len().div_ceil(pieces).max(1);
                let mut start = 0;
                while start < args.len() {
                    let mut end = (start + step).min(args.len());
                    while !args.is_char_boundary(end) {
                        end += 1;
                    }
                    out.push(self.chunk(
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": &args[start..end]}}]}),
                        None,
                    ));
                    start = end;
                }
                out.push(self.chunk(json!({}), Some("tool_calls")));
            }
            None => {
                out.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
                for i in 0..self.tokens {
                    out.push(self.chunk(json!({"content": Self::word(i)}), None));
                }
                out.push(self.chunk(json!({}), Some("stop")));
            }
        }
        if self.include_usage {
            let v = json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [], "usage": self.usage(),
            });
            out.push(Bytes::from(format!("data: {v}\n\n")));
        }
        out
    }

    async fn stream(
        self,
        tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
        ttft: Duration,
        itl: Duration,
    ) -> StreamEnd {
        let events = self.events();
        if !ttft.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(ttft) => {}
                _ = tx.closed() => return StreamEnd::Cancelled,
            }
        }
        let half = events.len() / 2;
        for (i, ev) in events.into_iter().enumerate() {
            if i > 0 && !itl.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(itl) => {}
                    _ = tx.closed() => return StreamEnd::Cancelled,
                }
            }
            if self.drop_midway && i == half {
                let _ = tx.send(Err(std::io::Error::other("mock drop"))).await;
                return StreamEnd::Dropped;
            }
            if tx.send(Ok(ev)).await.is_err() {
                return StreamEnd::Cancelled;
            }
        }
        if tx
            .send(Ok(Bytes::from_static(b"data: [DONE]\n\n")))
            .await
            .is_err()
        {
            return StreamEnd::Cancelled;
        }
        StreamEnd::Completed
    }
}
