//! `metrics:`: the Prometheus endpoint's switch, scrape allow-list, own listener and the bound
//! on distinct model labels.

use std::net::SocketAddr;

use super::acl::parse_net;
use super::Collector;
use crate::config::raw::RawMetrics;
use crate::config::yaml_path::{k, Segment};
use crate::config::MetricsConfig;

pub const DEFAULT_MAX_MODELS: usize = 100;
/// Upper bound on `max_models`: each model multiplies the series of several metrics.
const MAX_MAX_MODELS: usize = 10_000;

pub(super) fn metrics(c: &mut Collector, raw: Option<RawMetrics>) -> MetricsConfig {
    let m = raw.unwrap_or_default();
    let allow = match m.allow {
        None => ["127.0.0.0/8", "::1"]
            .iter()
            .filter_map(|n| parse_net(n))
            .collect(),
        Some(list) => {
            let mut out = Vec::new();
            for (i, item) in list.into_iter().enumerate() {
                match parse_net(&item) {
                    Some(n) => out.push(n),
                    None => c.err(
                        &[k("metrics"), k("allow"), Segment::Index(i)],
                        format!("`{item}` is not an IP address or CIDR (e.g. 10.0.0.0/8, ::1)"),
                    ),
                }
            }
            out
        }
    };
    let listen = m.listen.filter(|l| !l.trim().is_empty()).and_then(|l| {
        match l.trim().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                c.err(
                    &[k("metrics"), k("listen")],
                    format!("`{l}` is not an address:port (e.g. 127.0.0.1:9464)"),
                );
                None
            }
        }
    });
    let max_models = m.max_models.unwrap_or(DEFAULT_MAX_MODELS);
    if max_models == 0 || max_models > MAX_MAX_MODELS {
        c.err(
            &[k("metrics"), k("max_models")],
            format!("must be between 1 and {MAX_MAX_MODELS}, got {max_models}"),
        );
    }
    MetricsConfig {
        enabled: m.enabled.unwrap_or(true),
        allow,
        listen,
        max_models: max_models.clamp(1, MAX_MAX_MODELS),
    }
}
