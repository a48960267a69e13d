//! What the phases know of one request, carried from the first phase to the last: its id,
//! where it came from, and the access-log record that leaves with the answer's body.

use std::net::IpAddr;

use http::Response;

use super::relay::access_log::{outcome, AccessLog};
use super::relay::body::ResponseBody;
use super::request_id::{RequestId, REQUEST_ID};
use crate::error::{ErrorKind, GatewayError};

pub struct RequestCtx {
    pub rid: RequestId,
    /// The TCP peer.
    pub peer: IpAddr,
    /// The client's address as the ACL judged it (the peer until the ip_acl phase).
    pub client_ip: IpAddr,
    pub log: AccessLog,
}

impl RequestCtx {
    pub fn new(peer: IpAddr, rid: RequestId, log: AccessLog) -> Self {
        RequestCtx {
            rid,
            peer,
            client_ip: peer,
            log,
        }
    }

    pub fn set_client_ip(&mut self, ip: IpAddr) {
        self.client_ip = ip;
        self.log.client_ip = Some(ip);
    }

    /// The answer for a request a phase refused or that failed: logged (server errors as
    /// warnings); the access log gets the outcome and the error's code.
    pub fn failed(&mut self, e: GatewayError) -> Response<ResponseBody> {
        let rid = &self.rid;
        if e.status().is_server_error() {
            tracing::warn!(request_id = %rid, status = e.status().as_u16(), code = e.code, "{}", e.message);
        } else {
            tracing::debug!(request_id = %rid, status = e.status().as_u16(), code = e.code, "{}", e.message);
        }
        self.log.outcome = Some(outcome_of(&e));
        self.log.error = Some(e.code);
        e.into_response()
    }

    /// Stamps the request id on the answer and hands the access-log record to its body.
    pub fn finish(self, mut resp: Response<ResponseBody>) -> Response<ResponseBody> {
        let RequestCtx { rid, mut log, .. } = self;
        log.status = resp.status().as_u16();
        // Not set by `failed`: an answer from the upstream (or the gateway's own 200s).
        log.outcome.get_or_insert(outcome::of_status(log.status));
        log.bodiless = log.method == http::Method::HEAD
            || matches!(log.status, 204 | 304)
            || resp.status().is_informational();
        log.stream = resp.body().is_event_stream();
        resp.headers_mut().insert(&REQUEST_ID, rid.into_header());
        if log.wanted() {
            resp.body_mut().set_log(Box::new(log));
        }
        resp
    }
}

/// The access log's outcome for an error the gateway answers with.
fn outcome_of(e: &GatewayError) -> &'static str {
    match e.kind {
        ErrorKind::GatewayTimeout => outcome::TIMEOUT,
        ErrorKind::BadGateway => outcome::UPSTREAM_ERROR,
        _ if e.code == "script_error" => outcome::SCRIPT_ERROR,
        ErrorKind::Script(status) if status.is_server_error() => outcome::SCRIPT_ERROR,
        _ if e.status().is_client_error() => outcome::REJECTED,
        _ => outcome::ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_match_the_error() {
        let cases = [
            (GatewayError::unauthorized("no"), "rejected"),
            (GatewayError::bad_request("invalid_json", "x"), "rejected"),
            (
                GatewayError::new(ErrorKind::RateLimited, "rate_limited", "x"),
                "rejected",
            ),
            (
                GatewayError::new(ErrorKind::GatewayTimeout, "upstream_timeout", "x"),
                "timeout",
            ),
            (
                GatewayError::new(ErrorKind::BadGateway, "upstream_unreachable", "x"),
                "upstream_error",
            ),
            (
                GatewayError::new(ErrorKind::Internal, "script_error", "x"),
                "script_error",
            ),
            (
                GatewayError::new(
                    ErrorKind::Script(http::StatusCode::FORBIDDEN),
                    "script_rejected",
                    "x",
                ),
                "rejected",
            ),
            (GatewayError::internal("x"), "error"),
        ];
        for (e, want) in cases {
            assert_eq!(outcome_of(&e), want, "{e:?}");
        }
    }
}
