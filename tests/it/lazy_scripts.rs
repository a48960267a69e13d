//! Scripts cost what they touch: what no hook changed goes on as the bytes that came — the
//! request body upstream, a non-streamed answer and each stream event to the client — while
//! what a hook changed is encoded again. The raw upstream records the request byte for byte
//! and answers with JSON a re-encoding would reformat (spaces, key order), so a needless
//! re-encoding shows.

use std::path::PathBuf;

use crate::common::*;

/// A request body serde_json would write differently (spaces, unsorted keys).
const BODY: &str = r#"{ "stream" : false, "model": "m", "messages": [ {"role": "user", "content": "Hi"} ], "zeta": 1.50 }"#;

/// A non-streamed answer serde_json would write differently.
const ANSWER: &str = r#"{ "model": "m", "choices": [ {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"} ], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2} }"#;

/// Two events serde_json would write differently, then `[DONE]`.
const EVENTS: &str = "data: {\"model\": \"m\", \"choices\": [ {\"index\": 0, \"delta\": {\"content\": \"hel\"}} ]}\n\ndata: {\"model\": \"m\", \"choices\": [ {\"index\": 0, \"delta\": {\"content\": \"lo\"}} ]}\n\ndata: [DONE]\n\n";

fn raw_answer(content_type: &str, body: &str) -> &'static [u8] {
    let text = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    Box::leak(text.into_bytes().into_boxed_slice())
}

fn plugin(tag: &str, source: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("sophgate-lazy-{tag}-{}.rhai", std::process::id()));
    std::fs::write(&path, source).unwrap();
    path
}

fn plugins_yaml(paths: &[PathBuf]) -> String {
    let mut yaml = String::from("plugins:\n");
    for p in paths {
        yaml.push_str(&format!("  - path: \"{}\"\n", p.display()));
    }
    yaml
}

/// The body of the one request `up` received.
fn received_body(up: &Upstream) -> Vec<u8> {
    let received = up.received();
    let request = received.last().expect("the upstream got the request");
    let at = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a request head");
    request[at + 4..].to_vec()
}

async fn post(env: &Env, body: &str) -> reqwest::Response {
    post_chat(env, CLIENT_KEY, body.to_owned()).await
}

#[tokio::test]
async fn a_body_no_hook_changed_goes_upstream_byte_for_byte() {
    let cases = [
        (
            "headers",
            r#"fn on_request(req) { req.headers["x-tag"] = "a"; }"#,
        ),
        ("noop", "fn on_request(req) { }"),
        (
            "read",
            r#"fn on_request(req) { if req.body.model == "m" && "zeta" in req.body { req.headers["x-model"] = req.body.model; } }"#,
        ),
        (
            "whole_read",
            r#"fn on_request(req) { req.headers["x-n"] = req.body.keys().len(); }"#,
        ),
    ];
    for (tag, source) in cases {
        let up = upstream(Mode::Raw(raw_answer("application/json", ANSWER), false)).await;
        let env = gateway_for(&up, &plugins_yaml(&[plugin(tag, source)])).await;
        let resp = post(&env, BODY).await;
        assert_eq!(resp.status(), 200, "{tag}");
        assert_eq!(received_body(&up), BODY.as_bytes(), "{tag}");
    }
}

#[tokio::test]
async fn a_changed_body_is_encoded_again_with_every_field() {
    let up = upstream(Mode::Raw(raw_answer("application/json", ANSWER), false)).await;
    let set = plugin(
        "set",
        r#"fn on_request(req) { req.body.user = "u-" + req.body.model; }"#,
    );
    let read = plugin(
        "read_after",
        r#"fn on_request(req) { req.headers["x-user"] = req.body.user; }"#,
    );
    let env = gateway_for(&up, &plugins_yaml(&[set, read])).await;
    assert_eq!(post(&env, BODY).await.status(), 200);
    let sent: serde_json::Value = serde_json::from_slice(&received_body(&up)).unwrap();
    let mut expected: serde_json::Value = serde_json::from_str(BODY).unwrap();
    expected["user"] = "u-m".into();
    assert_eq!(sent, expected);
    let head = String::from_utf8_lossy(&up.received()[0]).to_lowercase();
    assert!(
        head.contains("x-user: u-m"),
        "the second plugin saw the first's edit: {head}"
    );
}

#[tokio::test]
async fn an_answer_no_hook_changed_comes_back_as_it_came() {
    let up = upstream(Mode::Raw(raw_answer("application/json", ANSWER), false)).await;
    let read = plugin(
        "res_read",
        r#"fn on_response(res) { res.headers["x-model"] = res.body.model; }"#,
    );
    let env = gateway_for(&up, &plugins_yaml(&[read])).await;
    let resp = post(&env, BODY).await;
    assert_eq!(resp.headers()["x-model"], "m");
    assert_eq!(resp.text().await.unwrap(), ANSWER);

    let up = upstream(Mode::Raw(raw_answer("application/json", ANSWER), false)).await;
    let edit = plugin(
        "res_edit",
        r#"fn on_response(res) { res.body.model = "n"; }"#,
    );
    let env = gateway_for(&up, &plugins_yaml(&[edit])).await;
    let v: serde_json::Value = post(&env, BODY).await.json().await.unwrap();
    assert_eq!(v["model"], "n");
    assert_eq!(v["choices"][0]["message"]["content"], "hello");
}

#[tokio::test]
async fn events_no_hook_changed_are_relayed_as_they_came() {
    let streamed =
        r#"{"model": "m", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}"#;
    let cases = [
        ("ev_noop", "fn on_event(ev) { }", EVENTS.to_owned()),
        (
            "ev_read",
            r#"fn on_event(ev) { if type_of(ev.data) == "map" { ev.ctx.n = ev.data.choices[0].delta.content; } }"#,
            EVENTS.to_owned(),
        ),
        // The edited path is written in place: the changed event is encoded again, every
        // key in the order it came.
        (
            "ev_edit",
            r#"fn on_event(ev) { if type_of(ev.data) == "map" { ev.data.choices[0].delta.content = "x"; } }"#,
            "data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\ndata: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\ndata: [DONE]\n\n".to_owned(),
        ),
    ];
    for (tag, source, expected) in cases {
        let up = upstream(Mode::Raw(raw_answer("text/event-stream", EVENTS), false)).await;
        let env = gateway_for(&up, &plugins_yaml(&[plugin(tag, source)])).await;
        let text = post(&env, streamed).await.text().await.unwrap();
        assert_eq!(text, expected, "{tag}");
    }
}

/// The header lines of the last request `up` received, without those that differ between
/// gateways or bodies (`host`, `x-request-id`, `content-length`).
fn received_header_lines(up: &Upstream) -> Vec<String> {
    let received = up.received();
    let request = received.last().expect("the upstream got the request");
    let text = String::from_utf8_lossy(request);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    head.lines()
        .skip(1)
        .filter(|l| {
            let name = l.split(':').next().unwrap_or_default().to_ascii_lowercase();
            !matches!(name.as_str(), "host" | "x-request-id" | "content-length")
        })
        .map(str::to_owned)
        .collect()
}

/// Posts `BODY` with `head` (header lines) on a socket of its own; waits until `up` has it.
async fn post_raw(env: &Env, up: &Upstream, head: &str) {
    use tokio::io::AsyncWriteExt;
    let before = up.received().len();
    let mut s = tokio::net::TcpStream::connect(env.gateway.addr)
        .await
        .unwrap();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\n{head}content-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    for _ in 0..500 {
        if up.received().len() > before {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the upstream got no request");
}

/// The header lines upstream got for `head`, through a gateway with the plugins `extra` sets.
async fn header_lines_upstream(extra: &str, head: &str) -> Vec<String> {
    let up = upstream(Mode::Raw(raw_answer("application/json", ANSWER), false)).await;
    let env = gateway_for(&up, extra).await;
    post_raw(&env, &up, head).await;
    received_header_lines(&up)
}

#[tokio::test]
async fn headers_no_hook_names_go_upstream_as_scripts_would_see_them() {
    // This hook never names `req.headers`: they are not copied for it, and go upstream as the
    // copy without the headers scripts never see would.
    let blind = plugins_yaml(&[plugin(
        "headers_blind",
        r#"fn on_request(req) { if type_of(req.body) == "map" { req.body.rename_keys(#{model: "model_id"}); } }"#,
    )]);
    let common = format!(
        "host: gw.example\r\nauthorization: Bearer {CLIENT_KEY}\r\nx-first: 1\r\n\
         content-type: application/json\r\nproxy-authorization: secret\r\n\
         keep-alive: timeout=5\r\nx-listed: 1\r\nx-last: 2\r\n"
    );
    // A `Connection` header naming another: scripts never see it, so the header it names is
    // not dropped upstream as it is without scripts.
    let connection = format!("{common}connection: x-listed\r\n");
    let expected: Vec<String> = [
        "x-first: 1",
        "content-type: application/json",
        "x-listed: 1",
        "x-last: 2",
        &format!("authorization: Bearer {UPSTREAM_KEY}"),
    ]
    .map(str::to_owned)
    .to_vec();
    assert_eq!(header_lines_upstream(&blind, &common).await, expected);
    assert_eq!(header_lines_upstream(&blind, &connection).await, expected);
    // Without scripts, the same lines (the order the client sent), and the listed one dropped.
    assert_eq!(header_lines_upstream("", &common).await, expected);
    let unlisted: Vec<String> = expected
        .iter()
        .filter(|l| !l.starts_with("x-listed"))
        .cloned()
        .collect();
    assert_eq!(header_lines_upstream("", &connection).await, unlisted);
}
