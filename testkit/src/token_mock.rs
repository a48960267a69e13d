//! A mock token server: a real HTTP server for the credential tests (the library's and
//! `tests/it/credentials.rs`, where the upstream mock asks it whether a bearer token is valid).
//! Its own tests are in `tests/it/token_mock.rs`, so the root `cargo test --all-targets` runs them.
//!
//! | route               | behaviour                                                              |
//! |---------------------|------------------------------------------------------------------------|
//! | `POST /oauth2/token`| client-credentials grant; client id/secret via HTTP Basic or form;     |
//! |                     | answers `{access_token, token_type: "Bearer", expires_in}`             |
//! | `POST /token`       | generic: any JSON or form body; answers `{data: {token, expires_in}}`  |
//!
//! Tokens are `tok-<n>`, numbered from 1. [`TokenState`] counts fetches, can fail every fetch
//! (500), change the lifetime of new tokens, slow fetches down, revoke every token issued so far,
//! and tells whether a token is valid (issued here, not revoked, not expired).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::serve::{self, ServerGuard};

#[derive(Debug, Clone)]
pub struct TokenMockOptions {
    /// Lifetime of the tokens issued (changeable later with [`TokenState::set_ttl`]).
    pub ttl: Duration,
    /// The one OAuth2 client `/oauth2/token` accepts.
    pub client_id: String,
    pub client_secret: String,
}

impl Default for TokenMockOptions {
    fn default() -> Self {
        TokenMockOptions {
            ttl: Duration::from_secs(3600),
            client_id: "gw".into(),
            client_secret: "mock-client-secret".into(),
        }
    }
}

/// One request as the token server received it.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the server has done, and the knobs to change what it does next.
#[derive(Debug)]
pub struct TokenState {
    client_id: String,
    client_secret: String,
    fetches: AtomicU64,
    failing: AtomicBool,
    ttl_ms: AtomicU64,
    delay_ms: AtomicU64,
    next_serial: AtomicU64,
    /// Tokens with a serial below this are revoked.
    revoked_below: AtomicU64,
    /// Serial → expiry.
    issued: Mutex<HashMap<u64, Instant>>,
    last: Mutex<Option<TokenRequest>>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl TokenState {
    fn new(opts: &TokenMockOptions) -> TokenState {
        TokenState {
            client_id: opts.client_id.clone(),
            client_secret: opts.client_secret.clone(),
            fetches: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            ttl_ms: AtomicU64::new(ms(opts.ttl)),
            delay_ms: AtomicU64::new(0),
            next_serial: AtomicU64::new(1),
            revoked_below: AtomicU64::new(0),
            issued: Mutex::new(HashMap::new()),
            last: Mutex::new(None),
        }
    }

    /// Requests to a token route so far (failed and rejected ones included).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    /// While set, every token route answers 500.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Lifetime of tokens issued from now on.
    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl_ms.store(ms(ttl), Ordering::SeqCst);
    }

    /// Delay before every token answer (to make fetches overlap in tests).
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(ms(delay), Ordering::SeqCst);
    }

    /// Every token issued so far becomes invalid.
    pub fn revoke_all(&self) {
        let next = self.next_serial.load(Ordering::SeqCst);
        self.revoked_below.fetch_max(next, Ordering::SeqCst);
    }

    /// True when `token` (`tok-<n>`, optionally with a `Bearer ` prefix) was issued here, is not
    /// revoked and has not expired.
    pub fn is_valid(&self, token: &str) -> bool {
        let token = token.strip_prefix("Bearer ").unwrap_or(token);
        let Some(serial) = token
            .strip_prefix("tok-")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            return false;
        };
        if serial < self.revoked_below.load(Ordering::SeqCst) {
            return false;
        }
        let Ok(issued) = self.issued.lock() else {
            return false;
        };
        issued
            .get(&serial)
            .is_some_and(|expiry| Instant::now() < *expiry)
    }

    /// The last request a token route received.
    pub fn last_request(&self) -> Option<TokenRequest> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::SeqCst))
    }

    /// Issues a new token; returns it with its lifetime in seconds.
    fn issue(&self) -> (String, Value) {
        let serial = self.next_serial.fetch_add(1, Ordering::SeqCst);
        let ttl = self.ttl();
        if let Ok(mut issued) = self.issued.lock() {
            issued.insert(serial, Instant::now() + ttl);
        }
        // Whole seconds as an integer (what real servers send), fractions only when needed.
        let secs = if ttl.subsec_nanos() == 0 {
            json!(ttl.as_secs())
        } else {
            json!(ttl.as_secs_f64())
        };
        (format!("tok-{serial}"), secs)
    }

    /// Whether an OAuth2 token request authenticates the configured client.
    fn client_ok(&self, headers: &HeaderMap, form: &HashMap<String, String>) -> bool {
        let basic = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|s| {
                s.split_once(':')
                    .map(|(id, secret)| (form_decode(id), form_decode(secret)))
            });
        let (id, secret) = match basic {
            Some(pair) => pair,
            None => (
                form.get("client_id").cloned().unwrap_or_default(),
                form.get("client_secret").cloned().unwrap_or_default(),
            ),
        };
        id == self.client_id && secret == self.client_secret
    }
}

pub struct TokenMock {
    pub addr: SocketAddr,
    pub state: Arc<TokenState>,
    /// Stops the server and closes its connections when the handle drops.
    _server: ServerGuard,
}

impl TokenMock {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// URL of the OAuth2 client-credentials route.
    pub fn oauth2_url(&self) -> String {
        format!("http://{}/oauth2/token", self.addr)
    }

    /// URL of the generic token route.
    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }
}

/// Binds `addr` and serves the token mock on a background task until the handle drops.
pub async fn spawn(addr: SocketAddr, opts: TokenMockOptions) -> std::io::Result<TokenMock> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(TokenState::new(&opts));
    let handler_state = state.clone();
    let server = serve::spawn(listener, move |req| {
        let state = handler_state.clone();
        async move { handle(req, &state).await }
    });
    Ok(TokenMock {
        addr,
        state,
        _server: server,
    })
}

fn json_resp(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(req: Request<hyper::body::Incoming>, state: &TokenState) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return json_resp(
                StatusCode::BAD_REQUEST,
                &json!({"error": "invalid_request"}),
            )
        }
    };
    let path = parts.uri.path().to_owned();
    if path != "/oauth2/token" && path != "/token" {
        return json_resp(StatusCode::NOT_FOUND, &json!({"error": "not_found"}));
    }
    if parts.method != Method::POST {
        return json_resp(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "invalid_request"}),
        );
    }
    state.fetches.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut last) = state.last.lock() {
        *last = Some(TokenRequest {
            method: parts.method.clone(),
            path: path.clone(),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
    }
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if state.failing.load(Ordering::SeqCst) {
        return json_resp(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": "server_error"}),
        );
    }
    if path == "/token" {
        let (token, expires_in) = state.issue();
        return json_resp(
            StatusCode::OK,
            &json!({"data": {"token": token, "expires_in": expires_in}}),
        );
    }
    let form = parse_form(&body);
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return json_resp(
            StatusCode::BAD_REQUEST,
            &json!({"error": "unsupported_grant_type"}),
        );
    }
    if !state.client_ok(&parts.headers, &form) {
        return json_resp(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "invalid_client"}),
        );
    }
    let (token, expires_in) = state.issue();
    json_resp(
        StatusCode::OK,
        &json!({"access_token": token, "token_type": "Bearer", "expires_in": expires_in}),
    )
}

/// Parses an `application/x-www-form-urlencoded` body.
pub fn parse_form(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(k), form_decode(v))
        })
        .collect()
}

/// `application/x-www-form-urlencoded` decoding; malformed escapes are kept as written.
pub fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = match (b, bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok()),
            _ => None,
        };
        match (b, escaped) {
            (_, Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (other, None) => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
