//! Credential providers against the real token mock over loopback sockets.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;

use super::*;
use crate::config::raw_credentials::{validate_credential, RawCredential};
use testkit::token_mock::{self, TokenMock, TokenMockOptions};

const SECRET: &str = "cs-very-secret-value";

async fn mock(ttl: Duration) -> TokenMock {
    let opts = TokenMockOptions {
        ttl,
        client_id: "gw".into(),
        client_secret: SECRET.into(),
    };
    token_mock::spawn("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap()
}

/// Parses one `credentials:` entry through the real schema and validation.
fn spec(yaml: &str) -> CredentialSpec {
    let raw: RawCredential = serde_yaml::from_str(yaml).unwrap();
    validate_credential(raw).unwrap()
}

fn one(name: &str, yaml: &str) -> Arc<Credential> {
    let set = Credentials::build(vec![(name.to_owned(), spec(yaml))]).unwrap();
    set.get(name).unwrap()
}

fn oauth2(m: &TokenMock, extra: &str) -> String {
    format!(
        "{{type: oauth2, token_url: '{}', client_id: gw, client_secret: '{SECRET}' {extra}}}",
        m.oauth2_url()
    )
}

fn auth(lease: &Lease) -> &str {
    lease.authorization.to_str().unwrap()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// === fetched kinds ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight_on_a_cold_cache() {
    let m = mock(Duration::from_secs(60)).await;
    m.state.set_delay(Duration::from_millis(200));
    let c = one("corp", &oauth2(&m, ""));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.lease().await.map(|l| auth(&l).to_owned()) })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "Bearer tok-1");
    }
    assert_eq!(m.state.fetches(), 1);
    assert_eq!(c.fetch_count(), 1);
    assert!(c.is_fetched());
    assert_eq!(c.kind(), CredentialKind::OAuth2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_ahead_of_expiry_never_makes_a_request_wait() {
    let m = mock(Duration::from_secs(2)).await;
    let c = one("corp", &oauth2(&m, ", refresh_before: 1"));
    assert_eq!(auth(&c.lease().await.unwrap()), "Bearer tok-1");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // A slow token server: a lease that waited for the refresh would take 500 ms.
    m.state.set_delay(Duration::from_millis(500));
    for _ in 0..5 {
        let started = Instant::now();
        let lease = c.lease().await.unwrap();
        let took = started.elapsed();
        assert_eq!(auth(&lease), "Bearer tok-1");
        assert!(took < Duration::from_millis(250), "lease waited {took:?}");
    }
    wait_for("the background refresh", || c.fetch_count() == 2).await;
    assert_eq!(m.state.fetches(), 2, "one refresh, not one per lease");
    let started = Instant::now();
    assert_eq!(auth(&c.lease().await.unwrap()), "Bearer tok-2");
    assert!(started.elapsed() < Duration::from_millis(250));
    assert!(m.state.is_valid("tok-2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_refetches_once() {
    let m = mock(Duration::from_secs(60)).await;
    let c = one("corp", &oauth2(&m, ""));
    let first = c.lease().await.unwrap();
    assert!(m.state.is_valid(auth(&first)));
    m.state.revoke_all();
    assert!(!m.state.is_valid(auth(&first)));
    // Several requests saw the 401 with the same token: one refetch in total.
    for _ in 0..3 {
        c.invalidate(&first);
    }
    m.state.set_delay(Duration::from_millis(100));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { auth(&c.lease().await.unwrap()).to_owned() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), "Bearer tok-2");
    }
    assert_eq!(m.state.fetches(), 2);
    // A late 401 with the old token must not drop the new one.
    c.invalidate(&first);
    let again = c.lease().await.unwrap();
    assert_eq!(auth(&again), "Bearer tok-2");
    assert!(m.state.is_valid(auth(&again)));
    assert_eq!(m.state.fetches(), 2);
}

#[tokio::test]
async fn failing_source_keeps_serving_a_valid_token() {
    let m = mock(Duration::from_secs(4)).await;
    let c = one("corp", &oauth2(&m, ", refresh_before: 3"));
    assert_eq!(auth(&c.lease().await.unwrap()), "Bearer tok-1");
    // Refresh point: max(4 - 3, 4 / 2) = 2 s.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    m.state.set_failing(true);
    assert_eq!(auth(&c.lease().await.unwrap()), "Bearer tok-1");
    wait_for("the failed refresh", || c.fetch_count() == 2).await;
    for _ in 0..5 {
        assert_eq!(auth(&c.lease().await.unwrap()), "Bearer tok-1");
    }
    // Backoff: the failing source is not asked again on every lease.
    assert_eq!(m.state.fetches(), 2);
    m.state.set_failing(false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(auth(&c.lease().await.unwrap()), "Bearer tok-1");
    wait_for("the next refresh", || c.fetch_count() == 3).await;
    assert_eq!(auth(&c.lease().await.unwrap()), "Bearer tok-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_source_with_nothing_cached_is_unavailable() {
    let m = mock(Duration::from_secs(60)).await;
    m.state.set_failing(true);
    m.state.set_delay(Duration::from_millis(150));
    let c = one("corp", &oauth2(&m, ""));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.lease().await.err() })
        })
        .collect();
    for t in tasks {
        assert_eq!(
            t.await.unwrap(),
            Some(CredentialError::Unavailable {
                credential: "corp".into()
            })
        );
    }
    assert_eq!(m.state.fetches(), 1, "queued requests share the failure");
    let err = c.lease().await.unwrap_err().into_gateway_error();
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(err.code, "credential_unavailable");
    assert!(err.message.contains("`corp`"), "{}", err.message);
    assert!(!err.message.contains(SECRET));
    assert_eq!(m.state.fetches(), 2, "a later request tries again");
    // Nothing cached: the first request after the source recovers gets a token.
    m.state.set_failing(false);
    m.state.set_delay(Duration::ZERO);
    assert_eq!(auth(&c.lease().await.unwrap()), "Bearer tok-1");
    assert_eq!(m.state.fetches(), 3);
}

#[tokio::test]
async fn oauth2_auth_styles() {
    let m = mock(Duration::from_secs(60)).await;

    let basic = one(
        "basic",
        &oauth2(&m, ", scope: llm, audience: 'https://api'"),
    );
    let lease = basic.lease().await.unwrap();
    assert_eq!(auth(&lease), "Bearer tok-1");
    assert!(lease.authorization.is_sensitive());
    let req = m.state.last_request().unwrap();
    let body = String::from_utf8(req.body.to_vec()).unwrap();
    assert!(req.headers["authorization"]
        .to_str()
        .unwrap()
        .starts_with("Basic "));
    assert!(body.contains("grant_type=client_credentials"), "{body}");
    assert!(body.contains("scope=llm"), "{body}");
    assert!(body.contains("audience=https%3A%2F%2Fapi"), "{body}");
    assert!(!body.contains("client_secret"), "{body}");

    let in_body = one("body", &oauth2(&m, ", auth_style: body"));
    assert_eq!(auth(&in_body.lease().await.unwrap()), "Bearer tok-2");
    let req = m.state.last_request().unwrap();
    let body = String::from_utf8(req.body.to_vec()).unwrap();
    assert!(req.headers.get("authorization").is_none());
    assert!(body.contains(&format!("client_secret={SECRET}")), "{body}");
    assert!(body.contains("client_id=gw"), "{body}");

    let wrong = one(
        "wrong",
        &format!(
            "{{type: oauth2, token_url: '{}', client_id: gw, client_secret: nope}}",
            m.oauth2_url()
        ),
    );
    assert!(matches!(
        wrong.lease().await,
        Err(CredentialError::Unavailable { credential }) if credential == "wrong"
    ));
}

#[tokio::test]
async fn token_endpoint_with_json_body_pointers_and_prefix() {
    let m = mock(Duration::from_secs(90)).await;
    let c = one(
        "vendor",
        &format!(
            "{{type: token_endpoint, url: '{}', method: POST,
               headers: {{x-api-key: hdr-secret}},
               json: {{ak: ak-secret, sk: sk-secret, n: 1}},
               token_pointer: /data/token, expires_in_pointer: /data/expires_in,
               prefix: 'Token '}}",
            m.token_url()
        ),
    );
    assert_eq!(c.kind(), CredentialKind::TokenEndpoint);
    assert_eq!(auth(&c.lease().await.unwrap()), "Token tok-1");
    let req = m.state.last_request().unwrap();
    assert_eq!(req.headers["content-type"], "application/json");
    assert_eq!(req.headers["x-api-key"], "hdr-secret");
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"ak": "ak-secret", "sk": "sk-secret", "n": 1})
    );

    let form = one(
        "form",
        &format!(
            "{{type: token_endpoint, url: '{}', form: {{user: u1, pass: 'p w'}},
               token_pointer: /data/token}}",
            m.token_url()
        ),
    );
    assert_eq!(auth(&form.lease().await.unwrap()), "Bearer tok-2");
    let req = m.state.last_request().unwrap();
    assert_eq!(
        req.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(&req.body[..], b"pass=p+w&user=u1");

    // A pointer that matches nothing is a failed fetch, not an empty token.
    let bad = one(
        "bad",
        &format!(
            "{{type: token_endpoint, url: '{}', token_pointer: /token}}",
            m.token_url()
        ),
    );
    assert!(bad.lease().await.is_err());
}

#[tokio::test]
async fn command_plain_json_failure_and_timeout() {
    let plain = one(
        "cloud",
        "{type: command, command: [sh, -c, 'echo \"  tok-cmd\"']}",
    );
    assert_eq!(auth(&plain.lease().await.unwrap()), "Bearer tok-cmd");
    assert_eq!(plain.fetch_count(), 1);
    assert_eq!(plain.kind(), CredentialKind::Command);

    let json = one(
        "cloud-json",
        r#"{type: command, format: json, token_pointer: /t/v, expires_in_pointer: /exp, prefix: "",
            command: [sh, -c, 'echo "{\"t\": {\"v\": \"tok-json\"}, \"exp\": \"120\"}"']}"#,
    );
    assert_eq!(auth(&json.lease().await.unwrap()), "tok-json");

    let failing = one(
        "cloud-fail",
        "{type: command, command: [sh, -c, 'echo boom >&2; exit 3']}",
    );
    assert!(matches!(
        failing.lease().await,
        Err(CredentialError::Unavailable { .. })
    ));

    let missing = one(
        "cloud-missing",
        "{type: command, command: [/nonexistent/cli]}",
    );
    assert!(missing.lease().await.is_err());

    let slow = one(
        "cloud-slow",
        "{type: command, command: [sleep, '5'], timeout: 0.2}",
    );
    let started = Instant::now();
    assert!(slow.lease().await.is_err());
    assert!(started.elapsed() < Duration::from_secs(2));
}

// === pools ===

fn pool(strategy: &str) -> Arc<Credential> {
    one(
        "spread",
        &format!("{{type: pool, keys: [ka, kb, kc], strategy: {strategy}, cooldown: 30}}"),
    )
}

#[tokio::test]
async fn pool_round_robin() {
    let c = pool("round_robin");
    let mut seen = Vec::new();
    for _ in 0..6 {
        let l = c.lease().await.unwrap();
        seen.push((auth(&l).to_owned(), l.key_index()));
    }
    let keys: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "Bearer ka",
            "Bearer kb",
            "Bearer kc",
            "Bearer ka",
            "Bearer kb",
            "Bearer kc"
        ]
    );
    assert_eq!(seen[1].1, Some(1));
    assert!(!c.is_fetched());
    assert_eq!(c.fetch_count(), 0);
}

#[tokio::test]
async fn pool_cooldown_on_429_honours_retry_after_and_recovers() {
    let c = one("spread", "{type: pool, keys: [ka, kb], cooldown: 30}");
    let first = c.lease().await.unwrap();
    assert_eq!(auth(&first), "Bearer ka");
    // A success or a 500 changes nothing.
    c.report(&first, StatusCode::OK, None);
    c.report(&first, StatusCode::INTERNAL_SERVER_ERROR, None);
    c.report(
        &first,
        StatusCode::TOO_MANY_REQUESTS,
        Some(Duration::from_millis(300)),
    );
    for _ in 0..4 {
        assert_eq!(auth(&c.lease().await.unwrap()), "Bearer kb");
    }
    tokio::time::sleep(Duration::from_millis(350)).await;
    let mut keys = Vec::new();
    for _ in 0..2 {
        keys.push(auth(&c.lease().await.unwrap()).to_owned());
    }
    keys.sort();
    assert_eq!(keys, ["Bearer ka", "Bearer kb"]);
}

#[tokio::test]
async fn all_keys_cooling_down_answers_the_shortest_retry() {
    let c = one("spread", "{type: pool, keys: [ka, kb], cooldown: 30}");
    let a = c.lease().await.unwrap();
    let b = c.lease().await.unwrap();
    c.report(
        &a,
        StatusCode::TOO_MANY_REQUESTS,
        Some(Duration::from_secs(2)),
    );
    // 401 without Retry-After: the configured 30 s.
    c.report(&b, StatusCode::UNAUTHORIZED, None);
    let Err(CredentialError::CoolingDown {
        credential,
        retry_after,
    }) = c.lease().await
    else {
        panic!("expected CoolingDown")
    };
    assert_eq!(credential, "spread");
    assert!(
        retry_after > Duration::from_millis(1500) && retry_after <= Duration::from_secs(2),
        "{retry_after:?}"
    );
    let e = c.lease().await.unwrap_err().into_gateway_error();
    assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(e.code, "upstream_keys_cooling_down");
    assert_eq!(e.retry_after, Some(2));
    assert!(!e.message.contains("ka"));
}

#[tokio::test]
async fn least_in_flight_picks_the_idle_key() {
    let c = pool("least_in_flight");
    let l0 = c.lease().await.unwrap();
    let l1 = c.lease().await.unwrap();
    let l2 = c.lease().await.unwrap();
    assert_eq!(
        [l0.key_index(), l1.key_index(), l2.key_index()],
        [Some(0), Some(1), Some(2)]
    );
    drop(l1);
    for _ in 0..3 {
        // Key 1 is the only idle one, whatever the rotation says.
        let l = c.lease().await.unwrap();
        assert_eq!(l.key_index(), Some(1));
        assert_eq!(auth(&l), "Bearer kb");
    }
    if let Kind::Pool(p) = &c.kind {
        assert_eq!([p.in_flight(0), p.in_flight(1), p.in_flight(2)], [1, 0, 1]);
    }
    drop((l0, l2));
    if let Kind::Pool(p) = &c.kind {
        assert_eq!([p.in_flight(0), p.in_flight(1), p.in_flight(2)], [0, 0, 0]);
    }
}

#[tokio::test]
async fn leases_only_affect_their_own_credential() {
    let a = one("a", "{type: pool, keys: [ka, kb]}");
    let b = one("b", "{type: pool, keys: [kc, kd]}");
    let la = a.lease().await.unwrap();
    b.report(&la, StatusCode::TOO_MANY_REQUESTS, None);
    assert_eq!(auth(&b.lease().await.unwrap()), "Bearer kc");
    assert_eq!(auth(&b.lease().await.unwrap()), "Bearer kd");
    assert_eq!(auth(&b.lease().await.unwrap()), "Bearer kc");
}

// === static, build, printing ===

#[tokio::test]
async fn static_keys() {
    let c = Credentials::static_key("legacy", Secret::new("up-key"));
    let l = c.lease().await.unwrap();
    assert_eq!(auth(&l), "Bearer up-key");
    assert!(l.authorization.is_sensitive());
    assert_eq!(c.name(), "legacy");
    assert_eq!(c.kind(), CredentialKind::Static);
    let broken = Credentials::static_key("broken", Secret::new("a\nb"));
    assert!(broken.lease().await.is_err());
    let s = one("sophnet", "{type: static, key: sk-abc}");
    assert_eq!(auth(&s.lease().await.unwrap()), "Bearer sk-abc");
}

#[test]
fn build_rejects_duplicates_and_lists_names() {
    let s = || spec("{type: static, key: k}");
    let errs = Credentials::build(vec![("x".into(), s()), ("x".into(), s())])
        .err()
        .unwrap();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].to_string(), "credentials.x: is defined twice");
    let set = Credentials::build(vec![("b".into(), s()), ("a".into(), s())]).unwrap();
    assert_eq!(set.names(), ["a", "b"]);
    assert_eq!(set.len(), 2);
    assert!(set.get("c").is_none());
}

/// Specs edited after validation (as `sophgate test` does) are checked again, every problem
/// named by its path under `credentials:` and none echoing a key.
#[test]
fn build_reports_every_unusable_entry_by_path() {
    let specs = vec![
        (
            "s".to_owned(),
            CredentialSpec::Static {
                key: Secret::new("sk-a\nb"),
            },
        ),
        (
            "p".to_owned(),
            CredentialSpec::Pool {
                keys: vec![Secret::new("ok"), Secret::new("sk-c\u{1}d")],
                strategy: PoolStrategy::RoundRobin,
                cooldown: Duration::from_secs(1),
            },
        ),
        (
            "e".to_owned(),
            CredentialSpec::Pool {
                keys: Vec::new(),
                strategy: PoolStrategy::RoundRobin,
                cooldown: Duration::from_secs(1),
            },
        ),
    ];
    let errs = Credentials::build(specs).err().unwrap();
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "credentials.s.key: is not a valid HTTP header value",
            "credentials.p.keys[1]: is not a valid HTTP header value",
            "credentials.e.keys: a pool needs at least one key",
        ]
    );
    assert!(!format!("{errs:?}").contains("sk-"));
}

#[tokio::test]
async fn debug_output_shows_no_secret() {
    let m = mock(Duration::from_secs(60)).await;
    let yamls = [
        "{type: static, key: sk-static-secret}".to_owned(),
        "{type: pool, keys: [pool-secret-a, pool-secret-b]}".to_owned(),
        oauth2(&m, ""),
        "{type: token_endpoint, url: 'https://u:url-pass@vendor.example/t?key=q-secret',
          headers: {x-key: hdr-secret}, json: {sk: json-secret}}"
            .to_owned(),
        "{type: token_endpoint, url: 'https://vendor.example/t', form: {sk: form-secret}}"
            .to_owned(),
        "{type: command, command: [cli, --password=arg-secret]}".to_owned(),
    ];
    let specs: Vec<(String, CredentialSpec)> = yamls
        .iter()
        .enumerate()
        .map(|(i, y)| (format!("c{i}"), spec(y)))
        .collect();
    let spec_dbg = format!("{specs:?}");
    let set = Credentials::build(specs).unwrap();
    let mut leases = Vec::new();
    for name in ["c0", "c1", "c2"] {
        leases.push(set.get(name).unwrap().lease().await.unwrap());
    }
    let all = format!("{spec_dbg}\n{set:?}\n{leases:?}");
    for secret in [
        "sk-static-secret",
        "pool-secret",
        SECRET,
        "url-pass",
        "q-secret",
        "hdr-secret",
        "json-secret",
        "form-secret",
        "arg-secret",
        "tok-1",
    ] {
        assert!(!all.contains(secret), "{secret} leaked in:\n{all}");
    }
    assert!(all.contains("vendor.example/t?***"), "{all}");
    assert!(all.contains("c2"), "{all}");
}

/// Collects log output in memory.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_name_the_credential_never_the_secret() {
    let buf = LogBuf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let m = mock(Duration::from_secs(60)).await;
    let good = one("corp", &oauth2(&m, ""));
    let lease = good.lease().await.unwrap();
    good.invalidate(&lease);
    let wrong = one(
        "corp-wrong",
        &format!(
            "{{type: oauth2, token_url: '{}?api_key=query-secret', client_id: gw, client_secret: wrong-secret}}",
            m.oauth2_url()
        ),
    );
    assert!(wrong.lease().await.is_err());
    let pool = one("spread", "{type: pool, keys: [pool-key-a, pool-key-b]}");
    let l = pool.lease().await.unwrap();
    pool.report(&l, StatusCode::TOO_MANY_REQUESTS, None);
    let cmd = one(
        "cloud",
        "{type: command, command: [sh, -c, 'exit 1', arg-secret]}",
    );
    assert!(cmd.lease().await.is_err());
    drop(m);
    let gone = one(
        "gone",
        "{type: token_endpoint, url: 'http://127.0.0.1:9/t?k=gone-secret', timeout: 1}",
    );
    assert!(gone.lease().await.is_err());

    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    for name in ["corp-wrong", "spread", "cloud", "gone", "401"] {
        assert!(logs.contains(name), "{name} missing from logs:\n{logs}");
    }
    for secret in [
        SECRET,
        "wrong-secret",
        "query-secret",
        "pool-key",
        "arg-secret",
        "gone-secret",
        "tok-1",
    ] {
        assert!(!logs.contains(secret), "{secret} leaked in logs:\n{logs}");
    }
}
