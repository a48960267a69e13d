//! `sophgate test`: replays request fixtures through the real pipeline against an in-process
//! upstream, so config and plugins can be unit-tested without a network.
//!
//! [`run`] starts a recording upstream on `127.0.0.1:0`, points every upstream of the config at
//! it, starts the real gateway on loopback, sends each fixture's request, and compares what
//! reached the upstream and what came back with the fixture's expectations. [`render`] turns
//! the reports into text.
//!
//! # Fixture files
//!
//! YAML; one fixture per file, or a list under `fixtures:` (with an optional `config:` for all
//! of them). Every key is optional except `request`; unknown keys are errors.
//!
//! ```yaml
//! name: field_aliases renames model to model_id   # default: the file name (+ [n] in a list)
//! config: config/field_aliases.yml  # optional; relative to this file. Default: `-c`'s config
//! request:
//!   method: POST                    # default POST
//!   path: /v1/chat/completions      # default; may carry a query
//!   key: sk-...                     # client key; default sk-sophgate-fixture (added for you)
//!   headers: { x-debug: "1" }       # an `authorization` here replaces the key
//!   body: { model: DeepSeek-V3, messages: [{ role: user, content: hi }] }
//!                                   # sent as JSON; a string is sent as is
//! expect_upstream:                  # omit to not check; then the upstream need not be called
//!   method: POST
//!   path: /api/open-apis/v1/chat/completions     # exact, path + query
//!   headers: { x-team: blue, x-debug: null }     # these only; null = must be absent
//!   body: { model_id: DeepSeek-V3 }              # subset match (see below)
//!   body_absent: [model]                         # top-level keys that must be absent
//! upstream_response:                # the canned upstream answer (default: see below)
//!   status: 200
//!   headers: { x-upstream: a }
//!   body: { ... }                   # JSON (a string is sent as text), or
//!   events: [ { choices: [...] }, "[DONE]" ]     # sent as SSE `data: <json or string>`
//! expect_response:                  # what the client must get; omit to not check
//!   status: 200
//!   headers: { x-upstream: a }      # these only; null = must be absent
//!   body: { ... }                   # subset match, or
//!   events: [ ... ]                 # the data of every SSE event, in order, all of them
//! ```
//!
//! **Matching.** Objects match when every expected key matches (extra keys are fine), at any
//! depth; arrays, strings, booleans and `null` must be equal (numbers compare by value, so `1`
//! matches `1.0`). An expected string matches a body or event that is not JSON by its exact
//! text. Header names are case-insensitive, values exact (repeated headers joined with `, `).
//! `expect_upstream` checks the first upstream request of the fixture; when the gateway never
//! called the upstream (a script threw, auth failed…) that is a failure showing what the
//! client got.
//!
//! **The upstream's answer.** `upstream_response` is sent for every upstream request of the
//! fixture, with `content-type: application/json` (or `text/event-stream` for `events`) unless
//! its headers say otherwise. Without `body` and `events` — or without `upstream_response` —
//! the answer is a minimal OpenAI chat completion for the request's model: one JSON
//! `chat.completion`, or, when the request has `stream: true`, a content chunk, a `stop`
//! chunk and `[DONE]`; `GET …/models` gets a one-model list.
//!
//! **What the runner changes in the config.** Every upstream URL keeps its path but points at
//! the recording upstream; egress proxies are dropped; every named credential becomes a static
//! key `fixture-credential-<name>` (nothing is fetched, no command runs); the client key
//! `sk-sophgate-fixture` (label `fixture`, upstream key `fixture-upstream-key`) is added unless
//! the config has it; the models cache is off; reloads are off (a reload would re-read the
//! file and undo all this). Everything else — keys, policies, IP lists, routes, defaults,
//! plugins — is the config's own. Requests come from `127.0.0.1`, so a config whose
//! `ip_whitelist` leaves out loopback answers 403 (which a fixture can test), and
//! `X-Forwarded-For` counts only if `trusted_proxies` holds `127.0.0.1`. Fixtures run one at a
//! time, in the order given; one gateway is started per distinct config.

use crate::pipeline::forward::error_chain;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::config::{Config, KeyConfig, KeyId};
use crate::loopback::{self, ServerGuard};
use crate::runtime::Runtime;
use crate::secret::Secret;
use crate::server::{self, ServerHandle};

/// The client key a fixture sends unless it names its own.
pub const FIXTURE_KEY: &str = "sk-sophgate-fixture";
/// The upstream key the fixture client key maps to (when no named credential applies).
pub const FIXTURE_UPSTREAM_KEY: &str = "fixture-upstream-key";
/// How long one fixture's request may take end to end.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of a body a failure message shows.
const SHOW_MAX: usize = 400;

/// The outcome of one fixture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureReport {
    pub name: String,
    /// The fixture file it came from.
    pub file: PathBuf,
    pub passed: bool,
    /// One line per unmet expectation (empty when passed).
    pub failures: Vec<String>,
}

// === the fixture format ===

/// Header expectations and request headers: name → scalar (`null` = absent).
type Headers = Map<String, Value>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureList {
    config: Option<PathBuf>,
    fixtures: Vec<Fixture>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    name: Option<String>,
    config: Option<PathBuf>,
    request: RequestSpec,
    expect_upstream: Option<ExpectUpstream>,
    upstream_response: Option<CannedResponse>,
    expect_response: Option<ExpectResponse>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestSpec {
    method: Option<String>,
    path: Option<String>,
    key: Option<String>,
    #[serde(default)]
    headers: Headers,
    body: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectUpstream {
    method: Option<String>,
    path: Option<String>,
    #[serde(default)]
    headers: Headers,
    body: Option<Value>,
    #[serde(default)]
    body_absent: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CannedResponse {
    status: Option<u16>,
    #[serde(default)]
    headers: Headers,
    body: Option<Value>,
    events: Option<Vec<Value>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectResponse {
    status: Option<u16>,
    #[serde(default)]
    headers: Headers,
    body: Option<Value>,
    events: Option<Vec<Value>>,
}

/// A fixture ready to run.
#[derive(Debug)]
struct Loaded {
    name: String,
    file: PathBuf,
    /// The fixture's own config file, resolved; `None` = the config `run` was given.
    config: Option<PathBuf>,
    fixture: Fixture,
}

/// A header value as text: strings as they are, numbers and booleans printed, `null` = none.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

fn check_header_map(at: &str, headers: &Headers, null_allowed: bool, errors: &mut Vec<String>) {
    for (name, value) in headers {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            errors.push(format!("{at}.headers: `{name}` is not a header name"));
        }
        match value {
            Value::Null if null_allowed => {}
            Value::Null => errors.push(format!("{at}.headers.{name}: needs a value")),
            Value::Array(_) | Value::Object(_) => {
                errors.push(format!("{at}.headers.{name}: must be a string"))
            }
            v => {
                let text = scalar_text(v).unwrap_or_default();
                if HeaderValue::from_str(&text).is_err() {
                    errors.push(format!(
                        "{at}.headers.{name}: not a valid header value: {text:?}"
                    ));
                }
            }
        }
    }
}

fn check_status(at: &str, status: Option<u16>, errors: &mut Vec<String>) {
    if let Some(s) = status {
        if !(100..=599).contains(&s) {
            errors.push(format!("{at}.status: {s} is not an HTTP status"));
        }
    }
}

/// Problems a fixture has before it runs (they would otherwise surface as confusing failures).
fn validate(f: &Fixture) -> Vec<String> {
    let mut errors = Vec::new();
    if let Some(m) = &f.request.method {
        if Method::from_bytes(m.as_bytes()).is_err() {
            errors.push(format!("request.method: `{m}` is not an HTTP method"));
        }
    }
    if let Some(p) = &f.request.path {
        if !p.starts_with('/') {
            errors.push(format!("request.path: `{p}` must start with /"));
        }
    }
    check_header_map("request", &f.request.headers, false, &mut errors);
    if let Some(e) = &f.expect_upstream {
        check_header_map("expect_upstream", &e.headers, true, &mut errors);
    }
    if let Some(c) = &f.upstream_response {
        check_status("upstream_response", c.status, &mut errors);
        check_header_map("upstream_response", &c.headers, false, &mut errors);
        if c.body.is_some() && c.events.is_some() {
            errors.push("upstream_response: give `body` or `events`, not both".into());
        }
    }
    if let Some(e) = &f.expect_response {
        check_status("expect_response", e.status, &mut errors);
        check_header_map("expect_response", &e.headers, true, &mut errors);
        if e.body.is_some() && e.events.is_some() {
            errors.push("expect_response: give `body` or `events`, not both".into());
        }
    }
    errors
}

/// Reads one fixture file; every problem in it is reported, with the file name.
fn load_file(path: &Path) -> Result<Vec<Loaded>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let probe: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| format!("{shown}: {e}"))?;
    let (list_config, fixtures, single) = if probe.get("fixtures").is_some() {
        let list: FixtureList = serde_yaml::from_str(&text).map_err(|e| format!("{shown}: {e}"))?;
        if list.fixtures.is_empty() {
            return Err(format!("{shown}: `fixtures:` is empty"));
        }
        (list.config, list.fixtures, false)
    } else {
        let one: Fixture = serde_yaml::from_str(&text).map_err(|e| format!("{shown}: {e}"))?;
        (None, vec![one], true)
    };
    let dir = path.parent().unwrap_or(Path::new(""));
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "fixture".into());
    let mut loaded = Vec::with_capacity(fixtures.len());
    let mut errors = Vec::new();
    for (i, fixture) in fixtures.into_iter().enumerate() {
        let name = match &fixture.name {
            Some(n) => n.clone(),
            None if single => stem.clone(),
            None => format!("{stem}[{}]", i + 1),
        };
        for e in validate(&fixture) {
            errors.push(format!("{shown}: fixture `{name}`: {e}"));
        }
        let config = fixture
            .config
            .clone()
            .or_else(|| list_config.clone())
            .map(|c| dir.join(c));
        loaded.push(Loaded {
            name,
            file: path.to_path_buf(),
            config,
            fixture,
        });
    }
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(errors.join("\n"))
    }
}

// === running ===

/// Loads each fixture file (YAML; one fixture per file, or a list under `fixtures:`), runs
/// them all, and returns one report per fixture, in order.
///
/// `config` is used by fixtures that do not name their own `config:`. Unreadable or malformed
/// fixture files fail the whole run (`Err`, every problem listed); a fixture config that does
/// not load or build fails the fixtures that use it.
pub async fn run(config: Config, fixture_paths: &[PathBuf]) -> Result<Vec<FixtureReport>, String> {
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    for path in fixture_paths {
        match load_file(path) {
            Ok(l) => loaded.extend(l),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("\n"));
    }
    if loaded.is_empty() {
        return Err("no fixture files given".into());
    }

    let upstream = RecordingUpstream::spawn()
        .await
        .map_err(|e| format!("cannot start the fixture upstream on 127.0.0.1: {e}"))?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| format!("cannot build the fixture HTTP client: {e}"))?;

    // One gateway per distinct config, started when first needed.
    let mut gateways: Vec<(Option<PathBuf>, Result<ServerHandle, String>)> = Vec::new();
    let mut reports = Vec::with_capacity(loaded.len());
    for l in &loaded {
        let key = l.config.as_deref().map(canonical);
        let idx = match gateways.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                let cfg = match &l.config {
                    None => Ok(config.clone()),
                    Some(p) => Config::from_file(p)
                        .map_err(|e| format!("the fixture's config does not load:\n{e}")),
                };
                let gw = match cfg {
                    Ok(cfg) => start_gateway(cfg, upstream.addr).await,
                    Err(e) => Err(e),
                };
                gateways.push((key, gw));
                gateways.len() - 1
            }
        };
        let report = match &gateways[idx].1 {
            Ok(gw) => run_one(&client, &upstream, gw.addr, l).await,
            Err(e) => FixtureReport {
                name: l.name.clone(),
                file: l.file.clone(),
                passed: false,
                failures: vec![e.clone()],
            },
        };
        reports.push(report);
    }

    // Close the client's pooled connections first, so the gateways drain at once.
    drop(client);
    for (_, gw) in gateways {
        if let Ok(gw) = gw {
            let _ = tokio::time::timeout(Duration::from_secs(2), gw.shutdown()).await;
        }
    }
    Ok(reports)
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

async fn start_gateway(config: Config, upstream: SocketAddr) -> Result<ServerHandle, String> {
    let config = prepare_config(config, upstream);
    let runtime =
        Runtime::new(config).map_err(|e| format!("the gateway could not be built: {e}"))?;
    server::spawn(runtime, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(|e| format!("cannot start the gateway on 127.0.0.1: {e}"))
}

/// Points every upstream at the recording upstream and makes credentials static (see the
/// module docs for the full list).
fn prepare_config(mut config: Config, upstream: SocketAddr) -> Config {
    let origin = format!("http://{upstream}");
    for def in &mut config.upstreams {
        def.chat_url = retarget(&def.chat_url, &origin);
        def.base_url = retarget(&def.base_url, &origin);
        def.models_url = retarget(&def.models_url, &origin);
        def.proxy = None;
    }
    config.upstream.api_host = retarget(&config.upstream.api_host, &origin);
    config.upstream.proxy = None;
    for (name, spec) in &mut config.credentials {
        *spec = crate::credentials::CredentialSpec::Static {
            key: Secret::new(format!("fixture-credential-{name}")),
        };
    }
    if !config.keys.iter().any(is_fixture_key) {
        config.keys.push(KeyConfig::new(
            KeyId::Plain(Secret::new(FIXTURE_KEY)),
            "fixture",
            Some(Secret::new(FIXTURE_UPSTREAM_KEY)),
        ));
    }
    config.models_cache_ttl = Duration::ZERO;
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    // A reload (`POST /admin/reload`) would re-read the file and undo all of the above: the
    // fixture gateway has no file to reload.
    config.source = None;
    config
}

fn is_fixture_key(k: &KeyConfig) -> bool {
    match &k.id {
        KeyId::Plain(s) => s.expose() == FIXTURE_KEY,
        KeyId::Sha256(d) => *d == <[u8; 32]>::from(Sha256::digest(FIXTURE_KEY.as_bytes())),
    }
}

/// `url` with its scheme and authority replaced by `origin`; path, query and fragment kept.
fn retarget(url: &str, origin: &str) -> String {
    let rest = url.find("://").map_or(url, |i| &url[i + 3..]);
    let path_at = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    format!("{origin}{}", &rest[path_at..])
}

/// What the client got from the gateway.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

async fn send(
    client: &reqwest::Client,
    gateway: SocketAddr,
    spec: &RequestSpec,
) -> Result<Answer, String> {
    let method = Method::from_bytes(spec.method.as_deref().unwrap_or("POST").as_bytes())
        .map_err(|e| format!("request.method: {e}"))?;
    let path = spec.path.as_deref().unwrap_or("/v1/chat/completions");
    let mut rb = client.request(method, format!("http://{gateway}{path}"));
    let mut has_auth = false;
    let mut has_content_type = false;
    for (name, value) in &spec.headers {
        let Some(text) = scalar_text(value) else {
            continue;
        };
        has_auth |= name.eq_ignore_ascii_case("authorization");
        has_content_type |= name.eq_ignore_ascii_case("content-type");
        rb = rb.header(name.as_str(), text);
    }
    if !has_auth {
        rb = rb.bearer_auth(spec.key.as_deref().unwrap_or(FIXTURE_KEY));
    }
    if let Some(body) = &spec.body {
        let bytes = match body {
            Value::String(s) => s.clone().into_bytes(),
            v => v.to_string().into_bytes(),
        };
        if !has_content_type {
            rb = rb.header("content-type", "application/json");
        }
        rb = rb.body(bytes);
    }
    let resp = rb
        .send()
        .await
        .map_err(|e| format!("the request to the gateway failed: {}", error_chain(&e)))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("reading the gateway's answer failed: {}", error_chain(&e)))?;
    Ok(Answer {
        status,
        headers,
        body,
    })
}

async fn run_one(
    client: &reqwest::Client,
    upstream: &RecordingUpstream,
    gateway: SocketAddr,
    l: &Loaded,
) -> FixtureReport {
    let f = &l.fixture;
    upstream.reset(f.upstream_response.clone());
    let mut failures = Vec::new();
    match send(client, gateway, &f.request).await {
        Err(e) => failures.push(e),
        Ok(answer) => {
            let recorded = upstream.take();
            if let Some(exp) = &f.expect_upstream {
                match recorded.first() {
                    Some(r) => check_upstream(exp, r, &mut failures),
                    None => failures.push(format!(
                        "the gateway did not call the upstream; it answered {} {}",
                        answer.status,
                        show_bytes(&answer.body)
                    )),
                }
            }
            if let Some(exp) = &f.expect_response {
                check_response(exp, &answer, &mut failures);
            }
        }
    }
    FixtureReport {
        name: l.name.clone(),
        file: l.file.clone(),
        passed: failures.is_empty(),
        failures,
    }
}

// === comparing ===

fn check_upstream(exp: &ExpectUpstream, got: &Recorded, failures: &mut Vec<String>) {
    if let Some(m) = &exp.method {
        if !m.eq_ignore_ascii_case(&got.method) {
            failures.push(format!("upstream method: expected {m}, got {}", got.method));
        }
    }
    if let Some(p) = &exp.path {
        if *p != got.path {
            failures.push(format!("upstream path: expected {p:?}, got {:?}", got.path));
        }
    }
    check_headers("upstream", &exp.headers, &got.headers, failures);
    if exp.body.is_none() && exp.body_absent.is_empty() {
        return;
    }
    let parsed = serde_json::from_slice::<Value>(&got.body);
    if let Some(want) = &exp.body {
        check_body(
            "upstream body",
            want,
            &got.body,
            parsed.as_ref().ok(),
            failures,
        );
    }
    if !exp.body_absent.is_empty() {
        match parsed.as_ref().ok().and_then(Value::as_object) {
            Some(obj) => {
                for key in &exp.body_absent {
                    if let Some(v) = obj.get(key) {
                        failures.push(format!(
                            "upstream body: `{key}` should be absent, found {}",
                            show(v)
                        ));
                    }
                }
            }
            None => failures.push(format!(
                "upstream body is not a JSON object: {}",
                show_bytes(&got.body)
            )),
        }
    }
}

fn check_response(exp: &ExpectResponse, got: &Answer, failures: &mut Vec<String>) {
    if let Some(s) = exp.status {
        if s != got.status {
            failures.push(format!(
                "response status: expected {s}, got {} {}",
                got.status,
                show_bytes(&got.body)
            ));
        }
    }
    check_headers("response", &exp.headers, &got.headers, failures);
    if let Some(want) = &exp.body {
        let parsed = serde_json::from_slice::<Value>(&got.body).ok();
        check_body("response body", want, &got.body, parsed.as_ref(), failures);
    }
    if let Some(want) = &exp.events {
        let events = sse_data(&got.body);
        check_events(want, &events, got, failures);
    }
}

fn check_body(
    what: &str,
    want: &Value,
    raw: &[u8],
    parsed: Option<&Value>,
    failures: &mut Vec<String>,
) {
    match (parsed, want) {
        (Some(got), _) => match_json(want, got)
            .into_iter()
            .for_each(|m| failures.push(format!("{what}: {m}"))),
        (None, Value::String(text)) => {
            if text.as_bytes() != raw {
                failures.push(format!(
                    "{what}: expected {text:?}, got {}",
                    show_bytes(raw)
                ));
            }
        }
        (None, _) => failures.push(format!("{what} is not JSON: {}", show_bytes(raw))),
    }
}

fn check_events(want: &[Value], got: &[String], answer: &Answer, failures: &mut Vec<String>) {
    if want.len() != got.len() {
        let content_type = answer
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        let listing = if got.is_empty() {
            format!(
                "(content-type {content_type}) body {}",
                show_bytes(&answer.body)
            )
        } else {
            got.iter()
                .enumerate()
                .map(|(i, d)| format!("\n  event {}: {}", i + 1, clip(d)))
                .collect::<String>()
        };
        failures.push(format!(
            "response events: expected {}, got {}: {listing}",
            want.len(),
            got.len()
        ));
        return;
    }
    for (i, (w, data)) in want.iter().zip(got).enumerate() {
        let n = i + 1;
        match (w, serde_json::from_str::<Value>(data)) {
            (Value::String(text), Err(_)) => {
                if text != data {
                    failures.push(format!(
                        "event {n}: expected {text:?}, got {:?}",
                        clip(data)
                    ));
                }
            }
            (_, Ok(v)) => {
                for m in match_json(w, &v) {
                    failures.push(format!("event {n}: {m}"));
                }
            }
            (_, Err(_)) => failures.push(format!(
                "event {n}: expected {}, got the non-JSON {:?}",
                show(w),
                clip(data)
            )),
        }
    }
}

fn check_headers(what: &str, want: &Headers, got: &HeaderMap, failures: &mut Vec<String>) {
    for (name, value) in want {
        let lower = name.to_ascii_lowercase();
        let values: Vec<String> = got
            .get_all(lower.as_str())
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        let actual = (!values.is_empty()).then(|| values.join(", "));
        match (scalar_text(value), actual) {
            (None, None) => {}
            (None, Some(a)) => {
                failures.push(format!("{what} header {lower}: expected absent, got {a:?}"))
            }
            (Some(w), None) => failures.push(format!(
                "{what} header {lower}: expected {w:?}, but it is absent"
            )),
            (Some(w), Some(a)) if w != a => {
                failures.push(format!("{what} header {lower}: expected {w:?}, got {a:?}"))
            }
            (Some(_), Some(_)) => {}
        }
    }
}

/// Subset match: every key of an expected object must match; everything else must be equal.
/// Returns one message per mismatch, located by a path such as `choices.delta` (arrays are
/// compared whole, so a path never goes inside one).
fn match_json(want: &Value, got: &Value) -> Vec<String> {
    let mut out = Vec::new();
    mismatches(want, got, "", &mut out);
    out
}

fn mismatches(want: &Value, got: &Value, at: &str, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                let here = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match g.get(k) {
                    Some(gv) => mismatches(wv, gv, &here, out),
                    None => out.push(format!("{here}: expected {}, but it is absent", show(wv))),
                }
            }
        }
        _ if json_eq(want, got) => {}
        _ => {
            let here = if at.is_empty() { "(whole)" } else { at };
            out.push(format!(
                "{here}: expected {}, got {}",
                show(want),
                show(got)
            ));
        }
    }
}

/// Deep equality with numbers compared by value.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || matches!((x.as_f64(), y.as_f64()), (Some(p), Some(q)) if p == q)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// The `data` of every event in an SSE body (multi-line data joined with `\n`).
fn sse_data(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut data: Option<String> = None;
        for line in block.lines() {
            if let Some(rest) = line.strip_prefix("data:") {
                let rest = rest.strip_prefix(' ').unwrap_or(rest);
                match &mut data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(rest);
                    }
                    None => data = Some(rest.to_owned()),
                }
            }
        }
        out.extend(data);
    }
    out
}

fn clip(s: &str) -> String {
    if s.len() <= SHOW_MAX {
        return s.to_owned();
    }
    let mut end = SHOW_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn show(v: &Value) -> String {
    clip(&v.to_string())
}

fn show_bytes(b: &[u8]) -> String {
    if b.is_empty() {
        return "(empty body)".into();
    }
    clip(&String::from_utf8_lossy(b))
}

// === the recording upstream ===

/// One request as the upstream received it.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    /// Path and query.
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Default)]
struct UpstreamState {
    canned: Mutex<Option<CannedResponse>>,
    recorded: Mutex<Vec<Recorded>>,
}

/// A loopback HTTP server that records every request and answers with the current fixture's
/// canned response.
struct RecordingUpstream {
    addr: SocketAddr,
    state: Arc<UpstreamState>,
    /// Stops the server and closes open connections when dropped.
    _server: ServerGuard,
}

impl RecordingUpstream {
    async fn spawn() -> std::io::Result<RecordingUpstream> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(UpstreamState::default());
        let handler_state = state.clone();
        let server = loopback::spawn(listener, move |req| {
            let state = handler_state.clone();
            async move { answer(req, &state).await }
        });
        Ok(RecordingUpstream {
            addr,
            state,
            _server: server,
        })
    }

    /// Forgets earlier requests and sets the answer for the next fixture.
    fn reset(&self, canned: Option<CannedResponse>) {
        if let Ok(mut c) = self.state.canned.lock() {
            *c = canned;
        }
        if let Ok(mut r) = self.state.recorded.lock() {
            r.clear();
        }
    }

    fn take(&self) -> Vec<Recorded> {
        self.state
            .recorded
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    state: &UpstreamState,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let rec = Recorded {
        method: parts.method.as_str().to_owned(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
        headers: parts.headers,
        body,
    };
    let canned = state.canned.lock().ok().and_then(|c| c.clone());
    let resp = respond(canned.as_ref(), &rec);
    // Recorded before the answer leaves, so it is there when the client has its response.
    if let Ok(mut r) = state.recorded.lock() {
        r.push(rec);
    }
    resp
}

fn respond(canned: Option<&CannedResponse>, rec: &Recorded) -> Response<Full<Bytes>> {
    let (content_type, body) = match canned {
        Some(CannedResponse {
            events: Some(events),
            ..
        }) => ("text/event-stream", sse_bytes(events)),
        Some(CannedResponse {
            body: Some(Value::String(text)),
            ..
        }) => ("text/plain; charset=utf-8", Bytes::from(text.clone())),
        Some(CannedResponse { body: Some(v), .. }) => {
            ("application/json", Bytes::from(v.to_string()))
        }
        _ => default_answer(rec),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = canned
        .and_then(|c| c.status)
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    for (name, value) in canned.map(|c| &c.headers).into_iter().flatten() {
        let (Ok(n), Some(Ok(v))) = (
            HeaderName::from_bytes(name.as_bytes()),
            scalar_text(value).map(|t| HeaderValue::from_str(&t)),
        ) else {
            continue;
        };
        resp.headers_mut().insert(n, v);
    }
    resp
}

fn sse_bytes(events: &[Value]) -> Bytes {
    let mut out = String::new();
    for ev in events {
        match ev {
            Value::String(s) => {
                let _ = write!(out, "data: {s}\n\n");
            }
            v => {
                let _ = write!(out, "data: {v}\n\n");
            }
        }
    }
    Bytes::from(out)
}

/// A minimal OpenAI answer for the request: a model list, a chat completion, or its stream.
fn default_answer(rec: &Recorded) -> (&'static str, Bytes) {
    let route = rec.path.split('?').next().unwrap_or_default();
    if rec.method == "GET" && route.ends_with("/models") {
        let list = json!({"object": "list", "data": [
            {"id": "fixture-model", "object": "model", "created": 0, "owned_by": "fixture"}
        ]});
        return ("application/json", Bytes::from(list.to_string()));
    }
    let req: Value = serde_json::from_slice(&rec.body).unwrap_or(Value::Null);
    let model = req
        .get("model")
        .or_else(|| req.get("model_id"))
        .and_then(Value::as_str)
        .unwrap_or("fixture-model");
    let content = "Hello from the fixture upstream.";
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        let chunk = |delta: Value, finish: Value| {
            json!({
                "id": "chatcmpl-fixture", "object": "chat.completion.chunk", "created": 0,
                "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            })
        };
        let events = [
            chunk(
                json!({"role": "assistant", "content": content}),
                Value::Null,
            ),
            chunk(json!({}), json!("stop")),
            json!("[DONE]"),
        ];
        return ("text/event-stream", sse_bytes(&events));
    }
    let completion = json!({
        "id": "chatcmpl-fixture", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 6, "total_tokens": 7},
    });
    ("application/json", Bytes::from(completion.to_string()))
}

// === the report ===

/// Human-readable report: one `PASS`/`FAIL` line per fixture, its failures indented under it,
/// and a final line `N passed, M failed` (no trailing newline).
pub fn render(reports: &[FixtureReport]) -> String {
    let mut out = String::new();
    for r in reports {
        let verdict = if r.passed { "PASS" } else { "FAIL" };
        let _ = writeln!(out, "{verdict}  {}  ({})", r.name, r.file.display());
        for failure in &r.failures {
            for (i, line) in failure.lines().enumerate() {
                let lead = if i == 0 { "      - " } else { "        " };
                let _ = writeln!(out, "{lead}{line}");
            }
        }
    }
    let passed = reports.iter().filter(|r| r.passed).count();
    let _ = write!(out, "{passed} passed, {} failed", reports.len() - passed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retarget_keeps_path_and_query() {
        let o = "http://127.0.0.1:9";
        assert_eq!(
            retarget(
                "https://www.sophnet.com/api/open-apis/v1/chat/completions",
                o
            ),
            "http://127.0.0.1:9/api/open-apis/v1/chat/completions"
        );
        assert_eq!(
            retarget("https://u:p@h.example:8443/v1?x=1", o),
            "http://127.0.0.1:9/v1?x=1"
        );
        assert_eq!(retarget("https://h.example", o), "http://127.0.0.1:9");
        assert_eq!(retarget("https://h.example?q", o), "http://127.0.0.1:9?q");
    }

    #[test]
    fn subset_match() {
        let got = json!({"a": 1, "b": {"c": [1, {"d": 2}], "e": "x"}, "f": null});
        assert!(match_json(&json!({"b": {"e": "x"}}), &got).is_empty());
        assert!(match_json(&json!({"a": 1.0, "f": null}), &got).is_empty());
        assert!(match_json(&json!({"b": {"c": [1, {"d": 2}]}}), &got).is_empty());
        // Arrays are exact: a subset of an element does not match.
        let m = match_json(&json!({"b": {"c": [1, {}]}}), &got);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m[0].starts_with("b.c: expected"), "{m:?}");
        let m = match_json(&json!({"b": {"e": "y"}, "g": 1}), &got);
        assert_eq!(
            m,
            vec![
                "b.e: expected \"y\", got \"x\"".to_string(),
                "g: expected 1, but it is absent".to_string()
            ]
        );
        assert!(!match_json(&json!("x"), &got).is_empty());
    }

    #[test]
    fn sse_parsing() {
        let body = b"data: {\"a\":1}\n\n: comment\n\nevent: x\r\ndata: line1\r\ndata:line2\r\n\r\ndata: [DONE]\n\n";
        assert_eq!(sse_data(body), vec!["{\"a\":1}", "line1\nline2", "[DONE]"]);
    }

    #[test]
    fn render_counts() {
        let reports = vec![
            FixtureReport {
                name: "a".into(),
                file: "f.yml".into(),
                passed: true,
                failures: vec![],
            },
            FixtureReport {
                name: "b".into(),
                file: "f.yml".into(),
                passed: false,
                failures: vec!["upstream path: expected \"/x\", got \"/y\"".into()],
            },
        ];
        let text = render(&reports);
        assert!(text.contains("PASS  a  (f.yml)"), "{text}");
        assert!(
            text.contains("FAIL  b  (f.yml)\n      - upstream path"),
            "{text}"
        );
        assert!(text.ends_with("1 passed, 1 failed"), "{text}");
    }
}
