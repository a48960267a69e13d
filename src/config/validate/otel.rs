//! `otel:`: OpenTelemetry trace export. Absent = off.

use super::Collector;
use crate::config::raw::RawOtel;
use crate::config::yaml_path::k;
use crate::config::OtelConfig;
use crate::secret::Secret;

pub const DEFAULT_OTEL_ENDPOINT: &str = "http://127.0.0.1:4318";
pub const DEFAULT_SERVICE_NAME: &str = "sophgate";

pub(super) fn otel(c: &mut Collector, raw: Option<RawOtel>) -> Option<OtelConfig> {
    let raw = raw?;
    let endpoint = raw
        .endpoint
        .unwrap_or_else(|| DEFAULT_OTEL_ENDPOINT.to_owned());
    let endpoint = endpoint.trim().trim_end_matches('/').to_owned();
    let ok_scheme = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
    if !ok_scheme {
        c.err(
            &[k("otel"), k("endpoint")],
            format!("`{endpoint}` is not an http:// or https:// URL (e.g. {DEFAULT_OTEL_ENDPOINT}); spans go to <endpoint>/v1/traces"),
        );
    }
    let service_name = raw
        .service_name
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
    if service_name.trim().is_empty() {
        c.err(&[k("otel"), k("service_name")], "must not be empty");
    }
    let sample_ratio = raw.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        c.err(
            &[k("otel"), k("sample_ratio")],
            format!("{sample_ratio} is not between 0 and 1"),
        );
    }
    let mut headers = Vec::new();
    for (name, value) in raw.headers.unwrap_or_default() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            c.err(
                &[k("otel"), k("headers"), k(&name)],
                "is not a valid header name",
            );
        } else if http::HeaderValue::from_str(&value).is_err() {
            // The value may be a secret: the error never shows it.
            c.err(
                &[k("otel"), k("headers"), k(&name)],
                "the value is not a valid header value",
            );
        } else {
            headers.push((name, Secret::new(value)));
        }
    }
    Some(OtelConfig {
        endpoint,
        service_name,
        sample_ratio,
        headers,
    })
}
