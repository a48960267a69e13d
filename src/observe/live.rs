//! Live statistics for the status page: a process-global aggregator fed once per finished
//! request ([`record`]) and once per upstream attempt ([`upstream_attempt`]), read by
//! `GET /admin/live` ([`snapshot`]).
//!
//! Recording is atomics only: a ring of per-second slots (requests, errors, a fixed-bucket
//! TTFT histogram) covering the last five minutes, a ring of ten-second slots for tokens per
//! key and model and for upstream outcomes. A slot whose second has passed is claimed and
//! zeroed by the first recorder of its new second (a count racing that claim may be lost: the
//! page shows rates, not an audit). Names (key labels, models, upstreams) are interned into a
//! fixed table; past its capacity they fold into `other`, so memory is bounded whatever
//! clients send. Only the error path takes a lock (the ring of the last errors) and a name
//! seen for the first time (the interning table).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Seconds of history kept (and drawn).
pub const WINDOW_SECS: u64 = 300;
/// Seconds per token/outcome slot.
const COARSE_SECS: u64 = 10;
const COARSE_SLOTS: usize = (WINDOW_SECS / COARSE_SECS) as usize;
/// Distinct names per table before the rest folds into `other`.
pub const MAX_NAMES: usize = 32;
/// The last errors kept.
pub const MAX_ERRORS: usize = 50;
/// Outcomes kept per upstream in the recent strip.
pub const RECENT_OUTCOMES: usize = 20;
/// Longest name or request id stored (client-chosen model names can be anything).
const MAX_TEXT: usize = 96;

/// TTFT histogram bucket upper bounds in milliseconds (the last bucket is open).
const TTFT_BOUNDS_MS: [f64; 16] = [
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10_000.0,
    30_000.0, 60_000.0, 300_000.0,
];
const TTFT_BUCKETS: usize = TTFT_BOUNDS_MS.len() + 1;

/// One finished request, as the gateway knows it when its answer ended.
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    /// `chat`, `models`, `passthrough`, `health` or `other`.
    pub route: &'static str,
    /// The key's label (never the key); `None` before authentication.
    pub key: Option<&'a str>,
    pub model: Option<&'a str>,
    /// The status the client got (0: the client left before the answer began).
    pub status: u16,
    /// The `error.code` the gateway answered or ended a stream with.
    pub error: Option<&'static str>,
    pub request_id: &'a str,
    pub duration: Duration,
    /// Streams: arrival to the first event carrying content or a tool call; other answers:
    /// to the first byte of the body.
    pub ttft: Option<Duration>,
    pub stream: bool,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// How one upstream attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok = 1,
    Http4xx = 2,
    Http5xx = 3,
    Timeout = 4,
    ConnectError = 5,
    Broken = 6,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::Http4xx,
        Outcome::Http5xx,
        Outcome::Timeout,
        Outcome::ConnectError,
        Outcome::Broken,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Http4xx => "http_4xx",
            Outcome::Http5xx => "http_5xx",
            Outcome::Timeout => "timeout",
            Outcome::ConnectError => "connect_error",
            Outcome::Broken => "broken",
        }
    }

    /// The outcome of an upstream answer by its status.
    pub fn of_status(status: u16) -> Self {
        match status {
            500.. => Outcome::Http5xx,
            400.. => Outcome::Http4xx,
            _ => Outcome::Ok,
        }
    }

    /// The outcome of an attempt that got no answer, by the gateway's error code.
    pub fn of_error_code(code: &str) -> Self {
        match code {
            "upstream_timeout" => Outcome::Timeout,
            "upstream_unreachable" => Outcome::ConnectError,
            _ => Outcome::Broken,
        }
    }

    fn from_code(code: u64) -> Option<Self> {
        Outcome::ALL.into_iter().find(|o| *o as u64 == code)
    }
}

/// Names interned into a fixed table: lookups take no lock; the index `MAX_NAMES` is `other`.
struct Names {
    len: AtomicUsize,
    names: [OnceLock<Box<str>>; MAX_NAMES],
    insert: Mutex<()>,
}

impl Names {
    fn new() -> Self {
        Names {
            len: AtomicUsize::new(0),
            names: std::array::from_fn(|_| OnceLock::new()),
            insert: Mutex::new(()),
        }
    }

    fn find(&self, name: &str) -> Option<usize> {
        let len = self.len.load(Ordering::Acquire);
        (0..len).find(|&i| self.names[i].get().is_some_and(|n| &**n == name))
    }

    fn index(&self, name: &str) -> usize {
        if let Some(i) = self.find(name) {
            return i;
        }
        let Ok(_guard) = self.insert.lock() else {
            return MAX_NAMES;
        };
        if let Some(i) = self.find(name) {
            return i;
        }
        let len = self.len.load(Ordering::Acquire);
        if len >= MAX_NAMES {
            return MAX_NAMES;
        }
        let _ = self.names[len].set(truncate(name).into());
        self.len.store(len + 1, Ordering::Release);
        len
    }

    fn name(&self, i: usize) -> &str {
        self.names
            .get(i)
            .and_then(|n| n.get())
            .map_or("other", |n| n)
    }

    fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(MAX_TEXT) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// One second of traffic.
struct Second {
    at: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    ttft: [AtomicU64; TTFT_BUCKETS],
}

/// Ten seconds of tokens (input, output) per key and model, and of upstream outcomes.
struct Coarse {
    at: AtomicU64,
    key_tokens: [[AtomicU64; 2]; MAX_NAMES + 1],
    model_tokens: [[AtomicU64; 2]; MAX_NAMES + 1],
    outcomes: [[AtomicU64; 6]; MAX_NAMES + 1],
}

/// Claims `at` for `now` (zeroing the slot) when it still holds an older time.
fn claim(at: &AtomicU64, now: u64, zero: impl FnOnce()) {
    let seen = at.load(Ordering::Acquire);
    if seen != now
        && at
            .compare_exchange(seen, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    {
        zero();
    }
}

fn zero<const N: usize>(counters: &[AtomicU64; N]) {
    for c in counters {
        c.store(0, Ordering::Relaxed);
    }
}

struct Upstream {
    /// The last [`RECENT_OUTCOMES`] outcomes, three bits each, newest lowest.
    recent: AtomicU64,
    last_at: AtomicU64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorEntry {
    /// Unix seconds.
    pub at: u64,
    pub route: &'static str,
    pub status: u16,
    pub code: Option<&'static str>,
    pub key: Option<String>,
    pub model: Option<String>,
    pub request_id: String,
}

pub struct Live {
    seconds: Vec<Second>,
    coarse: Vec<Coarse>,
    keys: Names,
    models: Names,
    upstream_names: Names,
    upstreams: [Upstream; MAX_NAMES + 1],
    inflight: AtomicI64,
    inflight_streams: AtomicI64,
    errors: Mutex<VecDeque<ErrorEntry>>,
    started: SystemTime,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Live {
    fn new() -> Self {
        Live {
            seconds: (0..WINDOW_SECS)
                .map(|_| Second {
                    at: AtomicU64::new(0),
                    requests: AtomicU64::new(0),
                    errors: AtomicU64::new(0),
                    ttft: std::array::from_fn(|_| AtomicU64::new(0)),
                })
                .collect(),
            coarse: (0..COARSE_SLOTS)
                .map(|_| Coarse {
                    at: AtomicU64::new(0),
                    key_tokens: std::array::from_fn(|_| Default::default()),
                    model_tokens: std::array::from_fn(|_| Default::default()),
                    outcomes: std::array::from_fn(|_| Default::default()),
                })
                .collect(),
            keys: Names::new(),
            models: Names::new(),
            upstream_names: Names::new(),
            upstreams: std::array::from_fn(|_| Upstream {
                recent: AtomicU64::new(0),
                last_at: AtomicU64::new(0),
            }),
            inflight: AtomicI64::new(0),
            inflight_streams: AtomicI64::new(0),
            errors: Mutex::new(VecDeque::with_capacity(MAX_ERRORS)),
            started: SystemTime::now(),
        }
    }

    fn second(&self, now: u64) -> &Second {
        let s = &self.seconds[(now % WINDOW_SECS) as usize];
        claim(&s.at, now, || {
            s.requests.store(0, Ordering::Relaxed);
            s.errors.store(0, Ordering::Relaxed);
            zero(&s.ttft);
        });
        s
    }

    fn coarse(&self, now: u64) -> &Coarse {
        let tick = now / COARSE_SECS;
        let c = &self.coarse[(tick % COARSE_SLOTS as u64) as usize];
        claim(&c.at, tick, || {
            for row in c.key_tokens.iter().chain(&c.model_tokens) {
                zero(row);
            }
            for row in &c.outcomes {
                zero(row);
            }
        });
        c
    }

    pub fn record(&self, f: &Finished<'_>, now: u64) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
        if f.stream {
            self.inflight_streams.fetch_sub(1, Ordering::Relaxed);
        }
        let failed = f.status >= 400 || f.error.is_some();
        let s = self.second(now);
        s.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            s.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(ttft) = f.ttft.filter(|_| f.route == "chat" && !failed) {
            let ms = ttft.as_secs_f64() * 1000.0;
            let b = TTFT_BOUNDS_MS
                .iter()
                .position(|&bound| ms <= bound)
                .unwrap_or(TTFT_BOUNDS_MS.len());
            s.ttft[b].fetch_add(1, Ordering::Relaxed);
        }
        if f.input_tokens + f.output_tokens > 0 {
            let c = self.coarse(now);
            let k = self.keys.index(f.key.unwrap_or("-"));
            let m = self.models.index(f.model.unwrap_or(""));
            for (row, i) in [(&c.key_tokens, k), (&c.model_tokens, m)] {
                row[i][0].fetch_add(f.input_tokens, Ordering::Relaxed);
                row[i][1].fetch_add(f.output_tokens, Ordering::Relaxed);
            }
        }
        if failed {
            self.push_error(f, now);
        }
    }

    fn push_error(&self, f: &Finished<'_>, now: u64) {
        let entry = ErrorEntry {
            at: now,
            route: f.route,
            status: f.status,
            code: f.error,
            key: f.key.map(|k| truncate(k).to_owned()),
            model: f.model.map(|m| truncate(m).to_owned()),
            request_id: truncate(f.request_id).to_owned(),
        };
        if let Ok(mut errors) = self.errors.lock() {
            if errors.len() >= MAX_ERRORS {
                errors.pop_front();
            }
            errors.push_back(entry);
        }
    }

    pub fn upstream_attempt(&self, upstream: &str, outcome: Outcome, now: u64) {
        let i = self.upstream_names.index(upstream);
        self.coarse(now).outcomes[i][outcome as usize - 1].fetch_add(1, Ordering::Relaxed);
        let u = &self.upstreams[i];
        let mask = (1u64 << (3 * RECENT_OUTCOMES)) - 1;
        let _ = u
            .recent
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(((v << 3) | outcome as u64) & mask)
            });
        u.last_at.store(now, Ordering::Relaxed);
    }

    /// What the page shows, as of `now` (unix seconds); `upstreams` are the configured names,
    /// listed even before their first attempt.
    pub fn snapshot(&self, now: u64, upstreams: &[&str]) -> Snapshot {
        let first = (now + 1).saturating_sub(WINDOW_SECS);
        let mut requests = vec![0u64; WINDOW_SECS as usize];
        let mut errors = vec![0u64; WINDOW_SECS as usize];
        let mut ttft = [0u64; TTFT_BUCKETS];
        for s in &self.seconds {
            let at = s.at.load(Ordering::Acquire);
            if at < first || at > now {
                continue;
            }
            let i = (at - first) as usize;
            requests[i] = s.requests.load(Ordering::Relaxed);
            errors[i] = s.errors.load(Ordering::Relaxed);
            if at + 60 > now {
                for (sum, b) in ttft.iter_mut().zip(&s.ttft) {
                    *sum += b.load(Ordering::Relaxed);
                }
            }
        }
        // Rates over whole seconds: the current one is still filling.
        let last = |series: &[u64], n: usize| -> u64 {
            series[series.len() - 1 - n..series.len() - 1].iter().sum()
        };
        let requests_10s = last(&requests, 10);
        let requests_1m = last(&requests, 60);
        let errors_1m = last(&errors, 60);

        let tick = now / COARSE_SECS;
        let minute_ago = tick.saturating_sub(60 / COARSE_SECS);
        let window_ago = tick.saturating_sub(COARSE_SLOTS as u64);
        let mut key_tokens = [[0u64; 2]; MAX_NAMES + 1];
        let mut model_tokens = [[0u64; 2]; MAX_NAMES + 1];
        let mut outcomes = [[0u64; 6]; MAX_NAMES + 1];
        for c in &self.coarse {
            let at = c.at.load(Ordering::Acquire);
            if at > tick || at <= window_ago {
                continue;
            }
            if at > minute_ago {
                for (sum, row) in [
                    (&mut key_tokens, &c.key_tokens),
                    (&mut model_tokens, &c.model_tokens),
                ] {
                    for (s, r) in sum.iter_mut().zip(row) {
                        s[0] += r[0].load(Ordering::Relaxed);
                        s[1] += r[1].load(Ordering::Relaxed);
                    }
                }
            }
            for (s, r) in outcomes.iter_mut().zip(&c.outcomes) {
                for (a, b) in s.iter_mut().zip(r) {
                    *a += b.load(Ordering::Relaxed);
                }
            }
        }

        let mut names: Vec<(usize, String)> = upstreams
            .iter()
            .map(|n| (self.upstream_names.index(n), (*n).to_owned()))
            .collect();
        for i in 0..self.upstream_names.len() {
            if !names.iter().any(|(j, _)| *j == i) {
                names.push((i, self.upstream_names.name(i).to_owned()));
            }
        }
        let upstreams = names
            .into_iter()
            .map(|(i, name)| {
                let u = &self.upstreams[i];
                let packed = u.recent.load(Ordering::Acquire);
                let recent = (0..RECENT_OUTCOMES)
                    .rev()
                    .filter_map(|k| Outcome::from_code((packed >> (3 * k)) & 7))
                    .map(Outcome::as_str)
                    .collect();
                let last_at = u.last_at.load(Ordering::Relaxed);
                UpstreamView {
                    name,
                    outcomes: Outcome::ALL
                        .iter()
                        .map(|o| (o.as_str(), outcomes[i][*o as usize - 1]))
                        .collect(),
                    recent,
                    last_at: (last_at > 0).then_some(last_at),
                }
            })
            .collect();

        let tokens = |names: &Names, sums: &[[u64; 2]; MAX_NAMES + 1]| -> Vec<TokenRow> {
            (0..names.len())
                .chain(std::iter::once(MAX_NAMES))
                .filter(|&i| sums[i][0] + sums[i][1] > 0)
                .map(|i| TokenRow {
                    name: names.name(i).to_owned(),
                    input: sums[i][0],
                    output: sums[i][1],
                })
                .collect()
        };

        Snapshot {
            now,
            uptime_s: SystemTime::now()
                .duration_since(self.started)
                .map_or(0, |d| d.as_secs()),
            window_s: WINDOW_SECS,
            inflight: Inflight {
                requests: self.inflight.load(Ordering::Relaxed).max(0),
                streams: self.inflight_streams.load(Ordering::Relaxed).max(0),
            },
            rates: Rates {
                requests_per_s: requests_10s as f64 / 10.0,
                requests_1m,
                errors_1m,
                error_rate: if requests_1m == 0 {
                    0.0
                } else {
                    errors_1m as f64 / requests_1m as f64
                },
            },
            series: Series {
                start: first,
                requests,
                errors,
            },
            ttft_ms: Ttft {
                samples: ttft.iter().sum(),
                p50: percentile(&ttft, 0.50),
                p95: percentile(&ttft, 0.95),
            },
            tokens_per_min: Tokens {
                keys: tokens(&self.keys, &key_tokens),
                models: tokens(&self.models, &model_tokens),
            },
            upstreams,
            errors: self
                .errors
                .lock()
                .map(|e| e.iter().rev().cloned().collect())
                .unwrap_or_default(),
        }
    }
}

/// The `q` quantile of a histogram, interpolated linearly inside its bucket (milliseconds).
fn percentile(buckets: &[u64; TTFT_BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0.0;
    for (i, &n) in buckets.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let n = n as f64;
        if seen + n >= rank {
            let low = if i == 0 { 0.0 } else { TTFT_BOUNDS_MS[i - 1] };
            let high = TTFT_BOUNDS_MS.get(i).copied().unwrap_or(low);
            let v = low + (high - low) * ((rank - seen) / n).clamp(0.0, 1.0);
            return Some((v * 100.0).round() / 100.0);
        }
        seen += n;
    }
    None
}

#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub now: u64,
    pub uptime_s: u64,
    pub window_s: u64,
    pub inflight: Inflight,
    pub rates: Rates,
    pub series: Series,
    pub ttft_ms: Ttft,
    pub tokens_per_min: Tokens,
    pub upstreams: Vec<UpstreamView>,
    pub errors: Vec<ErrorEntry>,
}

#[derive(Debug, Serialize)]
pub struct Inflight {
    pub requests: i64,
    pub streams: i64,
}

#[derive(Debug, Serialize)]
pub struct Rates {
    /// Over the last ten whole seconds.
    pub requests_per_s: f64,
    pub requests_1m: u64,
    pub errors_1m: u64,
    /// `errors_1m / requests_1m`.
    pub error_rate: f64,
}

/// Per second, oldest first, from `start` (unix seconds).
#[derive(Debug, Serialize)]
pub struct Series {
    pub start: u64,
    pub requests: Vec<u64>,
    pub errors: Vec<u64>,
}

/// Over the last minute, successful chat answers.
#[derive(Debug, Serialize)]
pub struct Ttft {
    pub samples: u64,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Tokens {
    pub keys: Vec<TokenRow>,
    pub models: Vec<TokenRow>,
}

#[derive(Debug, Serialize)]
pub struct TokenRow {
    pub name: String,
    pub input: u64,
    pub output: u64,
}

#[derive(Debug, Serialize)]
pub struct UpstreamView {
    pub name: String,
    /// Attempts in the window by outcome.
    pub outcomes: std::collections::BTreeMap<&'static str, u64>,
    /// The last outcomes, oldest first.
    pub recent: Vec<&'static str>,
    pub last_at: Option<u64>,
}

fn global() -> &'static Live {
    static LIVE: OnceLock<Live> = OnceLock::new();
    LIVE.get_or_init(Live::new)
}

/// A request began (it counts as in flight until its [`record`]).
pub fn started() {
    global().inflight.fetch_add(1, Ordering::Relaxed);
}

/// A request's answer is an event stream (in flight as a stream until its [`record`]).
pub fn stream_opened() {
    global().inflight_streams.fetch_add(1, Ordering::Relaxed);
}

/// A request ended: its answer was sent whole, failed, or its client left.
pub fn record(f: &Finished<'_>) {
    global().record(f, unix_now());
}

/// One upstream attempt ended with `outcome`.
pub fn upstream_attempt(upstream: &str, outcome: Outcome) {
    global().upstream_attempt(upstream, outcome, unix_now());
}

/// The live view for `GET /admin/live`.
pub fn snapshot(upstreams: &[&str]) -> Snapshot {
    global().snapshot(unix_now(), upstreams)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done<'a>(key: &'a str, model: &'a str, status: u16, rid: &'a str) -> Finished<'a> {
        Finished {
            route: "chat",
            key: Some(key),
            model: Some(model),
            status,
            error: None,
            request_id: rid,
            duration: Duration::from_millis(30),
            ttft: Some(Duration::from_millis(20)),
            stream: false,
            input_tokens: 0,
            output_tokens: 0,
        }
    }

    #[test]
    fn counts_requests_errors_and_ttft_per_second() {
        let live = Live::new();
        let now = 1_000_000;
        for _ in 0..4 {
            live.inflight.fetch_add(1, Ordering::Relaxed);
            live.record(&done("a", "m", 200, "r"), now - 5);
        }
        live.inflight.fetch_add(1, Ordering::Relaxed);
        live.record(&done("a", "m", 502, "r-bad"), now - 5);
        let s = live.snapshot(now, &[]);
        assert_eq!(s.series.requests.len(), WINDOW_SECS as usize);
        assert_eq!(s.series.requests[WINDOW_SECS as usize - 6], 5);
        assert_eq!(s.series.errors[WINDOW_SECS as usize - 6], 1);
        assert_eq!(s.rates.requests_1m, 5);
        assert_eq!(s.rates.errors_1m, 1);
        assert!((s.rates.error_rate - 0.2).abs() < 1e-9);
        assert!((s.rates.requests_per_s - 0.5).abs() < 1e-9);
        // Failed answers are not TTFT samples; 20 ms falls in (10, 25].
        assert_eq!(s.ttft_ms.samples, 4);
        let p50 = s.ttft_ms.p50.unwrap();
        assert!(p50 > 10.0 && p50 <= 25.0, "{p50}");
        assert_eq!(s.inflight.requests, 0);
        // A stream is in flight until its record.
        live.inflight.fetch_add(1, Ordering::Relaxed);
        live.inflight_streams.fetch_add(1, Ordering::Relaxed);
        assert_eq!(live.snapshot(now, &[]).inflight.streams, 1);
        let mut stream = done("a", "m", 200, "r");
        stream.stream = true;
        live.record(&stream, now);
        let s = live.snapshot(now, &[]);
        assert_eq!((s.inflight.requests, s.inflight.streams), (0, 0));
        assert_eq!(s.errors.len(), 1);
        assert_eq!(s.errors[0].request_id, "r-bad");
        assert_eq!(s.errors[0].status, 502);
    }

    #[test]
    fn an_old_second_is_reused_for_its_new_time() {
        let live = Live::new();
        live.record(&done("a", "m", 200, "r"), 1000);
        live.record(&done("a", "m", 200, "r"), 1000 + WINDOW_SECS);
        let s = live.snapshot(1000 + WINDOW_SECS, &[]);
        assert_eq!(s.series.requests.iter().sum::<u64>(), 1);
        assert_eq!(s.series.requests[WINDOW_SECS as usize - 1], 1);
        // Out of the window entirely.
        let s = live.snapshot(1000 + 3 * WINDOW_SECS, &[]);
        assert_eq!(s.series.requests.iter().sum::<u64>(), 0);
    }

    #[test]
    fn tokens_per_key_and_model_over_the_last_minute_with_other() {
        let live = Live::new();
        let now = 2_000_000;
        let mut f = done("alice", "m1", 200, "r");
        f.input_tokens = 10;
        f.output_tokens = 5;
        live.record(&f, now - 30);
        live.record(&f, now - 200); // outside the minute
        for i in 0..MAX_NAMES + 3 {
            let model = format!("model-{i}");
            let mut g = done("bob", &model, 200, "r");
            g.output_tokens = 1;
            live.record(&g, now);
        }
        let s = live.snapshot(now, &[]);
        let alice = s
            .tokens_per_min
            .keys
            .iter()
            .find(|r| r.name == "alice")
            .unwrap();
        assert_eq!((alice.input, alice.output), (10, 5));
        let bob = s
            .tokens_per_min
            .keys
            .iter()
            .find(|r| r.name == "bob")
            .unwrap();
        assert_eq!(bob.output, MAX_NAMES as u64 + 3);
        let other = s
            .tokens_per_min
            .models
            .iter()
            .find(|r| r.name == "other")
            .unwrap();
        // m1 took the first name; 31 of the 35 models fit, 4 fold into other.
        assert_eq!(other.output, 4);
        assert_eq!(s.tokens_per_min.models.len(), MAX_NAMES + 1);
    }

    #[test]
    fn upstream_outcomes_and_the_recent_strip() {
        let live = Live::new();
        let now = 3_000_000;
        live.upstream_attempt("a", Outcome::Ok, now);
        live.upstream_attempt("a", Outcome::Http5xx, now);
        for _ in 0..RECENT_OUTCOMES {
            live.upstream_attempt("b", Outcome::Timeout, now);
        }
        live.upstream_attempt("b", Outcome::ConnectError, now);
        let s = live.snapshot(now, &["idle", "a"]);
        let names: Vec<_> = s.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["idle", "a", "b"]);
        assert_eq!(s.upstreams[0].recent.len(), 0);
        assert_eq!(s.upstreams[0].last_at, None);
        assert_eq!(s.upstreams[1].outcomes["ok"], 1);
        assert_eq!(s.upstreams[1].outcomes["http_5xx"], 1);
        assert_eq!(s.upstreams[1].recent, ["ok", "http_5xx"]);
        let b = &s.upstreams[2];
        assert_eq!(b.outcomes["timeout"], RECENT_OUTCOMES as u64);
        assert_eq!(b.recent.len(), RECENT_OUTCOMES);
        assert_eq!(b.recent.last(), Some(&"connect_error"));
        assert_eq!(Outcome::of_status(404), Outcome::Http4xx);
        assert_eq!(Outcome::of_error_code("upstream_timeout"), Outcome::Timeout);
    }

    #[test]
    fn keeps_the_last_errors_only_and_bounds_their_text() {
        let live = Live::new();
        let long = "x".repeat(1000);
        for i in 0..MAX_ERRORS + 5 {
            let rid = format!("r{i}");
            live.record(&done("k", &long, 500, &rid), 1000);
        }
        let s = live.snapshot(1000, &[]);
        assert_eq!(s.errors.len(), MAX_ERRORS);
        assert_eq!(s.errors[0].request_id, format!("r{}", MAX_ERRORS + 4));
        assert_eq!(s.errors.last().unwrap().request_id, "r5");
        assert_eq!(s.errors[0].model.as_ref().unwrap().len(), MAX_TEXT);
    }

    #[test]
    fn percentiles_interpolate_inside_a_bucket() {
        let mut b = [0u64; TTFT_BUCKETS];
        assert_eq!(percentile(&b, 0.5), None);
        b[3] = 10; // (5, 10] ms
        assert_eq!(percentile(&b, 0.5), Some(7.5));
        b[TTFT_BUCKETS - 1] = 90; // the open bucket
        assert_eq!(percentile(&b, 0.95), Some(300_000.0));
    }
}
