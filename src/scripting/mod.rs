//! Rhai plugins (work in progress: see issue 3).
