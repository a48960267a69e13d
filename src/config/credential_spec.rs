//! The validated form of one `credentials:` entry: what `raw_credentials` produces and the
//! credential providers are built from. It lives with the config so that the config depends on
//! nothing above it.

use std::fmt;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};

use crate::secret::Secret;

/// The `type:` of a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    Static,
    Pool,
    OAuth2,
    TokenEndpoint,
    Command,
}

impl CredentialKind {
    /// As written after `type:` in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Static => "static",
            CredentialKind::Pool => "pool",
            CredentialKind::OAuth2 => "oauth2",
            CredentialKind::TokenEndpoint => "token_endpoint",
            CredentialKind::Command => "command",
        }
    }

    /// Tokens obtained from somewhere (and cached, refreshed, invalidated) rather than
    /// configured keys.
    pub fn is_fetched(self) -> bool {
        matches!(
            self,
            CredentialKind::OAuth2 | CredentialKind::TokenEndpoint | CredentialKind::Command
        )
    }
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a pool picks its next key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolStrategy {
    /// Each request takes the next key that is not cooling down.
    RoundRobin,
    /// Each request takes the key with the fewest requests in flight (ties rotate), which
    /// evens out load when some answers (long streams) take much longer than others.
    LeastInFlight,
}

/// Where an OAuth2 client puts its id and secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStyle {
    /// HTTP Basic `client_id:client_secret` (RFC 6749 §2.3.1, the form every server must accept).
    Basic,
    /// `client_id` and `client_secret` as form fields, for servers that only read the body.
    Body,
}

/// How a `command`'s stdout is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// The whole output, trimmed, is the token.
    Plain,
    /// A JSON document read with `token_pointer` / `expires_in_pointer`.
    Json,
}

/// A token endpoint URL that prints without user info or query string, which may carry secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointUrl(reqwest::Url);

impl EndpointUrl {
    pub fn new(url: reqwest::Url) -> Self {
        EndpointUrl(url)
    }

    /// The full URL. Call only where it goes on the wire.
    pub fn url(&self) -> &reqwest::Url {
        &self.0
    }
}

impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = &self.0;
        write!(f, "{}://{}", u.scheme(), u.host_str().unwrap_or(""))?;
        if let Some(port) = u.port() {
            write!(f, ":{port}")?;
        }
        f.write_str(u.path())?;
        if u.query().is_some() {
            f.write_str("?***")?;
        }
        Ok(())
    }
}

impl fmt::Debug for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EndpointUrl({self})")
    }
}

/// The body of a `token_endpoint` request. Values are secrets (they usually hold keys).
#[derive(Debug, Clone)]
pub enum TokenBody {
    None,
    /// `application/x-www-form-urlencoded` fields.
    Form(Vec<(String, Secret)>),
    /// A JSON document, already serialized.
    Json(Secret),
}

#[derive(Debug, Clone)]
pub struct OAuth2Spec {
    pub token_url: EndpointUrl,
    pub client_id: String,
    pub client_secret: Secret,
    pub scope: Option<String>,
    pub audience: Option<String>,
    pub auth_style: AuthStyle,
    pub timeout: Duration,
    /// `None`: a fifth of the token's lifetime, clamped to [1 s, 300 s].
    pub refresh_before: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct TokenEndpointSpec {
    pub url: EndpointUrl,
    pub method: http::Method,
    /// Values are marked sensitive (they print as `Sensitive`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: TokenBody,
    pub token_pointer: String,
    pub expires_in_pointer: Option<String>,
    pub prefix: String,
    pub default_ttl: Duration,
    pub timeout: Duration,
    pub refresh_before: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct CommandSpec {
    /// The program, run directly (no shell).
    pub program: String,
    /// Arguments are secrets: command lines sometimes carry tokens or passwords.
    pub args: Vec<Secret>,
    pub format: OutputFormat,
    pub token_pointer: String,
    pub expires_in_pointer: Option<String>,
    pub prefix: String,
    pub default_ttl: Duration,
    pub timeout: Duration,
    pub refresh_before: Option<Duration>,
}

/// One validated entry of `credentials:` (made by `raw_credentials::validate_credential`).
#[derive(Debug, Clone)]
pub enum CredentialSpec {
    Static {
        key: Secret,
    },
    Pool {
        keys: Vec<Secret>,
        strategy: PoolStrategy,
        /// Rest after a 429/401 answered without `Retry-After`.
        cooldown: Duration,
    },
    OAuth2(OAuth2Spec),
    TokenEndpoint(TokenEndpointSpec),
    Command(CommandSpec),
}

impl CredentialSpec {
    pub fn kind(&self) -> CredentialKind {
        match self {
            CredentialSpec::Static { .. } => CredentialKind::Static,
            CredentialSpec::Pool { .. } => CredentialKind::Pool,
            CredentialSpec::OAuth2(_) => CredentialKind::OAuth2,
            CredentialSpec::TokenEndpoint(_) => CredentialKind::TokenEndpoint,
            CredentialSpec::Command(_) => CredentialKind::Command,
        }
    }
}
