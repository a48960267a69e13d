//! Prometheus `GET /metrics`: after known traffic through the real binary (its registry is
//! its own, so the numbers are exact), the scrape's samples carry exactly the expected names,
//! labels and values; who may scrape (`metrics.allow`, the admin bearer), `metrics.enabled:
//! false` and `metrics.listen`.

use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::time::Duration;

use crate::common::*;
use sophgate::tools::mock::{self, MockOptions};

const ADMIN_KEY: &str = "adm-metrics-secret";

/// One sample line: its name, its labels and its value.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text exposition (comment lines skipped); panics on a line it cannot read.
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels {line}"));
                let mut labels = BTreeMap::new();
                let mut chars = body.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    assert_eq!(chars.next(), Some('"'), "{line}");
                    let mut val = String::new();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => val.push(chars.next().unwrap()),
                            '"' => break,
                            c => val.push(c),
                        }
                    }
                    if chars.peek() == Some(&',') {
                        chars.next();
                    }
                    labels.insert(key, val);
                }
                (name.to_owned(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The value of the sample with exactly these labels, if present.
pub(crate) fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

/// [`value`], 0 when absent (a counter never incremented).
fn count(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    value(samples, name, labels).unwrap_or(0.0)
}

pub(crate) async fn scrape(url: &str) -> Vec<Sample> {
    let resp = client().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "scrape {url}");
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ctype.contains("openmetrics-text"), "{ctype}");
    let text = resp.text().await.unwrap();
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    parse(&text)
}

struct Binary {
    child: Child,
    port: u16,
    metrics_port: u16,
    cfg: std::path::PathBuf,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_text(port: u16, metrics_port: u16, mock: std::net::SocketAddr, plugin: &str) -> String {
    format!(
        "listen: \"127.0.0.1:{port}\"\napi_host: \"http://{mock}\"\n\
         forward_chat_path: /v1/chat/completions\n\
         admin: {{ key: \"{ADMIN_KEY}\" }}\n\
         credentials:\n  good: {{ type: command, command: [echo, tok] }}\n  \
         bad: {{ type: command, command: [\"false\"] }}\n\
         api_keys:\n  \"sk-a\": {{ name: team-a }}\n  \"sk-r\": {{ name: team-r, rpm: 1 }}\n  \
         \"sk-c\": {{ name: team-c, credential: good }}\n  \"sk-d\": {{ name: team-d, credential: bad }}\n\
         plugins:\n  - path: {plugin}\n\
         metrics: {{ max_models: 3, listen: \"127.0.0.1:{metrics_port}\" }}\n"
    )
}

async fn start_binary(mock: std::net::SocketAddr) -> Binary {
    let (port, metrics_port) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("sophgate-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plugin = dir.join("boom.rhai");
    std::fs::write(
        &plugin,
        "fn on_request(req) {\n  if req.body.model == \"boom\" { no_such_function(); }\n}\n",
    )
    .unwrap();
    let cfg = dir.join("config.yml");
    std::fs::write(
        &cfg,
        config_text(port, metrics_port, mock, plugin.to_str().unwrap()),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sophgate"))
        .args(["serve", "-c", cfg.to_str().unwrap()])
        .env_remove("SOPHGATE_LOG")
        .spawn()
        .unwrap();
    wait_for_listener(port).await;
    wait_for_listener(metrics_port).await;
    Binary {
        child,
        port,
        metrics_port,
        cfg,
    }
}

fn chat(model: &str, stream: bool, include_usage: bool) -> String {
    let mut body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": stream,
    });
    if include_usage {
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    body.to_string()
}

/// `usage` of the last event carrying one.
fn stream_usage(events: &str) -> Option<(f64, f64)> {
    events
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            let u = v.get("usage").filter(|u| u.is_object())?.clone();
            Some((
                u["prompt_tokens"].as_f64().unwrap(),
                u["completion_tokens"].as_f64().unwrap(),
            ))
        })
        .next()
}

#[tokio::test]
async fn known_traffic_gives_exact_samples() {
    let opts = MockOptions {
        itl: Duration::from_millis(2),
        ..MockOptions::default()
    };
    let mock = mock::spawn("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap();
    let bin = start_binary(mock.addr).await;
    let base = format!("http://127.0.0.1:{}", bin.port);
    let metrics_url = format!("http://127.0.0.1:{}/metrics", bin.metrics_port);
    let post = |key: &'static str, body: String| {
        client()
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    // Before any traffic: the generation, no requests, the process metrics.
    let s = scrape(&metrics_url).await;
    assert_eq!(value(&s, "sophgate_config_generation", &[]), Some(1.0));
    assert_eq!(
        value(&s, "sophgate_log_dropped_lines_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(&s, "sophgate_reloads_total", &[("result", "ok")]),
        Some(0.0)
    );
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(value(&s, name, &[]).unwrap() > 0.0, "{name}");
    }
    assert!(value(&s, "process_cpu_seconds_total", &[]).is_some());

    // The three models that keep their own label (max_models: 3), in this order.
    let plain = post("sk-a", chat("m-plain", false, false)).await.unwrap();
    assert_eq!(plain.status(), 200);
    let plain: serde_json::Value = plain.json().await.unwrap();
    let (p_in, p_out) = (
        plain["usage"]["prompt_tokens"].as_f64().unwrap(),
        plain["usage"]["completion_tokens"].as_f64().unwrap(),
    );
    let streamed = post("sk-a", chat("m-stream", true, true)).await.unwrap();
    assert_eq!(streamed.status(), 200);
    let events = streamed.text().await.unwrap();
    let (s_in, s_out) = stream_usage(&events).expect("the client asked for usage");
    let injected = post("sk-a", chat("m-inject", true, false)).await.unwrap();
    let events = injected.text().await.unwrap();
    assert!(
        stream_usage(&events).is_none(),
        "usage the gateway asked for is stripped: {events}"
    );
    assert!(events.trim_end().ends_with("data: [DONE]"), "{events}");

    // A 401, a 404, a rate-limited request, a failed upstream, a broken stream, a script error.
    assert_eq!(
        post("sk-nope", chat("m-plain", false, false))
            .await
            .unwrap()
            .status(),
        401
    );
    let nf = client().get(format!("{base}/nope")).send().await.unwrap();
    assert_eq!(nf.status(), 404);
    assert_eq!(
        post("sk-r", chat("m-plain", false, false))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        post("sk-r", chat("m-plain", false, false))
            .await
            .unwrap()
            .status(),
        429
    );
    assert_eq!(
        post("sk-a", chat("mock-500", false, false))
            .await
            .unwrap()
            .status(),
        500
    );
    let dropped = post("sk-a", chat("mock-drop", true, false)).await.unwrap();
    assert_eq!(dropped.status(), 200);
    let events = dropped.text().await.unwrap_or_default();
    assert!(events.contains("upstream_stream_broken"), "{events}");
    assert_eq!(
        post("sk-a", chat("boom", false, false))
            .await
            .unwrap()
            .status(),
        500
    );
    // A token fetched by a command that works, and one that fails.
    let fetched = post("sk-c", chat("m-plain", false, false)).await.unwrap();
    assert_eq!(fetched.status(), 200);
    let unfetched = post("sk-d", chat("m-plain", false, false)).await.unwrap();
    assert_eq!(unfetched.status(), 502);
    // /metrics on the main port: served on metrics.listen only.
    let main = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(main.status(), 404);

    // A stream in flight counts until it ends.
    let slow = tokio::spawn(post("sk-a", chat("mock-slow", true, false)));
    let mut seen = false;
    for _ in 0..100 {
        let s = scrape(&metrics_url).await;
        if value(&s, "sophgate_inflight_requests", &[("route", "chat")]) == Some(1.0) {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen, "the slow stream is in flight");
    let _ = slow.await.unwrap().unwrap().text().await;

    let s = scrape(&metrics_url).await;
    let req = |route: &str, key: &str, model: &str, status: &str| {
        count(
            &s,
            "sophgate_requests_total",
            &[
                ("route", route),
                ("key", key),
                ("model", model),
                ("status", status),
            ],
        )
    };
    assert_eq!(req("chat", "team-a", "m-plain", "200"), 1.0);
    assert_eq!(req("chat", "team-a", "m-stream", "200"), 1.0);
    assert_eq!(req("chat", "team-a", "m-inject", "200"), 1.0);
    assert_eq!(req("chat", "", "", "401"), 1.0);
    assert_eq!(
        req("other", "", "", "404"),
        2.0,
        "GET /nope and /metrics on the main port"
    );
    assert_eq!(req("chat", "team-r", "m-plain", "200"), 1.0);
    assert_eq!(req("chat", "team-r", "m-plain", "429"), 1.0);
    assert_eq!(req("chat", "team-c", "m-plain", "200"), 1.0);
    assert_eq!(req("chat", "team-d", "m-plain", "502"), 1.0);
    // mock-500, boom: past max_models, folded.
    assert_eq!(req("chat", "team-a", "other", "500"), 2.0);
    // mock-drop and mock-slow: 200 streams.
    assert_eq!(req("chat", "team-a", "other", "200"), 2.0);
    let total: f64 = s
        .iter()
        .filter(|x| x.name == "sophgate_requests_total")
        .map(|x| x.value)
        .sum();
    assert_eq!(total, 14.0);
    let fetches = |credential: &str, result: &str| {
        count(
            &s,
            "sophgate_credential_fetches_total",
            &[("credential", credential), ("result", result)],
        )
    };
    assert_eq!(fetches("good", "ok"), 1.0);
    assert_eq!(fetches("good", "error"), 0.0);
    assert!(fetches("bad", "error") >= 1.0);
    assert_eq!(fetches("bad", "ok"), 0.0);

    let rl = |key: &str, limit: &str| {
        count(
            &s,
            "sophgate_rate_limited_total",
            &[("key", key), ("limit", limit)],
        )
    };
    assert_eq!(rl("team-r", "rpm"), 1.0);

    let tokens = |model: &str, kind: &str| {
        count(
            &s,
            "sophgate_tokens_total",
            &[("key", "team-a"), ("model", model), ("type", kind)],
        )
    };
    assert_eq!(
        (tokens("m-plain", "input"), tokens("m-plain", "output")),
        (p_in, p_out)
    );
    assert_eq!(
        (tokens("m-stream", "input"), tokens("m-stream", "output")),
        (s_in, s_out)
    );
    assert!(tokens("m-inject", "input") > 0.0 && tokens("m-inject", "output") > 0.0);

    let att = |outcome: &str| {
        count(
            &s,
            "sophgate_upstream_attempts_total",
            &[("upstream", "default"), ("outcome", outcome)],
        )
    };
    // m-plain x3, m-stream, m-inject, mock-slow; the 429, the script error and the failed
    // token fetch never left.
    assert_eq!(att("ok"), 6.0);
    assert_eq!(att("http_5xx"), 1.0);
    assert_eq!(att("broken"), 1.0);

    let h = |name: &str, labels: &[(&str, &str)]| count(&s, name, labels);
    let mu = [("model", "m-stream"), ("upstream", "default")];
    assert_eq!(h("sophgate_time_to_first_token_seconds_count", &mu), 1.0);
    let gaps = h("sophgate_time_per_output_token_seconds_count", &mu);
    assert!(gaps >= 2.0, "token gaps of a stream: {gaps}");
    let gap_sum = h("sophgate_time_per_output_token_seconds_sum", &mu);
    assert!(
        gap_sum >= 0.001 * gaps,
        "the mock waits 2 ms between tokens: {gap_sum}"
    );
    assert_eq!(
        h(
            "sophgate_time_to_first_token_seconds_count",
            &[("model", "m-plain"), ("upstream", "default")]
        ),
        3.0
    );
    assert_eq!(
        h(
            "sophgate_time_to_first_token_seconds_bucket",
            &[
                ("model", "m-plain"),
                ("upstream", "default"),
                ("le", "+Inf")
            ]
        ),
        3.0
    );
    // mock-drop's first token comes at once, mock-slow's after 2 s; mock-500 was no answer.
    let other = [("model", "other"), ("upstream", "default")];
    assert_eq!(h("sophgate_time_to_first_token_seconds_count", &other), 2.0);
    assert_eq!(
        h(
            "sophgate_time_to_first_token_seconds_bucket",
            &[("model", "other"), ("upstream", "default"), ("le", "1.0")]
        ),
        1.0
    );
    let dur = |model: &str| {
        h(
            "sophgate_request_duration_seconds_count",
            &[("route", "chat"), ("model", model)],
        )
    };
    assert_eq!(dur("m-plain"), 5.0);
    assert_eq!(dur("other"), 4.0);
    assert_eq!(
        value(&s, "sophgate_inflight_requests", &[("route", "chat")]),
        Some(0.0)
    );
    let script_errors: Vec<&Sample> = s
        .iter()
        .filter(|x| x.name == "sophgate_script_errors_total")
        .collect();
    assert_eq!(script_errors.len(), 1, "{script_errors:?}");
    assert_eq!(script_errors[0].labels["hook"], "on_request");
    assert!(script_errors[0].labels["plugin"].ends_with("boom.rhai"));
    assert_eq!(script_errors[0].value, 1.0);
    // No key, no admin key, in any label.
    for x in &s {
        for v in x.labels.values() {
            assert!(!v.contains("sk-") && !v.contains(ADMIN_KEY), "{x:?}");
        }
    }

    // Reloads: one that works, one that fails; the generation follows the one that worked.
    let reload = || {
        client()
            .post(format!("{base}/admin/reload"))
            .bearer_auth(ADMIN_KEY)
            .send()
    };
    assert_eq!(reload().await.unwrap().status(), 200);
    let good = std::fs::read_to_string(&bin.cfg).unwrap();
    std::fs::write(&bin.cfg, format!("{good}\nnot_a_key: 1\n")).unwrap();
    assert_eq!(reload().await.unwrap().status(), 422);
    std::fs::write(&bin.cfg, good).unwrap();
    let s = scrape(&metrics_url).await;
    assert_eq!(
        value(&s, "sophgate_reloads_total", &[("result", "ok")]),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "sophgate_reloads_total", &[("result", "error")]),
        Some(1.0)
    );
    assert_eq!(value(&s, "sophgate_config_generation", &[]), Some(2.0));
    assert_eq!(
        count(
            &s,
            "sophgate_requests_total",
            &[
                ("route", "admin"),
                ("key", ""),
                ("model", ""),
                ("status", "422")
            ]
        ),
        1.0
    );
    // Counters survive the reload.
    assert_eq!(
        count(
            &s,
            "sophgate_requests_total",
            &[
                ("route", "chat"),
                ("key", "team-a"),
                ("model", "m-plain"),
                ("status", "200")
            ]
        ),
        1.0
    );
}

fn metrics_yaml(metrics: &str) -> String {
    format!("admin: {{ key: \"{ADMIN_KEY}\" }}\nmetrics: {metrics}\n")
}

#[tokio::test]
async fn loopback_may_scrape_by_default() {
    let env = start(&metrics_yaml("{}"), MockOptions::default()).await;
    let resp = client().get(env.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("# TYPE sophgate_requests counter"), "{text}");
    assert!(text.contains("# TYPE sophgate_request_duration_seconds histogram"));
}

#[tokio::test]
async fn a_client_outside_allow_gets_404_unless_it_has_the_admin_key() {
    let env = start(
        &metrics_yaml("{ allow: [10.1.2.0/24] }"),
        MockOptions::default(),
    )
    .await;
    let resp = client().get(env.url("/metrics")).send().await.unwrap();
    assert_eq!(error_code(resp, 404).await, "unknown_route");
    let wrong = client()
        .get(env.url("/metrics"))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 404);
    let admin = client()
        .get(env.url("/metrics"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
    assert!(admin
        .text()
        .await
        .unwrap()
        .contains("sophgate_config_generation"));
}

#[tokio::test]
async fn metrics_off_is_a_404_for_everyone() {
    let env = start(&metrics_yaml("{ enabled: false }"), MockOptions::default()).await;
    let resp = client()
        .get(env.url("/metrics"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    // The gateway serves as before.
    let ok = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    assert_eq!(ok.status(), 200);
}

#[test]
fn bad_metrics_config_names_its_path() {
    for (yaml, path) in [
        ("metrics: { allow: [not-an-ip] }", "metrics.allow[0]"),
        ("metrics: { listen: nowhere }", "metrics.listen"),
        ("metrics: { max_models: 0 }", "metrics.max_models"),
        ("metrics: { enabld: true }", "enabld"),
    ] {
        let yaml = base_yaml("127.0.0.1:9".parse().unwrap(), yaml);
        let err = sophgate::config::Config::from_yaml(&yaml, &|_| None)
            .err()
            .unwrap_or_else(|| panic!("{yaml} must fail"))
            .to_string();
        assert!(err.contains(path), "{path} in {err}");
    }
}

/// Every metric name the dashboard queries is one the gateway exposes.
#[tokio::test]
async fn the_grafana_dashboard_queries_exposed_names() {
    let env = start(&metrics_yaml("{}"), MockOptions::default()).await;
    let text = client()
        .get(env.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut exposed = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        match kind {
            "counter" => {
                exposed.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    exposed.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                exposed.insert(name.to_owned());
            }
        }
    }
    let dashboard =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("sophgate_") || word.starts_with("process_") {
                    assert!(exposed.contains(word), "{word} (in {expr}) is not exposed");
                    queried += 1;
                }
            }
        }
    }
    assert!(queried >= 15, "the dashboard queries the metrics");
}
