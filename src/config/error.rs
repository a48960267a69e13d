//! Config problems: each located by file, YAML path and line, and reported together.

use std::fmt;
use std::sync::Arc;

use super::yaml_path::{find_line, render_path, Segment};

/// One problem in a config file, located as precisely as possible.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: String,
    /// YAML path such as `limits.max_body_bytes` or `ip_whitelist[2]`; empty for the whole file.
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one config, reported together.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn one(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// In file order: by line, problems without a line last; same-line problems keep their
    /// order.
    pub fn sort(&mut self) {
        self.0.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
    }
}

/// The file name and text a config was read from, so that problems found after validation
/// (while building the generation) carry file, YAML path and line like validation's own.
#[derive(Clone, Default)]
pub struct Locator {
    file: String,
    text: Arc<str>,
}

impl Locator {
    pub fn new(file: &str, text: &str) -> Self {
        Locator {
            file: file.to_owned(),
            text: Arc::from(text),
        }
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    /// An error at `path` (empty: the whole file).
    pub fn error(&self, path: &[Segment], message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            path: render_path(path),
            line: if path.is_empty() {
                None
            } else {
                find_line(&self.text, path)
            },
            message: message.into(),
        }
    }

    /// An error whose printed path differs from the path that locates it: client keys are
    /// map keys, found by their text but printed as labels.
    pub fn error_masked(
        &self,
        line_path: &[Segment],
        shown: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            path: shown.to_owned(),
            line: find_line(&self.text, line_path),
            message: message.into(),
        }
    }
}

/// Only the file name: the text holds secrets.
impl fmt::Debug for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locator")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// Why a configuration did not become the running generation.
#[derive(Debug, Clone, PartialEq)]
pub enum BuildError {
    /// Problems in the config, each located: validation's, and those of the build steps that
    /// can only fail when run (an HTTP client, a Rhai script), traced to the entry behind them.
    Config(ConfigErrors),
    /// A reload was asked of a configuration that was not read from a file.
    NoConfigFile,
    /// The reload task ended without an answer (it panicked).
    Interrupted(String),
}

impl BuildError {
    /// Located problems, in file order.
    pub fn config(errors: Vec<ConfigError>) -> Self {
        let mut errors = ConfigErrors(errors);
        errors.sort();
        BuildError::Config(errors)
    }
}

impl From<ConfigErrors> for BuildError {
    fn from(e: ConfigErrors) -> Self {
        BuildError::Config(e)
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Config(errors) => errors.fmt(f),
            BuildError::NoConfigFile => f.write_str("this configuration has no file to reload"),
            BuildError::Interrupted(why) => write!(f, "reload task failed: {why}"),
        }
    }
}

impl std::error::Error for BuildError {}
