use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};
use serde_json::{json, Value};

use super::*;

fn spec(name: &str, source: &str, params: Value) -> PluginSpec {
    PluginSpec {
        name: name.into(),
        source: source.into(),
        params,
    }
}

fn compile(plugins: &[(&str, Value)]) -> Plugins {
    compile_with(plugins, ScriptLimits::default())
}

fn compile_with(plugins: &[(&str, Value)], limits: ScriptLimits) -> Plugins {
    let specs = plugins
        .iter()
        .enumerate()
        .map(|(i, (src, params))| spec(&format!("p{i}.rhai"), src, params.clone()))
        .collect();
    match Plugins::compile(specs, limits) {
        Ok(p) => p,
        Err(errors) => panic!("compile failed: {errors:?}"),
    }
}

fn compile_err(source: &str, params: Value) -> Vec<ScriptCompileError> {
    Plugins::compile(
        vec![spec("bad.rhai", source, params)],
        ScriptLimits::default(),
    )
    .unwrap_err()
}

fn bundled_plugin(name: &str, params: Value) -> Plugins {
    let source = bundled(name).unwrap();
    Plugins::compile(
        vec![spec(&format!("bundled:{name}"), source, params)],
        ScriptLimits::default(),
    )
    .unwrap()
}

fn request(body: Value) -> ScriptRequest {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("x-debug", HeaderValue::from_static("1"));
    ScriptRequest {
        body,
        headers,
        path: "/v1/chat/completions".into(),
        method: "POST".into(),
        client_ip: "10.0.0.7".into(),
        key: "team-a".into(),
        ctx: rhai::Map::new(),
    }
}

fn response(body: Value) -> ScriptResponse {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("x-upstream", HeaderValue::from_static("secret-host"));
    ScriptResponse {
        status: 200,
        headers,
        body,
        ctx: rhai::Map::new(),
    }
}

fn event(data: &str) -> ScriptEvent {
    ScriptEvent {
        data: EventData::parse(data),
        ctx: rhai::Map::new(),
    }
}

fn json_data(ev: &ScriptEvent) -> &Value {
    match &ev.data {
        EventData::Json(v) => v,
        EventData::Raw(r) => panic!("expected JSON, got raw {r:?}"),
    }
}

#[test]
fn plugins_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Plugins>();
}

// === hooks ===

#[test]
fn on_request_sees_and_changes_the_request() {
    let p = compile(&[(
        r#"
        fn on_request(req) {
            if req.method != "POST" || req.client_ip != "10.0.0.7" || req.key != "team-a" {
                throw "unexpected request fields";
            }
            req.body.temperature = 0.5;
            req.body.messages[0].content += "!";
            req.headers["x-team"] = "blue";
            req.headers.remove("x-debug");
            req.path = "/v2/chat";
            req.method = "GET"; // read-only: ignored
            req.ctx.seen = true;
        }
        "#,
        Value::Null,
    )]);
    assert!(p.has_on_request() && !p.has_on_response() && !p.has_on_event());
    let mut req = request(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
    p.on_request(&mut req).unwrap();
    assert_eq!(
        req.body,
        json!({"model": "m", "temperature": 0.5, "messages": [{"role": "user", "content": "hi!"}]})
    );
    assert_eq!(req.headers.get("x-team").unwrap(), "blue");
    assert!(req.headers.get("x-debug").is_none());
    assert_eq!(req.headers.get("content-type").unwrap(), "application/json");
    assert_eq!(req.path, "/v2/chat");
    assert_eq!(req.method, "POST");
    assert!(req.ctx.get("seen").unwrap().as_bool().unwrap());
}

#[test]
fn on_response_sees_ctx_and_changes_the_response() {
    let p = compile(&[(
        r#"
        fn on_request(req) { req.ctx.model = req.body.model; }
        fn on_response(res) {
            res.status = 203;
            res.headers["x-model"] = res.ctx.model;
            res.headers.remove("x-upstream");
            res.body.extra = res.ctx.model + "-done";
        }
        "#,
        Value::Null,
    )]);
    let mut req = request(json!({"model": "m1"}));
    p.on_request(&mut req).unwrap();
    let mut res = response(json!({"id": "x"}));
    res.ctx = req.ctx;
    p.on_response(&mut res).unwrap();
    assert_eq!(res.status, 203);
    assert_eq!(res.headers.get("x-model").unwrap(), "m1");
    assert!(res.headers.get("x-upstream").is_none());
    assert_eq!(res.body, json!({"id": "x", "extra": "m1-done"}));
}

#[test]
fn on_event_changes_drops_and_keeps_ctx_between_events() {
    let p = compile(&[(
        r#"
        fn on_event(ev) {
            ev.ctx.n = (ev.ctx.n ?? 0) + 1;
            if ev.data == "[DONE]" { return; }
            if ev.data.skip == true { ev.drop = true; return; }
            ev.data.n = ev.ctx.n;
        }
        "#,
        Value::Null,
    )]);
    assert!(p.has_on_event());
    let mut ev = event(r#"{"a":1}"#);
    assert_eq!(p.on_event(&mut ev).unwrap(), EventOutcome::Keep);
    assert_eq!(json_data(&ev), &json!({"a": 1, "n": 1}));

    ev.data = EventData::parse(r#"{"skip":true}"#);
    assert_eq!(p.on_event(&mut ev).unwrap(), EventOutcome::Drop);

    ev.data = EventData::parse("[DONE]");
    assert_eq!(p.on_event(&mut ev).unwrap(), EventOutcome::Keep);
    assert_eq!(ev.data, EventData::Raw("[DONE]".into()));
    assert_eq!(ev.ctx.get("n").unwrap().as_int().unwrap(), 3);
}

#[test]
fn dropping_an_event_skips_later_plugins() {
    let p = compile(&[
        ("fn on_event(ev) { ev.drop = true; }", Value::Null),
        ("fn on_event(ev) { throw \"must not run\"; }", Value::Null),
    ]);
    assert_eq!(p.on_event(&mut event("{}")).unwrap(), EventOutcome::Drop);
}

#[test]
fn no_hook_means_nothing_changes() {
    let p = compile(&[("fn on_event(ev) {}", Value::Null)]);
    assert!(!p.has_on_request());
    let mut req = request(json!({"b": 1, "a": 2}));
    let before = req.body.to_string();
    p.on_request(&mut req).unwrap();
    // Untouched, key order included: the body was never converted.
    assert_eq!(req.body.to_string(), before);
}

#[test]
fn body_is_shared_through_all_plugins() {
    let p = compile(&[
        ("fn on_request(req) { req.body.a = 1; }", Value::Null),
        (
            "fn on_request(req) { req.body.b = req.body.a + 1; req.ctx.order = \"second\"; }",
            Value::Null,
        ),
    ]);
    let mut req = request(json!({}));
    p.on_request(&mut req).unwrap();
    assert_eq!(req.body, json!({"a": 1, "b": 2}));
}

#[test]
fn hooks_may_replace_whole_fields() {
    let p = compile(&[(
        "fn on_request(req) { req.body = #{ replaced: true }; req.headers = #{ \"x-only\": \"1\" }; }",
        Value::Null,
    )]);
    let mut req = request(json!({"a": 1}));
    p.on_request(&mut req).unwrap();
    assert_eq!(req.body, json!({"replaced": true}));
    assert_eq!(req.headers.len(), 1);
}

// === params and top-level code ===

#[test]
fn params_are_a_read_only_constant_in_hooks() {
    let p = compile(&[(
        "fn on_request(req) { req.body.team = params.team; req.body.n = params.n * 2; }",
        json!({"team": "blue", "n": 21}),
    )]);
    let mut req = request(json!({}));
    p.on_request(&mut req).unwrap();
    assert_eq!(req.body, json!({"team": "blue", "n": 42}));

    let p = compile(&[(
        "fn on_request(req) { params.team = \"red\"; }",
        json!({"team": "blue"}),
    )]);
    assert_eq!(
        p.on_request(&mut request(json!({}))),
        Err(ScriptFailure::Error {
            plugin: "p0.rhai".into()
        })
    );
}

#[test]
fn helper_functions_get_params_as_an_argument() {
    // Rhai functions do not see the caller's variables: documented, so pin it.
    let p = compile(&[(
        r#"
        fn on_request(req) { req.body.x = helper(params); }
        fn helper(p) { p.value }
        "#,
        json!({"value": 7}),
    )]);
    let mut req = request(json!({}));
    p.on_request(&mut req).unwrap();
    assert_eq!(req.body, json!({"x": 7}));

    let p = compile(&[(
        "fn on_request(req) { req.body.x = helper(); } fn helper() { params.value }",
        json!({"value": 7}),
    )]);
    assert!(p.on_request(&mut request(json!({}))).is_err());
}

#[test]
fn top_level_code_runs_once_and_leaves_constants() {
    let p = compile(&[(
        r#"
        const DOUBLE = params.n * 2;
        let table = #{ a: 1 };
        fn on_request(req) { req.body.d = DOUBLE; req.body.t = table.a; }
        "#,
        json!({"n": 4}),
    )]);
    let mut req = request(json!({}));
    p.on_request(&mut req).unwrap();
    assert_eq!(req.body, json!({"d": 8, "t": 1}));
}

#[test]
fn top_level_throw_fails_the_load_with_its_line() {
    let errors = compile_err(
        "\nif params == () {\n    throw \"params required\";\n}\nfn on_request(req) {}\n",
        Value::Null,
    );
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].plugin, "bad.rhai");
    assert_eq!(errors[0].line, Some(3));
    assert!(errors[0].message.contains("params required"), "{errors:?}");
}

#[test]
fn top_level_closures_are_rejected() {
    let errors = compile_err("let f = |x| x + 1; fn on_request(req) {}", Value::Null);
    assert!(errors[0].message.contains("`f`"), "{errors:?}");
}

#[test]
fn disable_hook_switches_a_hook_off() {
    let p = compile(&[(
        "disable_hook(\"on_response\"); fn on_request(req) {} fn on_response(res) {}",
        Value::Null,
    )]);
    assert!(p.has_on_request());
    assert!(!p.has_on_response());

    let p = compile(&[(
        "fn on_request(req) { disable_hook(\"on_request\"); }",
        Value::Null,
    )]);
    assert!(p.on_request(&mut request(json!({}))).is_err());
    assert!(compile_err(
        "disable_hook(\"on_typo\"); fn on_request(req) {}",
        Value::Null
    )[0]
    .message
    .contains("unknown hook"));
}

// === compile errors ===

#[test]
fn compile_error_has_plugin_line_and_column() {
    let errors = compile_err("fn on_request(req) {\n    let x = ;\n}\n", Value::Null);
    assert_eq!(errors.len(), 1);
    let e = &errors[0];
    assert_eq!(e.plugin, "bad.rhai");
    assert_eq!(e.line, Some(2));
    assert!(e.column.is_some());
    assert!(e.to_string().starts_with("bad.rhai:2:"), "{e}");
}

#[test]
fn every_plugins_errors_are_collected() {
    let errors = Plugins::compile(
        vec![
            spec("a.rhai", "fn on_request(req) { (", Value::Null),
            spec("ok.rhai", "fn on_request(req) {}", Value::Null),
            spec("b.rhai", "fn on_request() {}", Value::Null),
            spec("c.rhai", "fn on_requets(req) {}", Value::Null),
        ],
        ScriptLimits::default(),
    )
    .unwrap_err();
    let plugins: Vec<&str> = errors.iter().map(|e| e.plugin.as_str()).collect();
    assert_eq!(plugins, ["a.rhai", "b.rhai", "c.rhai"]);
    assert!(errors[1].message.contains("exactly one parameter"));
    assert!(errors[2].message.contains("defines none of the hooks"));
}

#[test]
fn eval_and_import_are_unavailable() {
    assert!(!compile_err("fn on_request(req) { eval(\"1\") }", Value::Null).is_empty());
    let p = compile(&[("fn on_request(req) { import \"x\" as x; }", Value::Null)]);
    assert!(p.on_request(&mut request(json!({}))).is_err());
}

// === errors ===

#[test]
fn thrown_status_and_message_reach_the_client() {
    let p = compile(&[(
        "fn on_request(req) { throw #{ status: 403, message: \"model not allowed\" }; }",
        Value::Null,
    )]);
    assert_eq!(
        p.on_request(&mut request(json!({}))),
        Err(ScriptFailure::Thrown {
            status: 403,
            message: "model not allowed".into()
        })
    );
}

#[test]
fn throw_from_a_helper_function_counts_too() {
    let p = compile(&[(
        "fn on_request(req) { check(req.body); } fn check(b) { if b.x == () { throw #{status: 422}; } }",
        Value::Null,
    )]);
    assert_eq!(
        p.on_request(&mut request(json!({}))),
        Err(ScriptFailure::Thrown {
            status: 422,
            message: "Unprocessable Entity".into()
        })
    );
}

#[test]
fn bad_throws_are_script_errors() {
    for throw in [
        "throw \"plain string\"",
        "throw #{ status: 200, message: \"ok?\" }",
        "throw #{ status: 600 }",
        "throw #{ status: \"403\" }",
        "throw #{ message: \"no status\" }",
    ] {
        let p = compile(&[(&format!("fn on_response(res) {{ {throw}; }}"), Value::Null)]);
        assert_eq!(
            p.on_response(&mut response(json!({}))),
            Err(ScriptFailure::Error {
                plugin: "p0.rhai".into()
            }),
            "{throw}"
        );
    }
}

#[test]
fn runtime_errors_are_script_errors_naming_the_plugin() {
    let p = compile(&[
        ("fn on_request(req) {}", Value::Null),
        ("fn on_request(req) { let x = 1 / 0; }", Value::Null),
    ]);
    let err = p.on_request(&mut request(json!({}))).unwrap_err();
    assert_eq!(
        err,
        ScriptFailure::Error {
            plugin: "p1.rhai".into()
        }
    );
    assert_eq!(err.to_string(), "script error in plugin p1.rhai");
}

#[test]
fn malformed_results_are_blamed_on_their_plugin() {
    for (src, hook) in [
        ("fn on_request(req) { req.path = 5; }", "req"),
        ("fn on_request(req) { req.path = \"no-slash\"; }", "req"),
        (
            "fn on_request(req) { req.headers[\"x\"] = \"a\\nb\"; }",
            "req",
        ),
        (
            "fn on_request(req) { req.headers[\"bad name\"] = \"v\"; }",
            "req",
        ),
        ("fn on_request(req) { req.headers = 1; }", "req"),
        ("fn on_request(req) { req.ctx = 1; }", "req"),
        ("fn on_request(req) { req.ctx.f = |x| x; }", "req"),
        (
            "fn on_request(req) { req.body.f = Fn(\"on_request\"); }",
            "req",
        ),
        ("fn on_request(req) { req = 5; }", "req"),
        ("fn on_response(res) { res.status = 42; }", "res"),
        ("fn on_event(ev) { ev.drop = \"yes\"; }", "ev"),
    ] {
        let p = compile(&[("fn on_request(req) {}", Value::Null), (src, Value::Null)]);
        let result = match hook {
            "req" => p.on_request(&mut request(json!({}))),
            "res" => p.on_response(&mut response(json!({}))),
            _ => p.on_event(&mut event("{}")).map(|_| ()),
        };
        assert_eq!(
            result,
            Err(ScriptFailure::Error {
                plugin: "p1.rhai".into()
            }),
            "{src}"
        );
    }
}

#[test]
fn a_closure_capturing_the_argument_does_not_break_anything() {
    let p = compile(&[(
        "fn on_request(req) { req.keep = || req; let a = [req]; a.push(req); req.body.n = a.len(); }",
        Value::Null,
    )]);
    let mut req = request(json!({}));
    p.on_request(&mut req).unwrap();
    assert_eq!(req.body, json!({"n": 2}));
}

// === sandbox ===

#[test]
fn endless_loop_fails_promptly() {
    let limits = ScriptLimits {
        max_operations: u64::MAX,
        ..ScriptLimits::default()
    };
    let p = compile_with(&[("fn on_request(req) { loop {} }", Value::Null)], limits);
    let start = Instant::now();
    let result = p.on_request(&mut request(json!({})));
    let took = start.elapsed();
    assert_eq!(
        result,
        Err(ScriptFailure::Error {
            plugin: "p0.rhai".into()
        })
    );
    assert!(took < Duration::from_millis(500), "took {took:?}");
}

#[test]
fn a_stuck_request_does_not_hold_up_others() {
    let p = std::sync::Arc::new(compile(&[(
        "fn on_request(req) { if req.body.spin == true { loop {} } req.body.ok = true; }",
        Value::Null,
    )]));
    let spinner = {
        let p = std::sync::Arc::clone(&p);
        std::thread::spawn(move || {
            (0..5).all(|_| p.on_request(&mut request(json!({"spin": true}))).is_err())
        })
    };
    for _ in 0..200 {
        let mut req = request(json!({"spin": false}));
        p.on_request(&mut req).unwrap();
        assert_eq!(req.body["ok"], true);
    }
    assert!(spinner.join().unwrap());
}

#[test]
fn operation_limit_stops_long_scripts() {
    let limits = ScriptLimits {
        max_operations: 1_000,
        max_wall_time: Duration::from_secs(60),
        ..ScriptLimits::default()
    };
    let p = compile_with(
        &[(
            "fn on_request(req) { let x = 0; for i in 0..100000 { x += i; } req.body.x = x; }",
            Value::Null,
        )],
        limits,
    );
    assert!(p.on_request(&mut request(json!({}))).is_err());
}

#[test]
fn the_operation_budget_is_per_call() {
    // Each call counts its own operations: a hook using most of the budget runs every time.
    let limits = ScriptLimits {
        max_operations: 1_000,
        max_wall_time: Duration::from_secs(60),
        ..ScriptLimits::default()
    };
    let p = compile_with(
        &[(
            "fn on_request(req) { let x = 0; for i in 0..150 { x += i; } req.body.x = x; }",
            Value::Null,
        )],
        limits,
    );
    for _ in 0..5 {
        let mut req = request(json!({}));
        p.on_request(&mut req).unwrap();
        assert_eq!(req.body["x"], 11175);
    }
}

#[test]
fn the_call_depth_limit_counts_from_the_hook() {
    // The depth a hook's helpers may reach is the same on every call, and as `call_fn` gave it.
    let limits = ScriptLimits {
        max_call_levels: 6,
        ..ScriptLimits::default()
    };
    let src = "fn on_request(req) { req.body.d = down(req.body.n) }
               fn down(n) { if n == 0 { 0 } else { down(n - 1) + 1 } }";
    let p = compile_with(&[(src, Value::Null)], limits);
    for _ in 0..2 {
        let mut req = request(json!({"n": 5}));
        p.on_request(&mut req).unwrap();
        assert_eq!(req.body["d"], 5);
        assert!(p.on_request(&mut request(json!({"n": 6}))).is_err());
    }
}

#[test]
fn return_ends_the_hook() {
    let p = compile(&[(
        "fn on_request(req) { req.body.a = 1; if req.body.a == 1 { return; } req.body.b = 2; }",
        Value::Null,
    )]);
    let mut req = request(json!({}));
    p.on_request(&mut req).unwrap();
    assert_eq!(req.body, json!({"a": 1}));
}

#[test]
fn a_closure_changing_the_argument_changes_the_request() {
    // A closure that captures `req` shares it with the hook: what it writes is what goes on.
    let p = compile(&[(
        "fn on_request(req) { let f = |v| { req.body.x = v; req.ctx.seen = true; }; f.call(7); }",
        Value::Null,
    )]);
    for _ in 0..2 {
        let mut req = request(json!({"a": 1}));
        p.on_request(&mut req).unwrap();
        assert_eq!(req.body, json!({"a": 1, "x": 7}));
        assert_eq!(format!("{:?}", req.ctx.get("seen")), "Some(true)");
    }
}

#[test]
fn a_timed_out_call_does_not_poison_the_next() {
    let p = compile(&[(
        "fn on_request(req) { if req.body.spin == true { loop {} } req.body.ok = true; }",
        Value::Null,
    )]);
    assert!(p.on_request(&mut request(json!({"spin": true}))).is_err());
    let mut req = request(json!({"spin": false}));
    p.on_request(&mut req).unwrap();
    assert_eq!(req.body["ok"], true);
}

#[test]
fn string_and_array_size_limits_hold() {
    let limits = ScriptLimits {
        max_string_size: 1_000,
        max_array_size: 100,
        ..ScriptLimits::default()
    };
    let grow_string = "fn on_request(req) { let s = \"x\"; loop { s += s; } }";
    let grow_array = "fn on_request(req) { let a = []; loop { a.push(1); } }";
    let p = compile_with(&[(grow_string, Value::Null)], limits);
    assert!(p.on_request(&mut request(json!({}))).is_err());
    let p = compile_with(&[(grow_array, Value::Null)], limits);
    assert!(p.on_request(&mut request(json!({}))).is_err());

    // Limits count what a hook changes: a big body can still be edited under the defaults.
    let p = compile(&[(
        "fn on_request(req) { req.body.model = \"m\"; }",
        Value::Null,
    )]);
    let big = "y".repeat(2 * 1024 * 1024);
    let mut req = request(json!({"messages": [{"content": big}]}));
    p.on_request(&mut req).unwrap();
    assert_eq!(req.body["model"], "m");
}

#[test]
fn deep_recursion_fails_cleanly() {
    let p = compile(&[(
        "fn on_request(req) { down(0) } fn down(n) { down(n + 1) }",
        Value::Null,
    )]);
    assert!(p.on_request(&mut request(json!({}))).is_err());
}

// === helpers ===

#[test]
fn helpers_work() {
    let p = compile(&[(
        r#"
        fn on_request(req) {
            log_info("hello from a script");
            log_debug(42);
            print("printed");
            let text = json_encode(#{ a: [1, 2] });
            req.body.encoded = text;
            req.body.decoded = json_decode("{\"x\": [true, null]}");
            req.body.b64 = base64_encode("hi there");
            req.body.unb64 = base64_decode("aGkgdGhlcmU=");
            req.body.sha = sha256("abc");
            req.body.recent = now_unix() > 1700000000 && now_ms() / 1000 >= now_unix() - 1;
        }
        "#,
        Value::Null,
    )]);
    let mut req = request(json!({}));
    p.on_request(&mut req).unwrap();
    assert_eq!(
        req.body,
        json!({
            "encoded": "{\"a\":[1,2]}",
            "decoded": {"x": [true, null]},
            "b64": "aGkgdGhlcmU=",
            "unb64": "hi there",
            "sha": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "recent": true,
        })
    );
}

#[test]
fn helper_errors_are_script_errors() {
    for call in ["json_decode(\"{nope\")", "base64_decode(\"***\")"] {
        let p = compile(&[(&format!("fn on_request(req) {{ {call}; }}"), Value::Null)]);
        assert!(p.on_request(&mut request(json!({}))).is_err(), "{call}");
    }
}

// === bundled plugins ===

#[test]
fn every_bundled_plugin_is_found() {
    for name in [
        "field_aliases",
        "headers",
        "sophnet_project",
        "reasoning_to_content",
    ] {
        assert!(bundled(name).is_some(), "{name}");
    }
    assert!(bundled("nope").is_none());
}

#[test]
fn field_aliases_renames_recursively() {
    let p = bundled_plugin("field_aliases", json!({"model": "model_id"}));
    let mut req = request(json!({
        "model": "m",
        "messages": [{"role": "user", "content": "x", "model": "inner"}, [{"model": 2}]],
        "meta": {"model": 1, "deep": {"model": true}},
    }));
    p.on_request(&mut req).unwrap();
    assert_eq!(
        req.body,
        json!({
            "model_id": "m",
            "messages": [{"role": "user", "content": "x", "model_id": "inner"}, [{"model_id": 2}]],
            "meta": {"model_id": 1, "deep": {"model_id": true}},
        })
    );
}

#[test]
fn field_aliases_matches_the_seed_rules() {
    // An existing target key is overwritten; with no aliases the hook is off.
    let p = bundled_plugin("field_aliases", json!({"model": "model_id"}));
    let mut req = request(json!({"model": "new", "model_id": "old"}));
    p.on_request(&mut req).unwrap();
    assert_eq!(req.body, json!({"model_id": "new"}));
    assert!(!bundled_plugin("field_aliases", json!({})).has_on_request());
    let errors = Plugins::compile(
        vec![spec(
            "fa",
            bundled("field_aliases").unwrap(),
            json!({"model": 1}),
        )],
        ScriptLimits::default(),
    )
    .unwrap_err();
    assert!(errors[0].message.contains("params.model"), "{errors:?}");
}

fn nested(levels: usize) -> Value {
    let mut body = json!({"a": 0});
    for _ in 0..levels {
        body = json!({"a": [body]});
    }
    body
}

#[test]
fn field_aliases_handles_deep_bodies() {
    // 60 levels is 121 JSON levels, near serde_json's parse limit of 128.
    let p = bundled_plugin("field_aliases", json!({"a": "b"}));
    let mut req = request(nested(60));
    p.on_request(&mut req).unwrap();
    let text = req.body.to_string();
    assert!(!text.contains("\"a\"") && text.contains("\"b\""), "{text}");
}

#[test]
fn scripts_cannot_overflow_a_small_thread_stack() {
    let limits = ScriptLimits {
        max_call_levels: 64,
        ..ScriptLimits::default()
    };
    let p = compile_with(
        &[(
            "fn on_request(req) { down(0) } fn down(n) { [[[[down(n + 1)]]]] }",
            Value::Null,
        )],
        limits,
    );
    let result = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || p.on_request(&mut request(json!({}))))
        .unwrap()
        .join()
        .unwrap();
    assert!(result.is_err());
}

#[test]
fn headers_plugin_edits_both_directions() {
    let p = bundled_plugin(
        "headers",
        json!({
            "set": {"X-Team": "Blue"},
            "remove": ["X-Debug"],
            "rename": {"content-type": "x-original-type"},
            "response_set": {"x-served-by": "sophgate"},
            "response_remove": ["x-upstream"],
        }),
    );
    let mut req = request(json!({}));
    p.on_request(&mut req).unwrap();
    assert_eq!(req.headers.get("x-team").unwrap(), "Blue");
    assert!(req.headers.get("x-debug").is_none());
    assert!(req.headers.get("content-type").is_none());
    assert_eq!(
        req.headers.get("x-original-type").unwrap(),
        "application/json"
    );

    let mut res = response(json!({}));
    p.on_response(&mut res).unwrap();
    assert_eq!(res.headers.get("x-served-by").unwrap(), "sophgate");
    assert!(res.headers.get("x-upstream").is_none());
}

#[test]
fn headers_plugin_only_hooks_what_its_params_need() {
    let p = bundled_plugin("headers", json!({"set": {"x-a": "1"}}));
    assert!(p.has_on_request() && !p.has_on_response());
    let p = bundled_plugin("headers", json!({"response_remove": ["server"]}));
    assert!(!p.has_on_request() && p.has_on_response());
    let errors = Plugins::compile(
        vec![spec("h", bundled("headers").unwrap(), json!({"sett": {}}))],
        ScriptLimits::default(),
    )
    .unwrap_err();
    assert!(errors[0].message.contains("sett"), "{errors:?}");
}

#[test]
fn sophnet_project_rewrites_path_and_model() {
    let p = bundled_plugin("sophnet_project", json!({"project_id": "abc-123"}));
    let mut req = request(json!({"model": "DeepSeek-R1", "messages": []}));
    p.on_request(&mut req).unwrap();
    assert_eq!(req.path, "/api/open-apis/projects/abc-123/chat/completions");
    assert_eq!(req.body, json!({"model_id": "DeepSeek-R1", "messages": []}));

    let mut other = request(json!({"model": "m"}));
    other.path = "/v1/models".into();
    p.on_request(&mut other).unwrap();
    assert_eq!(other.path, "/v1/models");

    for bad in [json!({}), json!({"project_id": "../x"}), Value::Null] {
        let r = Plugins::compile(
            vec![spec("s", bundled("sophnet_project").unwrap(), bad.clone())],
            ScriptLimits::default(),
        );
        assert!(r.is_err(), "{bad}");
    }
}

#[test]
fn reasoning_to_content_wraps_reasoning_in_think_tags() {
    let p = bundled_plugin("reasoning_to_content", Value::Null);
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            .to_string()
    };
    let stream = [
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(
            json!({"reasoning_content": "Let me", "content": null}),
            Value::Null,
        ),
        chunk(
            json!({"reasoning_content": " think.", "content": null}),
            Value::Null,
        ),
        chunk(
            json!({"reasoning_content": null, "content": "Answer"}),
            Value::Null,
        ),
        chunk(json!({"content": "!"}), json!("stop")),
        "[DONE]".to_string(),
    ];
    let mut ev = event("{}");
    let mut text = String::new();
    for data in &stream {
        ev.data = EventData::parse(data);
        assert_eq!(p.on_event(&mut ev).unwrap(), EventOutcome::Keep);
        if let EventData::Json(v) = &ev.data {
            let delta = &v["choices"][0]["delta"];
            assert!(delta.get("reasoning_content").is_none(), "{v}");
            if let Some(c) = delta["content"].as_str() {
                text.push_str(c);
            }
        }
    }
    assert_eq!(text, "<think>Let me think.</think>Answer!");
    assert_eq!(ev.data, EventData::Raw("[DONE]".into()));
}

#[test]
fn reasoning_to_content_closes_the_tag_at_finish() {
    let p = bundled_plugin("reasoning_to_content", Value::Null);
    let mut ev = event(
        &json!({"choices": [{"delta": {"reasoning_content": "hmm"}, "finish_reason": null}]})
            .to_string(),
    );
    p.on_event(&mut ev).unwrap();
    assert_eq!(
        json_data(&ev)["choices"][0]["delta"]["content"],
        "<think>hmm"
    );
    ev.data = EventData::parse(
        &json!({"choices": [{"delta": {}, "finish_reason": "length"}]}).to_string(),
    );
    p.on_event(&mut ev).unwrap();
    assert_eq!(json_data(&ev)["choices"][0]["delta"]["content"], "</think>");
}
