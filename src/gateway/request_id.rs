//! The request id: the client's own `x-request-id` when it is short and plain, else a new one.
//! Sent upstream and back to the client, and named in every log line of the request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};

use crate::http::wire::hex_into;

/// A static name: inserting a `&str` name builds (and allocates) a `HeaderName` every time.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request's id: the client's own `x-request-id` when it is short and plain, else a new one.
/// Kept as the header value that goes upstream and back to the client (and is read as text by
/// the logs): one allocation per request, and clones (the access log's) share it.
#[derive(Clone, Debug)]
pub struct RequestId(HeaderValue);

impl RequestId {
    pub fn of(headers: &http::HeaderMap) -> Self {
        if let Some(v) = headers.get(&REQUEST_ID) {
            let b = v.as_bytes();
            if (1..=128).contains(&b.len())
                && b.iter()
                    .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
            {
                // Copied: a slice of the request head would keep the connection's read buffer
                // alive for as long as the id lives (a stream's access log holds it).
                if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::copy_from_slice(b)) {
                    return RequestId(v);
                }
            }
        }
        static PREFIX: OnceLock<u32> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let prefix = *PREFIX.get_or_init(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
                .unwrap_or(0);
            t ^ std::process::id().rotate_left(16)
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // `req-` + 8 hex digits of the prefix + 12 of the counter, written without `format!`:
        // it runs for every request.
        let mut id = [0u8; 24];
        id[..4].copy_from_slice(b"req-");
        hex_into(&mut id[4..12], u64::from(prefix));
        hex_into(&mut id[12..], n);
        RequestId(
            HeaderValue::from_maybe_shared(Bytes::from_owner(id))
                .unwrap_or_else(|_| HeaderValue::from_static("req-unknown")),
        )
    }

    /// The id as text: always plain ASCII (checked or made so above).
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("req-unknown")
    }

    pub fn header(&self) -> &HeaderValue {
        &self.0
    }

    pub fn into_header(self) -> HeaderValue {
        self.0
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_id(h: &http::HeaderMap) -> String {
        let id = RequestId::of(h);
        assert_eq!(id.header().as_bytes(), id.as_str().as_bytes());
        id.to_string()
    }

    #[test]
    fn generated_request_ids_are_unique_hex() {
        let h = http::HeaderMap::new();
        let a = request_id(&h);
        let b = request_id(&h);
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert_eq!(id.len(), 24, "{id}");
            let hex = id.strip_prefix("req-").unwrap();
            assert!(hex
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        }
    }

    #[test]
    fn a_plain_client_request_id_is_kept() {
        let mut h = http::HeaderMap::new();
        h.insert(&REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(&REQUEST_ID, HeaderValue::from_static("bad id"));
        assert!(request_id(&h).starts_with("req-"));
    }
}
