//! Stage 6: sends the request to the upstream with the principal's credential and turns the
//! answer into the client's response. Status and headers pass through minus hop-by-hop ones;
//! the body is relayed as it arrives (event by event for SSE); errors the upstream sends pass
//! through unchanged. Only failures to get an answer at all become gateway errors (502/504).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Response};
use tokio::sync::Semaphore;

use super::errors::map_send_error;
use super::models_cache::ModelsCache;
use crate::config::UpstreamDef;
use crate::error::{ErrorKind, GatewayError};
use crate::gateway::relay::body::{Relay, ResponseBody, UpstreamStream};
use crate::gateway::request_id::REQUEST_ID;
use crate::http::client::pool::{ConnPool, PoolError, PoolRequest};
use crate::http::client::transport::TlsSetup;
use crate::http::{headers, wire};

/// One upstream as used by one generation: its pooled client and resolved URLs.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    /// `name`, shared: the `upstream` label of the metrics and the end record.
    pub label: Arc<str>,
    /// Name of the credential this upstream uses, if any.
    pub credential: Option<String>,
    /// Proxied requests, targets the pool cannot send as they are, and the model list.
    client: reqwest::Client,
    /// Upstreams without a proxy (http:// and https://): inline-driven pooled connections, with the
    /// `Host` header value to send.
    pool: Option<(Arc<ConnPool>, HeaderValue)>,
    chat_url: String,
    /// Other `/v1/<rest>` requests go to `base_url + "/" + rest`.
    base_url: String,
    models_url: String,
    /// `scheme://host[:port]` of the chat URL (for script-chosen paths).
    origin: String,
    limiter: Option<Arc<Semaphore>>,
    first_byte_timeout: Duration,
    stream_idle_timeout: Duration,
    total_timeout: Option<Duration>,
    /// This upstream's `/models` list, cached.
    pub models_cache: ModelsCache,
}

/// The request as it leaves the pipeline.
pub struct OutboundRequest<'a> {
    pub method: Method,
    pub url: Cow<'a, str>,
    pub headers: &'a HeaderMap,
    pub authorization: Option<&'a HeaderValue>,
    pub request_id: Option<&'a HeaderValue>,
    /// `traceparent`/`tracestate` of the attempt's span (empty when tracing is off); they
    /// replace the client's own.
    pub trace_context: &'a [(HeaderName, HeaderValue)],
    /// Borrowed: the pooled client writes it from here, so a retry (or the usual single
    /// attempt) costs no reference count, and a body the gateway rewrote is never promoted to
    /// a shared buffer (an allocation); only reqwest's path takes a handle of its own.
    pub body: &'a Bytes,
}

/// Whether a client header goes upstream: not hop-by-hop (by name, or named in the client's
/// `Connection` header: `listed`), not one the gateway sets itself, and no `_` in its name
/// (nginx's default, `underscores_in_headers off`: `x_api_key` and `x-api-key` may be one
/// header to a server behind us that maps `-` to `_`, which lets a client smuggle a second
/// value of a header past our view of it).
fn goes_upstream(name: &HeaderName, listed: &[HeaderName]) -> bool {
    if name.as_str().contains('_') {
        return false;
    }
    let gateway_owned = matches!(
        name.as_str(),
        "proxy-authorization"
            | "host"
            | "content-length"
            | "authorization"
            | "accept-encoding"
            | "x-request-id"
    );
    !gateway_owned && !headers::is_hop_by_hop(name) && !listed.contains(name)
}

/// The header names a `Connection` header lists (RFC 9110 §7.6.1). `close` names no header
/// and `keep-alive` is hop-by-hop anyway, so the usual `Connection: keep-alive` costs no
/// allocation.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(headers::connection_tokens)
        .filter(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect()
}

static AUTHORIZATION: HeaderName = header::AUTHORIZATION;

/// The header lines that go upstream, for either client: the client's headers minus
/// hop-by-hop and gateway-owned ones (borrowed, not copied; a retry sends them again), then the
/// upstream credential and the request id.
fn upstream_header_lines<'a>(
    client: &'a HeaderMap,
    authorization: Option<&'a HeaderValue>,
    request_id: Option<&'a HeaderValue>,
) -> Vec<(&'a HeaderName, &'a HeaderValue)> {
    let listed = connection_listed(client);
    let mut lines = Vec::with_capacity(client.len() + 2);
    lines.extend(client.iter().filter(|(n, _)| goes_upstream(n, &listed)));
    lines.extend(authorization.map(|v| (&AUTHORIZATION, v)));
    lines.extend(request_id.map(|v| (&REQUEST_ID, v)));
    lines
}

/// `headers` without hop-by-hop headers (reqwest's answers; the pooled client's parser leaves
/// them out itself).
fn strip_hop_by_hop(mut map: HeaderMap) -> HeaderMap {
    for name in connection_listed(&map) {
        map.remove(name);
    }
    for name in &headers::HOP_BY_HOP {
        map.remove(name);
    }
    map
}

pub fn is_event_stream(headers: &HeaderMap) -> bool {
    const SSE: &[u8] = b"text/event-stream";
    headers
        .get(header::CONTENT_TYPE)
        .map(|v| {
            let b = v.as_bytes().trim_ascii_start();
            b.len() >= SSE.len() && b[..SSE.len()].eq_ignore_ascii_case(SSE)
        })
        .unwrap_or(false)
}

impl Upstream {
    pub fn new(def: &UpstreamDef) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(def.connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(def.keepalive_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy();
        if let Some(n) = def.pool_max_idle {
            builder = builder.pool_max_idle_per_host(n);
        }
        for der in &def.ca_certs {
            let cert = reqwest::Certificate::from_der(der)
                .map_err(|e| format!("upstream {}: a ca_file certificate: {e}", def.name))?;
            builder = builder.add_root_certificate(cert);
        }
        if let Some(proxy) = &def.proxy {
            let p = reqwest::Proxy::all(proxy.expose())
                .map_err(|_| format!("upstream {}: not a usable proxy URL", def.name))?;
            builder = builder.proxy(p);
        }
        let client = builder.build().map_err(|e| {
            format!(
                "cannot build the HTTP client for upstream {}: {e}",
                def.name
            )
        })?;
        let origin = origin_of(&def.chat_url);
        // Userinfo in the URL (`http://user:pass@host`) is left to reqwest: it must not end up
        // in a `Host` header or a connect address.
        let scheme_and_authority = origin
            .strip_prefix("http://")
            .map(|a| (false, a))
            .or_else(|| origin.strip_prefix("https://").map(|a| (true, a)));
        let pool = match (&def.proxy, scheme_and_authority) {
            (None, Some((tls, authority))) if !authority.is_empty() && !authority.contains('@') => {
                let addr = if has_port(authority) {
                    authority.to_owned()
                } else {
                    format!("{authority}:{}", if tls { 443 } else { 80 })
                };
                let host = HeaderValue::from_str(authority).map_err(|_| {
                    format!("upstream {}: `{authority}` is not a usable host", def.name)
                })?;
                let tls = if tls {
                    let name = host_of(authority);
                    Some(
                        TlsSetup::new(name, &def.ca_certs)
                            .map_err(|e| format!("upstream {}: {e}", def.name))?,
                    )
                } else {
                    None
                };
                let pool = ConnPool::new(
                    addr,
                    tls,
                    def.connect_timeout,
                    def.keepalive_timeout,
                    def.pool_max_idle,
                );
                Some((Arc::new(pool), host))
            }
            _ => None,
        };
        Ok(Upstream {
            name: def.name.clone(),
            label: Arc::from(def.name.as_str()),
            credential: def.credential.clone(),
            client,
            pool,
            chat_url: def.chat_url.clone(),
            base_url: def.base_url.clone(),
            models_url: def.models_url.clone(),
            origin,
            limiter: (def.max_concurrent > 0).then(|| Arc::new(Semaphore::new(def.max_concurrent))),
            first_byte_timeout: def.first_byte_timeout,
            stream_idle_timeout: def.idle_timeout,
            total_timeout: def.total_timeout,
            models_cache: Default::default(),
        })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn models_url(&self) -> &str {
        &self.models_url
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// URL for chat completions, keeping the client's query string.
    pub fn chat_url(&self, query: Option<&str>) -> Cow<'_, str> {
        match query {
            Some(q) if !q.is_empty() => Cow::Owned(format!("{}?{q}", self.chat_url)),
            // The usual chat request: the stored URL, not a copy of it.
            _ => Cow::Borrowed(&self.chat_url),
        }
    }

    /// URL for `/v1/<rest>`.
    pub fn url_for(&self, rest: &str, query: Option<&str>) -> String {
        with_query(&format!("{}/{}", self.base_url, rest), query)
    }

    /// Sends the request and builds the client response (headers now, body relayed later).
    pub async fn send(
        &self,
        out: OutboundRequest<'_>,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        // The wait for a `connection_limit` slot counts toward the first-byte timeout: when
        // every slot is held (by long streams, or clients that stopped reading) a request gets
        // its 504 in time instead of waiting for as long as they last.
        let (permit, first_byte_timeout) = match &self.limiter {
            Some(sem) => {
                let began = tokio::time::Instant::now();
                let acquired =
                    tokio::time::timeout(self.first_byte_timeout, sem.clone().acquire_owned())
                        .await;
                let permit = match acquired {
                    Err(_) => {
                        tracing::warn!(
                            upstream = %self.name,
                            "no connection_limit slot came free within first_byte_timeout"
                        );
                        return Err(self.first_byte_timeout_error());
                    }
                    Ok(p) => p.map_err(|_| GatewayError::internal("upstream limiter closed"))?,
                };
                let left = self.first_byte_timeout.saturating_sub(began.elapsed());
                (Some(permit), left)
            }
            None => (None, self.first_byte_timeout),
        };

        let mut lines = upstream_header_lines(out.headers, out.authorization, out.request_id);
        if !out.trace_context.is_empty() {
            lines.retain(|(n, _)| !crate::observe::trace::is_trace_context(n));
            lines.extend(out.trace_context.iter().map(|(n, v)| (n, v)));
        }
        // HEAD answers carry a Content-Length but no body.
        let bodiless = out.method == Method::HEAD;

        // A target that is not plain RFC 3986 text (a script may build a path with spaces, say)
        // goes through reqwest, which percent-encodes it.
        let pooled = self.pool.as_ref().and_then(|(pool, host)| {
            let path = out.url.strip_prefix(self.origin.as_str())?;
            let path = if path.is_empty() { "/" } else { path };
            wire::is_plain_target(path).then_some((pool, host, path))
        });
        // The answer's `Content-Length`: from the pooled client's head parse, or read here.
        let (status, upstream_headers, stream, given_len) = match pooled {
            Some((pool, host, target)) => {
                // The head is written straight from the client's headers: no map to copy.
                let request = PoolRequest {
                    method: &out.method,
                    target,
                    host,
                    headers: &lines,
                    body: out.body,
                    first_byte_timeout,
                };
                let answer = match pool.send(request).await {
                    Err(PoolError::FirstByteTimeout) => return Err(self.first_byte_timeout_error()),
                    Err(e) => return Err(map_pool_error(&e, &self.name)),
                    Ok(a) => a,
                };
                (
                    answer.status,
                    answer.headers,
                    UpstreamStream::Pooled(answer.body),
                    answer.length,
                )
            }
            None => {
                let headers: HeaderMap =
                    lines.iter().map(|&(n, v)| (n.clone(), v.clone())).collect();
                let request = self
                    .client
                    .request(out.method, &*out.url)
                    .headers(headers)
                    .body(out.body.clone())
                    .send();
                // Boxed: reqwest's future is large and would otherwise widen every caller's
                // state (and the moves of it) on the pooled path too.
                let request = Box::pin(request);
                let mut resp = match tokio::time::timeout(first_byte_timeout, request).await {
                    Err(_) => return Err(self.first_byte_timeout_error()),
                    Ok(Err(e)) => return Err(map_send_error(&e)),
                    Ok(Ok(r)) => r,
                };
                let headers = strip_hop_by_hop(std::mem::take(resp.headers_mut()));
                let given_len = wire::content_length(&headers).ok();
                (
                    resp.status(),
                    headers,
                    UpstreamStream::Stream(Box::pin(resp.bytes_stream())),
                    given_len,
                )
            }
        };

        let sse = is_event_stream(&upstream_headers);
        let expected_len = if sse
            || bodiless
            || status == http::StatusCode::NO_CONTENT
            || status == http::StatusCode::NOT_MODIFIED
        {
            None
        } else {
            given_len
        };
        let mut builder = Response::builder().status(status);
        if let Some(h) = builder.headers_mut() {
            // The upstream's own map (hop-by-hop headers already out), moved, not copied.
            *h = upstream_headers;
            if sse {
                h.remove(header::CONTENT_LENGTH);
                h.insert(
                    HeaderName::from_static("x-accel-buffering"),
                    HeaderValue::from_static("no"),
                );
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            }
        }
        let mut relay = Relay::new(stream, sse, self.stream_idle_timeout)
            .with_total_timeout(self.total_timeout)
            .with_expected_len(expected_len);
        if let Some(p) = permit {
            relay.guard(Box::new(p));
        }
        let body = ResponseBody::relay(relay);
        builder
            .body(body)
            .map_err(|_| GatewayError::internal("could not build the response"))
    }
}

impl Upstream {
    fn first_byte_timeout_error(&self) -> GatewayError {
        GatewayError::new(
            ErrorKind::GatewayTimeout,
            "upstream_timeout",
            format!(
                "The upstream did not answer within {} s",
                self.first_byte_timeout.as_secs_f64()
            ),
        )
    }
}

/// The host of `host[:port]` (an IPv6 literal keeps its brackets).
fn host_of(authority: &str) -> &str {
    if has_port(authority) {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    } else {
        authority
    }
}

/// Whether an authority (`host`, `host:port`, `[v6]`, `[v6]:port`) names a port.
fn has_port(authority: &str) -> bool {
    match authority.rfind(']') {
        Some(close) => authority[close..].contains(':'),
        None => authority.contains(':'),
    }
}

/// Maps a pooled-connection failure to 502/504 as [`map_send_error`] does for reqwest.
fn map_pool_error(e: &PoolError, upstream: &str) -> GatewayError {
    tracing::warn!(upstream, error = %e, "upstream request failed");
    match e {
        PoolError::ConnectTimeout | PoolError::FirstByteTimeout => GatewayError::new(
            ErrorKind::GatewayTimeout,
            "upstream_timeout",
            "The upstream did not answer in time",
        ),
        PoolError::Connect(_) => GatewayError::new(
            ErrorKind::BadGateway,
            "upstream_unreachable",
            "The upstream could not be reached",
        ),
        PoolError::Io(_) | PoolError::Protocol(_) => GatewayError::new(
            ErrorKind::BadGateway,
            "upstream_error",
            "The upstream request failed",
        ),
    }
}

/// `scheme://authority` of a URL.
fn origin_of(url: &str) -> String {
    match url.find("://") {
        Some(i) => {
            let rest = &url[i + 3..];
            let end = rest.find('/').map(|j| i + 3 + j).unwrap_or(url.len());
            url[..end].to_owned()
        }
        None => url.to_owned(),
    }
}

fn with_query(url: &str, query: Option<&str>) -> String {
    match query {
        Some(q) if !q.is_empty() => format!("{url}?{q}"),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream_for(api_host: &str, extra: &str) -> Upstream {
        let yaml = format!("api_host: \"{api_host}\"\n{extra}");
        let cfg = crate::config::Config::from_yaml(&yaml, &|_| None).unwrap();
        Upstream::new(&cfg.upstreams[0]).unwrap()
    }

    #[test]
    fn unproxied_upstreams_use_the_pool() {
        let plain = upstream_for("http://127.0.0.1:8000", "");
        let (_, host) = plain.pool.as_ref().unwrap();
        assert_eq!(host, "127.0.0.1:8000");
        let default_port = upstream_for("http://llm.internal", "");
        assert_eq!(default_port.pool.as_ref().unwrap().1, "llm.internal");
        let tls = upstream_for("https://api.sophnet.com", "");
        let (pool, host) = tls.pool.as_ref().unwrap();
        assert_eq!(host, "api.sophnet.com");
        assert!(format!("{pool:?}").contains("api.sophnet.com:443"));
        let v6 = upstream_for("https://[::1]:8443", "");
        assert_eq!(v6.pool.as_ref().unwrap().1, "[::1]:8443");
        assert!(upstream_for("http://user:pass@127.0.0.1:8000", "")
            .pool
            .is_none());
        assert!(
            upstream_for("http://127.0.0.1:8000", "proxy: \"http://127.0.0.1:3128\"")
                .pool
                .is_none()
        );
    }

    #[test]
    fn hosts_lose_only_their_port() {
        assert_eq!(host_of("llm.internal"), "llm.internal");
        assert_eq!(host_of("llm.internal:8443"), "llm.internal");
        assert_eq!(host_of("[::1]:8443"), "[::1]");
        assert_eq!(host_of("[::1]"), "[::1]");
    }

    #[test]
    fn ports_are_found_in_v4_v6_and_names() {
        assert!(has_port("127.0.0.1:80"));
        assert!(has_port("[::1]:8080"));
        assert!(!has_port("[::1]"));
        assert!(!has_port("example.com"));
    }

    #[test]
    fn hop_by_hop_response_headers_are_removed_in_place() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Hop"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-kept", HeaderValue::from_static("2"));
        let out = strip_hop_by_hop(h);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "x-kept"]);
    }

    #[test]
    fn client_headers_lose_hop_by_hop_and_gateway_owned_ones() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CONNECTION, HeaderValue::from_static("X-Hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer client-key"),
        );
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        h.insert(header::HOST, HeaderValue::from_static("gateway"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        h.insert("x-request-id", HeaderValue::from_static("client-id"));
        h.insert("x-kept", HeaderValue::from_static("2"));
        h.insert("x_api_key", HeaderValue::from_static("3"));
        h.insert("x-request_id", HeaderValue::from_static("4"));
        let out = upstream_header_lines(&h, None, None);
        let names: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["content-type", "x-kept"]);
        assert_eq!(h.len(), 12, "the client's map is left as it was");
    }

    #[test]
    fn no_hop_by_hop_header_goes_upstream() {
        for name in &crate::http::headers::HOP_BY_HOP {
            assert!(!goes_upstream(name, &[]), "{name}");
        }
        assert!(goes_upstream(&header::CONTENT_TYPE, &[]));
        let listed = [HeaderName::from_static("x-hop")];
        assert!(!goes_upstream(&HeaderName::from_static("x-hop"), &listed));
    }

    #[test]
    fn event_stream_detection_ignores_case_and_parameters() {
        let ct = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
            is_event_stream(&h)
        };
        assert!(ct("text/event-stream"));
        assert!(ct(" Text/Event-Stream; charset=utf-8"));
        assert!(!ct("application/json"));
        assert!(!ct("text/event"));
        assert!(!is_event_stream(&HeaderMap::new()));
    }

    #[tokio::test]
    async fn logged_upstream_errors_drop_the_query() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{port}/v1/x?api_key=SECRET"))
            .send()
            .await
            .unwrap_err();
        let text = crate::gateway::upstream::errors::upstream_error_text(&e);
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("/v1/x"), "{text}");
    }
}
