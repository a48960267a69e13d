//! Reload on file change: watches the folders of the config file and of every plugin file
//! (editors often replace a file by renaming a new one over it, which only the folder sees),
//! waits for a burst of writes to settle, then reloads. The watched set follows the current
//! generation, so a plugin added by a reload is watched from then on.
//!
//! Events for other files in those folders (a log file written next to `config.yml`, an
//! editor's swap file) are dropped on the watcher's own thread, by file name, so they never
//! wake the request workers.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::reload::Runtime;

/// How long a burst of file events must be quiet before reloading.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p)
        .or_else(|_| std::path::absolute(p))
        .unwrap_or_else(|_| p.to_path_buf())
}

/// Starts watching; runs until the runtime is dropped. Returns an error if the platform
/// watcher cannot start (reload by SIGHUP or the admin endpoint still works).
pub fn spawn(runtime: Arc<Runtime>) -> Result<tokio::task::JoinHandle<()>, String> {
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    // The file names of the watched files: a cheap first filter (no system call) before the
    // exact comparison of canonical paths on the runtime.
    let names: Arc<Mutex<HashSet<OsString>>> = Arc::default();
    let wanted_names = names.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            let Ok(names) = wanted_names.lock() else {
                return;
            };
            for p in event.paths {
                if p.file_name().is_some_and(|n| names.contains(n)) {
                    let _ = tx.send(p);
                }
            }
        }
    })
    .map_err(|e| format!("cannot start the file watcher: {e}"))?;

    // The folders are watched before this returns: a change right after start is not missed.
    let mut dirs: HashSet<PathBuf> = HashSet::new();
    let mut files: HashSet<PathBuf> = HashSet::new();
    rewatch(&runtime, &names, &mut watcher, &mut dirs, &mut files);
    let task = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut relevant = files.contains(&absolute(&first));
            // Let the burst settle, keeping note of whether any event touched our files.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(p)) => relevant |= files.contains(&absolute(&p)),
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if relevant {
                let _ = runtime.reload_async("file change").await;
                rewatch(&runtime, &names, &mut watcher, &mut dirs, &mut files);
            }
        }
    });
    Ok(task)
}

/// Points the watcher at the folders of the current generation's files (and the name filter
/// at their names).
fn rewatch(
    runtime: &Runtime,
    names: &Mutex<HashSet<OsString>>,
    watcher: &mut notify::RecommendedWatcher,
    dirs: &mut HashSet<PathBuf>,
    files: &mut HashSet<PathBuf>,
) {
    *files = runtime
        .watched_files()
        .iter()
        .map(|f| absolute(f))
        .collect();
    if let Ok(mut names) = names.lock() {
        *names = files
            .iter()
            .filter_map(|f| f.file_name().map(OsString::from))
            .collect();
    }
    let wanted: HashSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    for d in dirs.difference(&wanted) {
        let _ = watcher.unwatch(d);
    }
    for d in wanted.difference(dirs) {
        if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %d.display(), error = %e, "cannot watch folder");
        }
    }
    *dirs = wanted;
}
