//! tracing setup from the `log_level` / `logging` config: text or JSON, to stderr or to a
//! file that keeps its name and is rotated beside itself ([`rolling`]; daily by default, 10
//! rotated files kept — the Python forwarder's retention).
//! `SOPHGATE_LOG` (a tracing filter) overrides `log_level` when set.

use std::fmt::{self, Write as _};
use std::sync::OnceLock;

use tracing::field::Field;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::{self, FormatFields};

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
        LogFormat::Text => builder.fmt_fields(text_fields()).try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))?;
    Ok(Some(guard))
}

/// The text format's fields, as tracing's default writes them (`name=value`, the message
/// bare), with control characters in names and values escaped (`\n`, `\r`, `\t`,
/// `\u{1b}`, …): a value from a request (a body at DEBUG, a model name, an error message) can
/// never end the line and forge another one. JSON logs are escaped by JSON itself.
pub fn text_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    format::debug_fn(
        |w: &mut format::Writer<'_>, field: &Field, value: &dyn fmt::Debug| {
            let mut out = Escaped(w);
            if field.name() == "message" {
                write!(out, "{value:?}")
            } else {
                write!(out, "{}={value:?}", field.name())
            }
        },
    )
    .delimited(" ")
}

/// A `fmt::Write` that escapes control characters on their way through (no buffer).
struct Escaped<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut start = 0;
        for (i, c) in s.char_indices() {
            if !c.is_control() {
                continue;
            }
            self.0.write_str(&s[start..i])?;
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
            }
            start = i + c.len_utf8();
        }
        self.0.write_str(&s[start..])
    }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A value from a request cannot forge a log line: control characters are escaped, in
    /// Display (`%`) and Debug fields and in the message, and the line's shape is kept.
    #[test]
    fn text_logs_escape_control_characters() {
        let buf = Buf::default();
        let w = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(text_fields())
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let forged =
                "m\n2026-01-01T00:00:00Z  INFO sophgate::access: request status=200\r\x1b[2J";
            tracing::info!(
                target: "sophgate::access",
                model = %forged,
                body = ?forged,
                status = 200,
                ok = true,
                "request {}",
                "a\tb\u{85}c"
            );
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "one line: {text:?}");
        assert!(text.ends_with('\n'));
        let line = text.trim_end();
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(
            line.contains(
                r"model=m\n2026-01-01T00:00:00Z  INFO sophgate::access: request status=200\r\u{1b}[2J"
            ),
            "{line}"
        );
        assert!(line.contains(r"request a\tb\u{85}c model="), "{line}");
        assert!(line.contains(" status=200 ok=true"), "{line}");
        assert!(line.contains(r#"body="m\n2026"#), "{line}");
    }
}
