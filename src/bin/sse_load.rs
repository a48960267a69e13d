//! `sse-load`: a small load generator for streamed (SSE) chat completions.
//!
//! Why not oha or wrk: they time whole responses. For a streaming gateway what matters is the
//! time to the first event (TTFT) and the gap between consecutive events: a proxy that buffers
//! or coalesces looks fine on total latency and terrible on gaps. This tool opens `--streams`
//! concurrent streamed requests and records the TTFT of every stream and the arrival gap of
//! every event, with microsecond resolution. All samples are kept (a `Vec<u32>` of µs, sorted
//! at the end), so percentiles are exact rather than bucketed.
//!
//! It can also time plain (non-streamed) requests (`--no-stream`), which `scripts/bench` uses
//! when neither oha nor wrk is installed.
//!
//! Definitions:
//! - TTFT: from just before the request is sent to the arrival of the first `data:` event
//!   (comment-only keep-alive events do not count).
//! - gap: time between the arrival of one `data:` event and the next. Events that arrive in
//!   the same read count as a gap of ~0 µs — that is how coalescing shows.
//! - a stream completes when it sees `data: [DONE]`; anything else (status ≠ 2xx, connect or
//!   read failure, timeout, an in-band `{"error":…}` event, end without `[DONE]`) is an error.
//!
//! Bounds: only loopback URLs are accepted (this is a benchmark tool; it must never load a
//! remote service). Every request has `--timeout-s`; no request starts after `--duration-s`
//! (or once `--requests` were started); nothing runs past `--max-run-s`. It exits by itself.
//!
//! File descriptors: each concurrent stream holds one socket here, and two in a proxy in
//! between. For 10,000 streams raise the limit in the shell first, e.g. `ulimit -n 65536`
//! (this tool does not change limits itself: that needs `unsafe` libc calls). Where the limit
//! cannot be raised, `--h2c-streams-per-connection 100` multiplexes the streams over HTTP/2
//! without TLS: one socket per 100 streams here and in the proxy's client side.
//!
//! Example:
//! ```text
//! sse-load --url http://127.0.0.1:8000/v1/chat/completions --key sk-demo \
//!          --streams 1000 --duration-s 10 --ramp-s 1 --json out.json
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::Parser;
use futures_util::StreamExt;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(
    name = "sse-load",
    about = "Load generator for streamed chat completions: records TTFT and every inter-event gap"
)]
struct Args {
    /// Full URL of the chat completions endpoint (loopback only).
    #[arg(long)]
    url: String,
    /// Client key, sent as `Authorization: Bearer <KEY>`.
    #[arg(long)]
    key: Option<String>,
    /// Concurrent streams (each one a worker that opens streams one after another).
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// Total requests to start. Default: one per stream, unless `--duration-s` is given.
    #[arg(long)]
    requests: Option<u64>,
    /// Keep opening new requests for this many seconds (each worker re-opens when its
    /// stream ends), so `--streams` streams stay open for the whole time.
    #[arg(long)]
    duration_s: Option<f64>,
    /// Request body: JSON text, or `@path` to read it from a file. Default: a tiny chat
    /// request for `mock-model` (with `"stream": true` unless `--no-stream`).
    #[arg(long)]
    body: Option<String>,
    /// Time plain (non-streamed) requests instead: records whole-response latency.
    #[arg(long)]
    no_stream: bool,
    /// Spread the first request of each worker evenly over this many seconds, so thousands
    /// of connections do not all arrive in the same millisecond.
    #[arg(long, default_value_t = 0.0)]
    ramp_s: f64,
    /// Per-request limit (connect + whole stream).
    #[arg(long, default_value_t = 60.0)]
    timeout_s: f64,
    /// Hard limit for the whole run; requests still open then are counted as timeouts.
    #[arg(long, default_value_t = 900.0)]
    max_run_s: f64,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A name for this run, copied into the JSON (e.g. `direct`, `sophgate`, `nginx`).
    #[arg(long, default_value = "run")]
    label: String,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Speak HTTP/2 without TLS (h2c, prior knowledge), this many streams per connection.
    /// A way past the open-file limit: the proxy then holds one client socket per
    /// connection instead of one per stream (HTTP/1.1, the default, needs one per stream).
    #[arg(long)]
    h2c_streams_per_connection: Option<usize>,
}

/// What one worker measured.
#[derive(Default)]
struct Samples {
    /// TTFT (streaming) or whole-response latency (plain), µs.
    first: Vec<u32>,
    /// Inter-event gaps, µs (streaming only).
    gaps: Vec<u32>,
    events: u64,
    comments: u64,
    completed: u64,
    errors: BTreeMap<String, u64>,
}

impl Samples {
    fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_insert(0) += 1;
    }

    fn merge(&mut self, other: Samples) {
        self.first.extend(other.first);
        self.gaps.extend(other.gaps);
        self.events += other.events;
        self.comments += other.comments;
        self.completed += other.completed;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_insert(0) += v;
        }
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Exact nearest-rank percentiles over all samples.
fn summary(samples: &mut [u32]) -> Value {
    if samples.is_empty() {
        return json!({"count": 0});
    }
    samples.sort_unstable();
    let n = samples.len();
    let pick = |p: f64| {
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        samples[rank.clamp(1, n) - 1]
    };
    let sum: u64 = samples.iter().map(|&v| u64::from(v)).sum();
    json!({
        "count": n,
        "min": samples[0],
        "mean": sum / n as u64,
        "p50": pick(50.0),
        "p90": pick(90.0),
        "p99": pick(99.0),
        "p999": pick(99.9),
        "max": samples[n - 1],
    })
}

/// Index just past the first event terminator (`\n\n` or `\r\n\r\n`) in `buf`.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1] == b'\n' {
                return Some(i + 2);
            }
            if i + 2 < buf.len() && buf[i + 1] == b'\r' && buf[i + 2] == b'\n' {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// What an event carries, as far as timing cares.
enum EventKind {
    Data,
    Done,
    Error,
    /// Comment-only or empty (keep-alive).
    Comment,
}

fn classify(event: &[u8]) -> EventKind {
    let mut data = false;
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            let rest = rest.strip_prefix(b" ").unwrap_or(rest);
            if rest == b"[DONE]" {
                return EventKind::Done;
            }
            if rest.starts_with(b"{\"error\"") {
                return EventKind::Error;
            }
            data = true;
        }
    }
    if data {
        EventKind::Data
    } else {
        EventKind::Comment
    }
}

struct Target {
    /// One client (HTTP/1.1), or one per h2c connection.
    clients: Vec<reqwest::Client>,
    /// Workers per client.
    per_client: usize,
    url: reqwest::Url,
    key: Option<String>,
    body: Bytes,
    stream: bool,
    timeout: Duration,
}

/// One request; its samples go into `s`. Never fails: failures are counted by kind.
async fn one_request(
    t: &Target,
    worker: usize,
    hard_deadline: tokio::time::Instant,
    s: &mut Samples,
) {
    let deadline = (tokio::time::Instant::now() + t.timeout).min(hard_deadline);
    let client = &t.clients[(worker / t.per_client).min(t.clients.len() - 1)];
    let mut req = client
        .post(t.url.clone())
        .header("content-type", "application/json")
        .body(t.body.clone());
    if let Some(k) = &t.key {
        req = req.bearer_auth(k);
    }
    let start = Instant::now();
    let resp = match tokio::time::timeout_at(deadline, req.send()).await {
        Err(_) => return s.error("timeout"),
        Ok(Err(e)) if e.is_connect() => return s.error("connect"),
        Ok(Err(_)) => return s.error("send"),
        Ok(Ok(r)) => r,
    };
    if !resp.status().is_success() {
        return s.error(format!("status_{}", resp.status().as_u16()));
    }
    if !t.stream {
        match tokio::time::timeout_at(deadline, resp.bytes()).await {
            Err(_) => s.error("timeout"),
            Ok(Err(_)) => s.error("body"),
            Ok(Ok(_)) => {
                s.first.push(micros(start.elapsed()));
                s.completed += 1;
            }
        }
        return;
    }
    let mut body = resp.bytes_stream();
    let mut buf = BytesMut::new();
    let mut last: Option<Instant> = None;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, body.next()).await {
            Err(_) => return s.error("timeout"),
            Ok(None) => return s.error("ended_without_done"),
            Ok(Some(Err(_))) => return s.error("body"),
            Ok(Some(Ok(c))) => c,
        };
        let now = Instant::now();
        buf.extend_from_slice(&chunk);
        while let Some(end) = event_end(&buf) {
            let event = buf.split_to(end);
            match classify(&event) {
                EventKind::Comment => s.comments += 1,
                EventKind::Error => return s.error("error_event"),
                kind @ (EventKind::Data | EventKind::Done) => {
                    s.events += 1;
                    match last {
                        None => s.first.push(micros(now.duration_since(start))),
                        Some(prev) => s.gaps.push(micros(now.duration_since(prev))),
                    }
                    last = Some(now);
                    if matches!(kind, EventKind::Done) {
                        s.completed += 1;
                        return;
                    }
                }
            }
        }
    }
}

/// Loopback only: 127.0.0.0/8, ::1 (and IPv4-mapped loopback) or `localhost`.
fn check_loopback(url: &reqwest::Url) -> Result<(), String> {
    let host = url.host_str().unwrap_or("");
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let ok = match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => a.is_loopback(),
        Ok(IpAddr::V6(a)) => {
            a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{url}: only loopback targets (127.0.0.0/8, [::1], localhost) are allowed"
        ))
    }
}

fn load_body(args: &Args) -> Result<Bytes, String> {
    let text = match &args.body {
        Some(b) => match b.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?,
            None => b.clone(),
        },
        None => json!({
            "model": "mock-model",
            "messages": [{"role": "user", "content": "Hi"}],
            "stream": !args.no_stream,
        })
        .to_string(),
    };
    serde_json::from_str::<Value>(&text).map_err(|e| format!("--body is not JSON: {e}"))?;
    Ok(Bytes::from(text))
}

fn positive_secs(name: &str, v: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v).map_err(|_| format!("{name} must be a non-negative number"))
}

async fn run(args: Args) -> Result<Value, String> {
    if args.streams == 0 {
        return Err("--streams must be at least 1".into());
    }
    let url = reqwest::Url::parse(&args.url).map_err(|e| format!("--url: {e}"))?;
    check_loopback(&url)?;
    let duration = args
        .duration_s
        .map(|d| positive_secs("--duration-s", d))
        .transpose()?;
    let total = match (args.requests, duration) {
        (Some(n), _) => n,
        (None, Some(_)) => u64::MAX,
        (None, None) => args.streams as u64,
    };
    let ramp = positive_secs("--ramp-s", args.ramp_s)?;
    let timeout = positive_secs("--timeout-s", args.timeout_s)?;
    let max_run = positive_secs("--max-run-s", args.max_run_s)?;

    let build = |h2c: bool| {
        let b = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(timeout.min(Duration::from_secs(10)));
        let b = if h2c {
            b.http2_prior_knowledge()
        } else {
            b.http1_only().pool_max_idle_per_host(args.streams)
        };
        b.build().map_err(|e| format!("http client: {e}"))
    };
    let (clients, per_client) = match args.h2c_streams_per_connection {
        Some(0) => return Err("--h2c-streams-per-connection must be at least 1".into()),
        Some(k) => {
            let n = args.streams.div_ceil(k);
            (
                (0..n).map(|_| build(true)).collect::<Result<Vec<_>, _>>()?,
                k,
            )
        }
        None => (vec![build(false)?], args.streams),
    };
    let target = Arc::new(Target {
        clients,
        per_client,
        url,
        key: args.key.clone(),
        body: load_body(&args)?,
        stream: !args.no_stream,
        timeout,
    });

    let started_at = tokio::time::Instant::now();
    let hard_deadline = started_at + max_run;
    let stop_starting = duration.map(|d| started_at + ramp + d);
    let issued = Arc::new(AtomicU64::new(0));
    let streams = args.streams;
    let mut workers = Vec::with_capacity(streams);
    for i in 0..streams {
        let target = target.clone();
        let issued = issued.clone();
        let offset = ramp.mul_f64(i as f64 / streams as f64);
        workers.push(tokio::spawn(async move {
            let mut s = Samples::default();
            tokio::time::sleep_until((started_at + offset).min(hard_deadline)).await;
            loop {
                let now = tokio::time::Instant::now();
                if now >= hard_deadline || stop_starting.is_some_and(|t| now >= t) {
                    break;
                }
                if issued.fetch_add(1, Ordering::Relaxed) >= total {
                    break;
                }
                one_request(&target, i, hard_deadline, &mut s).await;
            }
            s
        }));
    }
    let mut all = Samples::default();
    for w in workers {
        match w.await {
            Ok(s) => all.merge(s),
            Err(_) => all.error("worker_panicked"),
        }
    }
    let wall = started_at.elapsed().as_secs_f64();
    let started = issued.load(Ordering::Relaxed).min(total);
    let errors: u64 = all.errors.values().sum();
    let mut out = json!({
        "label": args.label,
        "url": args.url,
        "mode": if args.no_stream { "plain" } else { "stream" },
        "streams": streams,
        "h2c_streams_per_connection": args.h2c_streams_per_connection,
        "started": started,
        "completed": all.completed,
        "errors": errors,
        "error_kinds": all.errors,
        "wall_s": wall,
        "requests_per_s": all.completed as f64 / wall.max(1e-9),
    });
    if args.no_stream {
        out["latency_us"] = summary(&mut all.first);
    } else {
        out["events"] = json!(all.events);
        out["comments"] = json!(all.comments);
        out["events_per_s"] = json!(all.events as f64 / wall.max(1e-9));
        out["ttft_us"] = summary(&mut all.first);
        out["gap_us"] = summary(&mut all.gaps);
    }
    Ok(out)
}

fn ms(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_u64)
        .map_or_else(|| "-".into(), |us| format!("{:.3}", us as f64 / 1000.0))
}

fn print_human(out: &Value) {
    println!(
        "sse-load [{}] {} mode, {} concurrent: started {}, completed {}, errors {} {}, {:.1} s, {:.1} req/s",
        out["label"].as_str().unwrap_or(""),
        out["mode"].as_str().unwrap_or(""),
        out["streams"],
        out["started"],
        out["completed"],
        out["errors"],
        out["error_kinds"],
        out["wall_s"].as_f64().unwrap_or(0.0),
        out["requests_per_s"].as_f64().unwrap_or(0.0),
    );
    let rows: &[(&str, &str)] = if out["mode"] == "plain" {
        &[("latency", "latency_us")]
    } else {
        &[("ttft", "ttft_us"), ("gap", "gap_us")]
    };
    println!(
        "  {:8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "ms", "p50", "p90", "p99", "p99.9", "max", "samples"
    );
    for (name, key) in rows {
        let s = &out[*key];
        println!(
            "  {:8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
            name,
            ms(s, "p50"),
            ms(s, "p90"),
            ms(s, "p99"),
            ms(s, "p999"),
            ms(s, "max"),
            s["count"]
        );
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sse-load: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json_path = args.json.clone();
    let out = match rt.block_on(run(args)) {
        Ok(out) => out,
        Err(e) => {
            eprintln!("sse-load: {e}");
            return ExitCode::from(2);
        }
    };
    print_human(&out);
    if let Some(path) = json_path {
        let text = match serde_json::to_string_pretty(&out) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("sse-load: cannot encode results: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = std::fs::write(&path, text + "\n") {
            eprintln!("sse-load: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    // Nothing at all got through: say so in the exit status (a wrong URL or key, usually).
    if out["completed"].as_u64() == Some(0) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_event_ends_with_either_line_ending() {
        assert_eq!(event_end(b"data: 1\n\ndata: 2\n\n"), Some(9));
        assert_eq!(event_end(b"data: 1\r\n\r\n"), Some(11));
        assert_eq!(event_end(b"data: 1\n"), None);
        assert_eq!(event_end(b""), None);
    }

    #[test]
    fn classifies_events() {
        assert!(matches!(classify(b"data: {\"a\":1}\n\n"), EventKind::Data));
        assert!(matches!(classify(b"data: [DONE]\n\n"), EventKind::Done));
        assert!(matches!(classify(b"data:[DONE]\r\n\r\n"), EventKind::Done));
        assert!(matches!(
            classify(b"data: {\"error\":{\"code\":\"x\"}}\n\n"),
            EventKind::Error
        ));
        assert!(matches!(classify(b": keep-alive\n\n"), EventKind::Comment));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u32> = (1..=100).rev().collect();
        let s = summary(&mut v);
        assert_eq!(s["p50"], 50);
        assert_eq!(s["p99"], 99);
        assert_eq!(s["max"], 100);
        assert_eq!(s["min"], 1);
        assert_eq!(summary(&mut [])["count"], 0);
    }

    #[test]
    fn only_loopback_targets() {
        for ok in [
            "http://127.0.0.1:8000/v1/chat/completions",
            "http://127.9.9.9/x",
            "http://[::1]:80/x",
            "http://localhost:1/x",
        ] {
            assert!(
                check_loopback(&reqwest::Url::parse(ok).unwrap()).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "http://10.0.0.1/x",
            "http://example.com/x",
            "http://[::2]/x",
        ] {
            assert!(
                check_loopback(&reqwest::Url::parse(bad).unwrap()).is_err(),
                "{bad}"
            );
        }
    }
}
