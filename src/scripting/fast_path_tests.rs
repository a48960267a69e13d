//! The fast paths give what the slow ones give: a hook that only renames keys (the bundled
//! `field_aliases.rhai`) renames the JSON value without converting it, with the same result as
//! the same hook made to see its body whole; scopes kept between calls hold only constants.

use rhai::Map;
use serde_json::{json, Value};

use super::lazy_tests::request;
use super::*;

fn compile(source: &str, params: Value) -> Plugins {
    let spec = PluginSpec {
        name: "p.rhai".into(),
        source: source.into(),
        params,
    };
    Plugins::compile(vec![spec], ScriptLimits::default()).unwrap()
}

fn field_aliases() -> &'static str {
    bundled("field_aliases").unwrap()
}

/// The bundled plugin with one more statement that makes its body reach whole (the slow path).
fn field_aliases_seen_whole() -> String {
    field_aliases().replace(
        "fn on_request(req) {",
        "fn on_request(req) {\n    let _whole = req.body;",
    )
}

/// The body after the bundled plugin, and whether it changed, on the fast and the slow path.
fn both_paths(params: &Value, body: &Value) -> [(Value, bool); 2] {
    let slow_source = field_aliases_seen_whole();
    [field_aliases(), slow_source.as_str()].map(|source| {
        let plugins = compile(source, params.clone());
        let mut req = request(body.clone());
        let edited = plugins.on_request_edited(&mut req).unwrap();
        (req.body, edited.body)
    })
}

#[test]
fn the_bundled_plugin_takes_the_fast_path_and_its_variant_the_slow_one() {
    let fast = compile(field_aliases(), json!({"model": "model_id"}));
    assert_eq!(
        fast.body_reach(0),
        &reach::BodyReach::Renamed,
        "field_aliases.rhai must reach only rename_keys"
    );
    let slow = compile(&field_aliases_seen_whole(), json!({"model": "model_id"}));
    assert_eq!(slow.body_reach(0), &reach::BodyReach::Whole);
}

#[test]
fn renaming_on_json_equals_renaming_on_script_values() {
    let chat = json!({
        "model": "m",
        "messages": [
            {"role": "user", "content": "hi", "model": "inner"},
            {"role": "assistant", "content": [{"type": "text", "model": "deep"}]},
        ],
        "metadata": {"model": {"model": 1}},
        "temperature": 0.5,
        "n": 2,
    });
    let seed = tests_fixture_aliases();
    let cases = [
        (seed.clone(), chat.clone()),
        // Nothing to rename: unchanged on both paths.
        (seed.clone(), json!({"messages": [], "x": {"y": [1, 2]}})),
        // The target exists: overwritten.
        (
            json!({"a": "b"}),
            json!({"a": 1, "b": 2, "c": {"a": [3], "b": null}}),
        ),
        // Aliases that chain apply in key order, as the helper does.
        (json!({"a": "b", "b": "c"}), json!({"a": 1, "b": 2})),
        (json!({"b": "c", "a": "b"}), json!({"a": 1, "z": {"b": 2}})),
        // A key renamed to itself.
        (json!({"model": "model"}), chat.clone()),
        // Empty objects and arrays, an empty body.
        (seed.clone(), json!({})),
        (seed.clone(), json!({"model": {}, "l": [[], {}]})),
    ];
    for (params, body) in cases {
        let [fast, slow] = both_paths(&params, &body);
        assert_eq!(fast, slow, "params {params}, body {body}");
    }
    let [(renamed, changed), _] = both_paths(&seed, &chat);
    assert!(changed);
    assert_eq!(renamed["model_id"], "m");
    assert_eq!(renamed["messages"][1]["content"][0]["model_id"], "deep");
    assert!(renamed.get("model").is_none());
}

/// The aliases of the seed config fixture (`tests/fixtures/seed-config.yml`).
fn tests_fixture_aliases() -> Value {
    json!({"model": "model_id"})
}

#[test]
fn non_object_bodies_take_the_slow_path_with_the_same_result() {
    let params = json!({"a": "b"});
    for body in [
        json!([{"a": 1}, {"c": {"a": 2}}]),
        json!("text"),
        json!(3),
        Value::Null,
        json!([]),
    ] {
        let [fast, slow] = both_paths(&params, &body);
        assert_eq!(fast, slow, "{body}");
    }
    let [(renamed, changed), _] = both_paths(&params, &json!([{"a": 1}]));
    assert!(changed);
    assert_eq!(renamed, json!([{"b": 1}]));
    // A body with no keys is left as it is; the aliases are still checked.
    for body in [json!("text"), json!(3), Value::Null] {
        let [(after, changed), _] = both_paths(&params, &body);
        assert!(!changed, "{body}");
        assert_eq!(after, body);
        let bad = compile(
            "fn on_request(req) { req.body.rename_keys(#{a: 1}); }",
            Value::Null,
        );
        assert!(
            bad.on_request_edited(&mut request(body.clone())).is_err(),
            "{body}"
        );
    }
}

#[test]
fn a_bad_alias_fails_the_same_way_on_both_paths() {
    let source = "fn on_request(req) { req.body.rename_keys(#{a: 1}); }";
    let slow = "fn on_request(req) { let _w = req.body; req.body.rename_keys(#{a: 1}); }";
    for src in [source, slow] {
        let plugins = compile(src, Value::Null);
        let mut req = request(json!({"a": 1}));
        let failure = plugins.on_request_edited(&mut req).unwrap_err();
        assert_eq!(
            failure,
            ScriptFailure::Error {
                plugin: "p.rhai".into()
            },
            "{src}"
        );
    }
}

/// Plugins of these sources, in order, each with the params `{"a": "b"}`.
fn compile_all(sources: &[&str]) -> Plugins {
    let specs = sources
        .iter()
        .map(|src| PluginSpec {
            name: "p.rhai".into(),
            source: (*src).into(),
            params: json!({"a": "b"}),
        })
        .collect();
    Plugins::compile(specs, ScriptLimits::default()).unwrap()
}

#[test]
fn the_stand_in_body_is_a_map_to_every_hook() {
    let plugins = compile_all(&[
        field_aliases(),
        r#"fn on_request(req) { req.headers["x-type"] = type_of(req.body); }"#,
    ]);
    assert_eq!(plugins.body_reach(0), &reach::BodyReach::Renamed);
    let mut req = request(json!({"a": 1}));
    assert!(plugins.on_request_edited(&mut req).unwrap().body);
    assert_eq!(req.body, json!({"b": 1}));
    assert_eq!(req.headers["x-type"], "map");
    // What `rename_keys` refuses on a map it refuses on the stand-in.
    let bad = "fn on_request(req) { req.body.rename_keys(5); }";
    let plugins = compile(bad, Value::Null);
    assert_eq!(plugins.body_reach(0), &reach::BodyReach::Renamed);
    assert!(plugins
        .on_request_edited(&mut request(json!({"a": 1})))
        .is_err());
}

#[test]
fn several_renaming_plugins_apply_in_order() {
    let specs = [json!({"a": "b"}), json!({"b": "c"})]
        .into_iter()
        .enumerate()
        .map(|(i, params)| PluginSpec {
            name: format!("fa{i}.rhai"),
            source: field_aliases().into(),
            params,
        })
        .collect();
    let plugins = Plugins::compile(specs, ScriptLimits::default()).unwrap();
    assert_eq!(plugins.body_reach(0), &reach::BodyReach::Renamed);
    let mut req = request(json!({"a": 1, "l": [{"a": 2}]}));
    assert!(plugins.on_request_edited(&mut req).unwrap().body);
    assert_eq!(req.body, json!({"c": 1, "l": [{"c": 2}]}));

    // A renaming plugin next to one that names a field: the body is seen whole.
    let plugins = compile_all(&[
        field_aliases(),
        "fn on_request(req) { req.body.seen = req.body.b; }",
    ]);
    assert_eq!(plugins.body_reach(0), &reach::BodyReach::Whole);
    let mut req = request(json!({"a": 1}));
    plugins.on_request_edited(&mut req).unwrap();
    assert_eq!(req.body, json!({"b": 1, "seen": 1}));
}

#[test]
fn expected_renames_are_the_constant_the_only_call_passes() {
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    let bundled = compile(field_aliases(), json!({"model": "model_id", "a": "b"}));
    assert_eq!(
        bundled.expected_renames(),
        Some(pairs(&[("a", "b"), ("model", "model_id")]).as_slice()),
        "in the order rename_keys applies them"
    );
    let table = "let table = #{x: \"y\"}; fn on_request(req) { req.body.rename_keys(table); }";
    let plugins = compile(table, Value::Null);
    assert_eq!(
        plugins.expected_renames(),
        Some(pairs(&[("x", "y")]).as_slice())
    );
    for (source, params) in [
        // Not a constant; two calls; a value rename_keys refuses; no renaming at all.
        (
            r#"fn on_request(req) { req.body.rename_keys(#{a: "b"}); }"#,
            Value::Null,
        ),
        (
            "fn on_request(req) { req.body.rename_keys(params); req.body.rename_keys(params); }",
            json!({"a": "b"}),
        ),
        (
            "fn on_request(req) { req.body.rename_keys(params); }",
            json!({"a": 1}),
        ),
        (
            "fn on_request(req) { req.body.model = 1; }",
            json!({"a": "b"}),
        ),
        (&field_aliases_seen_whole(), json!({"a": "b"})),
    ] {
        assert_eq!(compile(source, params).expected_renames(), None, "{source}");
    }
    // Two renaming plugins: two calls, no guess.
    let specs = [json!({"a": "b"}), json!({"c": "d"})]
        .into_iter()
        .map(|params| PluginSpec {
            name: "fa.rhai".into(),
            source: field_aliases().into(),
            params,
        })
        .collect();
    let plugins = Plugins::compile(specs, ScriptLimits::default()).unwrap();
    assert_eq!(plugins.expected_renames(), None);
}

#[test]
fn on_response_renames_on_json_too() {
    let src = r#"fn on_response(res) { if type_of(res.body) == "map" { res.body.rename_keys(#{a: "b"}); } }"#;
    let plugins = compile(src, Value::Null);
    assert_eq!(plugins.body_reach(1), &reach::BodyReach::Renamed);
    let mut res = ScriptResponse {
        status: 200,
        body: json!({"a": {"a": 1}}),
        ..Default::default()
    };
    assert!(plugins.on_response_edited(&mut res).unwrap().body);
    assert_eq!(res.body, json!({"b": {"b": 1}}));
}

#[test]
fn kept_scopes_hold_only_constants() {
    // Locals of one call are gone in the next; constants stay as loaded.
    let src = r#"
        let table = #{n: 1};
        fn on_request(req) {
            let seen = req.ctx.seen ?? 0;
            req.ctx.seen = seen + table.n;
            req.ctx.p = params.x;
        }
    "#;
    let plugins = compile(src, json!({"x": "y"}));
    for _ in 0..3 {
        let mut req = request(json!({}));
        plugins.on_request_edited(&mut req).unwrap();
        let mut expected = Map::new();
        expected.insert("seen".into(), rhai::Dynamic::from_int(1));
        expected.insert("p".into(), rhai::Dynamic::from("y"));
        assert_eq!(format!("{:?}", req.ctx), format!("{expected:?}"));
    }
    // A constant cannot be changed by a hook, so a kept scope cannot carry a change.
    let src = "let table = #{n: 1}; fn on_request(req) { table.n = 2; }";
    let plugins = compile(src, Value::Null);
    for _ in 0..2 {
        let mut req = request(json!({}));
        assert!(plugins.on_request_edited(&mut req).is_err());
    }
    let src =
        r#"let table = #{n: 1}; fn on_request(req) { req.ctx.n = table.n; table.remove("n"); }"#;
    let plugins = compile(src, Value::Null);
    for _ in 0..2 {
        let mut req = request(json!({}));
        assert!(plugins.on_request_edited(&mut req).is_err());
    }
}

/// `source` as given and made to see its body whole (the slow path), on `body`: each result.
fn request_both_ways(source: &str, body: &Value) -> [Result<(Value, bool), ScriptFailure>; 2] {
    let slow = source.replace(
        "fn on_request(req) {",
        "fn on_request(req) { let _w = req.body;",
    );
    [source.to_owned(), slow].map(|src| {
        let plugins = compile(&src, Value::Null);
        let mut req = request(body.clone());
        plugins
            .on_request_edited(&mut req)
            .map(|edited| (req.body, edited.body))
    })
}

#[test]
fn nested_paths_give_what_the_whole_body_gives() {
    let chat = json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi", "name": "u"},
        ],
        "metadata": {"team": {"name": "a", "size": 3}, "tags": ["x", "y"]},
    });
    let hooks = [
        // Reads only.
        r#"fn on_request(req) { if req.body.messages[1].content == "" { throw "empty"; } }"#,
        r#"fn on_request(req) { let t = req.body.metadata.team["name"]; }"#,
        // Writes along a path.
        r#"fn on_request(req) { req.body.messages[1].content = "hello"; }"#,
        r#"fn on_request(req) { req.body.messages[0]["content"] += "!"; }"#,
        r#"fn on_request(req) { req.body.metadata.team.size = 4; req.body.metadata.tags[1] = "z"; }"#,
        // A property that is not there: added.
        r#"fn on_request(req) { req.body.messages[1].extra = 1; req.body.metadata.team.lead = "b"; }"#,
        // A value replaced along the path.
        r#"fn on_request(req) { req.body.messages[1] = #{role: "user", content: "new"}; }"#,
        r#"fn on_request(req) { req.body.metadata.team = "none"; }"#,
        // A path through a value of another type: the value is converted whole.
        r#"fn on_request(req) { req.body.model.x = 1; }"#,
        r#"fn on_request(req) { let c = req.body.model[0]; req.body.c = c; }"#,
        r#"fn on_request(req) { req.body.metadata.tags.first = 1; }"#,
        // Missing paths read as ().
        r#"fn on_request(req) { req.body.seen = type_of(req.body.nothing.here); }"#,
        r#"fn on_request(req) { req.body.seen = type_of(req.body.messages[0].nothing); }"#,
        // Out of range: an error on both paths.
        r#"fn on_request(req) { req.body.messages[5].content = "x"; }"#,
        r#"fn on_request(req) { let x = req.body.messages[2]; }"#,
        // A computed index: the field is converted whole.
        r#"fn on_request(req) { let i = 1; req.body.messages[i].content = "c"; }"#,
        // Reads then writes across two plugins' worth of paths in one hook.
        r#"fn on_request(req) { req.body.messages[0].content = req.body.messages[1].name; }"#,
    ];
    let bodies = [
        chat.clone(),
        json!({"messages": []}),
        json!({"messages": "text", "metadata": null}),
        json!([1, 2]),
        json!("text"),
        json!({}),
    ];
    for hook in hooks {
        for body in &bodies {
            let [fast, slow] = request_both_ways(hook, body);
            assert_eq!(fast, slow, "{hook} on {body}");
        }
    }
    let [fast, _] = request_both_ways(hooks[2], &chat);
    let (body, changed) = fast.unwrap();
    assert!(changed);
    assert_eq!(
        body["messages"][1],
        json!({"role": "user", "content": "hello", "name": "u"})
    );
    let [fast, _] = request_both_ways(hooks[0], &chat);
    assert_eq!(fast.unwrap(), (chat.clone(), false));
}

fn content_event(content: &str) -> String {
    json!({
        "id": "c1", "object": "chat.completion.chunk", "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}],
    })
    .to_string()
}

/// `source`'s `on_event` as given and made to see the data whole, on `data`.
fn event_both_ways(source: &str, data: &str) -> [Result<(EventVerdict, String), ScriptFailure>; 2] {
    let slow = source.replace("fn on_event(ev) {", "fn on_event(ev) { let _w = ev.data;");
    [source.to_owned(), slow].map(|src| {
        let plugins = compile(&src, Value::Null);
        let mut ctx = Map::new();
        plugins
            .on_event_text(data, &mut ctx)
            .map(|verdict| (verdict, format!("{ctx:?}")))
    })
}

#[test]
fn event_paths_give_what_the_whole_event_gives() {
    let hooks = [
        r#"fn on_event(ev) { if ev.data.choices[0].delta.content == "" { ev.ctx.empty = true; } }"#,
        r#"fn on_event(ev) { ev.ctx.c = ev.data.choices[0].delta.content; }"#,
        r#"fn on_event(ev) { ev.data.choices[0].delta.content = "[redacted]"; }"#,
        r#"fn on_event(ev) { ev.data.choices[0].delta.content += "!"; }"#,
        r#"fn on_event(ev) { if ev.data.choices[0].delta.content == "drop me" { ev.drop = true; } }"#,
        r#"fn on_event(ev) { ev.data.choices[1].delta.content = "x"; }"#,
        r#"fn on_event(ev) { ev.ctx.t = type_of(ev.data.choices[0].delta.reasoning); }"#,
    ];
    let events = [
        content_event("hi"),
        content_event(""),
        content_event("drop me"),
        json!({"choices": []}).to_string(),
        json!({"choices": [{"delta": {}}]}).to_string(),
        json!({"id": "x"}).to_string(),
        "[DONE]".to_owned(),
        "7".to_owned(),
    ];
    for hook in hooks {
        for data in &events {
            let [fast, slow] = event_both_ways(hook, data);
            assert_eq!(fast, slow, "{hook} on {data}");
        }
    }
    let [fast, _] = event_both_ways(hooks[0], &content_event("hi"));
    assert_eq!(fast.unwrap().0, EventVerdict::Unchanged);
    let [fast, _] = event_both_ways(hooks[2], &content_event("hi"));
    let EventVerdict::Changed(EventData::Json(v)) = fast.unwrap().0 else {
        panic!("not changed");
    };
    assert_eq!(v["choices"][0]["delta"]["content"], "[redacted]");
    assert_eq!(v["id"], "c1");
}

#[test]
fn hooks_that_never_use_their_argument_still_run_and_fail() {
    // Called (the log and the throw happen), with nothing given or read back.
    let plugins = compile(
        r#"fn on_request(req) { throw #{status: 429, message: "slow down"}; }"#,
        Value::Null,
    );
    let mut req = request(json!({"model": "m"}));
    assert_eq!(
        plugins.on_request_edited(&mut req).unwrap_err(),
        ScriptFailure::Thrown {
            status: 429,
            message: "slow down".into()
        }
    );
    let plugins = compile("fn on_request(req) { let x = 1 / 0; }", Value::Null);
    assert!(plugins.on_request_edited(&mut request(json!({}))).is_err());
    // Unchanged, with ctx and body as they were.
    let plugins = compile("fn on_event(ev) { let n = 1 + 1; }", Value::Null);
    let mut ctx = Map::new();
    ctx.insert("k".into(), rhai::Dynamic::from_int(1));
    let verdict = plugins
        .on_event_text(&content_event("hi"), &mut ctx)
        .unwrap();
    assert_eq!(verdict, EventVerdict::Unchanged);
    assert_eq!(ctx.len(), 1);
    let plugins = compile("fn on_response(res) { }", Value::Null);
    let mut res = ScriptResponse {
        status: 201,
        body: json!({"a": 1}),
        ..Default::default()
    };
    assert!(!plugins.on_response_edited(&mut res).unwrap().body);
    assert_eq!((res.status, res.body), (201, json!({"a": 1})));
}
