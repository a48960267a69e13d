//! `workers: 1` runs the real binary on tokio's current-thread scheduler, `workers: 2` on the
//! multi-thread one: both must serve plain and streamed requests, reload on SIGHUP (the reload
//! runs on the blocking pool) and exit cleanly on SIGTERM.

use std::process::Command;
use std::time::{Duration, Instant};

use sophgate::tools::mock::{self, MockOptions};

async fn serves_reloads_and_stops_with(workers: usize) {
    let mock = mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap();
    let port = crate::common::free_port();
    let dir =
        std::env::temp_dir().join(format!("sophgate-workers-{workers}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("config.yml");
    let config = |keys: &str| {
        format!(
            "listen: \"127.0.0.1:{port}\"\napi_host: \"http://{}\"\n\
             forward_chat_path: /v1/chat/completions\napi_keys: {{ {keys} }}\n\
             field_aliases: {{ model: model_id }}\nworkers: {workers}\n",
            mock.addr
        )
    };
    std::fs::write(&cfg, config("\"sk-a\": \"up-a\"")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sophgate"))
        .args(["serve", "-c", cfg.to_str().unwrap()])
        .env_remove("SOPHGATE_LOG")
        .spawn()
        .unwrap();
    crate::common::wait_for_listener(port).await;
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let ask = |key: &'static str, stream: bool| {
        let body = format!(
            r#"{{"model":"mock-model","messages":[{{"role":"user","content":"hi"}}],"stream":{stream}}}"#
        );
        c.post(&url).bearer_auth(key).body(body).send()
    };

    let plain = ask("sk-a", false).await.unwrap();
    assert_eq!(plain.status(), 200);
    let answer: serde_json::Value = plain.json().await.unwrap();
    assert_eq!(answer["object"], "chat.completion", "{answer}");
    let streamed = ask("sk-a", true).await.unwrap();
    assert_eq!(streamed.status(), 200);
    let events = streamed.text().await.unwrap();
    assert!(events.trim_end().ends_with("data: [DONE]"), "{events}");
    assert_eq!(ask("sk-b", false).await.unwrap().status(), 401);

    std::fs::write(&cfg, config("\"sk-a\": \"up-a\", \"sk-b\": \"up-b\"")).unwrap();
    let _ = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if ask("sk-b", false).await.unwrap().status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the reload never took effect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success(), "clean exit on SIGTERM");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn one_worker_serves_reloads_and_stops() {
    serves_reloads_and_stops_with(1).await;
}

#[tokio::test]
async fn two_workers_serve_reload_and_stop() {
    serves_reloads_and_stops_with(2).await;
}
