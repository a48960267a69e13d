//! Budgets per key: a token or cost budget per calendar period, charged from the upstream's
//! real usage; at or over it, 429 `budget_exceeded` with `Retry-After` to the period's end;
//! a request in flight when it runs out finishes; `?period=current`; kept across reloads.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;
use crate::usage::{admin_usage, mock_usage_of_last, start_file, usage_until};
use futures_util::StreamExt;
use sophgate::config::Config;
use sophgate::tools::mock::MockOptions;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn retry_after(resp: &reqwest::Response) -> u64 {
    resp.headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_token_budget_runs_out_after_the_stream_that_crossed_it_finishes() {
    let opts = MockOptions {
        tokens: 5,
        itl: Duration::from_millis(60),
        ..MockOptions::default()
    };
    // Each request reports ~20 prompt + 5 completion tokens: the first two fit in 40.
    let keys =
        "  \"sk-budget-tokens\": { name: budget-tokens, budget: { tokens: 40, period: day } }\n";
    let (env, _) = start_file("tokens", keys, "", opts).await;
    let key = "sk-budget-tokens";

    // A stream starts with the budget untouched ...
    let stream = post_chat(&env, key, chat_body("mock-model", true)).await;
    assert_eq!(stream.status(), 200);
    let (s_in, s_out) = mock_usage_of_last(&env, 5);
    let mut body = stream.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));

    // ... meanwhile a plain request is charged ...
    let resp = post_chat(&env, key, chat_body("mock-model", false)).await;
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    let plain = v["usage"]["total_tokens"].as_u64().unwrap();
    assert!(plain < 40, "{plain}");

    // ... and the stream, now over the budget, still finishes whole.
    let mut text = String::from_utf8(first.to_vec()).unwrap();
    while let Some(chunk) = body.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(!text.contains("budget_exceeded"), "{text}");
    let used = plain + s_in + s_out;
    assert!(
        used >= 40,
        "the test needs the stream to cross the budget: {used}"
    );

    // The next request is refused before it reaches the upstream.
    let upstream_before = env.mock.stats.get(&env.mock.stats.requests);
    let resp = post_chat(&env, key, chat_body("mock-model", false)).await;
    assert_eq!(resp.status(), 429);
    let wait = retry_after(&resp);
    let to_midnight = 86_400 - now_secs() % 86_400;
    assert!(
        wait.abs_diff(to_midnight) <= 5 && wait >= 1,
        "Retry-After {wait}, midnight UTC in {to_midnight}"
    );
    assert_eq!(error_code(resp, 429).await, "budget_exceeded");
    assert_eq!(
        env.mock.stats.get(&env.mock.stats.requests),
        upstream_before
    );

    // The period's numbers.
    let v = usage_until(&env, "?period=current", |v| {
        v["keys"]["budget-tokens"]["models"]["mock-model"]["rate_limited"] == 1
    })
    .await;
    let b = &v["keys"]["budget-tokens"];
    assert_eq!(b["period"], "day", "{v}");
    assert_eq!(b["unit"], "tokens");
    assert_eq!(b["limit"], 40);
    assert_eq!(b["used_tokens"], used, "{v}");
    assert_eq!(b["remaining"], 0);
    assert_eq!(b["exhausted"], true);
    let day = now_secs() / 86_400 * 86_400;
    let start = sophgate::usage::period::rfc3339(day as i64);
    let end = sophgate::usage::period::rfc3339((day + 86_400) as i64);
    if b["start"] != start.as_str() {
        // The test ran across midnight UTC: the period rolled over.
        return;
    }
    assert_eq!(b["end"], end.as_str());
    let m = &b["models"]["mock-model"];
    assert_eq!(m["requests"], 3, "{v}");
    assert_eq!(
        m["input_tokens"].as_u64().unwrap() + m["output_tokens"].as_u64().unwrap(),
        used
    );
}

#[tokio::test]
async fn a_cost_budget_is_priced_by_model_glob() {
    let opts = MockOptions {
        tokens: 5,
        ..MockOptions::default()
    };
    // 1 per input token, 2 per output token: a request costs ~20 + 10.
    let keys = "  \"sk-budget-cost\": { name: budget-cost, budget: { cost: 45, period: month } }\n  \"sk-budget-free\": { name: budget-free }\n";
    let pricing = "pricing:\n  \"mock-*\": { input: 1000000, output: 2000000 }\n  \"*\": { input: 0, output: 0 }\n";
    let (env, _) = start_file("cost", keys, pricing, opts).await;
    let key = "sk-budget-cost";
    let mut cost = 0.0;
    let mut requests = 0;
    while cost < 45.0 {
        let resp = post_chat(&env, key, chat_body("mock-model", false)).await;
        assert_eq!(resp.status(), 200, "after a cost of {cost}");
        let v: serde_json::Value = resp.json().await.unwrap();
        let u = &v["usage"];
        cost +=
            u["prompt_tokens"].as_f64().unwrap() + 2.0 * u["completion_tokens"].as_f64().unwrap();
        requests += 1;
    }
    assert_eq!(requests, 2, "~30 per request against 45");
    let resp = post_chat(&env, key, chat_body("mock-model", false)).await;
    assert_eq!(resp.status(), 429);
    let wait = retry_after(&resp);
    assert!((1..=31 * 86_400).contains(&wait), "{wait}");
    assert_eq!(error_code(resp, 429).await, "budget_exceeded");
    // Another key is not affected.
    let resp = post_chat(&env, "sk-budget-free", chat_body("mock-model", false)).await;
    assert_eq!(resp.status(), 200);

    let v = admin_usage(&env, "?period=current").await;
    let b = &v["keys"]["budget-cost"];
    assert_eq!(b["period"], "month");
    assert_eq!(b["unit"], "cost");
    assert!(
        (b["used_cost"].as_f64().unwrap() - cost).abs() < 1e-9,
        "{v} vs {cost}"
    );
    assert_eq!(b["limit"], 45.0);
    assert_eq!(b["remaining"], 0.0);
    assert!(
        b["start"].as_str().unwrap().ends_with("-01T00:00:00Z"),
        "{v}"
    );
    assert!(b["end"].as_str().unwrap().ends_with("-01T00:00:00Z"), "{v}");
    // Keys without a budget are not in the period view.
    assert!(v["keys"].get("budget-free").is_none(), "{v}");
}

#[tokio::test]
async fn a_cost_budget_refuses_a_model_without_a_price() {
    let keys =
        "  \"sk-budget-unpriced\": { name: budget-unpriced, budget: { cost: 5, period: week } }\n";
    let pricing = "pricing:\n  \"mock-model\": { input: 1, output: 1 }\n";
    let (env, _) = start_file("unpriced", keys, pricing, MockOptions::default()).await;
    let resp = post_chat(&env, "sk-budget-unpriced", chat_body("gpt-unpriced", false)).await;
    assert_eq!(error_code(resp, 403).await, "model_not_priced");
    let resp = post_chat(&env, "sk-budget-unpriced", chat_body("mock-model", false)).await;
    assert_eq!(resp.status(), 200);
    let v = admin_usage(&env, "?period=current").await;
    assert_eq!(v["keys"]["budget-unpriced"]["period"], "week");
}

#[tokio::test]
async fn budgets_survive_a_reload() {
    let keys =
        "  \"sk-budget-reload\": { name: budget-reload, budget: { tokens: 10, period: week } }\n";
    let (env, path) = start_file("reload", keys, "", MockOptions::default()).await;
    let key = "sk-budget-reload";
    assert_eq!(
        post_chat(&env, key, chat_body("mock-model", false))
            .await
            .status(),
        200
    );
    let resp = post_chat(&env, key, chat_body("mock-model", false)).await;
    assert_eq!(error_code(resp, 429).await, "budget_exceeded");
    // A reload that keeps the budget keeps its spend.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}\nlog_level: info\n")).unwrap();
    assert_eq!(env.runtime.reload("test").unwrap(), 2);
    let resp = post_chat(&env, key, chat_body("mock-model", false)).await;
    assert_eq!(error_code(resp, 429).await, "budget_exceeded");
    // Raising the limit lets the key through again, counting what it used.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("tokens: 10,", "tokens: 100000,");
    std::fs::write(&path, text).unwrap();
    assert_eq!(env.runtime.reload("test").unwrap(), 3);
    assert_eq!(
        post_chat(&env, key, chat_body("mock-model", false))
            .await
            .status(),
        200
    );
    let v = admin_usage(&env, "?period=current").await;
    let b = &v["keys"]["budget-reload"];
    assert_eq!(b["limit"], 100000);
    assert_eq!(b["models"]["mock-model"]["requests"], 4, "{v}");
    assert_eq!(b["models"]["mock-model"]["rate_limited"], 2, "{v}");
}

fn config_error(yaml: &str) -> String {
    let full = format!("api_host: \"http://127.0.0.1:9\"\n{yaml}");
    Config::from_yaml(&full, &|_| None).unwrap_err().to_string()
}

#[test]
fn budget_config_errors_name_the_yaml_path() {
    let e = config_error(
        "api_keys:\n  \"sk-a\": { name: alice, budget: { tokens: 5, period: year } }\n",
    );
    // Located by line; named by the key's hash label, as every key error (never the key).
    assert!(e.contains("<inline>:3: api_keys.key-"), "{e}");
    assert!(e.contains(".budget.period: unknown period `year`"), "{e}");
    assert!(!e.contains("sk-a"), "the key leaked: {e}");
    let e =
        config_error("api_keys:\n  \"sk-a\": { name: alice, budget: { cost: 5, period: day } }\n");
    assert!(
        e.contains(".budget.cost: a cost budget needs prices"),
        "{e}"
    );
    let e = config_error(
        "api_keys:\n  \"sk-a\": { name: alice, budget: { tokens: 5, cost: 1, period: day } }\n",
    );
    assert!(e.contains(".budget: a budget has exactly one of"), "{e}");
    let e = config_error("api_keys:\n  \"sk-a\": { name: alice, budget: { tokens: 5 } }\n");
    assert!(e.contains(".budget.period: a budget needs a period"), "{e}");
    let e = config_error("api_keys:\n  \"sk-a\": { name: alice, budget: { tokens: 5, period: day, currency: eur } }\n");
    assert!(e.contains("currency"), "{e}");
    let e = config_error("pricing:\n  \"m-*\": { input: -1, output: 2 }\n");
    assert!(e.contains("pricing.m-*.input"), "{e}");
    let e = config_error("pricing:\n  \"m-*\": { input: 1 }\n");
    assert!(e.contains("output"), "{e}");
    // The valid forms.
    let ok = "api_host: \"http://127.0.0.1:9\"\napi_keys:\n  \"sk-a\": { name: alice, budget: { tokens: 2000000, period: month } }\n  \"sk-b\": { name: bob, budget: { cost: 25.0, period: day } }\npricing:\n  \"DeepSeek-*\": { input: 2.0, output: 8.0 }\n";
    let cfg = Config::from_yaml(ok, &|_| None).unwrap();
    assert!(cfg.keys.iter().all(|k| k.budget.is_some()));
    assert!(cfg.pricing.price("DeepSeek-R1").is_some());
}
