//! Criterion benchmarks of what Rhai hooks cost a request, one row per target of issue 18
//! ("scripts cost what they touch"):
//!
//! - `on_request`: Rhai's own `call_fn` of a do-nothing function (`bare_rhai_call_fn`, for
//!   reference: hooks are run without it, see `scripting::hook_call`); a do-nothing
//!   `on_request` on 1 KB and 100 KB chat bodies, as the hook call alone (`hook/…`) and as the
//!   whole request path without sockets (`prepare/…`, next to the same gateway without
//!   plugins);
//! - `touch`: a hook that reads `req.body.model` and sets `req.body.user` on a 100 KB body
//!   (parse, hooks, encode: what the pipeline does), next to serde_json parsing that body once;
//! - `headers`: the bundled `headers.rhai` with one `set` on a 30 KB body, next to no plugin;
//! - `on_event`: per event, a do-nothing `on_event` and one reading
//!   `ev.data.choices[0].delta.content`;
//! - `field_aliases`: the bundled `field_aliases.rhai` as a plugin next to the native
//!   `field_aliases` config key (1 KB and 100 KB).
//!
//! Every case is checked once before it is timed (the hook ran, the body changed or did not),
//! so a row never times an error path. Run: `cargo bench --bench scripts` (add `-- --quick`
//! for a shorter run, or a group name to filter).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkId, Criterion};
use http::Request;
use http_body_util::Full;
use serde_json::{json, Value};

use sophgate::config::Config;
use sophgate::gateway::ctx::RequestCtx;
use sophgate::gateway::generation::Generation;
use sophgate::gateway::relay::access_log::AccessLog;
use sophgate::gateway::relay::body::{EventAction, EventFilter};
use sophgate::gateway::request_id::{RequestId, REQUEST_ID};
use sophgate::gateway::stages::scripts::ScriptEventFilter;
use sophgate::gateway::{prepare, Step};
use sophgate::scripting::{PluginSpec, Plugins, ScriptLimits, ScriptRequest};

type BenchResult = Result<(), String>;

/// One benchmark group; fails only when its inputs cannot be built or checked.
type Group = fn(&mut Criterion) -> BenchResult;

const CLIENT_KEY: &str = "sk-bench-client-0123456789abcdef0123456789abcdef";
const NOOP_REQUEST: &str = "fn on_request(req) { }\n";
const MODEL_USER: &str =
    "fn on_request(req) { if req.body.model != \"\" { req.body.user = \"bench-user\"; } }\n";

fn main() -> ExitCode {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let groups: [(&str, Group); 5] = [
        ("on_request", bench_on_request),
        ("touch", bench_touch),
        ("headers", bench_headers),
        ("on_event", bench_on_event),
        ("field_aliases", bench_field_aliases),
    ];
    let mut failed = false;
    for (name, group) in groups {
        if let Err(e) = group(&mut c) {
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

/// A chat body of at least `target` bytes: a system prompt and alternating turns.
fn chat_body(target: usize) -> Result<Bytes, String> {
    let mut messages = vec![json!({"role": "system", "content": "You are a helpful bench."})];
    loop {
        let body = json!({
            "model": "mock-model",
            "messages": messages,
            "temperature": 0.7,
            "max_tokens": 256,
            "metadata": {"team": "bench", "tags": ["a", "b"]},
        });
        let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        if bytes.len() >= target {
            return Ok(Bytes::from(bytes));
        }
        let n = messages.len();
        let role = if n % 2 == 0 { "assistant" } else { "user" };
        let content = format!("turn {n}: the gateway forwards \"quoted\" text, naïve 每个 🙂 ");
        messages.push(json!({"role": role, "content": content.repeat(4)}));
    }
}

fn compile(source: &str) -> Result<Plugins, String> {
    let spec = PluginSpec {
        name: "bench.rhai".into(),
        source: source.into(),
        params: Value::Null,
    };
    Plugins::compile(vec![spec], ScriptLimits::default()).map_err(|errors| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })
}

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

/// A plugin file in the temp folder, for configs that load it by path.
fn plugin_file(name: &str, source: &str) -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("sophgate-bench-scripts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join(name);
    std::fs::write(&path, source).map_err(|e| e.to_string())?;
    Ok(path)
}

/// A gateway with auth and `extra` config (plugins, field_aliases); never contacts upstream.
fn generation(extra: &str) -> Result<Generation, String> {
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\n\
         api_host: \"http://127.0.0.1:9\"\n\
         forward_chat_path: /v1/chat/completions\n\
         api_keys:\n  \"{CLIENT_KEY}\": \"up-bench-key\"\n\
         log_level: ERROR\n\
         logging:\n  access_log: false\n\
         {extra}"
    );
    let config = Config::from_yaml(&yaml, &|_| None).map_err(|e| e.to_string())?;
    Generation::build(config, 1).map_err(|e| e.to_string())
}

fn plugins_config(path: &str, params: &str) -> String {
    format!("plugins:\n  - path: \"{path}\"\n    params: {params}\n")
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

/// Times `prepare` (every stage before the upstream call) for `body` under `generation`,
/// after checking once that the request is forwarded and `check` accepts what goes upstream.
fn bench_prepare(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    size: &str,
    generation: &Generation,
    body: &Bytes,
    check: &dyn Fn(&Bytes, &http::HeaderMap) -> bool,
) -> BenchResult {
    let rt = runtime()?;
    let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let rid = {
        let mut h = http::HeaderMap::new();
        h.insert(&REQUEST_ID, http::HeaderValue::from_static("req-bench"));
        RequestId::of(&h)
    };
    let request = || {
        Request::post("/v1/chat/completions")
            .header("authorization", format!("Bearer {CLIENT_KEY}"))
            .header("content-type", "application/json")
            .header("content-length", body.len())
            .body(Full::new(body.clone()))
            .map_err(|e| e.to_string())
    };
    let outcome = rt.block_on(async {
        let (mut head, req_body) = request()?.into_parts();
        let log = AccessLog::new(false, rid.clone(), http::Method::POST, head.uri.path());
        let mut ctx = RequestCtx::new(peer, rid.clone(), log);
        Ok::<_, String>(prepare(generation, &mut ctx, &mut head, req_body).await)
    })?;
    match outcome {
        Ok(Step::Forward(p)) if check(&p.body, &p.headers) => {}
        Ok(Step::Forward(_)) => return Err(format!("{name}/{size}: unexpected request upstream")),
        Ok(_) => return Err(format!("{name}/{size}: not forwarded")),
        Err(e) => return Err(format!("{name}/{size}: {}", e.message)),
    }
    let (parts, _) = request()?.into_parts();
    group.bench_function(BenchmarkId::new(name, size), |b| {
        b.to_async(&rt).iter_batched(
            || (parts.clone(), Full::new(body.clone())),
            |(mut head, req_body)| {
                let rid = &rid;
                async move {
                    let log = AccessLog::new(false, rid.clone(), head.method.clone(), "/");
                    let mut ctx = RequestCtx::new(peer, rid.clone(), log);
                    let step = prepare(generation, &mut ctx, &mut head, req_body).await;
                    (step, ctx, head)
                }
            },
            BatchSize::SmallInput,
        )
    });
    Ok(())
}

/// For reference: Rhai's own `call_fn` of a do-nothing function on the sandboxed engine, with a
/// kept empty scope and an empty map argument (hooks are run without `call_fn`: it rebuilds
/// Rhai's runtime state and function-resolution cache on every call).
fn bench_bare_call_fn(group: &mut criterion::BenchmarkGroup<'_, WallTime>) -> BenchResult {
    let engine = sophgate::scripting::engine::build(&ScriptLimits::default());
    let ast = engine.compile(NOOP_REQUEST).map_err(|e| e.to_string())?;
    let mut scope = rhai::Scope::new();
    let call = |scope: &mut rhai::Scope<'_>| {
        engine.call_fn_with_options::<rhai::Dynamic>(
            rhai::CallFnOptions::new()
                .eval_ast(false)
                .rewind_scope(true),
            scope,
            &ast,
            "on_request",
            (rhai::Dynamic::from_map(rhai::Map::new()),),
        )
    };
    call(&mut scope).map(|_| ()).map_err(|e| e.to_string())?;
    group.bench_function("bare_rhai_call_fn", |b| b.iter(|| call(&mut scope).is_ok()));
    Ok(())
}

fn bench_on_request(c: &mut Criterion) -> BenchResult {
    let mut group = c.benchmark_group("on_request");
    bench_bare_call_fn(&mut group)?;
    let noop = compile(NOOP_REQUEST)?;
    let noop_path = plugin_file("noop.rhai", NOOP_REQUEST)?;
    let none = generation("")?;
    let with_noop = generation(&plugins_config(&noop_path.display().to_string(), "null"))?;
    for (size, target) in [("1KB", 1024), ("100KB", 100 * 1024)] {
        let body = chat_body(target)?;
        let parsed: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let mut check = script_request(parsed.clone());
        noop.on_request(&mut check)
            .map_err(|e| format!("noop on_request: {e}"))?;
        if check.body != parsed {
            return Err("the do-nothing hook changed the body".into());
        }
        // The hook call alone, on the body the pipeline hands it.
        group.bench_with_input(BenchmarkId::new("hook/noop", size), &parsed, |b, v| {
            b.iter_batched(
                || script_request(v.clone()),
                |mut req| {
                    let ok = noop.on_request(&mut req).is_ok();
                    (ok, req)
                },
                BatchSize::LargeInput,
            )
        });
        let same = |sent: &Bytes, _: &http::HeaderMap| *sent == body;
        bench_prepare(&mut group, "prepare/none", size, &none, &body, &same)?;
        // The noop hook may re-encode an equal body; it must still be the same JSON.
        let same_json = |sent: &Bytes, _: &http::HeaderMap| {
            serde_json::from_slice::<Value>(sent).ok().as_ref() == Some(&parsed)
        };
        bench_prepare(
            &mut group,
            "prepare/noop",
            size,
            &with_noop,
            &body,
            &same_json,
        )?;
    }
    group.finish();
    Ok(())
}

fn bench_touch(c: &mut Criterion) -> BenchResult {
    let mut group = c.benchmark_group("touch");
    let plugin = compile(MODEL_USER)?;
    let body = chat_body(100 * 1024)?;
    let parse = |b: &Bytes| serde_json::from_slice::<Value>(b).map_err(|e| e.to_string());
    let mut check = script_request(parse(&body)?);
    plugin
        .on_request(&mut check)
        .map_err(|e| format!("model_user on_request: {e}"))?;
    if check.body.get("user") != Some(&json!("bench-user")) {
        return Err("the hook did not set user".into());
    }
    group.bench_with_input(
        BenchmarkId::new("serde_json_parse", "100KB"),
        &body,
        |b, body| b.iter(|| parse(black_box(body)).map(|v| v.is_object())),
    );
    // What the pipeline does for this hook: parse, run it, encode the changed body.
    group.bench_with_input(
        BenchmarkId::new("parse_model_user_encode", "100KB"),
        &body,
        |b, body| {
            b.iter(|| {
                let Ok(v) = parse(black_box(body)) else {
                    return 0;
                };
                let mut req = script_request(v);
                if plugin.on_request(&mut req).is_err() {
                    return 0;
                }
                serde_json::to_vec(&req.body).map(|o| o.len()).unwrap_or(0)
            })
        },
    );
    let path = plugin_file("model_user.rhai", MODEL_USER)?;
    let with_plugin = generation(&plugins_config(&path.display().to_string(), "null"))?;
    let sets_user = |sent: &Bytes, _: &http::HeaderMap| {
        serde_json::from_slice::<Value>(sent)
            .is_ok_and(|v| v.get("user") == Some(&json!("bench-user")))
    };
    bench_prepare(
        &mut group,
        "prepare/model_user",
        "100KB",
        &with_plugin,
        &body,
        &sets_user,
    )?;
    group.finish();
    Ok(())
}

fn bench_headers(c: &mut Criterion) -> BenchResult {
    let mut group = c.benchmark_group("headers");
    let body = chat_body(30 * 1024)?;
    let none = generation("")?;
    let headers = generation(&plugins_config(
        "plugins/headers.rhai",
        "{ set: { x-team: blue } }",
    ))?;
    let same = |sent: &Bytes, _: &http::HeaderMap| *sent == body;
    bench_prepare(&mut group, "prepare/none", "30KB", &none, &body, &same)?;
    let tagged = |sent: &Bytes, h: &http::HeaderMap| {
        h.get("x-team").is_some_and(|v| v == "blue")
            && serde_json::from_slice::<Value>(sent).ok()
                == serde_json::from_slice::<Value>(&body).ok()
    };
    bench_prepare(
        &mut group,
        "prepare/headers_set",
        "30KB",
        &headers,
        &body,
        &tagged,
    )?;
    group.finish();
    Ok(())
}

fn content_event(i: usize) -> Bytes {
    let v = json!({
        "id": "chatcmpl-bench-0000000000000000", "object": "chat.completion.chunk",
        "created": 1_767_225_600u64, "model": "mock-model",
        "choices": [{"index": 0, "delta": {"content": format!(" tok{i}")}, "finish_reason": null}],
    });
    Bytes::from(format!("data: {v}\n\n"))
}

fn bench_on_event(c: &mut Criterion) -> BenchResult {
    let mut group = c.benchmark_group("on_event");
    let event = content_event(7);
    let cases = [
        ("noop", "fn on_event(ev) { }"),
        (
            "read_content",
            "fn on_event(ev) { if ev.data.choices[0].delta.content == \"\" { ev.ctx.empty = true; } }",
        ),
    ];
    for (name, source) in cases {
        let plugins = Arc::new(compile(source)?);
        let mut filter = ScriptEventFilter::new(plugins.clone(), rhai::Map::new());
        match filter.on_event(&event) {
            EventAction::Keep | EventAction::Replace(_) => {}
            _ => return Err(format!("on_event/{name}: the event was not kept")),
        }
        group.bench_function(BenchmarkId::new("per_event", name), |b| {
            let mut filter = ScriptEventFilter::new(plugins.clone(), rhai::Map::new());
            b.iter(|| match filter.on_event(black_box(&event)) {
                EventAction::Replace(bytes) => bytes.len(),
                _ => 0,
            })
        });
    }
    group.finish();
    Ok(())
}

fn bench_field_aliases(c: &mut Criterion) -> BenchResult {
    let mut group = c.benchmark_group("field_aliases");
    let native = generation("field_aliases:\n  model: model_id\n")?;
    let plugin = generation(&plugins_config(
        "plugins/field_aliases.rhai",
        "{ model: model_id }",
    ))?;
    let renamed = |sent: &Bytes, _: &http::HeaderMap| {
        serde_json::from_slice::<Value>(sent)
            .is_ok_and(|v| v.get("model_id").is_some() && v.get("model").is_none())
    };
    for (size, target) in [("1KB", 1024), ("100KB", 100 * 1024)] {
        let body = chat_body(target)?;
        bench_prepare(&mut group, "prepare/native", size, &native, &body, &renamed)?;
        bench_prepare(&mut group, "prepare/plugin", size, &plugin, &body, &renamed)?;
    }
    group.finish();
    Ok(())
}
