//! Every error the gateway makes itself has the right status and the OpenAI shape; upstream
//! errors pass through unchanged; bad input never stops the gateway serving.

use std::time::Duration;

use crate::common::*;
use sophgate::tools::mock::MockOptions;

#[tokio::test]
async fn bad_requests_are_400_and_the_gateway_keeps_serving() {
    let env = start("", MockOptions::default()).await;
    for body in [
        "{\"model\": ",
        "[1,2,3]",
        "",
        "nul",
        "{\"model\": \"\\ud800\"",
        "\"str\"",
    ] {
        let resp = post_chat(&env, CLIENT_KEY, body.to_string()).await;
        assert_eq!(error_code(resp, 400).await, "invalid_json", "body {body:?}");
    }
    // Garbage bytes, not even UTF-8.
    let resp = client()
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .body(vec![0xff, 0xfe, 0x00, 0x7b])
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp, 400).await, "invalid_json");
    assert_eq!(env.mock.stats.get(&env.mock.stats.requests), 0);
    let ok = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    assert_eq!(ok.status(), 200);
}

/// A chat body that is a JSON array is not a chat request: `[]` used to be forwarded as it
/// was, and `[1,2]` answered "expected a string" (serde reads a struct from an array).
#[tokio::test]
async fn a_json_array_chat_body_is_400_expected_an_object() {
    let env = start("", MockOptions::default()).await;
    for body in ["[]", "[1,2]", " [\"mock-model\", []]", "[{}]"] {
        let resp = post_chat(&env, CLIENT_KEY, body.to_string()).await;
        assert_eq!(resp.status(), 400, "body {body:?}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_json", "body {body:?}: {v}");
        assert_eq!(
            v["error"]["message"], "Invalid JSON body: expected a JSON object",
            "body {body:?}"
        );
    }
    assert_eq!(env.mock.stats.get(&env.mock.stats.requests), 0);
}

#[tokio::test]
async fn unknown_route_is_404_and_wrong_method_is_405() {
    let env = start("", MockOptions::default()).await;
    let c = client();
    let resp = c.get(env.url("/nope")).send().await.unwrap();
    assert_eq!(error_code(resp, 404).await, "unknown_route");
    let resp = c.get(env.url("/v1/../etc/passwd")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let resp = c
        .get(env.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp, 405).await, "method_not_allowed");
    let resp = c.post(env.url("/health")).send().await.unwrap();
    assert_eq!(error_code(resp, 405).await, "method_not_allowed");
}

/// `/v1/*` passthrough forwards only the API's methods (GET, POST, DELETE); others are 405 and
/// never reach the upstream.
#[tokio::test]
async fn passthrough_forwards_only_get_post_and_delete() {
    let env = start("", MockOptions::default()).await;
    let c = client();
    for method in ["PUT", "PATCH", "OPTIONS", "TRACE", "PROPFIND"] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = c
            .request(m, env.url("/v1/files/file-1"))
            .bearer_auth(CLIENT_KEY)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(resp, 405).await,
            "method_not_allowed",
            "{method}"
        );
    }
    assert_eq!(env.mock.stats.get(&env.mock.stats.requests), 0);
    let resp = c
        .post(env.url("/v1/embeddings"))
        .bearer_auth(CLIENT_KEY)
        .body(r#"{"model":"mock-model","input":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_ne!(resp.status(), 405);
    assert_eq!(env.mock.stats.get(&env.mock.stats.requests), 1);
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let env = start("limits:\n  max_body_bytes: 1024\n", MockOptions::default()).await;
    let big = format!("{{\"model\":\"m\",\"pad\":\"{}\"}}", "x".repeat(4096));
    // Declared length over the limit.
    let resp = post_chat(&env, CLIENT_KEY, big.clone()).await;
    assert_eq!(error_code(resp, 413).await, "request_too_large");
    // Chunked, no declared length.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
        .into_bytes()
        .chunks(512)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let resp = client()
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp, 413).await, "request_too_large");
    assert_eq!(env.mock.stats.get(&env.mock.stats.requests), 0);
}

#[tokio::test]
async fn a_body_sent_in_chunks_reaches_the_upstream_whole() {
    let env = start("", MockOptions::default()).await;
    let body = format!(
        "{{\"model\":\"mock-model\",\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        "y".repeat(3000)
    );
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body
        .as_bytes()
        .chunks(700)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let resp = client()
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = env.mock.stats.last_request().unwrap();
    let sent: serde_json::Value = serde_json::from_str(&body).unwrap();
    let got: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(got["messages"], sent["messages"]);
    assert_eq!(got["model"], "mock-model");
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    let env = start_with_dead_upstream().await;
    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    assert_eq!(error_code(resp, 502).await, "upstream_unreachable");
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let env = start(
        "limits:\n  first_byte_timeout: 0.3\n",
        MockOptions::default(),
    )
    .await;
    // Twice, each after an answered request on the same pooled connection (whose timer is
    // then moved, not made anew), and the connection after the timeout still serves.
    for _ in 0..2 {
        let ok = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
        assert_eq!(ok.status(), 200);
        let asked = std::time::Instant::now();
        let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-hang", false)).await;
        assert_eq!(error_code(resp, 504).await, "upstream_timeout");
        let waited = asked.elapsed();
        assert!(
            waited >= Duration::from_millis(280) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    }
}

#[tokio::test]
async fn upstream_errors_pass_through_unchanged() {
    let env = start("", MockOptions::default()).await;
    for (model, status) in [("mock-429", 429u16), ("mock-500", 500), ("mock-401", 401)] {
        let body = chat_body(model, false);
        let direct = client()
            .post(format!("{}/v1/chat/completions", env.mock.base_url()))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let direct_retry = direct.headers().get("retry-after").cloned();
        let direct = direct.bytes().await.unwrap();
        let resp = post_chat(&env, CLIENT_KEY, body).await;
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(resp.headers().get("retry-after").cloned(), direct_retry);
        assert!(resp.headers().contains_key("x-request-id"));
        assert_eq!(resp.bytes().await.unwrap(), direct, "{model}");
    }
}

#[tokio::test]
async fn request_ids_are_on_every_response_and_client_ids_are_kept() {
    let env = start("", MockOptions::default()).await;
    let resp = client()
        .get(env.url("/health"))
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers().get("x-request-id").unwrap(), "trace-abc-123");
    assert_eq!(resp.text().await.unwrap(), "{\"status\":\"ok\"}");
    let resp = client()
        .get(env.url("/health"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let id = resp
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(id.starts_with("req-"), "{id}");
    // The upstream gets the same id.
    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    let id = resp.headers().get("x-request-id").unwrap().clone();
    let seen = env.mock.stats.last_request().unwrap();
    assert_eq!(seen.headers.get("x-request-id").unwrap(), &id);
}

#[tokio::test]
async fn garbage_on_the_socket_does_not_stop_the_gateway() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = start(
        "limits:\n  header_read_timeout: 0.5\n",
        MockOptions::default(),
    )
    .await;
    for junk in [
        &b"\x00\x01\x02 not http\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET /",
    ] {
        let mut s = tokio::net::TcpStream::connect(env.gateway.addr)
            .await
            .unwrap();
        s.write_all(junk).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    }
    let ok = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    assert_eq!(ok.status(), 200);
}
