//! `touchstream collect`: the collector on its own (it also runs inside `run` when the pipeline
//! file has `[collect]`). Sets up the streams it publishes to, keeps the consent settings live
//! from their bucket, serves the HTTP front door and `/metrics`, until SIGINT/SIGTERM.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use async_nats::jetstream;

use crate::collect::server;
use crate::config::Pipeline;
use crate::directory::Directory;
use crate::telemetry::exporter;

#[derive(Debug, Clone, clap::Args)]
pub struct CollectArgs {
    /// Pipeline file with a `[collect]` section.
    #[arg(long, default_value = "pipelines/default.toml")]
    pub pipeline: PathBuf,
    /// NATS server URL.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
    /// Directory folder (overrides the pipeline file's `[directory] path`).
    #[arg(long)]
    pub directory: Option<PathBuf>,
    /// Where to serve Prometheus /metrics (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9465")]
    pub metrics_addr: SocketAddr,
}

pub async fn collect(
    args: CollectArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (pipeline, directory) = super::load_pipeline(&args.pipeline, args.directory.as_deref())?;
    if pipeline.collect.is_none() {
        anyhow::bail!(
            "{}: no [collect] section; the README's \"Collector\" section shows one",
            args.pipeline.display()
        );
    }
    let stop = super::stop_on(shutdown, "stop requested: the collector drains its buffer");
    let (metrics_addr, metrics) =
        exporter::bind(args.metrics_addr, exporter::install(), stop.wait()).await?;
    tokio::spawn(metrics);
    tracing::info!("metrics on http://{metrics_addr}/metrics");
    let client = super::connect(&args.nats).await?;
    let js = jetstream::new(client.clone());
    let (addr, server) = start(&js, &pipeline, directory, stop.wait()).await?;
    tracing::info!("collector on http://{addr}");
    let result = server.await;
    super::close(&client).await;
    result
}

/// Streams, live consent and the bound server (to be awaited), for `collect` and `run`.
pub async fn start(
    js: &jetstream::Context,
    pipeline: &Arc<Pipeline>,
    directory: Arc<Directory>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(
    SocketAddr,
    impl Future<Output = anyhow::Result<()>> + Send + 'static,
)> {
    let cfg = pipeline
        .collect
        .clone()
        .context("the pipeline file has no [collect] section")?;
    crate::source::jetstream::ensure_input_stream(js, pipeline).await?;
    crate::sinks::nats::ensure_output_streams(js).await?;
    let (consent, mut rx) = super::consent_feed(js, &pipeline.consent).await?;
    let consent = Arc::new(RwLock::new(consent));
    let live = consent.clone();
    tokio::spawn(async move {
        while let Some((rep_id, off)) = rx.recv().await {
            if let Ok(mut c) = live.write() {
                c.set_live(&rep_id, off);
            }
        }
    });
    let check: server::ConsentCheck = Arc::new(crate::consent::door(consent, directory));
    server::bind(cfg, js.clone(), check, shutdown).await
}
