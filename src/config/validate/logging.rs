//! `log_level` (the seed key) and `logging:`.

use std::path::Path;

use super::Collector;
use crate::config::raw::RawLogging;
use crate::config::yaml_path::k;
use crate::config::{LogFormat, LoggingConfig, Rotation};

/// The seed's level names (Python's) as a tracing filter directive.
fn log_level(c: &mut Collector, raw: Option<String>) -> String {
    let Some(raw) = raw else {
        return "info".into();
    };
    match raw.trim().to_ascii_uppercase().as_str() {
        "TRACE" => "trace".into(),
        "DEBUG" => "debug".into(),
        "INFO" => "info".into(),
        "WARNING" | "WARN" => "warn".into(),
        "ERROR" | "CRITICAL" | "FATAL" => "error".into(),
        _ => {
            c.err(
                &[k("log_level")],
                format!("`{raw}` is not a log level (DEBUG, INFO, WARNING, ERROR)"),
            );
            "info".into()
        }
    }
}

pub(super) fn logging(
    c: &mut Collector,
    level: Option<String>,
    raw: Option<RawLogging>,
    base_dir: &Path,
) -> LoggingConfig {
    let level = log_level(c, level);
    let lg = raw.unwrap_or_default();
    let format = match lg.format.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            c.err(
                &[k("logging"), k("format")],
                format!("`{other}` is not text or json"),
            );
            LogFormat::Text
        }
    };
    let rotation = match lg
        .rotation
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("daily") => Rotation::Daily,
        Some("hourly") => Rotation::Hourly,
        Some("never") => Rotation::Never,
        Some(other) => {
            c.err(
                &[k("logging"), k("rotation")],
                format!("`{other}` is not daily, hourly or never"),
            );
            Rotation::Daily
        }
    };
    if let Some(f) = lg
        .file
        .as_deref()
        .filter(|f| f.ends_with('/') || f.ends_with('\\'))
    {
        c.err(
            &[k("logging"), k("file")],
            format!("`{f}` names a folder; give the log file's name, e.g. {f}sophgate.log"),
        );
    }
    LoggingConfig {
        level,
        format,
        // Relative to the config file's folder, as plugin and CA paths are.
        file: lg
            .file
            .filter(|f| !f.trim().is_empty())
            .map(|f| base_dir.join(f)),
        rotation,
        retention_days: lg.retention_days.unwrap_or(10),
        access_log: lg.access_log.unwrap_or(true),
    }
}
