//! How loading a plugin or calling a hook fails, as callers see it.

use std::fmt;

use rhai::{ParseError, Position};

/// Why a plugin could not be loaded: a syntax error, a malformed hook, or an error in its
/// top-level code (which runs once at load). `line`/`column` are 1-based when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptCompileError {
    pub plugin: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ScriptCompileError {
    /// `plugin:line:column: message`, the form editors and terminals turn into a link.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(col)) => write!(f, "{}:{line}:{col}: {}", self.plugin, self.message),
            (Some(line), None) => write!(f, "{}:{line}: {}", self.plugin, self.message),
            _ => write!(f, "{}: {}", self.plugin, self.message),
        }
    }
}

impl std::error::Error for ScriptCompileError {}

impl ScriptCompileError {
    pub(super) fn new(plugin: &str, pos: Position, message: impl Into<String>) -> Self {
        Self {
            plugin: plugin.to_owned(),
            line: pos.line(),
            column: pos.position(),
            message: message.into(),
        }
    }

    pub(super) fn parse(plugin: &str, err: &ParseError) -> Self {
        Self::new(plugin, err.position(), err.0.to_string())
    }
}

/// How a hook call failed, as the pipeline must answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptFailure {
    /// `throw #{status: 4xx/5xx, message: "..."}` — answer the client with this.
    Thrown { status: u16, message: String },
    /// Any other error (runtime error, limit hit, bad throw value). Details are already logged
    /// with plugin name, hook, line and column; the client only gets "script error in plugin
    /// <name>".
    Error { plugin: String },
}

impl fmt::Display for ScriptFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Thrown { status, message } => write!(f, "{status}: {message}"),
            Self::Error { plugin } => write!(f, "script error in plugin {plugin}"),
        }
    }
}

impl std::error::Error for ScriptFailure {}
