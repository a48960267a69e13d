//! The OTLP/HTTP export behind the tracer: the SDK's batch processor (its own thread, a
//! bounded queue) in front of the protobuf exporter, with every span it gives up counted.
//!
//! The SDK drops spans silently when its queue is full or an export fails; the wrappers here
//! keep the count the gateway reports ([`dropped_spans`]). [`Counted`] bounds the spans waiting
//! (queued or being exported) itself, so the batch processor's own queue never overflows
//! unseen; [`CountingExporter`] releases them once an export ends and counts a failed batch.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;

use crate::config::OtelConfig;

/// Spans waiting for export at most; beyond this new spans are dropped (and counted).
pub const MAX_QUEUED_SPANS: usize = 4096;
const MAX_EXPORT_BATCH: usize = 512;
/// How often a partial batch goes out.
const EXPORT_DELAY: Duration = Duration::from_millis(500);
/// One export's deadline: a collector that hangs costs its queue, never the requests.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Spans the gateway ended but could not deliver (queue full, export failed), since start.
pub fn dropped_spans() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

fn count_dropped(n: usize) {
    DROPPED.fetch_add(n as u64, Ordering::Relaxed);
}

/// The span processor for `cfg`: batch export of OTLP protobuf to `<endpoint>/v1/traces`.
pub fn processor(cfg: &OtelConfig) -> Result<Counted, String> {
    let headers = cfg
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), value.expose().to_owned()))
        .collect();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", cfg.endpoint))
        .with_timeout(EXPORT_TIMEOUT)
        .with_headers(headers)
        .build()
        // The builder's errors name no header value.
        .map_err(|e| format!("otel: cannot build the OTLP exporter: {e}"))?;
    let queued = Arc::new(AtomicUsize::new(0));
    let batch = BatchSpanProcessor::builder(CountingExporter {
        inner: exporter,
        queued: queued.clone(),
    })
    .with_batch_config(
        BatchConfigBuilder::default()
            // One more than ours: the bound that drops is the counted one.
            .with_max_queue_size(MAX_QUEUED_SPANS + 1)
            .with_max_export_batch_size(MAX_EXPORT_BATCH)
            .with_scheduled_delay(EXPORT_DELAY)
            .build(),
    )
    .build();
    Ok(Counted {
        inner: batch,
        queued,
    })
}

/// The batch processor, with the spans it holds counted and bounded.
#[derive(Debug)]
pub struct Counted {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
}

impl SpanProcessor for Counted {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED_SPANS {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            count_dropped(1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter; a batch it could not deliver counts as dropped.
#[derive(Debug)]
struct CountingExporter {
    inner: opentelemetry_otlp::SpanExporter,
    queued: Arc<AtomicUsize>,
}

impl SpanExporter for CountingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.queued.fetch_sub(n, Ordering::Relaxed);
        if result.is_err() {
            count_dropped(n);
        }
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
