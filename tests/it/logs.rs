//! The access log: one line per request with the fields operators need, and never a key or
//! an Authorization value — checked on the real binary's output at DEBUG level.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sophgate::tools::mock::{self, MockOptions};

const CLIENT_KEY: &str = "sk-client-SECRET-4a7f9e";
const UPSTREAM_KEY: &str = "up-SECRET-91c3d2";
const OAUTH_CLIENT_KEY: &str = "sk-oauth-SECRET-77";
const CLIENT_SECRET: &str = "client-SECRET-0a1b";

#[tokio::test]
async fn access_log_has_the_fields_and_no_secrets() {
    let mock = mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap();
    let tokens = testkit::token_mock::spawn(
        "127.0.0.1:0".parse().unwrap(),
        testkit::token_mock::TokenMockOptions {
            ttl: Duration::from_secs(300),
            client_id: "gw".into(),
            client_secret: CLIENT_SECRET.into(),
        },
    )
    .await
    .unwrap();
    let port = crate::common::free_port();
    let dir = std::env::temp_dir().join(format!("sophgate-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "listen: \"127.0.0.1:{port}\"\napi_host: \"http://{}\"\nforward_chat_path: /v1/chat/completions\n\
             credentials:\n  corp: {{ type: oauth2, token_url: \"{}\", client_id: gw, client_secret: \"${{CORP_SECRET}}\" }}\n\
             api_keys:\n  \"{CLIENT_KEY}\": \"${{UP_KEY}}\"\n  \"{OAUTH_CLIENT_KEY}\": {{ name: oauth-user, credential: corp }}\n\
             log_level: DEBUG\nlogging:\n  format: json\n",
            mock.addr,
            tokens.oauth2_url(),
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sophgate"))
        .args(["serve", "-c", cfg.to_str().unwrap()])
        .env("UP_KEY", UPSTREAM_KEY)
        .env("CORP_SECRET", CLIENT_SECRET)
        .env_remove("SOPHGATE_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    crate::common::wait_for_listener(port).await;
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let body =
        r#"{"model":"mock-model","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let resp = c
        .post(&url)
        .bearer_auth(CLIENT_KEY)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    let via_oauth = c
        .post(&url)
        .bearer_auth(OAUTH_CLIENT_KEY)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(via_oauth.status(), 200);
    via_oauth.bytes().await.unwrap();
    assert_eq!(tokens.state.fetches(), 1);
    let bad = c
        .post(&url)
        .bearer_auth("sk-wrong-SECRET-x")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    bad.bytes().await.unwrap();

    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM");
    let lines: Vec<String> = rx.try_iter().collect();
    let all = lines.join("\n");
    // "tok-1" is the access token the oauth2 credential fetched.
    for secret in [
        CLIENT_KEY,
        UPSTREAM_KEY,
        OAUTH_CLIENT_KEY,
        CLIENT_SECRET,
        "sk-wrong-SECRET-x",
        "SECRET",
        "tok-1",
    ] {
        assert!(!all.contains(secret), "secret {secret} in the log:\n{all}");
    }
    let access: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "sophgate::access")
        .collect();
    assert_eq!(access.len(), 3, "one line per request:\n{all}");
    let ok = &access[0];
    for field in [
        "request_id",
        "client_ip",
        "key",
        "model",
        "status",
        "latency_ms",
        "ttfb_ms",
        "bytes",
    ] {
        assert!(ok.get(field).is_some(), "access log lacks {field}: {ok}");
    }
    // Numbers in JSON, not strings.
    assert!(ok["latency_ms"].as_f64().is_some_and(|v| v > 0.0), "{ok}");
    assert!(ok["ttfb_ms"].as_f64().is_some_and(|v| v > 0.0), "{ok}");
    assert!(ok["bytes"].is_u64(), "{ok}");
    assert_eq!(ok["model"], "mock-model");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["stream"], true);
    assert!(ok["key"].as_str().unwrap().starts_with("key-"));
    assert_eq!(access[1]["key"], "oauth-user");
    assert_eq!(access[2]["status"], 401);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn log_file_keeps_its_name_relative_to_the_config_folder() {
    let dir = std::env::temp_dir().join(format!("sophgate-logfile-{}", std::process::id()));
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let cfg = dir.join("config.yml");
    let port = crate::common::free_port();
    std::fs::write(
        &cfg,
        format!(
            "listen: \"127.0.0.1:{port}\"\napi_keys: {{ \"sk-a\": \"up-a\" }}\nlogging:\n  file: logs/gw.log\n  rotation: daily\n  retention_days: 3\n"
        ),
    )
    .unwrap();
    // Started from another folder: the relative path is the config's, not the working dir's.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sophgate"))
        .args(["serve", "-c", cfg.to_str().unwrap()])
        .current_dir(&elsewhere)
        .env_remove("SOPHGATE_LOG")
        .spawn()
        .unwrap();
    // Up means answering, not only listening: the SIGTERM handler is installed after the bind,
    // and a SIGTERM that came between the two killed it (seen when all tests share a process).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !answers_health(port) {
        assert!(Instant::now() < deadline, "gateway did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
    assert!(
        !elsewhere.join("logs").exists(),
        "log written under the working dir"
    );
    let files: Vec<String> = std::fs::read_dir(dir.join("logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    // The live file under its own name; rotated ones would be gw.log.<date> beside it.
    assert_eq!(files, ["gw.log"]);
    let text = std::fs::read_to_string(dir.join("logs").join("gw.log")).unwrap();
    assert!(text.contains("sophgate serving"), "{text}");
    std::fs::remove_dir_all(&dir).ok();
}

/// True when the gateway on the loopback port answers `GET /health` with 200.
fn answers_health(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let mut answer = String::new();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .is_ok()
        && s.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.1 200")
}
