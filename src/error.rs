//! The one error type the gateway produces itself, and the one place it becomes an HTTP
//! response in the OpenAI error shape `{"error":{"message","type","code"}}`.
//!
//! Upstream errors are never converted into this type: they pass through unchanged. Messages
//! here reach clients, so they must never contain secrets or internal details (those go to the
//! log, next to the request id).

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::StatusCode;

/// What went wrong, from the client's point of view. Each kind has exactly one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed request: invalid JSON, wrong field types.
    BadRequest,
    /// Missing or unknown client key.
    Unauthorized,
    /// Client IP rejected by the ACL, or a policy forbids the request.
    Forbidden,
    /// No such route.
    NotFound,
    /// Route exists, method does not.
    MethodNotAllowed,
    /// Body larger than `limits.max_body_bytes`.
    PayloadTooLarge,
    /// Request head too large: too many header lines or too many bytes.
    HeaderTooLarge,
    /// A limit of the gateway itself was hit.
    RateLimited,
    /// A bug or an unexpected local failure.
    Internal,
    /// A store the gateway needs to decide (shared limits, usage, budgets) cannot answer now.
    Unavailable,
    /// The upstream could not be reached or broke the protocol.
    BadGateway,
    /// The upstream did not answer in time.
    GatewayTimeout,
    /// A plugin answered the request itself (`throw #{status, message}`).
    Script(StatusCode),
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::BadGateway => StatusCode::BAD_GATEWAY,
            ErrorKind::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Script(status) => status,
        }
    }

    /// The OpenAI `error.type` string.
    pub fn error_type(self) -> &'static str {
        match self {
            ErrorKind::BadRequest
            | ErrorKind::NotFound
            | ErrorKind::MethodNotAllowed
            | ErrorKind::PayloadTooLarge
            | ErrorKind::HeaderTooLarge => "invalid_request_error",
            ErrorKind::Unauthorized => "authentication_error",
            ErrorKind::Forbidden => "permission_error",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::Internal | ErrorKind::Unavailable => "server_error",
            ErrorKind::BadGateway | ErrorKind::GatewayTimeout => "upstream_error",
            ErrorKind::Script(status) if status.is_server_error() => "server_error",
            ErrorKind::Script(_) => "invalid_request_error",
        }
    }
}

/// An error answered by the gateway itself.
#[derive(Debug, Clone)]
pub struct GatewayError {
    pub kind: ErrorKind,
    /// Machine-readable `error.code`, e.g. `invalid_api_key`.
    pub code: &'static str,
    /// Client-facing text. Never holds a secret.
    pub message: Cow<'static, str>,
    /// Seconds for a `Retry-After` header, when the client should come back later.
    pub retry_after: Option<u64>,
}

impl GatewayError {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        GatewayError {
            kind,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::BadRequest, code, message)
    }

    pub fn unauthorized(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Unauthorized, "invalid_api_key", message)
    }

    pub fn not_found(path: &str) -> Self {
        let shown: String = path.chars().take(200).collect();
        Self::new(
            ErrorKind::NotFound,
            "unknown_route",
            format!("Unknown route: {shown}"),
        )
    }

    pub fn method_not_allowed(method: &http::Method, path: &str) -> Self {
        let shown: String = path.chars().take(200).collect();
        Self::new(
            ErrorKind::MethodNotAllowed,
            "method_not_allowed",
            format!("Method {method} is not allowed on {shown}"),
        )
    }

    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Internal, "internal_error", message)
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The JSON body `{"error":{"message","type","code"}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind.error_type(),
                "param": null,
                "code": self.code,
            }
        })
    }

    pub fn body_bytes(&self) -> Bytes {
        Bytes::from(self.to_json().to_string())
    }

    /// The one place a gateway error becomes an HTTP response.
    pub fn into_response<B: From<Bytes>>(self) -> http::Response<B> {
        let mut resp = http::Response::new(B::from(self.body_bytes()));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(secs) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status().as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for GatewayError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shape() {
        let e = GatewayError::unauthorized("Invalid API key");
        let v = e.to_json();
        assert_eq!(v["error"]["message"], "Invalid API key");
        assert_eq!(v["error"]["type"], "authentication_error");
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
    }
}
