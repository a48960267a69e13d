//! A stream's events through one [`EventStream`] (the argument reused from event to event) give
//! what each event gives through the per-event path, whatever the events before it were.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use rhai::{Dynamic, Map};
use serde_json::json;

use super::*;

fn compile(source: &str) -> Plugins {
    let spec = PluginSpec {
        name: "p.rhai".into(),
        source: source.into(),
        params: serde_json::Value::Null,
    };
    Plugins::compile(vec![spec], ScriptLimits::default()).unwrap()
}

fn start_ctx() -> Map {
    let mut ctx = Map::new();
    ctx.insert("log".into(), Dynamic::from_array(Vec::new()));
    ctx.insert("n".into(), Dynamic::from_int(0));
    ctx
}

fn events() -> Vec<String> {
    let content = |c: &str| {
        json!({"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"content": c}, "finish_reason": null}]})
            .to_string()
    };
    vec![
        content("hi"),
        content("a content longer than a string kept inline, so it has its own allocation"),
        content("drop me"),
        content(""),
        json!({"choices": [{"delta": {"content": "x"}}, {"delta": {"content": "y"}}, {"delta": {"role": "r"}}], "usage": {"total_tokens": 3}}).to_string(),
        json!({"choices": [{"delta": {}}]}).to_string(),
        json!({"choices": []}).to_string(),
        json!({"choices": {"0": {"delta": {"content": "obj"}}}, "model": null}).to_string(),
        json!({"choices": "text", "id": 5}).to_string(),
        r#"{"choices":[1],"choices":[{"delta":{"content":"last wins"}}],"model":"a","model":"b"}"#.into(),
        "[DONE]".into(),
        "7".into(),
        r#"{"a":1e999}"#.into(),
        r#"{"choices":[1,]}"#.into(),
        json!({"model": "only"}).to_string(),
        content("again"),
        content("again"),
    ]
}

/// Hooks that can only read `ev.data` (the reusing path), each also made to see it whole (the
/// per-event path) by `let _w = ev.data;`.
const HOOKS: [&str; 4] = [
    r#"fn on_event(ev) { if type_of(ev.data) == "map" { ev.ctx.log += [[ev.data.choices[0].delta.content, ev.data.choices[2], ev.data.model, ev.extra, "id" in ev.data]]; ev.extra = ev.data.model; } else { ev.ctx.log += [type_of(ev.data)]; } }"#,
    r#"fn on_event(ev) { if type_of(ev.data) == "map" && type_of(ev.data.choices) == "array" { ev.ctx.last = ev.data.choices[0].delta.content; ev.drop = ev.data.choices[0].delta.content == "drop me"; } }"#,
    r#"fn on_event(ev) { if type_of(ev.data) == "map" { ev.ctx.n += 1; ev.ctx.u = ev.data.usage.total_tokens; ev.ctx.c1 = ev.data.choices[1].delta; } }"#,
    r#"fn on_event(ev) { if ev.data.choices[0].delta.content == "" { ev.ctx.empty = true; } }"#,
];

#[test]
fn a_reused_argument_gives_what_a_fresh_one_gives() {
    let events = events();
    for hook in HOOKS {
        let fast = compile(hook);
        let slow =
            compile(&hook.replace("fn on_event(ev) {", "fn on_event(ev) { let _w = ev.data;"));
        assert!(
            !fast.reach[2].body_writes() && slow.reach[2].body_writes(),
            "{hook}"
        );
        for order in [events.clone(), events.iter().rev().cloned().collect()] {
            let mut stream = EventStream::new(start_ctx());
            let mut ctx = start_ctx();
            for data in order.iter().chain(order.iter()) {
                let got = fast.on_stream_event(data, &mut stream);
                let want = slow.on_event_text(data, &mut ctx);
                assert_eq!(got, want, "{hook} on {data}");
                let got_ctx = format!("{:?}", stream.ctx);
                assert_eq!(
                    got_ctx,
                    format!("{:?}", Dynamic::from_map(ctx.clone())),
                    "{hook} on {data}"
                );
            }
            let n = stream.into_ctx().get("n").and_then(|n| n.as_int().ok());
            assert_eq!(n, ctx.get("n").and_then(|n| n.as_int().ok()));
        }
    }
}

#[test]
fn ctx_carries_over_and_a_failure_empties_it() {
    let p = compile(
        r#"fn on_event(ev) { ev.ctx.n += 1; if ev.data.choices[0].delta.content == "boom" { throw "boom"; } }"#,
    );
    let mut stream = EventStream::new(start_ctx());
    let ok = json!({"choices": [{"delta": {"content": "a"}}]}).to_string();
    for _ in 0..3 {
        assert_eq!(
            p.on_stream_event(&ok, &mut stream).unwrap(),
            EventVerdict::Unchanged
        );
    }
    let boom = json!({"choices": [{"delta": {"content": "boom"}}]}).to_string();
    assert!(p.on_stream_event(&boom, &mut stream).is_err());
    assert!(stream.into_ctx().is_empty());
    let mut stream = EventStream::new(start_ctx());
    for _ in 0..3 {
        p.on_stream_event(&ok, &mut stream).unwrap();
    }
    assert_eq!(
        stream.into_ctx().get("n").and_then(|n| n.as_int().ok()),
        Some(3)
    );
}

#[test]
fn a_stream_moved_to_other_plugins_gets_their_fields() {
    let no_ctx =
        compile(r#"fn on_event(ev) { ev.drop = ev.data.choices[0].delta.content == "x"; }"#);
    let with_ctx = compile(r#"fn on_event(ev) { ev.ctx.c = ev.data.choices[0].delta.content; }"#);
    let data = json!({"choices": [{"delta": {"content": "x"}}]}).to_string();
    let mut stream = EventStream::new(Map::new());
    assert_eq!(
        no_ctx.on_stream_event(&data, &mut stream).unwrap(),
        EventVerdict::Drop
    );
    assert_eq!(
        with_ctx.on_stream_event(&data, &mut stream).unwrap(),
        EventVerdict::Unchanged
    );
    assert_eq!(
        no_ctx.on_stream_event(&data, &mut stream).unwrap(),
        EventVerdict::Drop
    );
    let ctx = stream.into_ctx();
    assert_eq!(ctx.get("c").map(ToString::to_string), Some("x".into()));
}
