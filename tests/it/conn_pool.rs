//! The pooled plain-HTTP upstream connections: reused when they can be, never when they
//! cannot, and a connection the upstream closed while idle costs the client nothing.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;

#[tokio::test]
async fn keep_alive_upstream_connection_is_reused() {
    let up = upstream(Mode::KeepAlive).await;
    let env = gateway_for(&up, "").await;
    for i in 0..20 {
        ask(&env, i).await;
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 20);
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

/// A pooled connection keeps its first-byte timer between requests: one that expired while the
/// connection idled must not cut the next request short.
#[tokio::test]
async fn a_first_byte_timer_that_expired_while_idle_does_not_cut_the_next_request() {
    let up = upstream(Mode::KeepAlive).await;
    let env = gateway_for(&up, "limits:\n  first_byte_timeout: 0.2\n").await;
    for i in 0..3 {
        ask(&env, i).await;
        tokio::time::sleep(Duration::from_millis(350)).await;
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 3);
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrent_requests_each_get_a_connection_and_all_return_to_the_pool() {
    let up = upstream(Mode::KeepAlive).await;
    let env = Arc::new(gateway_for(&up, "").await);
    for round in 0..3 {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let env = env.clone();
                tokio::spawn(async move { ask(&env, round * 8 + i).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 24);
    // Eight at once need at most eight connections; later rounds reuse them.
    assert!(up.connections.load(Ordering::SeqCst) <= 8);
}

#[tokio::test]
async fn announced_close_is_respected() {
    let up = upstream(Mode::AnnouncedClose).await;
    let env = gateway_for(&up, "").await;
    for i in 0..10 {
        ask(&env, i).await;
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn connection_closed_by_the_upstream_while_idle_is_not_used() {
    let up = upstream(Mode::SilentClose).await;
    let env = gateway_for(&up, "").await;
    for i in 0..5 {
        ask(&env, i).await;
        // Long enough for the upstream's close to arrive.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 5);
    assert_eq!(up.connections.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn force_close_never_reuses() {
    let up = upstream(Mode::KeepAlive).await;
    let env = gateway_for(&up, "force_close: true").await;
    for i in 0..5 {
        ask(&env, i).await;
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn idle_connections_expire_after_keepalive_timeout() {
    let up = upstream(Mode::KeepAlive).await;
    let env = gateway_for(&up, "keepalive_timeout: 0.2").await;
    ask(&env, 0).await;
    ask(&env, 1).await;
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    ask(&env, 2).await;
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn expired_idle_connections_are_closed_without_new_traffic() {
    let up = upstream(Mode::KeepAlive).await;
    let env = gateway_for(&up, "keepalive_timeout: 0.2").await;
    ask(&env, 0).await;
    let open = up.open.clone();
    assert_eq!(open.load(Ordering::SeqCst), 1);
    // No request after this: only the sweeper can close it.
    assert!(eventually(3.0, || open.load(Ordering::SeqCst) == 0).await);
}

/// One chat request through the gateway: status and body text (`Err` if the body broke off).
async fn ask_raw(env: &Env) -> (u16, Result<String, String>) {
    let resp = post_chat(env, CLIENT_KEY, chat_body("m", false)).await;
    let status = resp.status().as_u16();
    (status, resp.text().await.map_err(|e| e.to_string()))
}

const COMPLETION: &str = r#"{"id":"x","object":"chat.completion","choices":[]}"#;

#[tokio::test]
async fn close_delimited_answer_is_relayed_whole_and_its_connection_not_reused() {
    let up = upstream(Mode::Raw(
        b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n{\"id\":\"x\",\"object\":\"chat.completion\",\"choices\":[]}",
        true,
    ))
    .await;
    let env = gateway_for(&up, "").await;
    for _ in 0..3 {
        assert_eq!(ask_raw(&env).await, (200, Ok(COMPLETION.to_owned())));
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn chunked_answer_after_an_interim_100_is_relayed_and_the_connection_reused() {
    let up = upstream(Mode::Raw(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
          transfer-encoding: chunked\r\n\r\n9;note=x\r\n{\"id\":\"x\"\r\n\
          29\r\n,\"object\":\"chat.completion\",\"choices\":[]}\r\n0\r\nx-trailer: t\r\n\r\n",
        false,
    ))
    .await;
    let env = gateway_for(&up, "").await;
    for _ in 0..3 {
        assert_eq!(ask_raw(&env).await, (200, Ok(COMPLETION.to_owned())));
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

/// An upstream that sends interim answers without end is cut off after 32 of them: 502, not a
/// request held until the first-byte timeout.
#[tokio::test]
async fn endless_interim_answers_are_a_502() {
    let endless: &'static str = Box::leak(
        format!(
            "{}HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}",
            "HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n".repeat(33)
        )
        .into_boxed_str(),
    );
    let up = upstream(Mode::Raw(endless.as_bytes(), true)).await;
    let env = gateway_for(&up, "").await;
    let (status, body) = ask_raw(&env).await;
    assert_eq!(status, 502);
    let v: serde_json::Value = serde_json::from_str(&body.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "upstream_error");
}

#[tokio::test]
async fn an_answer_that_is_not_http_is_a_502_and_the_gateway_keeps_serving() {
    let up = upstream(Mode::Raw(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", true)).await;
    let env = gateway_for(&up, "").await;
    for _ in 0..2 {
        let (status, body) = ask_raw(&env).await;
        assert_eq!(status, 502);
        let v: serde_json::Value = serde_json::from_str(&body.unwrap()).unwrap();
        assert_eq!(v["error"]["code"], "upstream_error");
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_cut_short_reaches_the_client_as_a_broken_body_not_a_complete_one() {
    let up = upstream(Mode::Raw(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"id\":\"x\"",
        true,
    ))
    .await;
    let env = gateway_for(&up, "").await;
    // Whether the head got out before the body broke off is hyper's business; a complete
    // looking answer is the one thing the client must not get.
    for _ in 0..2 {
        let sent = client()
            .post(env.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .body(chat_body("m", false))
            .send()
            .await;
        if let Ok(resp) = sent {
            let body = resp.text().await;
            assert!(
                body.is_err(),
                "a truncated body must not look complete: {body:?}"
            );
        }
    }
    // The broken connection is not reused: each request got a new one.
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn hop_by_hop_headers_stop_at_the_gateway_both_ways() {
    let env = start("", sophgate::tools::mock::MockOptions::default()).await;
    let resp = client()
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/json")
        .header("connection", "keep-alive, X-Hop")
        .header("x-hop", "1")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("x-kept", "2")
        .body(chat_body("mock-model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = env.mock.stats.last_request().unwrap();
    for gone in ["x-hop", "te", "proxy-authorization", "connection"] {
        assert!(
            seen.headers.get(gone).is_none(),
            "{gone} reached the upstream"
        );
    }
    assert_eq!(seen.headers.get("x-kept").unwrap(), "2");
    assert_eq!(
        seen.headers.get("authorization").unwrap(),
        &format!("Bearer {UPSTREAM_KEY}")
    );
    assert_eq!(
        seen.headers.get("host").unwrap(),
        &env.mock.addr.to_string()
    );

    let up = upstream(Mode::Raw(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: x-up-hop\r\n\
          x-up-hop: 1\r\nkeep-alive: timeout=5\r\nupgrade: h2c\r\nx-up-kept: 3\r\n\
          content-length: 2\r\n\r\n{}",
        false,
    ))
    .await;
    let env = gateway_for(&up, "").await;
    let resp = post_chat(&env, CLIENT_KEY, chat_body("m", false)).await;
    assert_eq!(resp.status(), 200);
    for gone in ["x-up-hop", "keep-alive", "upgrade"] {
        assert!(
            resp.headers().get(gone).is_none(),
            "{gone} reached the client"
        );
    }
    assert_eq!(resp.headers().get("x-up-kept").unwrap(), "3");
    assert_eq!(resp.text().await.unwrap(), "{}");
}

#[tokio::test]
async fn bytes_after_an_answer_retire_its_connection() {
    // Whatever follows a complete answer was never asked for: that connection is not trusted
    // with another request.
    let up = upstream(Mode::Raw(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\n",
        false,
    ))
    .await;
    let env = gateway_for(&up, "").await;
    for _ in 0..3 {
        assert_eq!(ask_raw(&env).await, (200, Ok("{}".to_owned())));
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 3);
}
