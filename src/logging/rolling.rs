//! The log file: written under its configured name (`sophgate.log`), and at the turn of the
//! (UTC) day or hour renamed beside itself with the period it holds (`sophgate.log.2026-12-01`,
//! hourly `sophgate.log.2026-12-01_13`, the suffixes of Python's `TimedRotatingFileHandler`),
//! keeping the newest `keep` of those. A live file left by an earlier run in an earlier period
//! is rotated the same way at start.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::Rotation;

type Clock = Box<dyn Fn() -> SystemTime + Send>;

pub struct RollingFile {
    path: PathBuf,
    rotation: Rotation,
    keep: usize,
    file: File,
    /// The period the live file holds (`None` with `Rotation::Never`).
    period: Option<String>,
    now: Clock,
}

impl RollingFile {
    /// Opens (appending) or creates the live file at `path`, creating its folder.
    pub fn open(path: &Path, rotation: Rotation, keep: usize) -> io::Result<Self> {
        Self::with_clock(path, rotation, keep, Box::new(SystemTime::now))
    }

    fn with_clock(path: &Path, rotation: Rotation, keep: usize, now: Clock) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let period = period_of(rotation, now());
        // A live file from an earlier period (the process was down at the turn) goes first.
        if let (Some(current), Ok(meta)) = (&period, std::fs::metadata(path)) {
            if let Some(old) = meta.modified().ok().and_then(|t| period_of(rotation, t)) {
                if old < *current && meta.len() > 0 {
                    rotate_out(path, &old)?;
                }
            }
        }
        let file = open_append(path)?;
        let this = RollingFile {
            path: path.to_path_buf(),
            rotation,
            keep,
            file,
            period,
            now,
        };
        this.prune();
        Ok(this)
    }

    /// Renames the live file to its period's name and starts a new one, when the period
    /// changed.
    fn roll_if_due(&mut self) -> io::Result<()> {
        let Some(current) = &self.period else {
            return Ok(());
        };
        let now = period_of(self.rotation, (self.now)());
        let Some(now) = now.filter(|n| n != current) else {
            return Ok(());
        };
        self.file.flush()?;
        rotate_out(&self.path, current)?;
        self.file = open_append(&self.path)?;
        self.period = Some(now);
        self.prune();
        Ok(())
    }

    /// Deletes the oldest rotated files beyond `keep` (best effort: a file that cannot be
    /// deleted stays).
    fn prune(&self) {
        let (Some(dir), Some(name)) = (folder_of(&self.path), file_name(&self.path)) else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let prefix = format!("{name}.");
        let mut rotated: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.strip_prefix(&prefix).is_some_and(is_period_suffix))
            .collect();
        // ISO dates sort as text; `.1` of a collision sorts after its period.
        rotated.sort();
        let excess = rotated.len().saturating_sub(self.keep);
        for old in &rotated[..excess] {
            let _ = std::fs::remove_file(dir.join(old));
        }
    }
}

impl Write for RollingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A failed rotation keeps writing to the live file rather than losing lines.
        if let Err(e) = self.roll_if_due() {
            eprintln!("sophgate: log rotation failed: {e}");
            self.period = period_of(self.rotation, (self.now)());
        }
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn folder_of(path: &Path) -> Option<PathBuf> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => Some(p.to_path_buf()),
        _ => Some(PathBuf::from(".")),
    }
}

fn file_name(path: &Path) -> Option<String> {
    path.file_name()?.to_str().map(str::to_owned)
}

/// `2026-12-01`, `2026-12-01_13`, optionally followed by `.N`.
fn is_period_suffix(s: &str) -> bool {
    let base = s.split('.').next().unwrap_or("");
    let shape_ok = matches!(base.len(), 10 | 13)
        && base.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'_',
            _ => b.is_ascii_digit(),
        });
    shape_ok
        && s[base.len()..]
            .split('.')
            .skip(1)
            .all(|n| n.parse::<u32>().is_ok())
}

/// Renames the live file to `<name>.<period>` (or `.<period>.N` when that exists).
fn rotate_out(path: &Path, period: &str) -> io::Result<()> {
    let mut target = PathBuf::from(format!("{}.{period}", path.display()));
    let mut n = 1;
    while target.exists() {
        target = PathBuf::from(format!("{}.{period}.{n}", path.display()));
        n += 1;
    }
    std::fs::rename(path, target)
}

/// The UTC period `t` falls in, as the rotated file's suffix.
fn period_of(rotation: Rotation, t: SystemTime) -> Option<String> {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    match rotation {
        Rotation::Never => None,
        Rotation::Daily => Some(format!("{y:04}-{m:02}-{d:02}")),
        Rotation::Hourly => {
            let h = secs.rem_euclid(86_400) / 3600;
            Some(format!("{y:04}-{m:02}-{d:02}_{h:02}"))
        }
    }
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    const DAY: u64 = 86_400;
    /// 2026-12-01T10:00:00Z.
    const START: u64 = 1_796_119_200;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sophgate-rolling-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn clock() -> (Arc<AtomicU64>, Clock) {
        let t = Arc::new(AtomicU64::new(START));
        let c = t.clone();
        (
            t,
            Box::new(move || UNIX_EPOCH + Duration::from_secs(c.load(Ordering::SeqCst))),
        )
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        let t = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(period_of(Rotation::Daily, t(START)).unwrap(), "2026-12-01");
        assert_eq!(
            period_of(Rotation::Hourly, t(START)).unwrap(),
            "2026-12-01_10"
        );
        assert_eq!(
            period_of(Rotation::Daily, t(951_782_400)).unwrap(),
            "2000-02-29"
        );
        assert_eq!(period_of(Rotation::Never, t(START)), None);
    }

    #[test]
    fn the_live_file_keeps_its_name_and_days_are_renamed_beside_it() {
        let dir = temp_dir("daily");
        let path = dir.join("logs").join("sophgate.log");
        let (t, now) = clock();
        let mut f = RollingFile::with_clock(&path, Rotation::Daily, 10, now).unwrap();
        f.write_all(b"day one\n").unwrap();
        t.fetch_add(DAY, Ordering::SeqCst);
        f.write_all(b"day two\n").unwrap();
        f.flush().unwrap();
        let logs = dir.join("logs");
        assert_eq!(names(&logs), ["sophgate.log", "sophgate.log.2026-12-01"]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "day two\n");
        assert_eq!(
            std::fs::read_to_string(logs.join("sophgate.log.2026-12-01")).unwrap(),
            "day one\n"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn only_the_newest_rotated_files_are_kept() {
        let dir = temp_dir("keep");
        let path = dir.join("gw.log");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("gw.log.notes"), "not ours").unwrap();
        let (t, now) = clock();
        let mut f = RollingFile::with_clock(&path, Rotation::Daily, 2, now).unwrap();
        for _ in 0..5 {
            f.write_all(b"x\n").unwrap();
            t.fetch_add(DAY, Ordering::SeqCst);
        }
        f.write_all(b"today\n").unwrap();
        assert_eq!(
            names(&dir),
            [
                "gw.log",
                "gw.log.2026-12-04",
                "gw.log.2026-12-05",
                "gw.log.notes"
            ]
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_live_file_from_an_earlier_day_is_rotated_at_start() {
        let dir = temp_dir("start");
        let path = dir.join("gw.log");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, "yesterday\n").unwrap();
        let yesterday = UNIX_EPOCH + Duration::from_secs(START - DAY);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(yesterday)
            .unwrap();
        let (_t, now) = clock();
        let mut f = RollingFile::with_clock(&path, Rotation::Daily, 10, now).unwrap();
        f.write_all(b"today\n").unwrap();
        assert_eq!(names(&dir), ["gw.log", "gw.log.2026-11-30"]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "today\n");
        // Started again the same day: appended, nothing rotated.
        drop(f);
        let (_t, now) = clock();
        let mut f = RollingFile::with_clock(&path, Rotation::Daily, 10, now).unwrap();
        f.write_all(b"again\n").unwrap();
        assert_eq!(names(&dir), ["gw.log", "gw.log.2026-11-30"]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "today\nagain\n");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn hourly_and_never() {
        let dir = temp_dir("hourly");
        let path = dir.join("gw.log");
        let (t, now) = clock();
        let mut f = RollingFile::with_clock(&path, Rotation::Hourly, 10, now).unwrap();
        f.write_all(b"a\n").unwrap();
        t.fetch_add(3600, Ordering::SeqCst);
        f.write_all(b"b\n").unwrap();
        assert_eq!(names(&dir), ["gw.log", "gw.log.2026-12-01_10"]);
        let never = dir.join("never.log");
        let (t, now) = clock();
        let mut f = RollingFile::with_clock(&never, Rotation::Never, 10, now).unwrap();
        f.write_all(b"a\n").unwrap();
        t.fetch_add(DAY, Ordering::SeqCst);
        f.write_all(b"b\n").unwrap();
        assert_eq!(std::fs::read_to_string(&never).unwrap(), "a\nb\n");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn suffixes_are_recognised() {
        assert!(is_period_suffix("2026-12-01"));
        assert!(is_period_suffix("2026-12-01_13"));
        assert!(is_period_suffix("2026-12-01.1"));
        assert!(!is_period_suffix("notes"));
        assert!(!is_period_suffix("2026-12-01.x"));
        assert!(!is_period_suffix("2026/12/01"));
    }
}
