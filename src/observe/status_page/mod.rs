//! `GET /admin`: the status page. Three static files compiled into the binary (the page, its
//! script, its style sheet), served under a Content-Security-Policy that lets the page load
//! only those and talk only to its own origin. The page holds no data: it asks for the admin
//! key, keeps it in `sessionStorage`, and polls `GET /admin/live` with it (its body:
//! `gateway::admin::live`, from [`crate::observe::live`]).

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE,
    REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};

/// Only the page's own script, style sheet and `/admin/live`; no inline code, frames, forms
/// posted elsewhere or base-URL tricks.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("index.html");
const STATUS_JS: &str = include_str!("status.js");
const STATUS_CSS: &str = include_str!("status.css");

/// The page's files by request path: `(content type, body)`.
pub fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/admin" | "/admin/" => Some(("text/html; charset=utf-8", INDEX_HTML)),
        "/admin/assets/status.js" => Some(("text/javascript; charset=utf-8", STATUS_JS)),
        "/admin/assets/status.css" => Some(("text/css; charset=utf-8", STATUS_CSS)),
        _ => None,
    }
}

/// The headers every status-page answer carries (the page, its assets and its data).
pub fn harden(headers: &mut HeaderMap) {
    let set: [(HeaderName, &'static str); 5] = [
        (CONTENT_SECURITY_POLICY, CSP),
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (CACHE_CONTROL, "no-store"),
        (REFERRER_POLICY, "no-referrer"),
        (X_FRAME_OPTIONS, "DENY"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

/// The asset's content type as a header value.
pub fn content_type(value: &'static str) -> (HeaderName, HeaderValue) {
    (CONTENT_TYPE, HeaderValue::from_static(value))
}
