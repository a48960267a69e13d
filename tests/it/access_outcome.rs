//! Answers with `Content-Length`: the client side stops polling after that many bytes, and the
//! relay must still see the end. The log is captured with a thread-local tracing subscriber,
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
    // end: the access log says "ok" (not client_disconnected) and the connection is reused.
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
