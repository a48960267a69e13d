//! IP allow/deny lists with CIDRs (v4 and v6), deny winning, and forwarded headers believed
//! only from trusted proxies.

use std::net::{IpAddr, SocketAddr};

use crate::common::*;
use sophgate::tools::mock::{self, MockOptions};

async fn get_models_from(env: &Env, local: Option<IpAddr>, xff: Option<&str>) -> reqwest::Response {
    let mut b = reqwest::Client::builder().no_proxy();
    if let Some(ip) = local {
        b = b.local_address(ip);
    }
    let mut req = b
        .build()
        .unwrap()
        .get(env.url("/v1/models"))
        .bearer_auth(CLIENT_KEY);
    if let Some(x) = xff {
        req = req.header("x-forwarded-for", x);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn cidr_allow_list() {
    let env = start("ip_whitelist: [\"127.0.0.2/31\"]\n", MockOptions::default()).await;
    let ok = get_models_from(&env, Some("127.0.0.2".parse().unwrap()), None).await;
    assert_eq!(ok.status(), 200);
    let ok = get_models_from(&env, Some("127.0.0.3".parse().unwrap()), None).await;
    assert_eq!(ok.status(), 200);
    let denied = get_models_from(&env, Some("127.0.0.1".parse().unwrap()), None).await;
    assert_eq!(error_code(denied, 403).await, "ip_not_allowed");
}

#[tokio::test]
async fn deny_wins_over_allow() {
    let env = start(
        "ip_whitelist: [\"127.0.0.0/8\"]\nip_blacklist: [\"127.0.0.5\"]\n",
        MockOptions::default(),
    )
    .await;
    assert_eq!(
        get_models_from(&env, Some("127.0.0.4".parse().unwrap()), None)
            .await
            .status(),
        200
    );
    let denied = get_models_from(&env, Some("127.0.0.5".parse().unwrap()), None).await;
    assert_eq!(error_code(denied, 403).await, "ip_not_allowed");
}

#[tokio::test]
async fn spoofed_forwarded_for_from_untrusted_peer_does_not_get_in() {
    let env = start("ip_whitelist: [\"10.0.0.0/8\"]\n", MockOptions::default()).await;
    let resp = get_models_from(&env, None, Some("10.1.2.3")).await;
    assert_eq!(error_code(resp, 403).await, "ip_not_allowed");
    // Nor does a blacklisted peer escape by claiming another address.
    let env = start("ip_blacklist: [\"127.0.0.1\"]\n", MockOptions::default()).await;
    let resp = get_models_from(&env, None, Some("8.8.8.8")).await;
    assert_eq!(error_code(resp, 403).await, "ip_not_allowed");
}

#[tokio::test]
async fn trusted_proxy_header_is_believed() {
    let env = start(
        "ip_whitelist: [\"10.0.0.0/8\"]\nip_blacklist: [\"10.6.6.6\"]\ntrusted_proxies: [\"127.0.0.1\"]\n",
        MockOptions::default(),
    )
    .await;
    let ok = get_models_from(&env, None, Some("10.1.2.3")).await;
    assert_eq!(ok.status(), 200);
    // Right-most untrusted hop counts: a client cannot prepend an allowed address.
    let resp = get_models_from(&env, None, Some("10.1.2.3, 10.6.6.6")).await;
    assert_eq!(error_code(resp, 403).await, "ip_not_allowed");
    // The proxy itself (127.0.0.1) is not in the allow list.
    let resp = get_models_from(&env, None, None).await;
    assert_eq!(error_code(resp, 403).await, "ip_not_allowed");
}

#[tokio::test]
async fn ipv6_rules() {
    let listen: SocketAddr = "[::1]:0".parse().unwrap();
    if std::net::TcpListener::bind(listen).is_err() {
        eprintln!("skipping: this machine has no IPv6 loopback");
        return;
    }
    for (rules, expected) in [
        ("ip_whitelist: [\"::1/128\"]", 200u16),
        ("ip_whitelist: [\"2001:db8::/32\"]", 403),
        ("ip_blacklist: [\"::1\"]", 403),
    ] {
        let mock = mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
            .await
            .unwrap();
        let yaml = base_yaml(mock.addr, rules);
        let env = start_gateway(mock, &yaml, listen).await;
        let resp = client()
            .get(env.url("/v1/models"))
            .bearer_auth(CLIENT_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), expected, "{rules}");
    }
}
