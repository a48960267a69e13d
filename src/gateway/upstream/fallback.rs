//! Sends a prepared request along its plan: before the first byte reaches the client, a
//! connect error, timeout, 429 or 5xx moves on to the next upstream (bounded attempts,
//! jittered exponential backoff, Retry-After honoured); a 401 on a fetched token refetches
//! once and retries; a pooled key answered 429/401 cools down and one other key is tried.
//! Once a response is handed to the client nothing is retried.

use std::time::Duration;

use http::{HeaderMap, Response, StatusCode};

use super::credential::{credential_for, CredentialChoice};
use super::forward::OutboundRequest;
use super::prepared::Prepared;
use crate::credentials::Credentials;
use crate::error::{ErrorKind, GatewayError};
use crate::gateway::relay::body::ResponseBody;
use crate::gateway::request_id::RequestId;
use crate::observe::live;
use crate::observe::metrics::{self, attempt};
use crate::observe::trace::RequestTrace;

/// Retry-After longer than this is not waited out for a retry on the same upstream.
const MAX_RETRY_AFTER_WAIT: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// `Retry-After` in seconds (the HTTP-date form is ignored).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
}

/// Cheap jitter in [0.5, 1.0) without a random-number crate.
fn jitter() -> f64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(7);
    let x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    0.5 + (x as f64 / (1u64 << 24) as f64) * 0.5
}

fn backoff(base: Duration, attempt: usize) -> Duration {
    if base.is_zero() {
        return Duration::ZERO;
    }
    let exp = base.saturating_mul(1u32 << attempt.min(8));
    exp.min(MAX_BACKOFF).mul_f64(jitter())
}

fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

pub async fn send(
    credentials: &Credentials,
    p: &Prepared,
    rid: &RequestId,
    mut trace: Option<&mut RequestTrace>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let n = p.plan.upstreams.len().max(1);
    let mut last_err: Option<GatewayError> = None;
    let mut refetched = false;
    let mut pool_retried = false;
    let mut attempt = 0usize;
    while attempt < p.plan.attempts {
        let Some(upstream) = p.plan.upstreams.get(attempt % n) else {
            break;
        };
        let choice = credential_for(credentials, &p.principal, upstream);
        let lease = match &choice {
            CredentialChoice::Named(c) => match c.lease().await {
                Ok(l) => Some(l),
                Err(e) => {
                    last_err = Some(e.into_gateway_error());
                    attempt += 1;
                    continue;
                }
            },
            _ => None,
        };
        let authorization = match (&choice, &lease) {
            (CredentialChoice::Named(_), Some(l)) => Some(&l.authorization),
            (CredentialChoice::Header(h), _) => Some(h),
            _ => None,
        };
        let url = p.target.url(upstream, p.query.as_deref());
        // This attempt's CLIENT span: ends when dropped (a retry) or with the body it returns.
        let span = trace
            .as_deref_mut()
            .map(|t| t.attempt(&upstream.name, &p.method, &url));
        let result = upstream
            .send(OutboundRequest {
                method: p.method.clone(),
                url,
                headers: &p.headers,
                authorization,
                request_id: Some(rid.header()),
                trace_context: span.as_ref().map_or(&[], |s| s.headers()),
                body: &p.body,
            })
            .await;
        let last_attempt = attempt + 1 >= p.plan.attempts;
        match result {
            Err(e) => {
                live::upstream_attempt(&upstream.name, live::Outcome::of_error_code(e.code));
                if let Some(s) = &span {
                    s.failed(e.code);
                }
                tracing::debug!(request_id = %rid, upstream = %upstream.name, code = e.code, "attempt failed");
                let outcome = if e.kind == ErrorKind::GatewayTimeout {
                    attempt::TIMEOUT
                } else {
                    attempt::CONNECT_ERROR
                };
                metrics::upstream_attempt(&upstream.label, outcome);
                last_err = Some(e);
            }
            Ok(mut resp) => {
                let status = resp.status();
                live::upstream_attempt(&upstream.name, live::Outcome::of_status(status.as_u16()));
                if let Some(s) = &span {
                    s.answered(status.as_u16());
                }
                // Read for refusals only: a success is never retried and cools no key down.
                let wait_hint = if status.is_success() {
                    None
                } else {
                    retry_after(resp.headers())
                };
                if let (CredentialChoice::Named(c), Some(l)) = (&choice, &lease) {
                    c.report(l, status, wait_hint);
                    if status == StatusCode::UNAUTHORIZED && c.is_fetched() && !refetched {
                        // The token may have been revoked early: refetch once, same upstream.
                        refetched = true;
                        metrics::upstream_attempt(&upstream.label, attempt::HTTP_4XX);
                        c.invalidate(l);
                        drop(resp);
                        tracing::info!(request_id = %rid, credential = c.name(), "upstream refused the token; refetching once");
                        continue;
                    }
                    if c.is_pool()
                        && !pool_retried
                        && (status == StatusCode::TOO_MANY_REQUESTS
                            || status == StatusCode::UNAUTHORIZED)
                    {
                        // That key now cools down; one other key of the pool gets a go.
                        pool_retried = true;
                        metrics::upstream_attempt(
                            &upstream.label,
                            attempt::of_status(status.as_u16()),
                        );
                        drop(resp);
                        continue;
                    }
                }
                let next_same = p
                    .plan
                    .upstreams
                    .get((attempt + 1) % n)
                    .map(|u| u.name == upstream.name)
                    .unwrap_or(false);
                let long_wait = next_same && wait_hint.is_some_and(|w| w > MAX_RETRY_AFTER_WAIT);
                if !retryable(status) || last_attempt || long_wait {
                    if let Some(l) = lease {
                        if let Some(relay) = resp.body_mut().relay_mut() {
                            relay.guard(Box::new(l));
                        }
                    }
                    if let (Some(t), Some(s)) = (trace, span) {
                        t.keep_attempt(s);
                    }
                    // Counted when the answer ends (it may yet break).
                    resp.body_mut().served_by(upstream.label.clone());
                    return Ok(resp);
                }
                metrics::upstream_attempt(&upstream.label, attempt::of_status(status.as_u16()));
                tracing::debug!(request_id = %rid, upstream = %upstream.name, status = status.as_u16(), "retrying on the next upstream");
                drop(resp);
                let mut wait = backoff(p.plan.backoff, attempt);
                if next_same {
                    if let Some(hint) = wait_hint {
                        wait = wait.max(hint);
                    }
                }
                attempt += 1;
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                continue;
            }
        }
        attempt += 1;
        if attempt < p.plan.attempts {
            let wait = backoff(p.plan.backoff, attempt - 1);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
    }
    Err(last_err.unwrap_or_else(|| {
        GatewayError::new(
            ErrorKind::BadGateway,
            "upstream_unreachable",
            "No upstream could be reached",
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Duration::from_millis(100);
        let first = backoff(b, 0);
        assert!(first >= Duration::from_millis(50) && first < Duration::from_millis(100));
        assert!(backoff(b, 10) <= MAX_BACKOFF);
        assert_eq!(backoff(Duration::ZERO, 3), Duration::ZERO);
    }

    #[test]
    fn reads_retry_after() {
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(
            http::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }
}
