//! Criterion benchmarks of the request pipeline, one group per stage, plus the whole request
//! path without sockets (`pipeline::prepare`).
//!
//! Why these numbers exist: the load benchmark (`scripts/bench`) tells how much latency the
//! gateway adds end to end, but on a shared 2-core box that number is mostly kernel, loopback
//! and scheduler. These benches isolate what the gateway's own code costs per request, so a
//! regression in one stage shows up here even when the end-to-end number is lost in noise.
//!
//! Every input (configs, key tables, request bodies, SSE events) is built before the timed
//! loop; inputs a stage consumes are made per iteration with `iter_batched`, which keeps the
//! construction outside the measurement. Each benchmark first runs its subject once and checks
//! the outcome (e.g. the request really was accepted, the alias really was applied), so a
//! benchmark can never silently time an error path.
//!
//! Run: `cargo bench --bench pipeline` (all), `cargo bench --bench pipeline -- --quick`
//! (shorter), `cargo bench --bench pipeline -- auth` (one group). Under
//! `cargo test --all-targets` each benchmark runs once as a smoke test.
//!
//! Groups: `ip_acl`, `auth`, `json`, `plugin` (the fixed cost of a do-nothing `on_request`),
//! `field_aliases` (the native walk next to the bundled plugin the config key now loads),
//! `sse_relay` (framing, and the relay with and without a do-nothing `on_event`),
//! `upstream_http1` (the pooled client's wire format: request head, answer head, chunked body),
//! `server_http1` (a client's request head into the request the pipeline gets), `pipeline`
//! (`prepare`: every stage before the upstream call, plugins included).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use ipnet::IpNet;
use serde_json::{json, Value};

use sophgate::config::Config;
use sophgate::gateway::ctx::RequestCtx;
use sophgate::gateway::generation::Generation;
use sophgate::gateway::relay::access_log::AccessLog;
use sophgate::gateway::relay::body::{Relay, ResponseBody, UpstreamStream};
use sophgate::gateway::relay::sse::SseFramer;
use sophgate::gateway::request_id::{RequestId, REQUEST_ID};
use sophgate::gateway::stages::body::{peek_chat, peek_chat_scanning, Renames};
use sophgate::gateway::stages::ip_acl::IpAcl;
use sophgate::gateway::stages::rewrite::{rename_fields, rename_keys_in_text, TextRename};
use sophgate::gateway::stages::scripts::ScriptEventFilter;
use sophgate::gateway::{prepare, Step};
use sophgate::scripting::{bundled, PluginSpec, Plugins, ScriptLimits, ScriptRequest};

type BenchResult = Result<(), String>;

/// One stage's benchmark group; fails only when its inputs cannot be built or checked.
type Stage = fn(&mut Criterion) -> BenchResult;

const CLIENT_KEY: &str = "sk-bench-client-0123456789abcdef0123456789abcdef";
const SIZE_1K: usize = 1024;
const SIZE_100K: usize = 100 * 1024;

fn main() -> ExitCode {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let stages: [(&str, Stage); 9] = [
        ("ip_acl", bench_ip_acl),
        ("auth", bench_auth),
        ("json", bench_json),
        ("plugin", bench_plugin),
        ("field_aliases", bench_field_aliases),
        ("sse_relay", bench_sse_relay),
        ("upstream_http1", bench_upstream_http1),
        ("server_http1", bench_server_http1),
        ("pipeline", bench_pipeline),
    ];
    let mut failed = false;
    for (name, stage) in stages {
        if let Err(e) = stage(&mut c) {
            eprintln!("bench group {name}: setup failed: {e}");
            failed = true;
        }
    }
    c.final_summary();
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

fn net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>().map_err(|e| format!("{s}: {e}"))
}

/// `n` distinct IPv4 networks with a spread of prefix lengths (/16 to /32), as a real
/// allow list of offices, VPN ranges and single hosts would have. The lookup cost of
/// `CidrSet` grows with the number of distinct prefix lengths, so a list with one length only
/// would flatter it.
fn cidr_list(n: usize) -> Result<Vec<IpNet>, String> {
    (0..n)
        .map(|i| {
            let prefix = 16 + (i % 17) as u8;
            let a = 11 + (i / 250) as u8; // stays clear of 10/8 and 127/8
            let b = (i % 250) as u8;
            net(&format!("{a}.{b}.7.1/{prefix}")).map(|n| n.trunc())
        })
        .collect()
}

fn bench_ip_acl(c: &mut Criterion) -> BenchResult {
    let mut group = c.benchmark_group("ip_acl");
    let outside = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 77));
    let no_headers = HeaderMap::new();
    for n in [1usize, 1_000] {
        let allow = cidr_list(n)?;
        // The last entry of the list is allowed; a TEST-NET address is not.
        let inside = match allow.last() {
            Some(IpNet::V4(v4)) => IpAddr::V4(v4.network()),
            _ => return Err("cidr_list made no IPv4 entry".into()),
        };
        let acl = IpAcl::new(&allow, &[], &[]);
        if acl
            .client_ip(inside, &no_headers)
            .and_then(|ip| acl.check(ip))
            .is_err()
        {
            return Err(format!("{inside} should be allowed by {n} CIDRs"));
        }
        if acl
            .client_ip(outside, &no_headers)
            .and_then(|ip| acl.check(ip))
            .is_ok()
        {
            return Err(format!("{outside} should be refused by {n} CIDRs"));
        }
        group.bench_with_input(BenchmarkId::new("allowed", n), &inside, |b, ip| {
            b.iter(|| {
                let ip = acl.client_ip(black_box(*ip), &no_headers);
                black_box(ip.and_then(|ip| acl.check(ip)).is_ok())
            })
        });
        group.bench_with_input(BenchmarkId::new("refused", n), &outside, |b, ip| {
            b.iter(|| {
                let ip = acl.client_ip(black_box(*ip), &no_headers);
                black_box(ip.and_then(|ip| acl.check(ip)).is_ok())
            })
        });
    }

    // Behind a trusted load balancer: the client IP comes from X-Forwarded-For.
    let allow = cidr_list(1_000)?;
    let trusted = vec![net("127.0.0.0/8")?, net("::1/128")?];
    let acl = IpAcl::new(&allow, &[], &trusted);
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-forwarded-for",
        HeaderValue::from_static("198.51.100.9, 11.3.7.1, 127.0.0.2"),
    );
    let lb = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let resolved = acl
        .client_ip(lb, &headers)
        .map_err(|e| e.message.to_string())?;
    if resolved != IpAddr::V4(Ipv4Addr::new(11, 3, 7, 1)) {
        return Err(format!("X-Forwarded-For resolved to {resolved}"));
    }
    group.bench_function(BenchmarkId::new("xff_trusted_proxy", 1_000), |b| {
        b.iter(|| {
            let ip = acl.client_ip(black_box(lb), black_box(&headers));
            black_box(ip.and_then(|ip| acl.check(ip)).is_ok())
        })
    });
    group.finish();
    Ok(())
}

/// A generation whose `api_keys` holds `n` keys, one of them [`CLIENT_KEY`]. Built through the
/// config, as the gateway builds it, so the bench follows the key schema as it evolves.
fn generation_with_keys(n: usize) -> Result<Generation, String> {
    let mut yaml = String::from(
        "api_host: \"http://127.0.0.1:9\"\nforward_chat_path: /v1/chat/completions\napi_keys:\n",
    );
    for i in 0..n {
        if i == n / 2 {
            yaml.push_str(&format!("  \"{CLIENT_KEY}\": \"up-bench-{i:08}\"\n"));
        } else {
            let tail = (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            yaml.push_str(&format!(
                "  \"sk-bench-{i:08}-{tail:040x}\": \"up-bench-{i:08}\"\n"
            ));
        }
    }
    let config = Config::from_yaml(&yaml, &|_| None).map_err(|e| e.to_string())?;
    Generation::build(config, 1).map_err(|e| e.to_string())
}

fn bearer(key: &str) -> Result<HeaderMap, String> {
    let mut h = HeaderMap::new();
    let v = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|e| e.to_string())?;
    h.insert(http::header::AUTHORIZATION, v);
    Ok(h)
}

fn bench_auth(c: &mut Criterion) -> BenchResult {
    let mut group = c.benchmark_group("auth");
    let known = bearer(CLIENT_KEY)?;
    let unknown = bearer("sk-not-a-key-0123456789abcdef0123456789abcdef")?;
    for n in [10usize, 10_000] {
        let generation = generation_with_keys(n)?;
        let table = &generation.keys;
        if table.len() != n {
            return Err(format!(
                "key table holds {} keys, expected {n}",
                table.len()
            ));
        }
        if table.authenticate(&known).is_err() || table.authenticate(&unknown).is_ok() {
            return Err(format!("key table of {n} keys answers wrongly"));
        }
        group.bench_with_input(BenchmarkId::new("known_key", n), &known, |b, h| {
            b.iter(|| black_box(table.authenticate(black_box(h)).is_ok()))
        });
        group.bench_with_input(BenchmarkId::new("unknown_key", n), &unknown, |b, h| {
            b.iter(|| black_box(table.authenticate(black_box(h)).is_ok()))
        });
    }
    group.finish();
    Ok(())
}

/// A chat request of at least `target` bytes, shaped like real traffic: a system prompt,
/// alternating user/assistant turns (some with tool calls, so renaming has nested objects
/// and arrays to walk), tools, and text with escapes and non-ASCII characters.
fn chat_request(target: usize, stream: bool) -> Result<Bytes, String> {
    let words = [
        "the",
        "gateway",
        "forwards",
        "每个",
        "request",
        "with",
        "\"quoted\"",
        "text,",
        "naïve",
        "tokens\n",
        "and",
        "numbers",
        "42",
        "🙂",
        "stream",
        "events",
    ];
    let text = |seed: usize, len: usize| {
        let mut s = String::new();
        let mut i = seed;
        while s.len() < len {
            s.push_str(words[i % words.len()]);
            s.push(' ');
            i = i.wrapping_mul(31).wrapping_add(7);
        }
        s
    };
    let weather = json!({
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                           "required": ["location"]}
        }
    });
    let mut messages = vec![json!({"role": "system", "content": text(1, 200)})];
    let mut req = json!({});
    for turn in 0.. {
        req = json!({
            "model": "mock-model",
            "messages": messages,
            "tools": [weather],
            "temperature": 0.7,
            "max_tokens": 256,
            "stream": stream,
            "metadata": {"user": "bench", "tags": ["a", "b"]},
        });
        let len = serde_json::to_vec(&req).map_err(|e| e.to_string())?.len();
        if len >= target || turn > 100_000 {
            break;
        }
        messages.push(if turn % 3 == 2 {
            json!({"role": "assistant", "content": null, "tool_calls": [{
                "id": format!("call_{turn}"), "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}
            }]})
        } else {
            let role = if turn % 2 == 0 { "user" } else { "assistant" };
            json!({"role": role, "content": text(turn, 120)})
        });
    }
    serde_json::to_vec(&req)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

fn sizes() -> Result<Vec<(&'static str, Bytes)>, String> {
    Ok(vec![
        ("1KB", chat_request(SIZE_1K, false)?),
        ("100KB", chat_request(SIZE_100K, false)?),
    ])
}

fn bench_json(c: &mut Criterion) -> BenchResult {
    let mut group = c.benchmark_group("json");
    for (name, body) in sizes()? {
        group.throughput(Throughput::Bytes(body.len() as u64));
        // The full parse + re-serialise the pipeline does when it must change the body.
        group.bench_with_input(
            BenchmarkId::new("parse_serialize", name),
            &body,
            |b, body| {
                b.iter(|| {
                    let v: Value = match serde_json::from_slice(black_box(body)) {
                        Ok(v) => v,
                        Err(_) => return 0,
                    };
                    serde_json::to_vec(&v).map(|o| o.len()).unwrap_or(0)
                })
            },
        );
        // The validating peek the pipeline does instead when nothing will change.
        if peek_chat(&body).is_err() {
            return Err(format!("{name} body does not peek as a chat request"));
        }
        group.bench_with_input(BenchmarkId::new("peek", name), &body, |b, body| {
            b.iter(|| black_box(peek_chat(black_box(body)).is_ok()))
        });
        // The pipeline's peek: one strict pass of its own (serde_json only when it gives up),
        // which also finds the `field_aliases` keys (here: `model` → `model_id`).
        let aliases = vec![("model".to_string(), "model_id".to_string())];
        match peek_chat_scanning(&body, &aliases) {
            Ok((_, Renames::InText(found))) if found.len() == 1 => {}
            _ => return Err(format!("{name} body is not peeked by the scan itself")),
        }
        group.bench_with_input(BenchmarkId::new("scan_peek", name), &body, |b, body| {
            b.iter(|| black_box(peek_chat_scanning(black_box(body), &aliases).is_ok()))
        });
    }
    group.finish();
    Ok(())
}

/// Compiles plugins with the default script limits.
fn compile(specs: Vec<PluginSpec>) -> Result<Plugins, String> {
    Plugins::compile(specs, ScriptLimits::default()).map_err(|errors| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// The bundled `field_aliases` plugin with the seed's alias (model → model_id), as the config
/// key `field_aliases: {model: model_id}` loads it.
fn field_aliases_plugin() -> Result<Plugins, String> {
    let source = bundled("field_aliases").ok_or("no bundled field_aliases plugin")?;
    compile(vec![PluginSpec {
        name: "bundled:field_aliases".into(),
        source: source.to_string(),
        params: json!({"model": "model_id"}),
    }])
}

/// What `on_request` gets for a chat request with this body.
fn script_request(body: Value) -> ScriptRequest {
    ScriptRequest {
        body,
        path: "/v1/chat/completions".into(),
        method: "POST".into(),
        client_ip: "127.0.0.1".into(),
        key: "bench".into(),
        ..Default::default()
    }
}

/// The fixed cost of the script stage: a plugin whose `on_request` does nothing still has its
/// request converted to a script value and back, and one Rhai call made.
fn bench_plugin(c: &mut Criterion) -> BenchResult {
    let mut group = c.benchmark_group("plugin");
    let noop = compile(vec![PluginSpec {
        name: "noop".into(),
        source: "fn on_request(req) { }".into(),
        params: Value::Null,
    }])?;
    if !noop.has_on_request() {
        return Err("the do-nothing plugin has no on_request hook".into());
    }
    let tiny: Value =
        json!({"model": "mock-model", "messages": [{"role": "user", "content": "Hi"}]});
    let mut inputs = vec![("tiny", tiny)];
    for (name, body) in sizes()? {
        inputs.push((
            name,
            serde_json::from_slice(&body).map_err(|e| e.to_string())?,
        ));
    }
    for (name, body) in inputs {
        let mut check = script_request(body.clone());
        noop.on_request(&mut check)
            .map_err(|e| format!("noop on_request: {e:?}"))?;
        if check.body != body {
            return Err("the do-nothing plugin changed the body".into());
        }
        group.bench_with_input(
            BenchmarkId::new("noop_on_request", name),
            &body,
            |b, body| {
                b.iter_batched(
                    || script_request(body.clone()),
                    |mut req| {
                        let ok = noop.on_request(&mut req).is_ok();
                        (ok, req)
                    },
                    BatchSize::SmallInput,
                )
            },
        );
    }
    group.finish();
    Ok(())
}

fn bench_field_aliases(c: &mut Criterion) -> BenchResult {
    let mut group = c.benchmark_group("field_aliases");
    let aliases = vec![("model".to_string(), "model_id".to_string())];
    let plugin = field_aliases_plugin()?;
    for (name, body) in sizes()? {
        let parsed: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let mut check = parsed.clone();
        rename_fields(&mut check, &aliases);
        if check.get("model_id").is_none() || check.get("model").is_some() {
            return Err("rename_fields did not rename model to model_id".into());
        }
        let batch = if body.len() > SIZE_1K * 8 {
            BatchSize::LargeInput
        } else {
            BatchSize::SmallInput
        };
        group.throughput(Throughput::Bytes(body.len() as u64));
        // The renaming walk alone, on an already parsed body (cloned outside the timing).
        group.bench_with_input(BenchmarkId::new("native_rename", name), &parsed, |b, v| {
            b.iter_batched(
                || v.clone(),
                |mut v| {
                    rename_fields(&mut v, &aliases);
                    v
                },
                batch,
            )
        });
        // What the stage costs a request: parse, rename, serialise.
        group.bench_with_input(
            BenchmarkId::new("native_parse_rename_serialize", name),
            &body,
            |b, body| {
                b.iter(|| {
                    let mut v: Value = match serde_json::from_slice(black_box(body)) {
                        Ok(v) => v,
                        Err(_) => return 0,
                    };
                    rename_fields(&mut v, &aliases);
                    serde_json::to_vec(&v).map(|o| o.len()).unwrap_or(0)
                })
            },
        );

        // What the stage costs a request now: the keys renamed in the text, no tree.
        match rename_keys_in_text(&body, &aliases) {
            TextRename::Renamed(_) => {}
            _ => return Err("rename_keys_in_text did not rename model to model_id".into()),
        }
        group.bench_with_input(
            BenchmarkId::new("native_text_rename", name),
            &body,
            |b, body| {
                b.iter(|| match rename_keys_in_text(black_box(body), &aliases) {
                    TextRename::Renamed(o) => o.len(),
                    _ => 0,
                })
            },
        );

        // The bundled plugin, as the pipeline runs it: the same rename through `on_request`
        // (JSON → script value, the native `rename_keys` helper, script value → JSON).
        let mut check = script_request(parsed.clone());
        plugin
            .on_request(&mut check)
            .map_err(|e| format!("field_aliases on_request: {e:?}"))?;
        if check.body.get("model_id").is_none() || check.body.get("model").is_some() {
            return Err("the field_aliases plugin did not rename model to model_id".into());
        }
        group.bench_with_input(BenchmarkId::new("plugin_rename", name), &parsed, |b, v| {
            b.iter_batched(
                || script_request(v.clone()),
                |mut req| {
                    let ok = plugin.on_request(&mut req).is_ok();
                    (ok, req)
                },
                batch,
            )
        });
        group.bench_with_input(
            BenchmarkId::new("plugin_parse_rename_serialize", name),
            &body,
            |b, body| {
                b.iter(|| {
                    let v: Value = match serde_json::from_slice(black_box(body)) {
                        Ok(v) => v,
                        Err(_) => return 0,
                    };
                    let mut req = script_request(v);
                    if plugin.on_request(&mut req).is_err() {
                        return 0;
                    }
                    serde_json::to_vec(&req.body).map(|o| o.len()).unwrap_or(0)
                })
            },
        );
    }
    group.finish();
    Ok(())
}

/// The events of one streamed answer as the mock upstream sends them: a role chunk, 64
/// content deltas, a finish chunk and `[DONE]`.
fn sse_events() -> Vec<Bytes> {
    let chunk = |delta: Value, finish: Option<&str>| {
        let v = json!({
            "id": "chatcmpl-bench-0000000000000000", "object": "chat.completion.chunk",
            "created": 1_767_225_600u64, "model": "mock-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        Bytes::from(format!("data: {v}\n\n"))
    };
    let mut out = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    for i in 0..64 {
        out.push(chunk(json!({"content": format!(" tok{i}")}), None));
    }
    out.push(chunk(json!({}), Some("stop")));
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

/// An answer head with `n` end-to-end headers (plus framing), like an OpenAI-compatible API's.
fn answer_head(n: usize) -> Vec<u8> {
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n",
    );
    for i in 0..n.saturating_sub(1) {
        head.push_str(&format!("x-ratelimit-field-{i}: {}\r\n", 1000 + i));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

fn bench_upstream_http1(c: &mut Criterion) -> BenchResult {
    use sophgate::http::body_decoder::{BodyDecoder, Decoded};
    use sophgate::http::wire::{encode_request_head, parse_response_head, Framing};
    let mut group = c.benchmark_group("upstream_http1");

    // The request head the gateway writes: method, target, host, 5 client headers,
    // authorization, request id, content length.
    let names: Vec<http::HeaderName> = [
        "content-type",
        "accept",
        "user-agent",
        "x-stainless-lang",
        "openai-beta",
        "authorization",
        "x-request-id",
    ]
    .iter()
    .map(|n| http::HeaderName::from_static(n))
    .collect();
    let value = HeaderValue::from_static("application/json; a-typical-value");
    let lines: Vec<(&http::HeaderName, &HeaderValue)> = names.iter().map(|n| (n, &value)).collect();
    let host = HeaderValue::from_static("127.0.0.1:8000");
    let mut out = Vec::new();
    encode_request_head(
        &mut out,
        &http::Method::POST,
        "/v1/chat/completions",
        &host,
        &lines,
        1024,
    );
    if !out.ends_with(b"content-length: 1024\r\n\r\n") {
        return Err("request head not as expected".into());
    }
    group.bench_function("request_head/7_headers", |b| {
        b.iter(|| {
            encode_request_head(
                &mut out,
                &http::Method::POST,
                black_box("/v1/chat/completions"),
                &host,
                black_box(&lines),
                1024,
            );
            black_box(out.len())
        })
    });

    // Answer heads of 3 and 20 headers, parsed into the map the client gets.
    for n in [3usize, 20] {
        let wire = answer_head(n);
        let parsed =
            parse_response_head(&mut bytes::BytesMut::from(&wire[..]), &http::Method::POST)
                .map_err(|e| e.to_string())?
                .ok_or("answer head incomplete")?;
        if parsed.headers.len() != n || parsed.framing != Framing::Chunked {
            return Err(format!("answer head of {n} parsed as {:?}", parsed.headers));
        }
        group.bench_function(
            BenchmarkId::new("answer_head", format!("{n}_headers")),
            |b| {
                b.iter_batched(
                    || bytes::BytesMut::from(&wire[..]),
                    |mut buf| black_box(parse_response_head(&mut buf, &http::Method::POST)),
                    BatchSize::SmallInput,
                )
            },
        );
    }

    // A 67-event SSE answer in chunked encoding, one chunk per event, decoded off the
    // connection's buffer (what each streamed event costs on the upstream side).
    let events = sse_events();
    let mut wire = Vec::new();
    for e in &events {
        wire.extend_from_slice(format!("{:x}\r\n", e.len()).as_bytes());
        wire.extend_from_slice(e);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    let decode_all = |mut buf: bytes::BytesMut| -> Result<usize, String> {
        let mut dec = BodyDecoder::new(Framing::Chunked);
        let mut n = 0;
        loop {
            match dec.decode(&mut buf).map_err(|e| e.to_string())? {
                Decoded::Data(d) => n += d.len(),
                Decoded::Done => return Ok(n),
                Decoded::NeedMore => return Err("body cut short".into()),
            }
        }
    };
    let expected: usize = events.iter().map(|e| e.len()).sum();
    if decode_all(bytes::BytesMut::from(&wire[..]))? != expected {
        return Err("chunked body decoded to the wrong length".into());
    }
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("chunked_body/67_events", |b| {
        b.iter_batched(
            || bytes::BytesMut::from(&wire[..]),
            |buf| black_box(decode_all(buf)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
    Ok(())
}

/// A chat request head as the openai Python SDK sends it (14 header lines).
fn sdk_request_head() -> Vec<u8> {
    let mut head = String::from("POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:8000\r\n");
    for (name, value) in [
        ("accept-encoding", "gzip, deflate"),
        ("connection", "keep-alive"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("user-agent", "OpenAI/Python 1.54.0"),
        ("x-stainless-lang", "python"),
        ("x-stainless-package-version", "1.54.0"),
        ("x-stainless-os", "Linux"),
        ("x-stainless-arch", "x64"),
        ("x-stainless-runtime", "CPython"),
        ("x-stainless-runtime-version", "3.12.3"),
        (
            "authorization",
            "Bearer sk-bench-0123456789abcdef0123456789abcdef",
        ),
        ("x-stainless-retry-count", "0"),
        ("content-length", "68"),
    ] {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

fn bench_server_http1(c: &mut Criterion) -> BenchResult {
    use sophgate::http::server::parse_request_head;
    let mut group = c.benchmark_group("server_http1");
    let wire = sdk_request_head();
    let parsed = parse_request_head(&mut bytes::BytesMut::from(&wire[..]))
        .map_err(|e| e.to_string())?
        .ok_or("request head not complete")?;
    if parsed.headers().len() != 15 || parsed.uri().path() != "/v1/chat/completions" {
        return Err(format!("request head not as expected: {parsed:?}"));
    }
    group.bench_function("request_head/sdk_15_headers", |b| {
        b.iter_batched(
            || bytes::BytesMut::from(&wire[..]),
            |mut buf| black_box(parse_request_head(&mut buf)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
    Ok(())
}

fn bench_sse_relay(c: &mut Criterion) -> BenchResult {
    let mut group = c.benchmark_group("sse_relay");
    let events = sse_events();
    let one = events.get(1).cloned().ok_or("no content event")?;
    let split_at = one.len() / 2;
    let (head, tail) = (one.slice(..split_at), one.slice(split_at..));

    group.throughput(Throughput::Elements(1));
    // The usual case: the upstream writes one whole event per chunk; it passes through as
    // the same `Bytes`, no copy.
    group.bench_function("framer/whole_event", |b| {
        let mut framer = SseFramer::default();
        b.iter(|| black_box(framer.push(black_box(one.clone()))))
    });
    // An event split over two chunks: held back, then joined.
    group.bench_function("framer/split_event", |b| {
        let mut framer = SseFramer::default();
        b.iter(|| {
            black_box(framer.push(black_box(head.clone())));
            black_box(framer.push(black_box(tail.clone())))
        })
    });

    // The response body the client reads: relay of a 67-event answer, polled frame by frame
    // (framing, idle-timer reset, access-log accounting), reported per event.
    // Plugins and their `on_event` filter are built outside the timing, once per stream.
    let rt = runtime()?;
    let noop_event = Arc::new(compile(vec![PluginSpec {
        name: "noop_event".into(),
        source: "fn on_event(ev) { }".into(),
        params: Value::Null,
    }])?);
    let make_body = |events: &[Bytes], hook: Option<&Arc<Plugins>>| {
        let items: Vec<Result<Bytes, reqwest::Error>> = events.iter().cloned().map(Ok).collect();
        let stream = UpstreamStream::Stream(Box::pin(futures_util::stream::iter(items)));
        let mut relay = Relay::new(stream, true, Duration::from_secs(300));
        if let Some(plugins) = hook {
            relay.filter(Box::new(ScriptEventFilter::new(
                plugins.clone(),
                rhai::Map::new(),
            )));
        }
        let mut body = ResponseBody::relay(relay);
        body.set_log(Box::new(AccessLog::new(
            false,
            RequestId::of(&http::HeaderMap::new()),
            http::Method::POST,
            "/v1/chat/completions",
        )));
        body
    };
    for (name, hook) in [
        ("relay_body/67_events", None),
        // The same with a do-nothing `on_event` plugin: the per-event cost of the hook
        // (split the event, parse its JSON, convert to and from a script value, re-frame).
        ("relay_body_noop_on_event/67_events", Some(&noop_event)),
    ] {
        let relayed = rt.block_on(async {
            let mut body = make_body(&events, hook);
            let mut n = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(d) = frame.data_ref() {
                    n += d.windows(2).filter(|w| w == b"\n\n").count();
                }
            }
            n
        });
        if relayed != events.len() {
            return Err(format!(
                "{name}: relayed {relayed} of {} events",
                events.len()
            ));
        }
        group.throughput(Throughput::Elements(events.len() as u64));
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_batched(
                || make_body(&events, hook),
                |mut body| async move {
                    let mut bytes = 0usize;
                    while let Some(Ok(frame)) = body.frame().await {
                        bytes += frame.data_ref().map_or(0, Bytes::len);
                    }
                    bytes
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
    Ok(())
}

/// The gateway config the load benchmark also uses: auth, an IP allow list and the seed's
/// `field_aliases` (model → model_id). The upstream is never contacted: `prepare` stops
/// before the forward stage.
fn generation(field_aliases: bool) -> Result<Generation, String> {
    let aliases = if field_aliases {
        "field_aliases:\n  model: model_id\n"
    } else {
        ""
    };
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\n\
         api_host: \"http://127.0.0.1:9\"\n\
         forward_chat_path: /v1/chat/completions\n\
         api_keys:\n  \"{CLIENT_KEY}\": \"up-bench-key\"\n\
         ip_whitelist: [\"127.0.0.0/8\", \"::1/128\", \"10.20.0.0/16\", \"192.0.2.7\"]\n\
         log_level: ERROR\n\
         logging:\n  access_log: false\n\
         {aliases}"
    );
    let config = Config::from_yaml(&yaml, &|_| None).map_err(|e| e.to_string())?;
    Generation::build(config, 1).map_err(|e| e.to_string())
}

fn chat_http_request(body: &Bytes, key: &str) -> Result<Request<Full<Bytes>>, String> {
    Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(Full::new(body.clone()))
        .map_err(|e| e.to_string())
}

fn bench_pipeline(c: &mut Criterion) -> BenchResult {
    let mut group = c.benchmark_group("pipeline");
    let rt = runtime()?;
    let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let rid = {
        let mut h = http::HeaderMap::new();
        h.insert(&REQUEST_ID, http::HeaderValue::from_static("req-bench"));
        RequestId::of(&h)
    };
    let small = chat_request(SIZE_1K, false)?;
    let large = chat_request(SIZE_100K, false)?;
    let cases = [
        // Rejected at auth, before the body is read: what an attacker spraying keys costs.
        ("unknown_key", true, &small, "sk-wrong"),
        // Nothing to change: the body goes upstream byte for byte after a validating peek.
        ("passthrough", false, &small, CLIENT_KEY),
        // The default pipeline of the load benchmark: auth + ACL + field_aliases.
        ("default", true, &small, CLIENT_KEY),
        ("default", true, &large, CLIENT_KEY),
    ];
    for (name, aliases, body, key) in cases {
        let generation = generation(aliases)?;
        let size = if body.len() > SIZE_1K * 8 {
            "100KB"
        } else {
            "1KB"
        };
        // Check once, outside the timing, that the case does what its name says.
        let outcome = rt.block_on(async {
            let (mut head, req_body) = chat_http_request(body, key)?.into_parts();
            let log = AccessLog::new(false, rid.clone(), http::Method::POST, head.uri.path());
            let mut ctx = RequestCtx::new(peer, rid.clone(), log);
            Ok::<_, String>(prepare(&generation, &mut ctx, &mut head, req_body).await)
        })?;
        match (name, outcome) {
            ("unknown_key", Err(e)) if e.status() == 401 => {}
            ("passthrough", Ok(Step::Forward(p))) if p.body == *body => {}
            ("default", Ok(Step::Forward(p)))
                if p.body.windows(10).any(|w| w == b"\"model_id\"") => {}
            (name, Ok(_)) => return Err(format!("pipeline/{name}: unexpected outcome")),
            (name, Err(e)) => return Err(format!("pipeline/{name}: {}", e.message)),
        }
        let template = chat_http_request(body, key)?;
        let (parts, _) = template.into_parts();
        // Bytes per second only where the body is read (the refused request never reads it;
        // it runs first, before any throughput is set on the group).
        if name != "unknown_key" {
            group.throughput(Throughput::Bytes(body.len() as u64));
        }
        group.bench_function(BenchmarkId::new(format!("prepare/{name}"), size), |b| {
            b.to_async(&rt).iter_batched(
                || (parts.clone(), Full::new((*body).clone())),
                |(mut head, req_body)| {
                    let generation = &generation;
                    let rid = &rid;
                    async move {
                        let log = AccessLog::new(
                            false,
                            rid.clone(),
                            head.method.clone(),
                            head.uri.path(),
                        );
                        let mut ctx = RequestCtx::new(peer, rid.clone(), log);
                        let step = prepare(generation, &mut ctx, &mut head, req_body).await;
                        // Returned, so criterion drops them after the timing.
                        (step, ctx, head)
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
    Ok(())
}
