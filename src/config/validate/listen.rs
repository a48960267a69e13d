//! The server's own settings: `listen`, `workers`, `limits:` (with the plugin sandbox under
//! `limits.scripts`) and `admin:`.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Collector, DEFAULT_LISTEN, DEFAULT_MAX_BODY_BYTES};
use crate::config::raw::{RawAdmin, RawLimits};
use crate::config::yaml_path::k;
use crate::config::Limits;
use crate::scripting::ScriptLimits;
use crate::secret::Secret;

pub(super) fn listen(c: &mut Collector, raw: Option<String>) -> SocketAddr {
    let listen_s = raw.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    match listen_s.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            c.err(
                &[k("listen")],
                format!("`{listen_s}` is not an address:port (e.g. 0.0.0.0:8000 or [::]:8000)"),
            );
            SocketAddr::from(([0, 0, 0, 0], 8000))
        }
    }
}

pub(super) fn workers(c: &mut Collector, raw: Option<usize>) {
    if raw == Some(0) {
        c.err(
            &[k("workers")],
            "must be at least 1 (or null for one per core)",
        );
    }
}

pub(super) fn limits(c: &mut Collector, raw: Option<RawLimits>) -> (Limits, ScriptLimits) {
    let rl = raw.unwrap_or_default();
    let max_body = rl.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body == 0 || max_body > (1 << 32) {
        c.err(
            &[k("limits"), k("max_body_bytes")],
            format!("must be between 1 and 4294967296, got {max_body}"),
        );
    }
    let limits = Limits {
        max_body_bytes: max_body.clamp(1, 1 << 32) as usize,
        header_read_timeout: c.seconds(
            &[k("limits"), k("header_read_timeout")],
            rl.header_read_timeout,
            30.0,
        ),
        keep_alive_timeout: c.seconds(
            &[k("limits"), k("keep_alive_timeout")],
            rl.keep_alive_timeout,
            75.0,
        ),
        send_timeout: c.seconds(&[k("limits"), k("send_timeout")], rl.send_timeout, 60.0),
        first_byte_timeout: c.seconds(
            &[k("limits"), k("first_byte_timeout")],
            rl.first_byte_timeout,
            300.0,
        ),
        stream_idle_timeout: c.seconds(
            &[k("limits"), k("stream_idle_timeout")],
            rl.stream_idle_timeout,
            300.0,
        ),
        shutdown_grace: c.seconds(&[k("limits"), k("shutdown_grace")], rl.shutdown_grace, 30.0),
    };
    let sl = rl.scripts.unwrap_or_default();
    let dflt = ScriptLimits::default();
    let script_limits = ScriptLimits {
        max_operations: sl.max_operations.unwrap_or(dflt.max_operations),
        max_call_levels: sl.max_call_levels.unwrap_or(dflt.max_call_levels),
        max_expr_depth: sl.max_expr_depth.unwrap_or(dflt.max_expr_depth),
        max_function_expr_depth: sl
            .max_function_expr_depth
            .unwrap_or(dflt.max_function_expr_depth),
        max_string_size: sl.max_string_size.unwrap_or(dflt.max_string_size),
        max_array_size: sl.max_array_size.unwrap_or(dflt.max_array_size),
        max_map_size: sl.max_map_size.unwrap_or(dflt.max_map_size),
        max_wall_time: sl
            .max_wall_time_ms
            .map(Duration::from_millis)
            .unwrap_or(dflt.max_wall_time),
    };
    if sl.max_wall_time_ms == Some(0) {
        c.err(
            &[k("limits"), k("scripts"), k("max_wall_time_ms")],
            "must be at least 1",
        );
    }
    (limits, script_limits)
}

/// `admin.key`; `None` leaves the admin endpoints off.
pub(super) fn admin_key(c: &mut Collector, raw: Option<RawAdmin>) -> Option<Secret> {
    match raw.and_then(|a| a.key) {
        Some(key) if key.len() < 16 => {
            c.err(
                &[k("admin"), k("key")],
                "must be at least 16 characters (it guards reloads)",
            );
            None
        }
        Some(key) => Some(Secret::new(key)),
        None => None,
    }
}
