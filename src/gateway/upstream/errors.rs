//! Upstream failures as the client and the log see them: 502/504 for the client, the error
//! chain without query strings or userinfo for the log.

use crate::error::{ErrorKind, GatewayError};

/// Maps a transport failure to 502/504; the details go to the log only.
pub fn map_send_error(e: &reqwest::Error) -> GatewayError {
    tracing::warn!(error = %upstream_error_text(e), "upstream request failed");
    if e.is_timeout() {
        GatewayError::new(
            ErrorKind::GatewayTimeout,
            "upstream_timeout",
            "The upstream did not answer in time",
        )
    } else if e.is_connect() {
        GatewayError::new(
            ErrorKind::BadGateway,
            "upstream_unreachable",
            "The upstream could not be reached",
        )
    } else {
        GatewayError::new(
            ErrorKind::BadGateway,
            "upstream_error",
            "The upstream request failed",
        )
    }
}

/// A reqwest error for the log: its chain with the URL's query cut off (a client's query
/// string may carry its own secrets) and no userinfo.
pub fn upstream_error_text(e: &reqwest::Error) -> String {
    let text = error_chain(e);
    match e.url() {
        Some(u) => {
            let shown = format!(
                "{}://{}{}{}",
                u.scheme(),
                u.host_str().unwrap_or(""),
                u.port().map(|p| format!(":{p}")).unwrap_or_default(),
                u.path()
            );
            text.replace(u.as_str(), &shown)
        }
        None => text,
    }
}

/// `e` and its sources on one line. reqwest errors hold URLs but never header values.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}
