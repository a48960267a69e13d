//! The fast paths give what the slow ones give: a hook that only renames keys (the bundled
//! `field_aliases.rhai`) renames the JSON value without converting it, with the same result as
//! the same hook made to see its body whole; scopes kept between calls hold only constants.

use rhai::Map;
use serde_json::{json, Value};

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

fn request(body: Value) -> ScriptRequest {
    ScriptRequest {
        body,
        path: "/v1/chat/completions".into(),
        method: "POST".into(),
        ..Default::default()
    }
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
    let both = [
        field_aliases(),
        "fn on_request(req) { req.body.seen = req.body.b; }",
    ];
    let specs = both
        .iter()
        .map(|src| PluginSpec {
            name: "p.rhai".into(),
            source: (*src).into(),
            params: json!({"a": "b"}),
        })
        .collect();
    let plugins = Plugins::compile(specs, ScriptLimits::default()).unwrap();
    assert_eq!(plugins.body_reach(0), &reach::BodyReach::Whole);
    let mut req = request(json!({"a": 1}));
    plugins.on_request_edited(&mut req).unwrap();
    assert_eq!(req.body, json!({"b": 1, "seen": 1}));
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
