//! The standard process metrics, read from `/proc` at scrape time (Linux; elsewhere they are
//! left out): `process_resident_memory_bytes`, `process_open_fds`, `process_cpu_seconds_total`,
//! `process_start_time_seconds`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// `/proc/<pid>/stat` counts CPU time and start time in clock ticks of `USER_HZ`, which
/// Linux fixes at 100 for user space on every architecture it exposes `/proc` to.
const TICKS_PER_SECOND: f64 = 100.0;
const PAGE_FALLBACK: u64 = 4096;

#[derive(Debug, Default)]
pub struct ProcessCollector;

/// What one scrape reads of the process.
#[derive(Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub start_time_seconds: Option<f64>,
}

/// The fields of `/proc/self/stat` after the command name (which may hold spaces).
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rfind(')')
        .map(|i| stat[i + 1..].split_whitespace().collect())
        .unwrap_or_default()
}

fn parse_stat(stat: &str, boot_time: Option<u64>) -> (Option<f64>, Option<f64>) {
    let f = stat_fields(stat);
    // After the name: state is field 3 of proc(5), so field n is at index n - 3.
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let cpu = match (num(14), num(15)) {
        (Some(u), Some(s)) => Some((u + s) as f64 / TICKS_PER_SECOND),
        _ => None,
    };
    let start = match (num(22), boot_time) {
        (Some(ticks), Some(boot)) => Some(boot as f64 + ticks as f64 / TICKS_PER_SECOND),
        _ => None,
    };
    (cpu, start)
}

fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// `VmRSS` of `/proc/self/status` in bytes (or the resident pages of `statm`).
fn resident(status: Option<&str>, statm: Option<&str>) -> Option<u64> {
    let from_status = status.and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    from_status.or_else(|| {
        statm
            .and_then(|s| s.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|pages| pages * PAGE_FALLBACK)
    })
}

pub fn read() -> ProcessStats {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let (cpu_seconds, start_time_seconds) = match read("/proc/self/stat") {
        Some(stat) => parse_stat(&stat, read("/proc/stat").as_deref().and_then(boot_time)),
        None => (None, None),
    };
    ProcessStats {
        resident_bytes: resident(
            read("/proc/self/status").as_deref(),
            read("/proc/self/statm").as_deref(),
        ),
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64),
        cpu_seconds,
        start_time_seconds,
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = read();
        if let Some(v) = s.resident_bytes {
            let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
            let m = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                None,
                g.metric_type(),
            )?;
            g.encode(m)?;
        }
        if let Some(v) = s.open_fds {
            let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
            let m = encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                g.metric_type(),
            )?;
            g.encode(m)?;
        }
        if let Some(v) = s.cpu_seconds {
            let c = ConstCounter::new(v);
            let m = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?;
            c.encode(m)?;
        }
        if let Some(v) = s.start_time_seconds {
            let g = ConstGauge::new(v);
            let m = encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                None,
                g.metric_type(),
            )?;
            g.encode(m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_cpu_and_start_time_from_stat() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    8 0 1000 12345678 900 18446744073709551615";
        let (cpu, start) = parse_stat(stat, Some(1_700_000_000));
        assert_eq!(cpu, Some(3.0));
        assert_eq!(start, Some(1_700_000_010.0));
        assert_eq!(
            boot_time("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
        assert_eq!(
            resident(Some("Name:\tx\nVmRSS:\t  2048 kB\n"), None),
            Some(2048 * 1024)
        );
        assert_eq!(resident(None, Some("100 25 3")), Some(25 * 4096));
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_process_has_stats() {
        let s = read();
        assert!(s.resident_bytes.unwrap() > 0);
        assert!(s.open_fds.unwrap() > 0);
        assert!(s.start_time_seconds.unwrap() > 1_600_000_000.0);
    }
}
