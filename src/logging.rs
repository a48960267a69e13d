//! tracing setup from the `log_level` / `logging` config: text or JSON, to stderr or to a
//! file that keeps its name and is rotated beside itself ([`rolling`]; daily by default, 10
//! rotated files kept — the Python forwarder's retention).
//! `SOPHGATE_LOG` (a tracing filter) overrides `log_level` when set.

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

pub mod rolling;

/// Installs the global subscriber. Keep the guard alive until exit so buffered lines flush.
pub fn init(cfg: &LoggingConfig) -> Result<Option<WorkerGuard>, String> {
    let filter = match std::env::var("SOPHGATE_LOG") {
        Ok(f) if !f.is_empty() => {
            EnvFilter::try_new(f).map_err(|e| format!("SOPHGATE_LOG: {e}"))?
        }
        _ => EnvFilter::try_new(format!("{},hyper=warn,reqwest=warn,h2=warn", cfg.level))
            .map_err(|e| e.to_string())?,
    };
    let (writer, guard) = match &cfg.file {
        Some(path) => {
            let file = rolling::RollingFile::open(path, cfg.rotation, cfg.retention_days)
                .map_err(|e| format!("logging.file: cannot open {}: {e}", path.display()))?;
            tracing_appender::non_blocking(file)
        }
        None => tracing_appender::non_blocking(std::io::stderr()),
    };
    // The writer never blocks a request: when its buffer (128k lines) is full it drops lines.
    // Counted, shown in /admin/status and reported by `report_dropped_lines`.
    let _ = DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false);
    let result = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))?;
    Ok(Some(guard))
}

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Log lines dropped so far because the writer could not keep up (0 before `init`).
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// Logs, every `every`, how many lines were dropped since the last report (the report itself
/// goes through once the burst is over). Runs until the runtime stops.
pub fn report_dropped_lines(every: std::time::Duration) {
    tokio::spawn(async move {
        let mut reported = dropped_lines();
        loop {
            tokio::time::sleep(every).await;
            let now = dropped_lines();
            if now > reported {
                tracing::warn!(
                    dropped = now - reported,
                    total = now,
                    "log lines dropped: the log writer could not keep up"
                );
                reported = now;
            }
        }
    });
}
