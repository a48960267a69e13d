//! Hooks see only what they can reach, and whatever a script could do with the full map it
//! still can: nested edits, replacement, `type_of`, iteration, printing, arrays, copies.

use rhai::{Dynamic, Map};
use serde_json::{json, Value};

use super::*;

fn plugins(sources: &[&str]) -> Plugins {
    let specs = sources
        .iter()
        .enumerate()
        .map(|(i, src)| PluginSpec {
            name: format!("p{i}.rhai"),
            source: (*src).into(),
            params: Value::Null,
        })
        .collect();
    Plugins::compile(specs, ScriptLimits::default()).unwrap()
}

fn body() -> Value {
    json!({
        "model": "m",
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}],
        "temperature": 0.5,
        "metadata": {"team": "a", "tags": ["x"]},
    })
}

/// A chat request with `body` and nothing else set (shared with `fast_path_tests`).
pub(super) fn request(body: Value) -> ScriptRequest {
    ScriptRequest {
        body,
        path: "/v1/chat/completions".into(),
        method: "POST".into(),
        ..Default::default()
    }
}

/// Runs `sources` as one chain over [`body`]: the body after, and whether it changed.
fn run(sources: &[&str]) -> (Value, bool) {
    let mut req = request(body());
    let edited = plugins(sources).on_request_edited(&mut req).unwrap();
    (req.body, edited.body)
}

#[test]
fn reading_changes_nothing() {
    for src in [
        "fn on_request(req) { let m = req.body.model; }",
        "fn on_request(req) { req.body.messages[0].content.len(); }",
        r#"fn on_request(req) { if type_of(req.body) != "map" || !("model" in req.body) { throw "no"; } }"#,
        "fn on_request(req) { for k in req.body.keys() { } }",
        "fn on_request(req) { let b = req.body; b.model = \"other\"; }",
        r#"fn on_request(req) { req.headers["x"] = json_encode(req.body); }"#,
        "fn on_request(req) { }",
    ] {
        assert_eq!(run(&[src]), (body(), false), "{src}");
    }
}

#[test]
fn nested_edits_and_arrays() {
    let (b, changed) = run(&[r#"fn on_request(req) {
        req.body.messages[0].content = "Hello";
        req.body.messages.push(#{role: "user", content: "more"});
        req.body.metadata.tags += ["y"];
        req.body.user = "u";
    }"#]);
    assert!(changed);
    let mut expected = body();
    expected["messages"][0]["content"] = "Hello".into();
    expected["messages"]
        .as_array_mut()
        .unwrap()
        .push(json!({"role": "user", "content": "more"}));
    expected["metadata"]["tags"] = json!(["x", "y"]);
    expected["user"] = "u".into();
    assert_eq!(b, expected);
}

#[test]
fn replacement_copies_and_removal() {
    let (b, changed) = run(&["fn on_request(req) { req.body = #{model: \"n\", n: [1, 2]}; }"]);
    assert!(changed);
    assert_eq!(b, json!({"model": "n", "n": [1, 2]}));

    let (b, _) = run(&["fn on_request(req) { let b = req.body; b.model = \"n\"; req.body = b; }"]);
    assert_eq!(b["model"], "n");
    assert_eq!(b["messages"], body()["messages"]);

    let (b, changed) = run(&["fn on_request(req) { req.body.remove(\"temperature\"); }"]);
    assert!(changed && b.get("temperature").is_none() && b["model"] == "m");
}

#[test]
fn what_a_hook_sees_is_the_whole_body_when_it_looks() {
    // keys, type_of, `in` and printing answer as for the full map, whatever the hook names.
    let (b, _) = run(&[r#"fn on_request(req) {
        req.body.seen_type = type_of(req.body);
        req.body.has_model = "model" in req.body;
        req.body.has_nothing = "nothing" in req.body;
        req.body.first = req.body.messages[0].role;
    }"#]);
    assert_eq!(b["seen_type"], "map");
    assert_eq!(
        (b["has_model"].clone(), b["has_nothing"].clone()),
        (json!(true), json!(false))
    );
    assert_eq!(b["first"], "user");

    let (b, _) = run(&["fn on_request(req) { let k = req.body.keys(); req.body.n = k.len(); }"]);
    assert_eq!(b["n"], 4);
    let (b, _) = run(&["fn on_request(req) { req.body.text = json_encode(req.body.metadata); }"]);
    assert_eq!(b["text"], r#"{"tags":["x"],"team":"a"}"#);
    let (b, _) = run(&["fn on_request(req) { req.body.dbg = `${req.body.messages[1]}`; }"]);
    assert!(b["dbg"].as_str().unwrap().contains("Yo"));
}

#[test]
fn plugins_share_one_body_whatever_each_names() {
    let (b, changed) = run(&[
        "fn on_request(req) { req.body.user = req.body.model + \"-u\"; }",
        "fn on_request(req) { req.body.rename_keys(#{user: \"end_user\"}); }",
        "fn on_request(req) { req.body.seen = req.body.end_user; }",
    ]);
    assert!(changed);
    assert_eq!(b["end_user"], "m-u");
    assert_eq!(b["seen"], "m-u");
    assert!(b.get("user").is_none());
}

#[test]
fn headers_only_hooks_leave_the_body_alone() {
    let p = plugins(&[r#"fn on_request(req) { req.headers["x-team"] = "blue"; }"#]);
    assert!(!p.request_body_reached());
    let mut req = request(body());
    assert_eq!(
        p.on_request_edited(&mut req).unwrap(),
        Edited { body: false }
    );
    assert_eq!(req.headers["x-team"], "blue");
    assert_eq!(req.body, body());
}

#[test]
fn a_non_object_body_is_seen_whole() {
    let p = plugins(&[r#"fn on_request(req) {
        if type_of(req.body) == "map" { req.body.model; }
        req.headers["t"] = type_of(req.body);
    }"#]);
    for (given, kind) in [
        (json!([1, 2]), "array"),
        (Value::Null, "()"),
        (json!("s"), "string"),
    ] {
        let mut req = request(given.clone());
        assert_eq!(
            p.on_request_edited(&mut req).unwrap(),
            Edited { body: false }
        );
        assert_eq!(req.headers["t"], kind);
        assert_eq!(req.body, given);
    }
    // Property access on a body that is not a map fails, as it always did.
    let p = plugins(&["fn on_request(req) { req.body.model }"]);
    assert!(p.on_request_edited(&mut request(json!([1]))).is_err());
}

#[test]
fn responses_say_whether_the_body_changed() {
    let p = plugins(&["fn on_response(res) { if res.body.model == \"m\" { res.status = 201; } }"]);
    let mut res = ScriptResponse {
        status: 200,
        body: body(),
        ..Default::default()
    };
    assert_eq!(
        p.on_response_edited(&mut res).unwrap(),
        Edited { body: false }
    );
    assert_eq!((res.status, res.body.clone()), (201, body()));
    let p = plugins(&["fn on_response(res) { res.body.model = \"n\"; }"]);
    assert_eq!(
        p.on_response_edited(&mut res).unwrap(),
        Edited { body: true }
    );
    assert_eq!(res.body["model"], "n");
}

#[test]
fn events_unchanged_changed_dropped() {
    let data = r#"{"choices": [{"delta": {"content": "hi"}}], "id": "x"}"#;
    let mut ctx = rhai::Map::new();
    for src in [
        "fn on_event(ev) { }",
        r#"fn on_event(ev) { if type_of(ev.data) == "map" { ev.ctx.c = ev.data.choices[0].delta.content; } }"#,
        r#"fn on_event(ev) { let d = ev.data; if type_of(d) == "map" { d.id = "y"; } }"#,
    ] {
        let p = plugins(&[src]);
        assert_eq!(
            p.on_event_text(data, &mut ctx).unwrap(),
            EventVerdict::Unchanged,
            "{src}"
        );
        assert_eq!(
            p.on_event_text("[DONE]", &mut ctx).unwrap(),
            EventVerdict::Unchanged
        );
    }
    assert_eq!(ctx.get("c").map(|c| c.to_string()), Some("hi".into()));

    let p = plugins(&["fn on_event(ev) { if type_of(ev.data) == \"map\" { ev.data.choices[0].delta.content += \"!\"; } }"]);
    let EventVerdict::Changed(EventData::Json(v)) = p.on_event_text(data, &mut ctx).unwrap() else {
        panic!("expected changed JSON");
    };
    assert_eq!(
        v,
        json!({"choices": [{"delta": {"content": "hi!"}}], "id": "x"})
    );

    let p = plugins(&["fn on_event(ev) { ev.data = \"text\"; }"]);
    assert_eq!(
        p.on_event_text(data, &mut ctx).unwrap(),
        EventVerdict::Changed(EventData::Raw("text".into()))
    );
    let p = plugins(&["fn on_event(ev) { ev.drop = ev.data.id == \"x\"; }"]);
    assert_eq!(p.on_event_text(data, &mut ctx).unwrap(), EventVerdict::Drop);
}

/// A hook that can only read `ev.data` gets it parsed from the event's text as far as it
/// reaches it; what it sees equals what it sees of the data parsed whole (`on_event`).
#[test]
fn read_only_event_hooks_see_the_text_as_the_parsed_data() {
    let hooks = [
        r#"fn on_event(ev) { ev.ctx.seen = [type_of(ev.data), ev.data.choices[0].delta.content, ev.data.model]; }"#,
        r#"fn on_event(ev) { if type_of(ev.data) == "map" { ev.ctx.seen = [ev.data.choices[1], "x" in ev.data]; } else { ev.ctx.seen = type_of(ev.data); } }"#,
        r#"fn on_event(ev) { ev.drop = ev.data.choices[0].delta.content == "drop me"; }"#,
    ];
    let texts = [
        r#"{"model":"m","choices":[{"index":0,"delta":{"content":" tok"},"finish_reason":null}]}"#,
        r#"{"choices":[{"delta":{"content":"drop me"}}]}"#,
        r#"{"choices":[],"x":1}"#,
        r#"{"choices":[{"delta":{}},{"delta":{"content":"b"}}],"x":{"y":[1]}}"#,
        r#"{"ch\u006fices":[{"delta":{"content":"a"}}],"choices":[{"delta":{"content":"dup"}}]}"#,
        r#"{"choices":"text"}"#,
        r#"{"choices":[{"delta":{"content":"\ud800"}}]}"#,
        r#"{"x":1e999,"choices":[{"delta":{"content":"n"}}]}"#,
        r#"[{"choices":[]}]"#,
        r#""quoted""#,
        "[DONE]",
        "",
        "{not json",
    ];
    for hook in hooks {
        let p = plugins(&[hook]);
        assert!(!p.body_writes(2), "{hook} must only read");
        for text in texts {
            let mut from_text = rhai::Map::new();
            let text_verdict = p.on_event_text(text, &mut from_text);
            let mut ev = ScriptEvent {
                data: EventData::parse(text),
                ctx: rhai::Map::new(),
            };
            let data_outcome = p.on_event(&mut ev);
            match (text_verdict, data_outcome) {
                (Ok(verdict), Ok(outcome)) => {
                    let dropped = outcome == EventOutcome::Drop;
                    assert_eq!(verdict == EventVerdict::Drop, dropped, "{hook} on {text}");
                    if !dropped {
                        assert_eq!(verdict, EventVerdict::Unchanged, "{hook} on {text}");
                    }
                    assert_eq!(ev.data, EventData::parse(text));
                    assert_eq!(
                        format!("{from_text:?}"),
                        format!("{:?}", ev.ctx),
                        "{hook} on {text}"
                    );
                }
                (Err(a), Err(b)) => assert_eq!(a, b, "{hook} on {text}"),
                (a, b) => panic!("{hook} on {text}: from text {a:?}, from the data {b:?}"),
            }
        }
    }
}

/// The argument holds only the fields some hook names; the fields left out come back as they
/// went in, and a chain where one plugin names a field gives it to every plugin.
#[test]
fn fields_no_hook_names_stay_as_they_were() {
    let mut ctx = Map::new();
    ctx.insert("team".into(), Dynamic::from("a"));
    for (sources, path, team) in [
        (&["fn on_request(req) { }"][..], "/v1/chat/completions", "a"),
        (
            &["fn on_request(req) { req.body.user = \"u\"; }"][..],
            "/v1/chat/completions",
            "a",
        ),
        (
            &[r#"fn on_request(req) { req.path = "/v1/x"; }"#][..],
            "/v1/x",
            "a",
        ),
        (
            &[r#"fn on_request(req) { req.ctx.team = "b"; }"#][..],
            "/v1/chat/completions",
            "b",
        ),
        (
            &[
                r#"fn on_request(req) { req.ctx.team += req.path; }"#,
                r#"fn on_request(req) { req.path = "/v1/y"; }"#,
            ][..],
            "/v1/y",
            "a/v1/chat/completions",
        ),
        // The whole argument escapes: every field is given and read back.
        (
            &["fn on_request(req) { let r = req; r.path; }"][..],
            "/v1/chat/completions",
            "a",
        ),
    ] {
        let mut req = request(body());
        req.ctx = ctx.clone();
        plugins(sources).on_request(&mut req).unwrap();
        assert_eq!(req.path, path, "{sources:?}");
        let got = req.ctx.get("team").map(|t| t.to_string());
        assert_eq!(got.as_deref(), Some(team), "{sources:?}");
    }
}

#[test]
fn response_and_event_fields_no_hook_names_stay() {
    let mut ctx = Map::new();
    ctx.insert("n".into(), Dynamic::from_int(1));
    let p = plugins(&["fn on_response(res) { res.body.x = 1; }\nfn on_event(ev) { }"]);
    let mut res = ScriptResponse {
        status: 201,
        body: json!({}),
        ctx: ctx.clone(),
        ..Default::default()
    };
    p.on_response(&mut res).unwrap();
    assert_eq!(
        (res.status, res.body, res.ctx.len()),
        (201, json!({"x": 1}), 1)
    );

    let mut ev_ctx = ctx.clone();
    let verdict = p.on_event_text(r#"{"a":1}"#, &mut ev_ctx).unwrap();
    assert_eq!(verdict, EventVerdict::Unchanged);
    assert_eq!(ev_ctx.len(), 1);

    // A bad value in a field that was given is still caught.
    let p = plugins(&["fn on_event(ev) { ev.drop = 3; }"]);
    assert!(p.on_event_text("{}", &mut ctx.clone()).is_err());
    let p = plugins(&["fn on_event(ev) { ev.ctx = 3; }"]);
    assert!(p.on_event_text("{}", &mut ctx.clone()).is_err());
    let p = plugins(&["fn on_response(res) { res.status = 0; }"]);
    assert!(p.on_response(&mut ScriptResponse::default()).is_err());
}
