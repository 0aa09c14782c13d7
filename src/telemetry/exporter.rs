//! The Prometheus side of telemetry: installs the global `metrics` recorder (real histograms
//! with the buckets named in `telemetry`, not summaries, so they aggregate across instances)
//! and serves `GET /metrics` and `GET /healthz` with axum on a loopback address.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use super::{
    ALERT_LATENCY_BUCKETS, ALERT_LATENCY_SECONDS, BATCH_DURATION_BUCKETS, BATCH_DURATION_SECONDS,
    BATCH_EVENTS, BATCH_EVENTS_BUCKETS, COLLECT_PUBLISH_BUCKETS, COLLECT_PUBLISH_SECONDS,
    FIRST_RESPONSE_BUCKETS, FIRST_RESPONSE_SECONDS, NOTIFY_LATENCY_SECONDS,
};

/// How often histogram and idle-metric upkeep runs (the recorder does not do it by itself).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// How long a scraper's connection may take to send a request head, idle keep-alive included
/// (hyper's own default): longer than the usual scrape interval of 15 s, so that Prometheus
/// keeps its connection between scrapes.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Installs the process-wide recorder once and returns its handle; later calls (a demo that
/// runs `run` in-process, tests that start several runs) get the same handle.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = with_buckets().unwrap_or_else(|e| {
                tracing::error!("histogram buckets rejected, falling back to summaries: {e}");
                PrometheusBuilder::new()
            });
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if let Err(e) = metrics::set_global_recorder(recorder) {
                // Someone else installed a recorder first: /metrics will show only what this
                // detached recorder sees (nothing), which is better than failing the run.
                tracing::warn!("metrics recorder already installed elsewhere: {e}");
            }
            handle
        })
        .clone()
}

/// A recorder with touchstream's histogram buckets, not installed (benches measure with it).
pub fn recorder() -> metrics_exporter_prometheus::PrometheusRecorder {
    with_buckets()
        .unwrap_or_else(|_| PrometheusBuilder::new())
        .build_recorder()
}

fn with_buckets() -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    let histograms: [(&str, &[f64]); 6] = [
        (COLLECT_PUBLISH_SECONDS, COLLECT_PUBLISH_BUCKETS),
        (NOTIFY_LATENCY_SECONDS, ALERT_LATENCY_BUCKETS),
        (FIRST_RESPONSE_SECONDS, FIRST_RESPONSE_BUCKETS),
        (BATCH_DURATION_SECONDS, BATCH_DURATION_BUCKETS),
        (BATCH_EVENTS, BATCH_EVENTS_BUCKETS),
        (ALERT_LATENCY_SECONDS, ALERT_LATENCY_BUCKETS),
    ];
    let mut b = PrometheusBuilder::new();
    for (name, buckets) in histograms {
        b = b.set_buckets_for_metric(Matcher::Full(name.into()), buckets)?;
    }
    Ok(b)
}

/// Binds `addr` (port 0 picks a free one) and serves until `shutdown` resolves. Returns the
/// bound address at once and the server as a future to spawn.
pub async fn bind(
    addr: SocketAddr,
    handle: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, impl Future<Output = ()> + Send + 'static)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint on {addr}"))?;
    let local = listener.local_addr()?;
    Ok((local, serve_on(listener, handle, shutdown)))
}

/// Serves `/metrics` on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (_, server) = bind(addr, handle, shutdown).await?;
    server.await;
    Ok(())
}

async fn serve_on(
    listener: TcpListener,
    handle: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let upkeep_handle = handle.clone();
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            upkeep_handle.run_upkeep();
        }
    });
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(handle);
    crate::serve::serve(listener, app, HEAD_TIMEOUT, shutdown).await;
    upkeep.abort();
}

async fn render(State(handle): State<PrometheusHandle>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
}
