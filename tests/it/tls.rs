//! `https://` upstreams through the pooled client: a real TLS server (rustls, the test
//! certificate in tests/fixtures/tls) in front of the mock upstream, trusted through
//! `api_ca_file`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::common::*;
use futures_util::StreamExt;
use sophgate::config::Config;
use sophgate::tools::mock::{self, MockOptions};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

fn server_config() -> Arc<ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(fixture("server.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture("server.key")).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    // The server would take HTTP/2: the gateway must ask for HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TLS server on loopback that passes the plain bytes on to `backend`; counts handshakes.
/// With `close_after`, each connection is closed (TLS close_notify, then FIN) that long after
/// it was accepted, as an upstream that ends idle keep-alive connections does.
async fn tls_front(
    backend: SocketAddr,
    close_after: Option<std::time::Duration>,
) -> (SocketAddr, Arc<AtomicU64>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicU64::new(0));
    let counted = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counted = counted.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]), "ALPN");
                counted.fetch_add(1, Ordering::SeqCst);
                let mut plain = tokio::net::TcpStream::connect(backend).await.unwrap();
                let relay = tokio::io::copy_bidirectional(&mut tls, &mut plain);
                match close_after {
                    None => {
                        let _ = relay.await;
                    }
                    Some(after) => {
                        let _ = tokio::time::timeout(after, relay).await;
                        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                    }
                }
            });
        }
    });
    (addr, handshakes)
}

async fn start_tls(
    ca: Option<&str>,
    close_after: Option<std::time::Duration>,
) -> (Env, Arc<AtomicU64>, SocketAddr) {
    let mock = mock::spawn("127.0.0.1:0".parse().unwrap(), MockOptions::default())
        .await
        .unwrap();
    let (front, handshakes) = tls_front(mock.addr, close_after).await;
    let ca_line = ca
        .map(|c| format!("api_ca_file: \"{c}\"\n"))
        .unwrap_or_default();
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\napi_host: \"https://localhost:{}\"\nforward_chat_path: /v1/chat/completions\napi_keys:\n  \"{CLIENT_KEY}\": \"{UPSTREAM_KEY}\"\n{ca_line}",
        front.port()
    );
    let env = start_gateway(mock, &yaml, "127.0.0.1:0".parse().unwrap()).await;
    (env, handshakes, front)
}

#[tokio::test]
async fn https_upstream_answers_and_streams_over_one_pooled_connection() {
    let ca = fixture("ca.pem");
    let (env, handshakes, front) = start_tls(Some(ca.to_str().unwrap()), None).await;
    for _ in 0..3 {
        let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
        assert_eq!(resp.status(), 200);
        let v: serde_json::Value = resp.json().await.unwrap();
        assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    }
    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", true)).await;
    assert_eq!(resp.status(), 200);
    let mut body = Vec::new();
    let mut chunks = resp.bytes_stream();
    while let Some(c) = chunks.next().await {
        body.extend_from_slice(&c.unwrap());
    }
    assert!(body.ends_with(b"data: [DONE]\n\n"));
    let seen = env.mock.stats.last_request().unwrap();
    assert_eq!(
        seen.headers.get("authorization").unwrap(),
        &format!("Bearer {UPSTREAM_KEY}")
    );
    let host = format!("localhost:{}", front.port());
    assert_eq!(seen.headers.get("host").unwrap(), host.as_str());
    assert_eq!(
        handshakes.load(Ordering::SeqCst),
        1,
        "one TLS connection, reused by every request"
    );
}

#[tokio::test]
async fn an_untrusted_upstream_certificate_is_502_and_the_gateway_keeps_serving() {
    let (env, handshakes, _) = start_tls(None, None).await;
    let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
    assert_eq!(error_code(resp, 502).await, "upstream_unreachable");
    assert_eq!(handshakes.load(Ordering::SeqCst), 0);
    assert_eq!(env.mock.stats.get(&env.mock.stats.requests), 0);
    let health = client().get(env.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_tls_connection_the_upstream_closed_while_idle_never_surfaces_as_an_error() {
    let ca = fixture("ca.pem");
    let close_after = std::time::Duration::from_millis(300);
    let (env, handshakes, _) = start_tls(Some(ca.to_str().unwrap()), Some(close_after)).await;
    for round in 1..=3u64 {
        let resp = post_chat(&env, CLIENT_KEY, chat_body("mock-model", false)).await;
        assert_eq!(resp.status(), 200, "request {round}");
        assert_eq!(handshakes.load(Ordering::SeqCst), round);
        // The upstream closes the idle connection (close_notify) before the next request.
        tokio::time::sleep(close_after * 2).await;
    }
}

/// The pool's reuse check through TLS: an idle connection (session tickets read, no data) is
/// fit for reuse; one with stray bytes, or one the server closed (close_notify), is not.
#[tokio::test]
async fn the_reuse_check_reads_through_tls() {
    use sophgate::http::client::transport::TlsSetup;
    use tokio::io::AsyncWriteExt;
    let ca: Vec<Vec<u8>> = CertificateDer::pem_file_iter(fixture("ca.pem"))
        .unwrap()
        .map(|c| c.unwrap().to_vec())
        .collect();
    let setup = TlsSetup::new("localhost", &ca).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    for case in ["idle", "stray bytes", "close_notify"] {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let (client, server) = tokio::join!(setup.connect(tcp), acceptor.accept(accepted));
        let (mut client, mut server) = (client.unwrap(), server.unwrap());
        match case {
            "stray bytes" => server.write_all(b"x").await.unwrap(),
            "close_notify" => server.shutdown().await.unwrap(),
            _ => server.flush().await.unwrap(),
        }
        // Let the bytes (tickets, data or the alert) arrive.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(client.idle_and_open(), case == "idle", "{case}");
        drop(server);
    }
}

#[test]
fn a_missing_or_empty_ca_file_is_a_config_error() {
    let err = Config::from_yaml("api_ca_file: /nonexistent/ca.pem\n", &|_| None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("api_ca_file") && err.contains("cannot read"),
        "{err}"
    );
    let not_pem = fixture("README.md");
    let yaml = format!(
        "upstreams:\n  private:\n    base_url: https://llm.internal/v1\n    ca_file: \"{}\"\n",
        not_pem.display()
    );
    let err = Config::from_yaml(&yaml, &|_| None).unwrap_err().to_string();
    assert!(
        err.contains("ca_file") && err.contains("no PEM certificate"),
        "{err}"
    );
}
