//! The access log's `outcome`: honest for every way a request ends, and for answers with
//! `Content-Length` (the client side stops polling after that many bytes, and the relay must
//! still see the end). The log is captured with a thread-local tracing subscriber,
//! which tests running in parallel in one process race with (it saw no log lines in a full
//! run), so the test re-runs itself alone in a child process of this test binary.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::common::*;

/// A `Write` into a shared buffer, to read back what the in-process gateway logged.
#[derive(Clone, Default)]
struct LogBuf(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Set in the child process that runs the test alone.
const ALONE: &str = "SOPHGATE_TEST_ALONE";

/// In the test process: runs `name` (this module's test) alone in a child process of this test
/// binary and asserts that it ran and passed. Returns true in that child, which runs the test.
fn alone(name: &str) -> bool {
    if std::env::var_os(ALONE).is_some() {
        return true;
    }
    let full = format!("{}::{name}", module_path!().split_once("::").unwrap().1);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([full.as_str(), "--exact", "--test-threads=1", "--nocapture"])
        .env(ALONE, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{full} alone: {}\n{stdout}\n{stderr}",
        out.status
    );
    false
}

#[tokio::test]
async fn answers_with_content_length_end_cleanly_and_reuse_the_connection() {
    if !alone("answers_with_content_length_end_cleanly_and_reuse_the_connection") {
        return;
    }
    // The client side stops polling after Content-Length bytes; the relay must still see the
    // end: the access log says "ok" (not client_gone) and the connection is reused.
    let logs = LogBuf::default();
    let w = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || w.clone())
        .finish();
    // `#[tokio::test]` runs every task on this thread, so a thread-local default sees them all.
    let _guard = tracing::subscriber::set_default(subscriber);
    let up = upstream(Mode::KeepAlive).await;
    let env = gateway_for(&up, "").await;
    for i in 0..3 {
        ask(&env, i).await;
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let outcomes: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "sophgate::access")
        .map(|v| v["fields"]["outcome"].as_str().unwrap_or("?").to_owned())
        .collect();
    assert_eq!(outcomes, ["ok", "ok", "ok"], "{text}");
}

/// The access log lines (JSON) captured so far: `(status, outcome, error)` each.
fn access_lines(logs: &LogBuf) -> Vec<(u64, String, String)> {
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "sophgate::access")
        .map(|v| {
            let f = &v["fields"];
            (
                f["status"].as_u64().unwrap_or(999),
                f["outcome"].as_str().unwrap_or("?").to_owned(),
                f["error"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_outcome_matches_how_the_request_ended() {
    if !alone("the_outcome_matches_how_the_request_ended") {
        return;
    }
    let logs = LogBuf::default();
    let w = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || w.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let env = start(
        "limits:\n  first_byte_timeout: 0.5\n",
        sophgate::tools::mock::MockOptions {
            tokens: 40,
            itl: std::time::Duration::from_millis(50),
            ..Default::default()
        },
    )
    .await;
    let settle = || tokio::time::sleep(std::time::Duration::from_millis(300));
    let mut want: Vec<(u64, &str, &str)> = Vec::new();

    // Delivered whole.
    let ok = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    assert_eq!(ok.status(), 200);
    ok.bytes().await.unwrap();
    want.push((200, "ok", "-"));
    settle().await;
    // HEAD: the body is never sent, and that is not a client leaving.
    let head = client().head(env.url("/health")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    want.push((200, "ok", "-"));
    settle().await;
    // Refused by the gateway.
    let bad = post_chat(&env, "sk-wrong", chat_body("mock-model", false)).await;
    assert_eq!(bad.status(), 401);
    bad.bytes().await.unwrap();
    want.push((401, "rejected", "invalid_api_key"));
    settle().await;
    // The upstream's own errors, passed through.
    for (model, status) in [("mock-500", 500u16), ("mock-401", 401)] {
        let resp = post_chat(&env, CLIENT_KEY, chat_body(model, false)).await;
        assert_eq!(resp.status().as_u16(), status);
        resp.bytes().await.unwrap();
        want.push((u64::from(status), "upstream_error", "-"));
        settle().await;
    }
    // The upstream never answers: 504.
    let slow = post_chat(&env, CLIENT_KEY, chat_body("mock-hang", false)).await;
    assert_eq!(slow.status(), 504);
    slow.bytes().await.unwrap();
    want.push((504, "timeout", "upstream_timeout"));
    settle().await;
    // The client leaves before the answer began (status 0).
    let gone = client()
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .timeout(std::time::Duration::from_millis(150))
        .body(chat_body("mock-hang", false))
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up first");
    want.push((0, "client_gone", "-"));
    settle().await;
    // The client leaves mid-stream.
    let mut stream = post_chat(&env, CLIENT_KEY, chat_body("mock-model", true)).await;
    assert_eq!(stream.status(), 200);
    assert!(stream.chunk().await.unwrap().is_some());
    drop(stream);
    want.push((200, "client_gone", "-"));
    settle().await;
    settle().await;

    let got = access_lines(&logs);
    let got: Vec<(u64, &str, &str)> = got
        .iter()
        .map(|(s, o, e)| (*s, o.as_str(), e.as_str()))
        .collect();
    assert_eq!(got, want);
}
