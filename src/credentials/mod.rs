//! Upstream credentials: the stage that turns a principal's credential reference into the
//! `Authorization` value sent upstream ("token fetch").
//!
//! Five kinds, all owned by the operator (see DESIGN.md: sophgate never obtains credentials it
//! does not own, and sends no spoofed headers):
//! - `static`: one key;
//! - `pool`: several keys, picked round-robin or least-in-flight; a key answered with 429/401
//!   cools down so traffic moves to the others ([`pool`]);
//! - `oauth2`, `token_endpoint`, `command`: *fetched* tokens ([`source`]), cached with their
//!   expiry, refreshed in the background ahead of expiry, one fetch in flight per credential,
//!   stale-but-valid tokens kept when the source fails ([`fetched`]).
//!
//! Everything here is built once per generation by [`Credentials::build`]; a reload builds a new
//! set (new caches, so a changed `client_secret` takes effect at once). The request path only
//! calls [`Credential::lease`], which on a warm cache is lock-free (an `ArcSwap` load).
//!
//! Secrets are [`Secret`]s or sensitive `HeaderValue`s, so neither `Debug` output nor logs can
//! show them; log lines name the credential, never its value.

mod fetched;
mod pool;
mod source;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;

pub use crate::config::credential_spec::{
    AuthStyle, CommandSpec, CredentialKind, CredentialSpec, EndpointUrl, OAuth2Spec, OutputFormat,
    PoolStrategy, TokenBody, TokenEndpointSpec,
};
use crate::config::yaml_path::Segment;
use crate::error::{ErrorKind, GatewayError};
pub use crate::secret::Secret;

// === errors ===

/// Why no `Authorization` value could be produced for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialError {
    /// A fetched credential has no valid token and its source failed (the cause is in the log).
    Unavailable { credential: String },
    /// Every key of a pool is cooling down; the first comes back after `retry_after`.
    CoolingDown {
        credential: String,
        retry_after: Duration,
    },
}

impl CredentialError {
    /// The client-facing error: 502 `credential_unavailable` or 429 `upstream_keys_cooling_down`
    /// with `Retry-After` (whole seconds, rounded up, at least 1). Messages name the credential
    /// only.
    pub fn into_gateway_error(self) -> GatewayError {
        match self {
            CredentialError::Unavailable { credential } => GatewayError::new(
                ErrorKind::BadGateway,
                "credential_unavailable",
                format!("Upstream credential `{credential}` is unavailable; try again later"),
            ),
            CredentialError::CoolingDown {
                credential,
                retry_after,
            } => {
                let secs = retry_after
                    .as_secs()
                    .saturating_add(u64::from(retry_after.subsec_nanos() > 0))
                    .max(1);
                GatewayError::new(
                    ErrorKind::RateLimited,
                    "upstream_keys_cooling_down",
                    format!(
                        "All upstream keys of credential `{credential}` are rate limited; retry after {secs} s"
                    ),
                )
                .with_retry_after(secs)
            }
        }
    }
}

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialError::Unavailable { credential } => {
                write!(f, "credential `{credential}` is unavailable")
            }
            CredentialError::CoolingDown {
                credential,
                retry_after,
            } => write!(
                f,
                "all keys of credential `{credential}` are cooling down for {retry_after:?}"
            ),
        }
    }
}

impl std::error::Error for CredentialError {}

// === leases ===

/// What one upstream attempt uses: the `Authorization` value, plus what is needed to report the
/// outcome back ([`Credential::report`], [`Credential::invalidate`]). Keep it alive for as long as
/// the upstream request runs (including a streamed body): for pools it counts as one request in
/// flight on its key until dropped.
#[derive(Debug)]
pub struct Lease {
    /// Marked sensitive: prints as `Sensitive`, and HTTP/2 HPACK never indexes it.
    pub authorization: HeaderValue,
    credential_id: u64,
    key_index: Option<usize>,
    token_generation: u64,
    _in_flight: Option<pool::InFlight>,
}

impl Lease {
    /// Which key of a pool this lease uses (for logs and metrics; never the key itself).
    pub fn key_index(&self) -> Option<usize> {
        self.key_index
    }
}

// === one credential ===

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One named credential of a generation.
pub struct Credential {
    /// Ties a [`Lease`] to the credential that issued it, so a lease reported to another
    /// credential is ignored instead of cooling down the wrong key.
    id: u64,
    name: Arc<str>,
    kind: Kind,
}

enum Kind {
    /// `None` when the key cannot be a header value (only [`Credentials::static_key`] makes
    /// one); every lease fails.
    Static(Option<HeaderValue>),
    Pool(pool::Pool),
    Fetched(Arc<fetched::Fetched>),
}

impl Credential {
    fn new(name: &str, kind: Kind) -> Credential {
        Credential {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: Arc::from(name),
            kind,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configured `type`.
    pub fn kind(&self) -> CredentialKind {
        match &self.kind {
            Kind::Static(_) => CredentialKind::Static,
            Kind::Pool(_) => CredentialKind::Pool,
            Kind::Fetched(f) => f.kind(),
        }
    }

    /// True for oauth2 / token_endpoint / command: tokens that can be invalidated and refetched.
    pub fn is_fetched(&self) -> bool {
        matches!(self.kind, Kind::Fetched(_))
    }

    /// True for `pool`: a refused key cools down and another key of the pool can be tried.
    pub fn is_pool(&self) -> bool {
        matches!(self.kind, Kind::Pool(_))
    }

    /// The `Authorization` value for one upstream attempt.
    ///
    /// Static and pool credentials answer at once. Fetched credentials answer from the cache
    /// without locking; only a cold or expired cache waits, and then for the one fetch shared by
    /// every waiting request.
    pub async fn lease(&self) -> Result<Lease, CredentialError> {
        match &self.kind {
            Kind::Static(Some(value)) => Ok(self.lease_of(value.clone(), None, 0, None)),
            Kind::Static(None) => {
                tracing::error!(credential = %self.name, "static key is not a valid header value");
                Err(self.unavailable())
            }
            Kind::Pool(p) => match p.pick() {
                Ok((index, value, guard)) => Ok(self.lease_of(value, Some(index), 0, Some(guard))),
                Err(retry_after) => Err(CredentialError::CoolingDown {
                    credential: self.name.to_string(),
                    retry_after,
                }),
            },
            Kind::Fetched(f) => match f.token().await {
                Some((value, generation)) => Ok(self.lease_of(value, None, generation, None)),
                None => Err(self.unavailable()),
            },
        }
    }

    /// After an upstream answer: for pools, 429 or 401 puts that key in cooldown (Retry-After if
    /// given, else the configured cooldown) so traffic moves to the other keys. Other kinds and
    /// other statuses: nothing (a fetched token answered 401 goes through [`Self::invalidate`]).
    pub fn report(&self, lease: &Lease, status: http::StatusCode, retry_after: Option<Duration>) {
        if lease.credential_id != self.id {
            return;
        }
        if let (Kind::Pool(p), Some(index)) = (&self.kind, lease.key_index) {
            if let Some(rest) = p.report(index, status, retry_after) {
                tracing::warn!(
                    credential = %self.name,
                    key_index = index,
                    status = status.as_u16(),
                    cooldown_secs = rest.as_secs_f64(),
                    "upstream key cooling down"
                );
            }
        }
    }

    /// Upstream said 401 to a fetched token: drop the cached token if it is still the one in
    /// `lease`, so the next lease refetches (once, however many requests saw the 401).
    pub fn invalidate(&self, lease: &Lease) {
        if lease.credential_id != self.id {
            return;
        }
        if let Kind::Fetched(f) = &self.kind {
            if f.invalidate(lease.token_generation) {
                tracing::info!(credential = %self.name, "upstream rejected the token; it will be refetched");
            }
        }
    }

    /// Fetch attempts so far, failed ones included (0 for static and pool).
    pub fn fetch_count(&self) -> u64 {
        match &self.kind {
            Kind::Fetched(f) => f.fetch_count(),
            _ => 0,
        }
    }

    fn lease_of(
        &self,
        authorization: HeaderValue,
        key_index: Option<usize>,
        token_generation: u64,
        in_flight: Option<pool::InFlight>,
    ) -> Lease {
        Lease {
            authorization,
            credential_id: self.id,
            key_index,
            token_generation,
            _in_flight: in_flight,
        }
    }

    fn unavailable(&self) -> CredentialError {
        CredentialError::Unavailable {
            credential: self.name.to_string(),
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Credential");
        d.field("name", &self.name)
            .field("kind", &self.kind().as_str());
        match &self.kind {
            Kind::Pool(p) => d.field("keys", &p.len()),
            Kind::Fetched(x) => d.field("fetches", &x.fetch_count()),
            Kind::Static(_) => &mut d,
        };
        d.finish_non_exhaustive()
    }
}

/// The `Authorization` value of a plain key: `Bearer <key>`, marked sensitive.
fn bearer(key: &Secret) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {}", key.expose())).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// The one HTTP client of a generation's token fetches, built when the first credential needs
/// it (a generation without HTTP token sources builds none).
fn shared_client(slot: &mut Option<reqwest::Client>) -> Result<reqwest::Client, String> {
    if let Some(c) = slot {
        return Ok(c.clone());
    }
    let c = source::http_client()?;
    *slot = Some(c.clone());
    Ok(c)
}

// === the set of a generation ===

/// Why one credential of a generation could not be built. Names the credential and the field
/// under its entry, never a secret value.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildError {
    pub credential: String,
    /// Under `credentials.<credential>`, e.g. `keys[1]`; empty for the whole entry.
    pub field: Vec<Segment>,
    pub message: String,
}

impl BuildError {
    fn new(credential: &str, field: Vec<Segment>, message: impl Into<String>) -> Self {
        BuildError {
            credential: credential.to_owned(),
            field,
            message: message.into(),
        }
    }

    /// The YAML path of the problem: `credentials.<name>[.<field>]`.
    pub fn path(&self) -> Vec<Segment> {
        let mut path = vec![
            Segment::Key("credentials".into()),
            Segment::Key(self.credential.clone()),
        ];
        path.extend(self.field.iter().cloned());
        path
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            crate::config::yaml_path::render_path(&self.path()),
            self.message
        )
    }
}

impl std::error::Error for BuildError {}

/// Every named credential of one generation.
pub struct Credentials {
    by_name: HashMap<String, Arc<Credential>>,
}

impl Credentials {
    /// Shares every pool's key rests with the other replicas through `store`.
    pub fn share_cooldowns(&self, store: &Arc<crate::store::Store>) {
        for c in self.by_name.values() {
            if let Kind::Pool(p) = &c.kind {
                p.share(store, &c.name);
            }
        }
    }

    /// Builds every provider, reporting every entry that cannot be built. Config validation
    /// rejects all of these problems but the HTTP client (see [`BuildError`]); they are checked
    /// again here because a `Config` can be edited after validation (`sophgate test` does).
    ///
    /// One reqwest client serves every HTTP token fetch of the generation: rustls, no proxy
    /// (token endpoints are the operator's own, reached directly), TCP_NODELAY, no redirects
    /// (a redirect must not carry a client secret to another place).
    pub fn build(specs: Vec<(String, CredentialSpec)>) -> Result<Credentials, Vec<BuildError>> {
        let mut client: Option<reqwest::Client> = None;
        let mut errors = Vec::new();
        let mut by_name = HashMap::with_capacity(specs.len());
        for (name, spec) in specs {
            if by_name.contains_key(&name) {
                errors.push(BuildError::new(&name, Vec::new(), "is defined twice"));
                continue;
            }
            let kind = match spec {
                CredentialSpec::Static { key } => match bearer(&key) {
                    Some(v) => Kind::Static(Some(v)),
                    None => {
                        errors.push(BuildError::new(
                            &name,
                            vec![Segment::Key("key".into())],
                            "is not a valid HTTP header value",
                        ));
                        continue;
                    }
                },
                CredentialSpec::Pool {
                    keys,
                    strategy,
                    cooldown,
                } => {
                    let mut values = Vec::with_capacity(keys.len());
                    let before = errors.len();
                    for (i, k) in keys.iter().enumerate() {
                        match bearer(k) {
                            Some(v) => values.push(v),
                            None => errors.push(BuildError::new(
                                &name,
                                vec![Segment::Key("keys".into()), Segment::Index(i)],
                                "is not a valid HTTP header value",
                            )),
                        }
                    }
                    if keys.is_empty() {
                        errors.push(BuildError::new(
                            &name,
                            vec![Segment::Key("keys".into())],
                            "a pool needs at least one key",
                        ));
                    }
                    if errors.len() > before {
                        continue;
                    }
                    Kind::Pool(pool::Pool::new(values, strategy, cooldown))
                }
                CredentialSpec::OAuth2(s) => match shared_client(&mut client) {
                    Ok(c) => Kind::Fetched(Arc::new(fetched::Fetched::new(
                        &name,
                        source::Source::OAuth2(s, c),
                    ))),
                    Err(message) => {
                        errors.push(BuildError::new(&name, Vec::new(), message));
                        continue;
                    }
                },
                CredentialSpec::TokenEndpoint(s) => match shared_client(&mut client) {
                    Ok(c) => Kind::Fetched(Arc::new(fetched::Fetched::new(
                        &name,
                        source::Source::Endpoint(s, c),
                    ))),
                    Err(message) => {
                        errors.push(BuildError::new(&name, Vec::new(), message));
                        continue;
                    }
                },
                CredentialSpec::Command(s) => Kind::Fetched(Arc::new(fetched::Fetched::new(
                    &name,
                    source::Source::Command(s),
                ))),
            };
            let credential = Arc::new(Credential::new(&name, kind));
            by_name.insert(name, credential);
        }
        if errors.is_empty() {
            Ok(Credentials { by_name })
        } else {
            Err(errors)
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Credential>> {
        self.by_name.get(name).cloned()
    }

    /// A static credential outside `credentials:`, for the seed form `client-key: upstream-key`.
    /// A key that cannot be a header value yields a credential whose every lease fails
    /// (config validation is expected to have rejected such keys already).
    pub fn static_key(name: &str, key: Secret) -> Arc<Credential> {
        Arc::new(Credential::new(name, Kind::Static(bearer(&key))))
    }

    /// Credential names, sorted (for status pages).
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list: Vec<&Arc<Credential>> = self.by_name.values().collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        f.debug_list().entries(list).finish()
    }
}
