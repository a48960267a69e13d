//! `api_keys:`: client keys (plain or `sha256:` digests), their upstream key (seed form) or
//! policy (extended form). Error paths name a key by its label, never by itself.

use std::collections::BTreeMap;

use http::header::HeaderValue;
use sha2::{Digest, Sha256};

use super::Collector;
use crate::config::raw::RawKeyPolicy;
use crate::config::schema_errors::deserialize_all;
use crate::config::yaml_path::{k, key_label, render_path, Segment};
use crate::config::{KeyConfig, KeyId};
use crate::secret::Secret;

/// The names a key policy may refer to.
pub(super) struct Known<'a> {
    pub credentials: &'a [String],
    pub upstreams: &'a [String],
    /// Whether `pricing:` has any entry (a cost budget needs one).
    pub priced: bool,
}

pub(super) fn api_keys(
    c: &mut Collector,
    raw: Option<BTreeMap<String, serde_yaml::Value>>,
    passthrough_unknown_keys: bool,
    known: &Known<'_>,
) -> Vec<KeyConfig> {
    let keys: Vec<KeyConfig> = raw
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(client_key, value)| api_key(c, &client_key, value, known))
        .collect();
    if keys.is_empty() && !passthrough_unknown_keys {
        c.warn("api_keys is empty: every API request will be answered 401");
    }
    keys
}

/// One entry of `api_keys`; `None` (with errors) when unusable.
fn api_key(
    c: &mut Collector,
    client_key: &str,
    value: serde_yaml::Value,
    known: &Known<'_>,
) -> Option<KeyConfig> {
    let line_path = [k("api_keys"), Segment::Key(client_key.to_owned())];
    let id = match parse_key_id(client_key) {
        Ok(id) => id,
        Err(msg) => {
            c.err_masked(&line_path, "api_keys.<hashed key>", msg);
            return None;
        }
    };
    let hash_label = match &id {
        KeyId::Plain(s) => key_label(s.expose()),
        KeyId::Sha256(d) => {
            let hex: String = d.iter().take(4).map(|b| format!("{b:02x}")).collect();
            format!("key-{hex}")
        }
    };
    let shown = format!("api_keys.{hash_label}");
    let mut key = KeyConfig::new(id, hash_label, None);
    match value {
        serde_yaml::Value::String(upstream_key) => {
            if upstream_key.is_empty() {
                c.err_masked(&line_path, &shown, "the upstream key is empty");
                return None;
            }
            if HeaderValue::from_str(&format!("Bearer {upstream_key}")).is_err() {
                c.err_masked(
                    &line_path,
                    &shown,
                    "the upstream key contains characters not allowed in an HTTP header \
                     (control characters or non-ASCII)",
                );
                return None;
            }
            key.upstream_key = Some(Secret::new(upstream_key));
        }
        v @ serde_yaml::Value::Mapping(_) => {
            // Every problem of the map at once (an unknown field hides no other), each at its
            // field's line; what is left is still checked.
            let (policy, problems) = deserialize_all::<RawKeyPolicy>(v);
            let refused = !problems.is_empty();
            for (sub, message) in problems {
                let mut at = line_path.to_vec();
                at.extend(sub.iter().cloned());
                let shown_at = format!("{shown}{}", rendered_suffix(&sub));
                c.err_masked(&at, &shown_at, message);
            }
            if let Some(policy) = policy {
                apply_policy(c, &mut key, policy, &line_path, &shown, known);
            }
            if refused {
                return None;
            }
        }
        _ => {
            c.err_masked(&line_path, &shown, "expected an upstream key (a string) or a policy map {name, credential, upstream, models, rpm, tpm, max_concurrent, expires_at, budget}");
            return None;
        }
    }
    Some(key)
}

/// `.rpm`, `.models[2]`: a path inside a policy as it follows the key's label.
fn rendered_suffix(sub: &[Segment]) -> String {
    let inner = render_path(sub);
    if inner.is_empty() || inner.starts_with('[') {
        inner
    } else {
        format!(".{inner}")
    }
}

/// The path of a policy field, to find its line.
fn field(line_path: &[Segment], name: &str) -> Vec<Segment> {
    let mut p = line_path.to_vec();
    p.push(k(name));
    p
}

/// The extended form: checks the policy's references and ranges and sets it on `key`.
fn apply_policy(
    c: &mut Collector,
    key: &mut KeyConfig,
    policy: RawKeyPolicy,
    line_path: &[Segment],
    shown: &str,
    known: &Known<'_>,
) {
    if let Some(name) = policy.name.filter(|n| !n.trim().is_empty()) {
        key.label = name;
    }
    if let Some(cred) = &policy.credential {
        if !known.credentials.contains(cred) {
            c.err_masked(
                &field(line_path, "credential"),
                &format!("{shown}.credential"),
                format!("no credential named `{cred}` under credentials:"),
            );
        }
    }
    if let Some(u) = &policy.upstream {
        if !known.upstreams.contains(u) {
            c.err_masked(
                &field(line_path, "upstream"),
                &format!("{shown}.upstream"),
                format!("no upstream named `{u}`"),
            );
        }
    }
    for (n, v) in [
        ("rpm", policy.rpm.map(u64::from)),
        ("tpm", policy.tpm),
        ("max_concurrent", policy.max_concurrent.map(u64::from)),
    ] {
        if v == Some(0) {
            c.err_masked(
                &field(line_path, n),
                &format!("{shown}.{n}"),
                "must be at least 1 (omit it for no limit)",
            );
        }
    }
    if let Some(exp) = &policy.expires_at {
        match parse_time(exp) {
            Some(t) => key.expires_at = Some(t),
            None => c.err_masked(
                &field(line_path, "expires_at"),
                &format!("{shown}.expires_at"),
                "expected an RFC 3339 time (2027-01-31T00:00:00Z), a date (2027-01-31) or Unix seconds",
            ),
        }
    }
    if let Some(b) = policy.budget {
        key.budget = super::budgets::budget(
            c,
            b,
            &field(line_path, "budget"),
            &format!("{shown}.budget"),
            known.priced,
        );
    }
    key.credential = policy.credential;
    key.upstream = policy.upstream;
    key.models = policy.models.unwrap_or_default();
    key.rpm = policy.rpm;
    key.tpm = policy.tpm;
    key.max_concurrent = policy.max_concurrent;
}

/// `sha256:<64 hex>` or a plain key.
pub fn parse_key_id(key: &str) -> Result<KeyId, String> {
    if key.trim().is_empty() {
        return Err("a client key must not be empty".into());
    }
    let Some(hex) = key.strip_prefix("sha256:") else {
        return Ok(KeyId::Plain(Secret::new(key)));
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(
            "a hashed key is `sha256:` followed by 64 hex digits (see `sophgate hash-key`)".into(),
        );
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte =
            u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| "bad hex".to_string())?;
    }
    Ok(KeyId::Sha256(out))
}

/// The form `sophgate hash-key` prints and `api_keys` accepts.
pub fn hash_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Unix seconds, `YYYY-MM-DD` (midnight UTC) or `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
pub fn parse_time(v: &serde_yaml::Value) -> Option<std::time::SystemTime> {
    use std::time::{Duration as D, UNIX_EPOCH};
    if let Some(n) = v.as_u64() {
        return Some(UNIX_EPOCH + D::from_secs(n));
    }
    let s = v.as_str()?.trim();
    let num = |a: usize, b: usize| s.get(a..b)?.parse::<i64>().ok();
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    if s.get(4..5)? != "-"
        || s.get(7..8)? != "-"
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&d)
    {
        return None;
    }
    let mut secs = days_from_civil(y, m, d) * 86_400;
    if s.len() > 10 {
        let sep = s.get(10..11)?;
        if sep != "T" && sep != "t" && sep != " " {
            return None;
        }
        let (hh, mm, ss) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
        if hh > 23 || mm > 59 || ss > 60 {
            return None;
        }
        secs += hh * 3600 + mm * 60 + ss;
        let mut rest = s.get(19..)?;
        if let Some(frac) = rest.strip_prefix('.') {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            rest = &frac[digits..];
        }
        match rest {
            "Z" | "z" => {}
            tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) => {
                let h: i64 = tz.get(1..3)?.parse().ok()?;
                let m: i64 = tz.get(4..6)?.parse().ok()?;
                let off = h * 3600 + m * 60;
                secs -= if tz.starts_with('+') { off } else { -off };
            }
            _ => return None,
        }
    }
    u64::try_from(secs)
        .ok()
        .map(|n| UNIX_EPOCH + D::from_secs(n))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
