//! Hot reload: plugin and config edits take effect within seconds while traffic flows, broken
//! versions change nothing, no request fails or sees a mix of generations; admin endpoints.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use futures_util::StreamExt;
use sophgate::config::Config;
use sophgate::gateway::server;
use sophgate::reload::Runtime;
use sophgate::tools::mock::{self, MockOptions};

const ADMIN_KEY: &str = "admin-key-0123456789abcdef";

fn plugin(version: u32) -> String {
    format!(
        "fn on_request(req) {{ req.ctx.v = \"{version}\"; req.headers[\"x-version\"] = \"{version}\"; }}\n\
         fn on_response(res) {{ res.headers[\"x-versions\"] = res.ctx.v + \"/{version}\"; }}\n"
    )
}

/// Writes atomically, as editors do (write a temp file, rename over the old one).
fn write_atomic(path: &PathBuf, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn setup(tag: &str) -> (Env, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("sophgate-reload-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plugin_path = dir.join("version.rhai");
    std::fs::write(&plugin_path, plugin(1)).unwrap();
    let opts = MockOptions {
        itl: Duration::from_millis(5),
        tokens: 6,
        ..MockOptions::default()
    };
    let mock = mock::spawn("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap();
    let yaml = base_yaml(
        mock.addr,
        // A generous wall-time limit: this test is about reloads under load, and on a loaded
        // 2-core machine a debug build's hook can take longer than the default 50 ms.
        &format!(
            "plugins:\n  - path: version.rhai\nadmin:\n  key: \"{ADMIN_KEY}\"\nlimits:\n  scripts:\n    max_wall_time_ms: 5000\n"
        ),
    );
    let config_path = dir.join("config.yml");
    std::fs::write(&config_path, yaml).unwrap();
    let runtime = Runtime::new(Config::from_file(&config_path).unwrap()).unwrap();
    let gateway = server::spawn(runtime.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    (
        Env {
            mock,
            gateway,
            runtime,
        },
        dir,
        plugin_path,
    )
}

async fn version_seen(env: &Env) -> String {
    let resp = post_chat(env, CLIENT_KEY, chat_body("mock-model", false)).await;
    assert_eq!(resp.status(), 200);
    let v = resp
        .headers()
        .get("x-versions")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let (a, b) = v.split_once('/').unwrap();
    assert_eq!(a, b, "request and response hooks of different generations");
    a.to_owned()
}

async fn wait_for_version(env: &Env, want: &str, within: Duration) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if version_seen(env).await == want {
            return t0.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("version {want} not live within {within:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_edits_reload_under_load_with_zero_failed_requests() {
    let (env, dir, plugin_path) = setup("load").await;
    let watcher = sophgate::reload::watch::spawn(env.runtime.clone()).unwrap();
    let env = Arc::new(env);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for worker in 0..6 {
        let (env, stop, ok) = (env.clone(), stop.clone(), ok.clone());
        load.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                if worker % 2 == 0 {
                    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", true)).await;
                    let status = resp.status();
                    let mut s = resp.bytes_stream();
                    let mut text = Vec::new();
                    while let Some(c) = s.next().await {
                        match c {
                            Ok(c) => text.extend_from_slice(&c),
                            Err(e) => failures.push(format!("stream error {e}")),
                        }
                    }
                    if status != 200 || !text.ends_with(b"data: [DONE]\n\n") {
                        failures.push(format!("stream {status}"));
                    }
                } else {
                    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
                    let status = resp.status();
                    let versions = resp
                        .headers()
                        .get("x-versions")
                        .map(|v| v.to_str().unwrap().to_owned());
                    if status != 200 {
                        let body = resp.text().await.unwrap_or_default();
                        failures.push(format!("plain {status}: {body}"));
                    } else if let Some(v) = versions {
                        let (a, b) = v.split_once('/').unwrap();
                        if a != b {
                            failures.push(format!("mixed generations {v}"));
                        }
                    }
                }
                ok.fetch_add(1, Ordering::SeqCst);
            }
            failures
        }));
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    write_atomic(&plugin_path, &plugin(2));
    let took = wait_for_version(&env, "2", Duration::from_secs(2)).await;
    eprintln!("version 2 live after {took:?}");

    // A broken version changes nothing, and says why.
    write_atomic(&plugin_path, "fn on_request(req) { let = ; }\n");
    let rt = env.runtime.clone();
    assert!(
        eventually(3.0, || rt.last_error().is_some()).await,
        "broken plugin not noticed"
    );
    let err = env.runtime.last_error().unwrap();
    assert!(err.contains("version.rhai:1:"), "{err}");
    assert_eq!(version_seen(&env).await, "2");

    write_atomic(&plugin_path, &plugin(3));
    wait_for_version(&env, "3", Duration::from_secs(2)).await;
    std::fs::write(&plugin_path, plugin(4)).unwrap(); // a plain in-place write too
    wait_for_version(&env, "4", Duration::from_secs(2)).await;

    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    for t in load {
        failures.extend(t.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok.load(Ordering::SeqCst) > 20, "the load did run");
    watcher.abort();
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn admin_reload_and_status() {
    let (env, dir, plugin_path) = setup("admin").await;
    let c = client();
    let status = |key: &'static str| {
        let req = c.get(env.url("/admin/status")).bearer_auth(key);
        async move { req.send().await.unwrap() }
    };
    assert_eq!(status("wrong-key").await.status(), 401);
    let v: serde_json::Value = status(ADMIN_KEY).await.json().await.unwrap();
    assert_eq!(v["generation"], 1);
    assert!(v["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v["plugins"][0]["name"], "version.rhai");
    assert_eq!(v["plugins"][0]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(v["config"]["sha256"].as_str().unwrap().len(), 64);
    assert!(v["last_reload_error"].is_null());

    std::fs::write(&plugin_path, "fn on_request(req) { oops( }").unwrap();
    let resp = c
        .post(env.url("/admin/reload"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let v: serde_json::Value = status(ADMIN_KEY).await.json().await.unwrap();
    assert_eq!(v["generation"], 1, "the old generation keeps serving");
    assert!(v["last_reload_error"]
        .as_str()
        .unwrap()
        .contains("version.rhai"));
    assert_eq!(version_seen(&env).await, "1");

    std::fs::write(&plugin_path, plugin(7)).unwrap();
    let resp = c
        .post(env.url("/admin/reload"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["generation"], 2);
    assert_eq!(version_seen(&env).await, "7");
    let v: serde_json::Value = status(ADMIN_KEY).await.json().await.unwrap();
    assert!(v["last_reload_error"].is_null());
    assert_eq!(v["reloads"]["failed"], 1);
    assert_eq!(v["reloads"]["succeeded"], 1);
    assert!(v["log"]["dropped_lines"].is_u64(), "{v}");

    assert_eq!(
        c.get(env.url("/admin/reload"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn admin_routes_do_not_exist_without_a_key() {
    let env = start("", MockOptions::default()).await;
    let resp = client()
        .post(env.url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp, 404).await, "unknown_route");
}

/// A CA certificate file is watched like the config: a broken replacement is refused (the
/// old generation keeps serving) and the repaired file reloads, without touching config.yml.
#[tokio::test]
async fn a_ca_file_change_reloads() {
    let dir = std::env::temp_dir().join(format!("sophgate-reload-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_path = dir.join("ca.pem");
    let ca = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls/ca.pem"),
    )
    .unwrap();
    std::fs::write(&ca_path, &ca).unwrap();
    let mock = mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap();
    let config_path = dir.join("config.yml");
    std::fs::write(&config_path, base_yaml(mock.addr, "api_ca_file: ca.pem\n")).unwrap();
    let runtime = Runtime::new(Config::from_file(&config_path).unwrap()).unwrap();
    assert!(runtime
        .watched_files()
        .iter()
        .any(|f| f.ends_with("ca.pem")));
    let gateway = server::spawn(runtime.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let env = Env {
        mock,
        gateway,
        runtime,
    };
    // Watching from the moment `spawn` returns: the change right after it is seen.
    let watcher = sophgate::reload::watch::spawn(env.runtime.clone()).unwrap();
    write_atomic(&ca_path, "not a certificate\n");
    assert!(
        eventually(5.0, || env
            .runtime
            .last_error()
            .is_some_and(|e| e.contains("ca.pem")))
        .await,
        "a broken CA file was not noticed"
    );
    assert_eq!(env.runtime.current().number, 1);
    let ok = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    assert_eq!(ok.status(), 200);

    write_atomic(&ca_path, &ca);
    assert!(
        eventually(5.0, || env.runtime.current().number == 2).await,
        "the repaired CA file did not reload"
    );
    assert!(env.runtime.last_error().is_none());
    let ok = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    assert_eq!(ok.status(), 200);
    watcher.abort();
    std::fs::remove_dir_all(dir).ok();
}

/// A reload whose config fails (validation or build) keeps the old generation serving, and
/// the error says where in the config the problem is.
#[tokio::test]
async fn a_failed_reload_names_the_config_line_and_keeps_the_old_generation() {
    let (env, dir, plugin_path) = setup("located").await;
    let config_path = dir.join("config.yml");
    let good = std::fs::read_to_string(&config_path).unwrap();

    std::fs::write(
        &config_path,
        format!("{good}routes:\n  - models: [\"a*\"]\n    upstreams: [ghost]\n"),
    )
    .unwrap();
    let line = good.lines().count() + 3;
    let err = env.runtime.reload("test").unwrap_err();
    let sophgate::config::BuildError::Config(errs) = &err else {
        panic!("{err}");
    };
    assert_eq!(errs.0.len(), 1, "{err}");
    assert_eq!(errs.0[0].path, "routes[0].upstreams");
    assert_eq!(errs.0[0].line, Some(line));
    assert_eq!(env.runtime.current().number, 1);
    let shown = env.runtime.last_error().unwrap();
    assert!(
        shown.contains(&format!("config.yml:{line}: routes[0].upstreams")),
        "{shown}"
    );
    assert_eq!(version_seen(&env).await, "1");

    // A script that does not compile: the entry under `plugins:` and the script's position.
    std::fs::write(&config_path, &good).unwrap();
    std::fs::write(&plugin_path, "fn on_request(req) { let = ; }\n").unwrap();
    let err = env.runtime.reload("test").unwrap_err().to_string();
    let plugin_line = good
        .lines()
        .position(|l| l.contains("- path: version.rhai"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!(
            "config.yml:{plugin_line}: plugins[0]: version.rhai:1:"
        )),
        "{err}"
    );
    assert_eq!(env.runtime.current().number, 1);
    assert_eq!(version_seen(&env).await, "1");

    std::fs::write(&plugin_path, plugin(2)).unwrap();
    assert_eq!(env.runtime.reload("test").unwrap(), 2);
    assert_eq!(version_seen(&env).await, "2");
    std::fs::remove_dir_all(dir).ok();
}
