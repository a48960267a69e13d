//! Test doubles and helpers for sophgate's tests, kept out of the product library.
//!
//! - [`token_mock`]: an OAuth2 / generic token server (credential tests).
//! - [`raw_upstream`]: a raw-socket HTTP/1.1 upstream for tests that need exact bytes or
//!   connection counts.
//! - [`redis_server`]: a real `redis-server` on a free loopback port (shared-store tests).
//! - [`serve`]: serves a handler on a listener until its guard drops (any HTTP test double).
//! - [`free_port`], [`wait_for_listener`], [`eventually`]: loopback and polling helpers.
//!
//! Nothing here depends on sophgate, so the library's unit tests can use it too; helpers that
//! need sophgate's types live in `tests/it/common.rs`.

pub mod raw_upstream;
pub mod redis_server;
pub mod serve;
pub mod token_mock;

use std::time::{Duration, Instant};

/// A loopback port where nothing listens, for as long as the test binary runs: a socket is
/// bound to it and never listens, so a connection is refused and no other test's listener can
/// take the port (as one can a port [`free_port`] found free).
pub fn refused_port() -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind(([127, 0, 0, 1], 0).into())
        .expect("bind a loopback port");
    let port = socket.local_addr().expect("local address").port();
    // Bound for the rest of the process: what keeps the port refused.
    std::mem::forget(socket);
    port
}

/// A loopback port that was free a moment ago: for a child process to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a loopback port")
        .local_addr()
        .expect("local address")
        .port()
}

/// Waits (at most 10 s) until something accepts connections on the loopback port: a gateway
/// started as a child process is up.
pub async fn wait_for_listener(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "gateway did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `cond` holds, polling for up to `secs` seconds.
pub async fn eventually(secs: f64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}
