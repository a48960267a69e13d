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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use crate::config::Config;

    #[test]
    fn absent_is_off_and_an_empty_section_gets_defaults() {
        assert!(Config::from_yaml("", &|_| None).unwrap().otel.is_none());
        let cfg = Config::from_yaml("otel: {}\n", &|_| None).unwrap();
        let otel = cfg.otel.unwrap();
        assert_eq!(otel.endpoint, "http://127.0.0.1:4318");
        assert_eq!(otel.service_name, "sophgate");
        assert_eq!(otel.sample_ratio, 1.0);
        assert!(otel.headers.is_empty());
    }

    #[test]
    fn values_are_read_and_header_values_expand_from_the_environment() {
        let text = "otel:\n  endpoint: http://collector:4318/\n  service_name: gw\n  sample_ratio: 0.1\n  headers: { authorization: \"Bearer ${OTEL_TOKEN}\" }\n";
        let env = |v: &str| (v == "OTEL_TOKEN").then(|| "tok-123".to_owned());
        let otel = Config::from_yaml(text, &env).unwrap().otel.unwrap();
        assert_eq!(otel.endpoint, "http://collector:4318");
        assert_eq!(otel.service_name, "gw");
        assert_eq!(otel.sample_ratio, 0.1);
        assert_eq!(otel.headers[0].0, "authorization");
        assert_eq!(otel.headers[0].1.expose(), "Bearer tok-123");
        assert!(!format!("{otel:?}").contains("tok-123"));
    }

    #[test]
    fn errors_name_their_yaml_path_and_never_a_header_value() {
        let text = "otel:\n  endpoint: collector:4318\n  service_name: \" \"\n  sample_ratio: 1.5\n  headers: { \"bad name\": x, x-token: \"sec\\nret\" }\n";
        let errs = Config::from_yaml(text, &|_| None).unwrap_err();
        let paths: Vec<_> = errs.0.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "otel.endpoint",
            "otel.service_name",
            "otel.sample_ratio",
            "otel.headers.bad name",
            "otel.headers.x-token",
        ] {
            assert!(paths.contains(&p), "{p} in {paths:?}");
        }
        let e = errs.0.iter().find(|e| e.path == "otel.endpoint").unwrap();
        assert_eq!(e.line, Some(2));
        assert!(!errs.to_string().contains("sec"), "{errs}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let errs = Config::from_yaml("otel: { endpont: http://x:4318 }\n", &|_| None).unwrap_err();
        assert!(errs.to_string().contains("endpont"), "{errs}");
    }
}
