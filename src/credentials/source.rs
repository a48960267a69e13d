//! Where fetched tokens come from: an OAuth2 client-credentials grant, a generic HTTP token
//! endpoint, or a local command. Each fetch returns the `Authorization` value and, when the
//! source says, the token's lifetime.
//!
//! Failure causes are plain strings meant for the log. They never hold a secret: reqwest errors
//! are stripped of their URL (it may carry a query secret), error bodies are not echoed (only the
//! standard OAuth2 `error` code), and tokens never appear in them.

use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use http::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;

use super::{
    AuthStyle, CommandSpec, CredentialKind, OAuth2Spec, OutputFormat, TokenBody, TokenEndpointSpec,
};
use crate::config::raw_credentials::DEFAULT_TOKEN_TTL;

/// Largest token answer read (HTTP body or command stdout); real ones are a few KiB.
const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// How much of a failing command's stderr reaches the log.
const MAX_STDERR_CHARS: usize = 300;

pub(super) enum Source {
    OAuth2(OAuth2Spec, reqwest::Client),
    Endpoint(TokenEndpointSpec, reqwest::Client),
    Command(CommandSpec),
}

pub(super) struct Fetched {
    pub(super) authorization: HeaderValue,
    pub(super) lifetime: Option<Duration>,
}

/// The client for every HTTP token fetch of a generation (see `Credentials::build`).
pub(super) fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("sophgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client for token fetches: {e}"))
}

impl Source {
    pub(super) fn kind(&self) -> CredentialKind {
        match self {
            Source::OAuth2(..) => CredentialKind::OAuth2,
            Source::Endpoint(..) => CredentialKind::TokenEndpoint,
            Source::Command(_) => CredentialKind::Command,
        }
    }

    pub(super) fn default_ttl(&self) -> Duration {
        match self {
            Source::OAuth2(..) => Duration::from_secs_f64(DEFAULT_TOKEN_TTL),
            Source::Endpoint(s, _) => s.default_ttl,
            Source::Command(s) => s.default_ttl,
        }
    }

    pub(super) fn refresh_before(&self) -> Option<Duration> {
        match self {
            Source::OAuth2(s, _) => s.refresh_before,
            Source::Endpoint(s, _) => s.refresh_before,
            Source::Command(s) => s.refresh_before,
        }
    }

    pub(super) async fn fetch(&self) -> Result<Fetched, String> {
        match self {
            Source::OAuth2(s, client) => oauth2(s, client).await,
            Source::Endpoint(s, client) => endpoint(s, client).await,
            Source::Command(s) => command(s).await,
        }
    }
}

// === oauth2 ===

async fn oauth2(spec: &OAuth2Spec, client: &reqwest::Client) -> Result<Fetched, String> {
    let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
    if let Some(scope) = &spec.scope {
        form.push(("scope", scope));
    }
    if let Some(audience) = &spec.audience {
        form.push(("audience", audience));
    }
    let mut req = client
        .post(spec.token_url.url().clone())
        .timeout(spec.timeout)
        .header(ACCEPT, "application/json");
    match spec.auth_style {
        AuthStyle::Basic => {
            req = req.header(
                AUTHORIZATION,
                basic_auth(&spec.client_id, spec.client_secret.expose())?,
            );
        }
        AuthStyle::Body => {
            form.push(("client_id", &spec.client_id));
            form.push(("client_secret", spec.client_secret.expose()));
        }
    }
    let (status, body) = send(req.form(&form)).await?;
    if !status.is_success() {
        // RFC 6749 §5.2 `error` is a short ASCII code; nothing else of the body is logged.
        let code = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(safe_code));
        return Err(match code {
            Some(code) => format!("token endpoint answered {status} ({code})"),
            None => format!("token endpoint answered {status}"),
        });
    }
    let v = parse_json(&body)?;
    let token = string_at(&v, "/access_token")?;
    if let Some(kind) = v.get("token_type").and_then(Value::as_str) {
        if !kind.eq_ignore_ascii_case("bearer") {
            tracing::warn!(token_type = %safe_code(kind), "oauth2 token_type is not Bearer; sending it as a Bearer token");
        }
    }
    Ok(Fetched {
        authorization: header_value("Bearer ", token)?,
        lifetime: seconds_at(&v, "/expires_in", false),
    })
}

/// `Basic base64(urlencode(id):urlencode(secret))`, the client authentication of RFC 6749
/// §2.3.1 (ids and secrets are form-encoded first, so a ':' in either survives).
fn basic_auth(id: &str, secret: &str) -> Result<HeaderValue, String> {
    let raw = format!("{}:{}", form_encode(id), form_encode(secret));
    let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
    let mut v = HeaderValue::from_str(&format!("Basic {encoded}"))
        .map_err(|_| "cannot build the Basic authorization header".to_string())?;
    v.set_sensitive(true);
    Ok(v)
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Keeps a server-provided code loggable: short, and only harmless characters.
fn safe_code(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(64)
        .collect()
}

// === token_endpoint ===

async fn endpoint(spec: &TokenEndpointSpec, client: &reqwest::Client) -> Result<Fetched, String> {
    let mut req = client
        .request(spec.method.clone(), spec.url.url().clone())
        .timeout(spec.timeout)
        .header(ACCEPT, "application/json");
    req = match &spec.body {
        TokenBody::None => req,
        TokenBody::Form(fields) => {
            let pairs: Vec<(&str, &str)> = fields
                .iter()
                .map(|(k, v)| (k.as_str(), v.expose()))
                .collect();
            req.form(&pairs)
        }
        TokenBody::Json(text) => req
            .header(CONTENT_TYPE, "application/json")
            .body(text.expose().to_owned()),
    };
    // Configured headers go last and replace defaults of the same name (e.g. Content-Type).
    let mut headers = HeaderMap::with_capacity(spec.headers.len());
    for (name, value) in &spec.headers {
        headers.insert(name.clone(), value.clone());
    }
    let (status, body) = send(req.headers(headers)).await?;
    if !status.is_success() {
        return Err(format!("token endpoint answered {status}"));
    }
    let v = parse_json(&body)?;
    let token = string_at(&v, &spec.token_pointer)?;
    Ok(Fetched {
        authorization: header_value(&spec.prefix, token)?,
        lifetime: lifetime_at(&v, spec.expires_in_pointer.as_deref()),
    })
}

// === command ===

async fn command(spec: &CommandSpec) -> Result<Fetched, String> {
    let program = &spec.program;
    // The child inherits the gateway's environment (PATH, HOME, cloud CLI config), as it would
    // in the operator's shell; no shell parses the arguments.
    let mut child = tokio::process::Command::new(program)
        .args(spec.args.iter().map(|a| a.expose()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A timed-out fetch drops the child, and with it the process.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start `{program}`: {e}"))?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let run = async {
        let (out, err) = tokio::try_join!(
            read_capped(stdout, MAX_ANSWER_BYTES),
            read_capped(stderr, MAX_STDERR_CHARS * 4),
        )?;
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((status, out, err))
    };
    let (status, (stdout, stdout_overflow), (stderr, _)) =
        match tokio::time::timeout(spec.timeout, run).await {
            Err(_) => {
                return Err(format!(
                    "`{program}` did not finish within {:.1} s and was killed",
                    spec.timeout.as_secs_f64()
                ))
            }
            Ok(Err(e)) => return Err(format!("`{program}` failed: {e}")),
            Ok(Ok(o)) => o,
        };
    if !status.success() {
        let stderr: String = String::from_utf8_lossy(&stderr)
            .trim()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(MAX_STDERR_CHARS)
            .collect();
        return Err(format!(
            "`{program}` exited with {status}; stderr: {stderr}"
        ));
    }
    if stdout_overflow {
        return Err(format!(
            "`{program}` printed more than {MAX_ANSWER_BYTES} bytes"
        ));
    }
    match spec.format {
        OutputFormat::Plain => {
            let text = std::str::from_utf8(&stdout)
                .map_err(|_| format!("`{program}` printed something that is not UTF-8"))?;
            Ok(Fetched {
                authorization: header_value(&spec.prefix, text.trim())?,
                lifetime: None,
            })
        }
        OutputFormat::Json => {
            let v = parse_json(&stdout).map_err(|e| format!("`{program}` output: {e}"))?;
            let token = string_at(&v, &spec.token_pointer)?;
            Ok(Fetched {
                authorization: header_value(&spec.prefix, token)?,
                lifetime: lifetime_at(&v, spec.expires_in_pointer.as_deref()),
            })
        }
    }
}

/// Reads `reader` to its end, keeping the first `cap` bytes. It drains the rest rather than
/// stopping, so a chatty child never blocks on a full pipe. True when something was dropped.
async fn read_capped<R: tokio::io::AsyncRead + Unpin>(
    reader: Option<R>,
    cap: usize,
) -> std::io::Result<(Vec<u8>, bool)> {
    use tokio::io::AsyncReadExt as _;
    let mut kept = Vec::new();
    let mut overflow = false;
    let Some(mut reader) = reader else {
        return Ok((kept, overflow));
    };
    let mut buf = [0u8; 8192];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok((kept, overflow));
        }
        let room = cap.saturating_sub(kept.len());
        let chunk = buf.get(..n).unwrap_or_default();
        kept.extend_from_slice(chunk.get(..room.min(n)).unwrap_or_default());
        overflow |= n > room;
    }
}

// === shared helpers ===

/// Sends and reads the whole body (bounded).
async fn send(req: reqwest::RequestBuilder) -> Result<(http::StatusCode, Vec<u8>), String> {
    let mut resp = req.send().await.map_err(describe)?;
    let status = resp.status();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(describe)? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(format!(
                "token endpoint answer is larger than {MAX_ANSWER_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, body))
}

/// A reqwest error with its cause chain, without the URL.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = if e.is_timeout() {
        "token request timed out".to_string()
    } else {
        e.to_string()
    };
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

fn parse_json(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|_| "the answer is not valid JSON".to_string())
}

fn string_at<'v>(v: &'v Value, pointer: &str) -> Result<&'v str, String> {
    match v.pointer(pointer) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(format!("the value at {pointer} is not a non-empty string")),
        None => Err(format!("the answer has no token at {pointer}")),
    }
}

/// Seconds at `pointer`: a number or a numeric string. `warn` logs when it is missing or bad.
fn seconds_at(v: &Value, pointer: &str, warn: bool) -> Option<Duration> {
    let found = v.pointer(pointer);
    let secs = match found {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    let lifetime = secs
        .filter(|s| s.is_finite() && *s >= 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok());
    if lifetime.is_none() && warn {
        tracing::warn!(
            pointer,
            "no lifetime in seconds at expires_in_pointer; using default_ttl"
        );
    }
    lifetime
}

fn lifetime_at(v: &Value, pointer: Option<&str>) -> Option<Duration> {
    pointer.and_then(|p| seconds_at(v, p, true))
}

/// `prefix + token` as a sensitive header value.
fn header_value(prefix: &str, token: &str) -> Result<HeaderValue, String> {
    if token.is_empty() {
        return Err("the token is empty".into());
    }
    let mut v = HeaderValue::from_str(&format!("{prefix}{token}"))
        .map_err(|_| "the token contains characters not allowed in a header".to_string())?;
    v.set_sensitive(true);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("a b:c/é*"), "a+b%3Ac%2F%C3%A9*");
        assert_eq!(form_encode("gw-1_x.y"), "gw-1_x.y");
    }

    #[test]
    fn lifetimes_and_tokens() {
        let v = serde_json::json!({"a": 30, "b": "45", "c": -1, "t": "", "n": {"t": "x"}});
        assert_eq!(seconds_at(&v, "/a", false), Some(Duration::from_secs(30)));
        assert_eq!(seconds_at(&v, "/b", false), Some(Duration::from_secs(45)));
        assert_eq!(seconds_at(&v, "/c", false), None);
        assert!(string_at(&v, "/t").is_err());
        assert_eq!(string_at(&v, "/n/t").ok(), Some("x"));
        assert!(header_value("Bearer ", "a\nb").is_err());
        assert!(header_value("", "tok")
            .map(|h| h.is_sensitive())
            .unwrap_or(false));
    }
}
