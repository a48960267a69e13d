//! One entry under `credentials:` as written in YAML, and its validation into the typed
//! [`CredentialSpec`] the runtime builds providers from.
//!
//! The schema is an internally tagged enum (`type: static | pool | oauth2 | token_endpoint |
//! command`) that denies unknown fields inside every variant, so a typo such as `clinet_id` is an
//! error rather than a silently missing parameter. Validation collects every problem of the entry
//! as `(sub-path, message)`; the caller prefixes the YAML path of the entry. Messages name fields
//! and allowed values but never echo a value that may be a secret (keys, client secrets, header
//! values, body fields, URLs, command arguments).

use std::collections::BTreeMap;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::credential_spec::{
    AuthStyle, CommandSpec, CredentialSpec, EndpointUrl, OAuth2Spec, OutputFormat, PoolStrategy,
    TokenBody, TokenEndpointSpec,
};
use crate::secret::Secret;

/// Default seconds a pool key rests after a 429/401 when the upstream gave no `Retry-After`.
pub const DEFAULT_POOL_COOLDOWN: f64 = 30.0;
/// Default seconds allowed for one token fetch (HTTP or command).
pub const DEFAULT_FETCH_TIMEOUT: f64 = 10.0;
/// Default token lifetime when a token endpoint's answer does not say.
pub const DEFAULT_TOKEN_TTL: f64 = 3600.0;
/// Default token lifetime for `command`: shorter than for HTTP sources, because CLIs often print
/// a token they cached earlier, whose remaining life is unknown.
pub const DEFAULT_COMMAND_TTL: f64 = 300.0;
/// Largest duration accepted anywhere in this schema (one year), so conversions cannot overflow.
const MAX_SECONDS: f64 = 31_536_000.0;

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RawCredential {
    /// One key, usually `${ENV}`.
    Static { key: String },
    /// Several keys the operator owns, spread over requests.
    Pool {
        keys: Vec<String>,
        /// `round_robin` (default) or `least_in_flight`.
        strategy: Option<String>,
        /// Seconds a key rests after a 429/401 without `Retry-After` (default 30).
        cooldown: Option<f64>,
    },
    /// OAuth2 client-credentials grant.
    Oauth2 {
        token_url: String,
        client_id: String,
        client_secret: String,
        scope: Option<String>,
        audience: Option<String>,
        /// `basic` (default: HTTP Basic) or `body` (client_id/client_secret form fields).
        auth_style: Option<String>,
        timeout: Option<f64>,
        refresh_before: Option<f64>,
    },
    /// A generic HTTP token fetch.
    TokenEndpoint {
        url: String,
        /// `POST` (default), `GET`, `PUT` or `PATCH`.
        method: Option<String>,
        headers: Option<BTreeMap<String, String>>,
        form: Option<BTreeMap<String, String>>,
        json: Option<serde_json::Value>,
        /// JSON pointer to the token (default `/access_token`).
        token_pointer: Option<String>,
        /// JSON pointer to the lifetime in seconds.
        expires_in_pointer: Option<String>,
        /// Put before the token in `Authorization` (default `"Bearer "`).
        prefix: Option<String>,
        /// Lifetime when the answer does not say (default 3600 s).
        default_ttl: Option<f64>,
        timeout: Option<f64>,
        refresh_before: Option<f64>,
    },
    /// Run a command (no shell) that prints a token.
    Command {
        command: Vec<String>,
        /// Seconds (default 10).
        timeout: Option<f64>,
        /// `plain` (default: trimmed stdout) or `json`.
        format: Option<String>,
        token_pointer: Option<String>,
        expires_in_pointer: Option<String>,
        prefix: Option<String>,
        /// Lifetime when the output does not say (default 300 s).
        default_ttl: Option<f64>,
        refresh_before: Option<f64>,
    },
}

/// Collects `(sub-path, message)` pairs for one credential entry.
#[derive(Default)]
struct Errors(Vec<(String, String)>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push((path.into(), message.into()));
    }

    /// A positive number of seconds no larger than a year; `default` when absent.
    fn seconds(&mut self, path: &str, value: Option<f64>, default: f64) -> Duration {
        match value {
            None => Duration::from_secs_f64(default),
            Some(v) => self
                .positive(path, v)
                .unwrap_or(Duration::from_secs_f64(default)),
        }
    }

    fn opt_seconds(&mut self, path: &str, value: Option<f64>) -> Option<Duration> {
        value.and_then(|v| self.positive(path, v))
    }

    fn positive(&mut self, path: &str, v: f64) -> Option<Duration> {
        if v.is_finite() && v > 0.0 && v <= MAX_SECONDS {
            Some(Duration::from_secs_f64(v))
        } else {
            self.push(
                path,
                format!("must be a positive number of seconds (at most {MAX_SECONDS}), got {v}"),
            );
            None
        }
    }

    /// An upstream key or other secret that will end up inside a header value.
    fn key(&mut self, path: &str, value: String) -> Option<Secret> {
        if value.is_empty() {
            self.push(path, "must not be empty (is the environment variable set?)");
            return None;
        }
        if value.trim() != value {
            self.push(path, "has leading or trailing whitespace");
            return None;
        }
        if HeaderValue::from_str(&format!("Bearer {value}")).is_err() {
            self.push(
                path,
                "contains characters not allowed in an HTTP header (control characters or non-ASCII)",
            );
            return None;
        }
        Some(Secret::new(value))
    }

    fn non_empty(&mut self, path: &str, value: String) -> Option<String> {
        if value.trim().is_empty() {
            self.push(path, "must not be empty");
            None
        } else {
            Some(value)
        }
    }

    fn url(&mut self, path: &str, value: &str) -> Option<EndpointUrl> {
        match reqwest::Url::parse(value) {
            Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.has_host() => {
                Some(EndpointUrl::new(u))
            }
            // The URL itself is not echoed: it may carry credentials in its user info or query.
            Ok(_) => {
                self.push(path, "must be an http:// or https:// URL with a host");
                None
            }
            Err(e) => {
                self.push(path, format!("is not a valid URL ({e})"));
                None
            }
        }
    }

    fn pointer(&mut self, path: &str, value: Option<String>, default: &str) -> String {
        let value = value.unwrap_or_else(|| default.to_owned());
        self.check_pointer(path, &value);
        value
    }

    fn opt_pointer(&mut self, path: &str, value: Option<String>) -> Option<String> {
        if let Some(v) = &value {
            self.check_pointer(path, v);
        }
        value
    }

    fn check_pointer(&mut self, path: &str, value: &str) {
        if !value.starts_with('/') {
            self.push(
                path,
                format!(
                    "`{value}` is not a JSON pointer: it must start with '/' (e.g. /data/token)"
                ),
            );
        }
    }

    fn prefix(&mut self, path: &str, value: Option<String>) -> String {
        let value = value.unwrap_or_else(|| "Bearer ".to_owned());
        if HeaderValue::from_str(&format!("{value}x")).is_err() {
            self.push(path, "contains characters not allowed in an HTTP header");
        }
        value
    }

    fn choice<T: Clone>(
        &mut self,
        path: &str,
        value: Option<String>,
        default: T,
        allowed: &[(&str, T)],
    ) -> T {
        let Some(v) = value else { return default };
        match allowed.iter().find(|(name, _)| *name == v) {
            Some((_, t)) => t.clone(),
            None => {
                let names: Vec<&str> = allowed.iter().map(|(n, _)| *n).collect();
                self.push(
                    path,
                    format!("unknown value `{v}`; expected one of: {}", names.join(", ")),
                );
                default
            }
        }
    }
}

/// Returns the typed spec or a list of (sub-path like "keys[1]" or "token_url", message) errors.
/// Messages never echo secret values.
pub fn validate_credential(raw: RawCredential) -> Result<CredentialSpec, Vec<(String, String)>> {
    let mut e = Errors::default();
    let spec = match raw {
        RawCredential::Static { key } => {
            e.key("key", key).map(|key| CredentialSpec::Static { key })
        }
        RawCredential::Pool {
            keys,
            strategy,
            cooldown,
        } => {
            if keys.is_empty() {
                e.push("keys", "a pool needs at least one key");
            }
            let mut out: Vec<Secret> = Vec::with_capacity(keys.len());
            for (i, k) in keys.into_iter().enumerate() {
                let path = format!("keys[{i}]");
                if let Some(s) = e.key(&path, k) {
                    if let Some(j) = out.iter().position(|o| o == &s) {
                        e.push(path, format!("same key as keys[{j}]"));
                    }
                    out.push(s);
                }
            }
            let strategy = e.choice(
                "strategy",
                strategy,
                PoolStrategy::RoundRobin,
                &[
                    ("round_robin", PoolStrategy::RoundRobin),
                    ("least_in_flight", PoolStrategy::LeastInFlight),
                ],
            );
            let cooldown = e.seconds("cooldown", cooldown, DEFAULT_POOL_COOLDOWN);
            Some(CredentialSpec::Pool {
                keys: out,
                strategy,
                cooldown,
            })
        }
        RawCredential::Oauth2 {
            token_url,
            client_id,
            client_secret,
            scope,
            audience,
            auth_style,
            timeout,
            refresh_before,
        } => {
            let token_url = e.url("token_url", &token_url);
            let client_id = e.non_empty("client_id", client_id);
            let client_secret = if client_secret.is_empty() {
                e.push(
                    "client_secret",
                    "must not be empty (is the environment variable set?)",
                );
                None
            } else {
                Some(Secret::new(client_secret))
            };
            let auth_style = e.choice(
                "auth_style",
                auth_style,
                AuthStyle::Basic,
                &[("basic", AuthStyle::Basic), ("body", AuthStyle::Body)],
            );
            let timeout = e.seconds("timeout", timeout, DEFAULT_FETCH_TIMEOUT);
            let refresh_before = e.opt_seconds("refresh_before", refresh_before);
            match (token_url, client_id, client_secret) {
                (Some(token_url), Some(client_id), Some(client_secret)) => {
                    Some(CredentialSpec::OAuth2(OAuth2Spec {
                        token_url,
                        client_id,
                        client_secret,
                        // Empty (e.g. an unset `${SCOPE}`) means "not sent".
                        scope: scope.filter(|s| !s.is_empty()),
                        audience: audience.filter(|s| !s.is_empty()),
                        auth_style,
                        timeout,
                        refresh_before,
                    }))
                }
                _ => None,
            }
        }
        RawCredential::TokenEndpoint {
            url,
            method,
            headers,
            form,
            json,
            token_pointer,
            expires_in_pointer,
            prefix,
            default_ttl,
            timeout,
            refresh_before,
        } => {
            let url = e.url("url", &url);
            let method = e.choice(
                "method",
                method.map(|m| m.to_ascii_uppercase()),
                http::Method::POST,
                &[
                    ("POST", http::Method::POST),
                    ("GET", http::Method::GET),
                    ("PUT", http::Method::PUT),
                    ("PATCH", http::Method::PATCH),
                ],
            );
            let mut header_list = Vec::new();
            for (name, value) in headers.unwrap_or_default() {
                let path = format!("headers.{name}");
                let Ok(hn) = HeaderName::from_bytes(name.as_bytes()) else {
                    e.push(path, "is not a valid HTTP header name");
                    continue;
                };
                match HeaderValue::from_str(&value) {
                    Ok(mut hv) => {
                        // Configured headers often carry API keys: never print them.
                        hv.set_sensitive(true);
                        header_list.push((hn, hv));
                    }
                    Err(_) => e.push(path, "value contains characters not allowed in a header"),
                }
            }
            let body = match (form, json) {
                (Some(_), Some(_)) => {
                    e.push("form", "set either `form` or `json`, not both");
                    TokenBody::None
                }
                (Some(form), None) => {
                    TokenBody::Form(form.into_iter().map(|(k, v)| (k, Secret::new(v))).collect())
                }
                (None, Some(json)) => match serde_json::to_string(&json) {
                    Ok(text) => TokenBody::Json(Secret::new(text)),
                    Err(_) => {
                        e.push("json", "cannot be serialized as JSON");
                        TokenBody::None
                    }
                },
                (None, None) => TokenBody::None,
            };
            if method == http::Method::GET && !matches!(body, TokenBody::None) {
                e.push(
                    "method",
                    "a GET request cannot carry a `form` or `json` body",
                );
            }
            let token_pointer = e.pointer("token_pointer", token_pointer, "/access_token");
            let expires_in_pointer = e.opt_pointer("expires_in_pointer", expires_in_pointer);
            let prefix = e.prefix("prefix", prefix);
            let default_ttl = e.seconds("default_ttl", default_ttl, DEFAULT_TOKEN_TTL);
            let timeout = e.seconds("timeout", timeout, DEFAULT_FETCH_TIMEOUT);
            let refresh_before = e.opt_seconds("refresh_before", refresh_before);
            url.map(|url| {
                CredentialSpec::TokenEndpoint(TokenEndpointSpec {
                    url,
                    method,
                    headers: header_list,
                    body,
                    token_pointer,
                    expires_in_pointer,
                    prefix,
                    default_ttl,
                    timeout,
                    refresh_before,
                })
            })
        }
        RawCredential::Command {
            command,
            timeout,
            format,
            token_pointer,
            expires_in_pointer,
            prefix,
            default_ttl,
            refresh_before,
        } => {
            let mut parts = command.into_iter();
            let program = match parts.next() {
                None => {
                    e.push(
                        "command",
                        "must name a program to run, e.g. [cloud-cli, print-access-token]",
                    );
                    None
                }
                Some(p) if p.trim().is_empty() => {
                    e.push("command[0]", "the program must not be empty");
                    None
                }
                Some(p) => Some(p),
            };
            let args: Vec<Secret> = parts.map(Secret::new).collect();
            // An unknown format is reported once; the plain-only checks below would only echo it.
            let declared_plain = format.as_deref().is_none_or(|f| f == "plain");
            let format = e.choice(
                "format",
                format,
                OutputFormat::Plain,
                &[("plain", OutputFormat::Plain), ("json", OutputFormat::Json)],
            );
            if declared_plain {
                for (field, set) in [
                    ("token_pointer", token_pointer.is_some()),
                    ("expires_in_pointer", expires_in_pointer.is_some()),
                ] {
                    if set {
                        e.push(field, "is only used with `format: json`");
                    }
                }
            }
            let token_pointer = e.pointer("token_pointer", token_pointer, "/access_token");
            let expires_in_pointer = e.opt_pointer("expires_in_pointer", expires_in_pointer);
            let prefix = e.prefix("prefix", prefix);
            let default_ttl = e.seconds("default_ttl", default_ttl, DEFAULT_COMMAND_TTL);
            let timeout = e.seconds("timeout", timeout, DEFAULT_FETCH_TIMEOUT);
            let refresh_before = e.opt_seconds("refresh_before", refresh_before);
            program.map(|program| {
                CredentialSpec::Command(CommandSpec {
                    program,
                    args,
                    format,
                    token_pointer,
                    expires_in_pointer,
                    prefix,
                    default_ttl,
                    timeout,
                    refresh_before,
                })
            })
        }
    };
    match spec {
        Some(spec) if e.0.is_empty() => Ok(spec),
        _ => {
            if e.0.is_empty() {
                // Every `None` above pushed an error; keep the contract even if one did not.
                e.push("", "invalid credential");
            }
            Err(e.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<RawCredential, String> {
        serde_yaml::from_str::<RawCredential>(yaml).map_err(|e| e.to_string())
    }

    fn check(yaml: &str) -> Result<CredentialSpec, Vec<(String, String)>> {
        validate_credential(parse(yaml).map_err(|e| vec![(String::new(), e)])?)
    }

    fn paths(errs: &[(String, String)]) -> Vec<&str> {
        errs.iter().map(|(p, _)| p.as_str()).collect()
    }

    #[test]
    fn issue_examples_parse_and_validate() {
        let cases = [
            r#"{ type: static, key: "sk-abc" }"#,
            r#"{ type: pool, keys: ["ka", "kb"], strategy: round_robin, cooldown: 30 }"#,
            r#"{ type: oauth2, token_url: "https://login.example/oauth2/token",
                 client_id: "gw", client_secret: "s3cret", scope: "llm" }"#,
            r#"{ type: token_endpoint, url: "https://vendor.example/token", method: POST,
                 json: { ak: "AK", sk: "SK" }, token_pointer: "/data/token",
                 expires_in_pointer: "/data/expires_in", prefix: "Bearer " }"#,
            r#"{ type: command, command: ["cloud-cli", "print-access-token"], timeout: 10 }"#,
        ];
        for yaml in cases {
            let spec = check(yaml).unwrap_or_else(|e| panic!("{yaml}: {e:?}"));
            let dbg = format!("{spec:?}");
            for secret in ["sk-abc", "ka\"", "s3cret", "\"AK\"", "SK"] {
                assert!(!dbg.contains(secret), "{dbg} leaks {secret}");
            }
        }
    }

    #[test]
    fn defaults_are_applied() {
        let Ok(CredentialSpec::Pool {
            strategy, cooldown, ..
        }) = check("{type: pool, keys: [a]}")
        else {
            panic!("pool")
        };
        assert_eq!(strategy, PoolStrategy::RoundRobin);
        assert_eq!(cooldown, Duration::from_secs(30));
        let Ok(CredentialSpec::TokenEndpoint(t)) =
            check("{type: token_endpoint, url: 'http://127.0.0.1:1/t'}")
        else {
            panic!("token_endpoint")
        };
        assert_eq!(t.method, http::Method::POST);
        assert_eq!(t.token_pointer, "/access_token");
        assert_eq!(t.prefix, "Bearer ");
        assert_eq!(t.default_ttl, Duration::from_secs(3600));
        assert_eq!(t.timeout, Duration::from_secs(10));
        let Ok(CredentialSpec::Command(c)) = check("{type: command, command: [x]}") else {
            panic!("command")
        };
        assert_eq!(c.format, OutputFormat::Plain);
        assert_eq!(c.default_ttl, Duration::from_secs(300));
    }

    #[test]
    fn unknown_field_inside_a_variant_is_rejected() {
        let err = parse("{type: oauth2, token_url: 'https://a/t', client_id: a, client_secret: b, clinet_id: c}")
            .err()
            .unwrap_or_default();
        assert!(err.contains("unknown field `clinet_id`"), "{err}");
        let err = parse("{type: pool, keys: [a], cooldwn: 3}")
            .err()
            .unwrap_or_default();
        assert!(err.contains("unknown field `cooldwn`"), "{err}");
        let err = parse("{type: static, key: a, keys: [b]}")
            .err()
            .unwrap_or_default();
        assert!(err.contains("unknown field `keys`"), "{err}");
        let err = parse("{type: magic, key: a}").err().unwrap_or_default();
        assert!(err.contains("unknown variant `magic`"), "{err}");
    }

    #[test]
    fn missing_and_bad_values_are_reported_together_without_secrets() {
        let errs = check("{type: pool, keys: []}").err().unwrap_or_default();
        assert_eq!(paths(&errs), ["keys"]);

        let errs = check(r#"{type: pool, keys: ["good", "", " sp", "good", "x\u0001"], strategy: random, cooldown: -1}"#)
            .err()
            .unwrap_or_default();
        assert_eq!(
            paths(&errs),
            ["keys[1]", "keys[2]", "keys[3]", "keys[4]", "strategy", "cooldown"]
        );
        assert!(errs.iter().all(|(_, m)| !m.contains("good")), "{errs:?}");

        let errs = check(
            "{type: oauth2, token_url: 'ftp://user:hunter2@host/t', client_id: '', client_secret: '', auth_style: header, timeout: 0}",
        )
        .err()
        .unwrap_or_default();
        assert_eq!(
            paths(&errs),
            [
                "token_url",
                "client_id",
                "client_secret",
                "auth_style",
                "timeout"
            ]
        );
        assert!(!format!("{errs:?}").contains("hunter2"));

        let errs = check("{type: oauth2, token_url: 'not a url', client_id: a, client_secret: b}")
            .err()
            .unwrap_or_default();
        assert_eq!(paths(&errs), ["token_url"]);
    }

    #[test]
    fn token_endpoint_rules() {
        let errs = check(
            "{type: token_endpoint, url: 'https://v/t', method: DELETE, form: {a: b}, json: {c: d},
              token_pointer: data.token, expires_in_pointer: 'x', headers: {'bad header': v, ok: \"a\\u0001\"}}",
        )
        .err()
        .unwrap_or_default();
        assert_eq!(
            paths(&errs),
            [
                "method",
                "headers.bad header",
                "headers.ok",
                "form",
                "token_pointer",
                "expires_in_pointer"
            ]
        );
        let errs = check("{type: token_endpoint, url: 'https://v/t', method: get, json: {a: 1}}")
            .err()
            .unwrap_or_default();
        assert_eq!(paths(&errs), ["method"]);
        let errs = check("{type: token_endpoint, url: 'https://v/t', default_ttl: .nan}")
            .err()
            .unwrap_or_default();
        assert_eq!(paths(&errs), ["default_ttl"]);
    }

    #[test]
    fn command_rules() {
        let errs = check("{type: command, command: []}")
            .err()
            .unwrap_or_default();
        assert_eq!(paths(&errs), ["command"]);
        let errs = check("{type: command, command: [''], timeout: 0}")
            .err()
            .unwrap_or_default();
        assert_eq!(paths(&errs), ["command[0]", "timeout"]);
        let errs = check("{type: command, command: [x], token_pointer: /t, format: yaml}")
            .err()
            .unwrap_or_default();
        assert_eq!(paths(&errs), ["format"]);
        let errs = check("{type: command, command: [x], token_pointer: /t}")
            .err()
            .unwrap_or_default();
        assert_eq!(paths(&errs), ["token_pointer"]);
        assert!(check("{type: command, command: [x], format: json, token_pointer: /t}").is_ok());
    }
}
