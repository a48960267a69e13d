//! The pooled plain-HTTP upstream connections: reused when they can be, never when they
//! cannot, and a connection the upstream closed while idle costs the client nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::raw_upstream::*;
use common::*;

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
