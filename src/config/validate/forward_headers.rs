//! `forward_headers: { drop: [...], keep: [...] }`: header names (or `prefix*`), checked for
//! header-name syntax.

use super::Collector;
use crate::config::forward_headers::{ForwardHeaders, NamePattern};
use crate::config::raw::RawForwardHeaders;
use crate::config::yaml_path::{k, Segment};

/// Headers the gateway sets or consumes itself: `keep` cannot send the client's.
const GATEWAY_OWNED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "host",
    "content-length",
    "accept-encoding",
    "x-request-id",
];

fn list(c: &mut Collector, key: &str, items: Option<Vec<String>>) -> Vec<NamePattern> {
    let mut out = Vec::new();
    for (i, item) in items.unwrap_or_default().into_iter().enumerate() {
        let path = [k("forward_headers"), k(key), Segment::Index(i)];
        match NamePattern::parse(&item) {
            None => c.err(
                &path,
                format!(
                    "`{item}` is not a header name (letters, digits and `-`, e.g. x-team; \
                     a trailing `*` matches a prefix, e.g. x-forwarded-*)"
                ),
            ),
            Some(NamePattern::Exact(name))
                if key == "keep"
                    && (GATEWAY_OWNED.contains(&name.as_str())
                        || crate::http::headers::HOP_BY_HOP
                            .iter()
                            .any(|h| h.as_str() == name)) =>
            {
                c.err(
                    &path,
                    format!(
                        "`{name}` is set by the gateway itself; the client's is never forwarded"
                    ),
                );
            }
            Some(p) => out.push(p),
        }
    }
    out
}

pub(super) fn forward_headers(c: &mut Collector, raw: Option<RawForwardHeaders>) -> ForwardHeaders {
    let raw = raw.unwrap_or_default();
    let mut f = ForwardHeaders::default();
    f.drop.extend(list(c, "drop", raw.drop));
    f.keep = list(c, "keep", raw.keep);
    f
}
