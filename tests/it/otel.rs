//! OpenTelemetry traces (`otel:`): a real OTLP/HTTP receiver on loopback decodes the protobuf
//! the gateway exports; spans, their parents, the traceparent the upstream received, the GenAI
//! attributes, and that no key, prompt or completion text is in the exported bytes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use sophgate::tools::mock::{self, MockHandle, MockOptions};
use testkit::serve::{self, ServerGuard};

use crate::common::*;

/// One export as received: its headers and body bytes.
struct Export {
    content_type: String,
    token: Option<String>,
    body: Bytes,
}

/// An OTLP/HTTP trace receiver: `POST /v1/traces`, protobuf.
struct Receiver {
    addr: SocketAddr,
    exports: Arc<Mutex<Vec<Export>>>,
    _server: ServerGuard,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let exports = Arc::new(Mutex::new(Vec::new()));
        let log = exports.clone();
        let server = serve::spawn(
            listener,
            move |req: http::Request<hyper::body::Incoming>| {
                let log = log.clone();
                async move {
                    let path = req.uri().path().to_owned();
                    let header =
                        |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
                    let content_type = header("content-type").unwrap_or_default();
                    let token = header("x-collector-token");
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    if path != "/v1/traces" {
                        return http::Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                    }
                    log.lock().unwrap().push(Export {
                        content_type,
                        token,
                        body,
                    });
                    http::Response::builder()
                    .header("content-type", "application/x-protobuf")
                    .body(Full::new(Bytes::from(
                        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse::default()
                            .encode_to_vec(),
                    )))
                    .unwrap()
                }
            },
        );
        Receiver {
            addr,
            exports,
            _server: server,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, with its resource's `service.name`.
    fn spans(&self) -> Vec<(String, Span)> {
        let mut out = Vec::new();
        for e in self.exports.lock().unwrap().iter() {
            assert_eq!(e.content_type, "application/x-protobuf");
            let req = ExportTraceServiceRequest::decode(e.body.clone()).expect("OTLP protobuf");
            for rs in req.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                    .map(|a| string_of(a.value.as_ref().and_then(|v| v.value.as_ref())))
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for s in ss.spans {
                        out.push((service.clone(), s));
                    }
                }
            }
        }
        out
    }

    /// The spans of `trace_id`, once there are `n` of them (or after 10 s).
    async fn trace(&self, trace_id: &[u8], n: usize) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spans: Vec<Span> = self
                .spans()
                .into_iter()
                .map(|(_, s)| s)
                .filter(|s| s.trace_id == trace_id)
                .collect();
            if spans.len() >= n || Instant::now() > deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn all_bytes(&self) -> Vec<u8> {
        self.exports
            .lock()
            .unwrap()
            .iter()
            .flat_map(|e| e.body.to_vec())
            .collect()
    }
}

fn string_of(v: Option<&Value>) -> String {
    match v {
        Some(Value::StringValue(s)) => s.clone(),
        other => panic!("not a string: {other:?}"),
    }
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn str_attr(span: &Span, key: &str) -> String {
    match attr(span, key) {
        Some(Value::StringValue(s)) => s.clone(),
        other => panic!("{key} on {}: {other:?}", span.name),
    }
}

fn int_attr(span: &Span, key: &str) -> i64 {
    match attr(span, key) {
        Some(Value::IntValue(i)) => *i,
        other => panic!("{key} on {}: {other:?}", span.name),
    }
}

fn f64_attr(span: &Span, key: &str) -> f64 {
    match attr(span, key) {
        Some(Value::DoubleValue(f)) => *f,
        other => panic!("{key} on {}: {other:?}", span.name),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn kind(s: &Span) -> SpanKind {
    SpanKind::try_from(s.kind).unwrap()
}

fn one(spans: &[Span], k: SpanKind) -> &Span {
    let found: Vec<&Span> = spans.iter().filter(|s| kind(s) == k).collect();
    assert_eq!(found.len(), 1, "one {k:?} span in {spans:#?}");
    found[0]
}

fn otel_yaml(endpoint: &str, extra: &str) -> String {
    format!(
        "otel:\n  endpoint: \"{endpoint}\"\n  service_name: gw-test\n  headers: {{ x-collector-token: otel-header-secret }}\n{extra}"
    )
}

async fn gateway(receiver: &Receiver, opts: MockOptions) -> Env {
    start(&otel_yaml(&receiver.endpoint(), ""), opts).await
}

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_ID: &str = "b7ad6b7169203331";
const PROMPT: &str = "PROMPT-TEXT-never-in-a-span";

fn traced_chat(env: &Env, trace_id: &str, body: serde_json::Value) -> reqwest::RequestBuilder {
    client()
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("traceparent", format!("00-{trace_id}-{PARENT_ID}-01"))
        .header("tracestate", "vendor=opaque")
        .json(&body)
}

/// A streamed chat of `PROMPT` under `trace_id`; `usage`: asking for the usage event.
async fn traced_stream(env: &Env, trace_id: &str, usage: bool) -> reqwest::Response {
    let mut body = serde_json::json!({
        "model": "gpt-stream",
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": true,
    });
    if usage {
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    traced_chat(env, trace_id, body).send().await.unwrap()
}

#[tokio::test]
async fn a_chat_continues_the_trace_with_genai_attributes_and_no_secrets() {
    let receiver = Receiver::start().await;
    let env = gateway(&receiver, MockOptions::default()).await;
    let resp = traced_chat(
        &env,
        TRACE_ID,
        serde_json::json!({
            "model": "gpt-test",
            "messages": [{"role": "user", "content": PROMPT}],
            "temperature": 0.25,
            "max_tokens": 77,
        }),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let answer: serde_json::Value = resp.json().await.unwrap();
    let spans = receiver.trace(&unhex(TRACE_ID), 2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");

    let server = one(&spans, SpanKind::Server);
    let client_span = one(&spans, SpanKind::Client);
    // The client's trace continues: same trace id, the client's span is the parent.
    assert_eq!(hex(&server.parent_span_id), PARENT_ID);
    assert_eq!(client_span.parent_span_id, server.span_id);
    assert_eq!(server.name, "chat gpt-test");
    assert_eq!(client_span.name, "chat gpt-test");
    assert_eq!(server.trace_state, "vendor=opaque");

    // The upstream got the CLIENT span's context, not the client's.
    let seen = env.mock.stats.last_request().unwrap();
    let tp = seen.headers.get("traceparent").unwrap().to_str().unwrap();
    assert_eq!(
        tp,
        format!("00-{TRACE_ID}-{}-01", hex(&client_span.span_id))
    );
    assert_eq!(seen.headers.get_all("traceparent").iter().count(), 1);
    assert_eq!(seen.headers.get("tracestate").unwrap(), "vendor=opaque");

    for s in [server, client_span] {
        assert_eq!(str_attr(s, "gen_ai.operation.name"), "chat");
        assert_eq!(str_attr(s, "gen_ai.request.model"), "gpt-test");
        assert_eq!(str_attr(s, "http.request.method"), "POST");
        assert_eq!(int_attr(s, "http.response.status_code"), 200);
        assert_eq!(
            str_attr(s, "gen_ai.response.model"),
            answer["model"].as_str().unwrap()
        );
        assert_eq!(
            int_attr(s, "gen_ai.usage.input_tokens"),
            answer["usage"]["prompt_tokens"].as_i64().unwrap()
        );
        assert_eq!(
            int_attr(s, "gen_ai.usage.output_tokens"),
            answer["usage"]["completion_tokens"].as_i64().unwrap()
        );
        assert!(attr(s, "error.type").is_none());
    }
    assert_eq!(f64_attr(server, "gen_ai.request.temperature"), 0.25);
    assert_eq!(int_attr(server, "gen_ai.request.max_tokens"), 77);
    assert_eq!(str_attr(server, "url.path"), "/v1/chat/completions");
    assert_eq!(str_attr(server, "client.address"), "127.0.0.1");
    assert_eq!(str_attr(client_span, "server.address"), "127.0.0.1");
    assert_eq!(
        int_attr(client_span, "server.port"),
        i64::from(env.mock.addr.port())
    );
    assert_eq!(str_attr(client_span, "sophgate.upstream"), "default");
    assert!(server.end_time_unix_nano >= client_span.end_time_unix_nano);

    // The resource names the service; the export carried the configured header.
    let services: Vec<String> = receiver.spans().into_iter().map(|(s, _)| s).collect();
    assert!(services.iter().all(|s| s == "gw-test"), "{services:?}");
    assert!(receiver
        .exports
        .lock()
        .unwrap()
        .iter()
        .all(|e| e.token.as_deref() == Some("otel-header-secret")));

    // Nothing secret or private in any exported byte.
    let bytes = receiver.all_bytes();
    let completion = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!completion.is_empty());
    for needle in [
        CLIENT_KEY,
        UPSTREAM_KEY,
        PROMPT,
        completion,
        "otel-header-secret",
    ] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "`{needle}` in the exported spans"
        );
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[tokio::test]
async fn a_stream_span_ends_with_the_last_event_and_reports_usage() {
    let receiver = Receiver::start().await;
    let env = gateway(
        &receiver,
        MockOptions {
            itl: Duration::from_millis(40),
            tokens: 8,
            ..MockOptions::default()
        },
    )
    .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = traced_stream(&env, trace_id, true).await;
    assert_eq!(resp.status(), 200);
    let headers_at = now_nanos();
    let text = resp.text().await.unwrap();
    let last_byte_at = now_nanos();
    assert!(text.contains("[DONE]"));
    let usage: serde_json::Value = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .map(|v| v["usage"].clone())
        .expect("a usage event");

    let spans = receiver.trace(&unhex(trace_id), 2).await;
    let server = one(&spans, SpanKind::Server);
    let client_span = one(&spans, SpanKind::Client);
    // Ended with the body (eight events 40 ms apart), not when the head went out.
    assert!(
        server.end_time_unix_nano > headers_at + 200_000_000,
        "server span ended {} ms after the head",
        (server.end_time_unix_nano as i64 - headers_at as i64) / 1_000_000
    );
    assert!(server.end_time_unix_nano <= last_byte_at + 1_000_000_000);
    assert!(client_span.end_time_unix_nano > headers_at + 200_000_000);
    assert_eq!(str_attr(server, "gen_ai.request.model"), "gpt-stream");
    assert_eq!(
        int_attr(server, "gen_ai.usage.input_tokens"),
        usage["prompt_tokens"].as_i64().unwrap()
    );
    assert_eq!(
        int_attr(server, "gen_ai.usage.output_tokens"),
        usage["completion_tokens"].as_i64().unwrap()
    );
    assert_eq!(str_attr(client_span, "gen_ai.response.model"), "gpt-stream");
    let bytes = receiver.all_bytes();
    assert!(!bytes.windows(PROMPT.len()).any(|w| w == PROMPT.as_bytes()));
}

#[tokio::test]
async fn a_stream_that_breaks_off_ends_its_spans_as_errors() {
    let receiver = Receiver::start().await;
    // Events 600 ms apart against a 200 ms idle timeout: the client gets the head (200), the
    // first event, then the gateway's error event.
    let env = start(
        &otel_yaml(
            &receiver.endpoint(),
            "limits:\n  stream_idle_timeout: 0.2\n",
        ),
        MockOptions {
            itl: Duration::from_millis(600),
            tokens: 4,
            ..MockOptions::default()
        },
    )
    .await;
    let trace_id = "6bf92f3577b34da6a3ce929d0e0e4736";
    let resp = traced_stream(&env, trace_id, false).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("upstream_idle_timeout"), "{text}");

    let spans = receiver.trace(&unhex(trace_id), 2).await;
    for k in [SpanKind::Server, SpanKind::Client] {
        let span = one(&spans, k);
        assert_eq!(int_attr(span, "http.response.status_code"), 200);
        assert_eq!(str_attr(span, "error.type"), "upstream_idle_timeout");
        let status = span.status.as_ref().expect("a status");
        assert_eq!(status.code, 2, "{k:?} span status is ERROR: {status:?}");
    }
}

async fn two_upstreams(receiver: &Receiver) -> (Env, MockHandle) {
    let b = mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap();
    let a = mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap();
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\napi_host: \"http://{{mock}}\"\nforward_chat_path: /v1/chat/completions\n\
         credentials:\n  up: {{ type: static, key: upstream-secret }}\n\
         upstreams:\n  a: {{ base_url: \"http://{}/v1\", credential: up }}\n  b: {{ base_url: \"http://{}/v1\", credential: up }}\n\
         routes:\n  - models: [\"fb-*\"]\n    upstreams: [a, b]\n    backoff: 0.01\n\
         api_keys:\n  \"{CLIENT_KEY}\": {{ name: team-blue }}\n{}",
        a.addr,
        b.addr,
        otel_yaml(&receiver.endpoint(), "")
    );
    (
        start_gateway(a, &yaml, "127.0.0.1:0".parse().unwrap()).await,
        b,
    )
}

#[tokio::test]
async fn a_fallback_makes_one_client_span_per_attempt() {
    let receiver = Receiver::start().await;
    let (env, b) = two_upstreams(&receiver).await;
    env.mock
        .stats
        .force_status
        .store(503, std::sync::atomic::Ordering::SeqCst);
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4736";
    let resp = traced_chat(
        &env,
        trace_id,
        serde_json::json!({"model": "fb-1", "messages": [{"role": "user", "content": PROMPT}]}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let spans = receiver.trace(&unhex(trace_id), 3).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let server = one(&spans, SpanKind::Server);
    assert_eq!(str_attr(server, "sophgate.key"), "team-blue");
    let mut clients: Vec<&Span> = spans
        .iter()
        .filter(|s| kind(s) == SpanKind::Client)
        .collect();
    clients.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(clients.len(), 2);
    for c in &clients {
        assert_eq!(c.parent_span_id, server.span_id);
        assert_eq!(c.name, "chat fb-1");
    }
    assert_eq!(str_attr(clients[0], "sophgate.upstream"), "a");
    assert_eq!(int_attr(clients[0], "http.response.status_code"), 503);
    assert_eq!(str_attr(clients[0], "error.type"), "503");
    assert_eq!(str_attr(clients[1], "sophgate.upstream"), "b");
    assert_eq!(int_attr(clients[1], "http.response.status_code"), 200);
    assert!(attr(clients[1], "error.type").is_none());
    assert_eq!(int_attr(server, "http.response.status_code"), 200);
    // Each upstream saw its own attempt's span as the parent.
    let seen_a = env.mock.stats.last_request().unwrap();
    let seen_b = b.stats.last_request().unwrap();
    assert_eq!(
        seen_a.headers.get("traceparent").unwrap(),
        &format!("00-{trace_id}-{}-01", hex(&clients[0].span_id))
    );
    assert_eq!(
        seen_b.headers.get("traceparent").unwrap(),
        &format!("00-{trace_id}-{}-01", hex(&clients[1].span_id))
    );
    let bytes = receiver.all_bytes();
    for needle in [CLIENT_KEY, "upstream-secret", PROMPT] {
        assert!(!bytes.windows(needle.len()).any(|w| w == needle.as_bytes()));
    }
}

#[tokio::test]
async fn errors_the_gateway_answers_are_spans_with_their_error_type() {
    let receiver = Receiver::start().await;
    let env = gateway(&receiver, MockOptions::default()).await;
    let trace_id = "6bf92f3577b34da6a3ce929d0e0e4736";
    let resp = client()
        .post(env.url("/v1/chat/completions"))
        .bearer_auth("sk-wrong-key-value")
        .header("traceparent", format!("00-{trace_id}-{PARENT_ID}-01"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let spans = receiver.trace(&unhex(trace_id), 1).await;
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let server = one(&spans, SpanKind::Server);
    assert_eq!(int_attr(server, "http.response.status_code"), 401);
    assert_eq!(str_attr(server, "error.type"), "invalid_api_key");
    assert_eq!(server.name, "chat");
    let bytes = receiver.all_bytes();
    assert!(!bytes
        .windows(b"sk-wrong-key-value".len())
        .any(|w| w == b"sk-wrong-key-value"));
}

#[tokio::test]
async fn sample_ratio_zero_keeps_only_traces_a_sampled_parent_asked_for() {
    let receiver = Receiver::start().await;
    let env = start(
        &otel_yaml(&receiver.endpoint(), "  sample_ratio: 0.0\n"),
        MockOptions::default(),
    )
    .await;
    // No parent: not sampled, yet the upstream still gets a (not-sampled) traceparent.
    let resp = post_chat(&env, CLIENT_KEY, chat_body("m", false)).await;
    assert_eq!(resp.status(), 200);
    let tp = env
        .mock
        .stats
        .last_request()
        .unwrap()
        .headers
        .get("traceparent")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(tp.ends_with("-00"), "{tp}");
    let unsampled = unhex(tp.split('-').nth(1).unwrap());
    // A sampled parent is followed.
    let trace_id = "7bf92f3577b34da6a3ce929d0e0e4736";
    let resp = traced_chat(
        &env,
        trace_id,
        serde_json::json!({"model": "m", "messages": []}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(receiver.trace(&unhex(trace_id), 2).await.len(), 2);
    assert!(receiver
        .spans()
        .iter()
        .all(|(_, s)| s.trace_id != unsampled));
}

#[tokio::test]
async fn a_dead_collector_costs_only_counted_dropped_spans() {
    let dead = format!("http://127.0.0.1:{}", testkit::refused_port());
    let before = sophgate::observe::trace::dropped_spans();
    let env = start(&otel_yaml(&dead, ""), MockOptions::default()).await;
    let started = Instant::now();
    for i in 0..20 {
        let resp = post_chat(&env, CLIENT_KEY, chat_body("m", i % 2 == 0)).await;
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    // Export never sits on the request path: well under one export timeout (5 s) in all.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // 20 requests, a server and a client span each, none delivered.
    assert!(
        eventually(15.0, || sophgate::observe::trace::dropped_spans()
            >= before + 40)
        .await,
        "dropped {} (from {before})",
        sophgate::observe::trace::dropped_spans()
    );
}

#[tokio::test]
async fn without_otel_the_client_traceparent_passes_through_untouched() {
    let env = start("", MockOptions::default()).await;
    let tp = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    let resp = client()
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("traceparent", &tp)
        .body(chat_body("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = env.mock.stats.last_request().unwrap();
    assert_eq!(seen.headers.get("traceparent").unwrap(), tp.as_str());
    assert!(env.runtime.current().tracing.is_none());
}

#[tokio::test]
async fn a_reload_moves_the_export_and_can_switch_it_off() {
    let (first, second) = (Receiver::start().await, Receiver::start().await);
    let mock = mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("sophgate-otel-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yml");
    let mock_addr = mock.addr;
    let write = |extra: &str| std::fs::write(&path, base_yaml(mock_addr, extra)).unwrap();
    write(&otel_yaml(&first.endpoint(), ""));
    let runtime =
        sophgate::reload::Runtime::new(sophgate::config::Config::from_file(&path).unwrap())
            .unwrap();
    let gateway = sophgate::gateway::server::spawn(runtime.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let env = Env {
        mock,
        gateway,
        runtime,
    };
    let ask = |trace_id: &'static str| {
        let req = traced_chat(
            &env,
            trace_id,
            serde_json::json!({"model": "m", "messages": []}),
        );
        async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.bytes().await.unwrap();
        }
    };
    let t1 = "8bf92f3577b34da6a3ce929d0e0e4736";
    ask(t1).await;
    assert_eq!(first.trace(&unhex(t1), 2).await.len(), 2);

    write(&otel_yaml(&second.endpoint(), ""));
    env.runtime.reload("test").unwrap();
    let t2 = "9bf92f3577b34da6a3ce929d0e0e4736";
    ask(t2).await;
    assert_eq!(second.trace(&unhex(t2), 2).await.len(), 2);
    assert!(first.spans().iter().all(|(_, s)| s.trace_id != unhex(t2)));

    write("");
    env.runtime.reload("test").unwrap();
    assert!(env.runtime.current().tracing.is_none());
    let t3 = "abf92f3577b34da6a3ce929d0e0e4736";
    ask(t3).await;
    let seen = env.mock.stats.last_request().unwrap();
    assert_eq!(
        seen.headers.get("traceparent").unwrap(),
        &format!("00-{t3}-{PARENT_ID}-01")
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(second.spans().iter().all(|(_, s)| s.trace_id != unhex(t3)));
    let _ = std::fs::remove_dir_all(&dir);
}
