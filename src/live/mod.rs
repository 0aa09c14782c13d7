//! The live side of touchstream: `run` (the engine between a JetStream input and JetStream
//! outputs, restart-safe), `collect` (the HTTP collector), `demo` (a private server, a generated workload, alerts printed as a
//! manager reads them) and the private nats-server launcher the demo and the tests share.

pub mod cdi;
mod checkpoint;
pub mod collect;
pub mod demo;
pub mod nats_server;
pub mod notify;
pub mod run;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::watch;

pub use checkpoint::{BUCKET as STATE_BUCKET, State as CheckpointState};
pub use demo::{DemoArgs, demo, publish_lines};
pub use run::{RunArgs, run};

/// Loads the pipeline file and the directory it names (`directory` overrides it).
pub fn load_pipeline(
    pipeline: &std::path::Path,
    directory: Option<&std::path::Path>,
) -> anyhow::Result<(
    Arc<crate::config::Pipeline>,
    Arc<crate::directory::Directory>,
)> {
    let pipeline = Arc::new(crate::config::Pipeline::load(pipeline)?);
    let dir = directory.map_or_else(|| pipeline.directory_path(), std::path::Path::to_path_buf);
    let directory = crate::directory::Directory::load(&dir)
        .with_context(|| format!("loading directory {}", dir.display()))?;
    Ok((pipeline, Arc::new(directory)))
}

/// A stop request that is made when `shutdown` resolves (logging `why`).
pub fn stop_on(shutdown: impl Future<Output = ()> + Send + 'static, why: &'static str) -> Stop {
    let stop = Stop::new();
    let requester = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("{why}");
        requester.request();
    });
    stop
}

/// Opens a JetStream key-value bucket, creating it when missing. Created by hand: async-nats
/// 0.51's `create_key_value` cannot parse nats-server 2.9's account info (TECH-NOTES), so the
/// `KV_<bucket>` stream is made with the settings a KV bucket has, then opened as a bucket.
/// `max_age` zero keeps keys forever.
pub async fn open_kv(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    max_age: Duration,
) -> anyhow::Result<async_nats::jetstream::kv::Store> {
    use async_nats::jetstream::stream::{Config, DiscardPolicy, StorageType};
    js.get_or_create_stream(Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: DiscardPolicy::New,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating the KV_{bucket} stream"))?;
    js.get_key_value(bucket)
        .await
        .with_context(|| format!("opening bucket {bucket}"))
}

/// Live consent updates from the bucket: `(rep_id, mask)`, None when the key was deleted.
pub type ConsentUpdates =
    tokio::sync::mpsc::UnboundedReceiver<(String, Option<crate::consent::Mask>)>;

/// The consent in force now (the pipeline file's `[consent]` with the bucket's values on top)
/// and the feed of later changes from the bucket, for `run` and `collect` alike.
pub async fn consent_feed(
    js: &async_nats::jetstream::Context,
    cfg: &crate::consent::ConsentConfig,
) -> anyhow::Result<(crate::consent::Consent, ConsentUpdates)> {
    let kv = open_kv(js, &cfg.bucket, Duration::ZERO).await?;
    let mut consent = crate::consent::Consent::new(cfg);
    for (rep_id, off) in crate::consent::load_all(&kv).await? {
        consent.set_live(&rep_id, Some(off));
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        if let Err(e) = crate::consent::watch(kv, tx).await {
            tracing::warn!("consent bucket watch ended: {e:#}");
        }
    });
    Ok((consent, rx))
}

/// Connects to NATS the way a long-running service should: keep trying when the server is not
/// up yet, reconnect forever when it goes away.
pub async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name("touchstream")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("nats: connected"),
                async_nats::Event::Disconnected => tracing::warn!("nats: disconnected"),
                other => tracing::debug!("nats: {other}"),
            }
        })
        .connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// Closes a connection at the end of a command: flushes what is queued (acks included), drains
/// the subscriptions, and waits (at most `CLOSE_WAIT`) until the connection has closed, so that
/// a server stopped right after (the demo's private one) finds no client to warn about.
/// `drain` only asks for this; a flush fails once the connection has gone.
pub async fn close(client: &async_nats::Client) {
    if let Err(e) = client.drain().await {
        tracing::debug!("closing the NATS connection: {e}");
        return;
    }
    let closed = async {
        while client.flush().await.is_ok() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    if tokio::time::timeout(CLOSE_WAIT, closed).await.is_err() {
        tracing::debug!("the NATS connection was still draining after {CLOSE_WAIT:?}");
    }
}

/// How long `close` waits for a drained connection to close.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Resolves on SIGINT (Ctrl-C) or SIGTERM: the `shutdown` future `main` hands to `run`.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A stop request shared by the tasks of a run: set once, remembered with its time so that
/// retries can give up some time after it.
#[derive(Clone)]
pub struct Stop {
    tx: Arc<watch::Sender<bool>>,
    at: Arc<OnceLock<Instant>>,
}

impl Default for Stop {
    fn default() -> Self {
        Self::new()
    }
}

impl Stop {
    pub fn new() -> Self {
        Stop {
            tx: Arc::new(watch::Sender::new(false)),
            at: Arc::new(OnceLock::new()),
        }
    }

    pub fn request(&self) {
        let _ = self.at.set(Instant::now());
        self.tx.send_replace(true);
    }

    pub fn requested(&self) -> bool {
        self.at.get().is_some()
    }

    /// Whether the stop was requested more than `grace` ago.
    pub fn overdue(&self, grace: Duration) -> bool {
        self.at.get().is_some_and(|t| t.elapsed() > grace)
    }

    /// Resolves once a stop is requested.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }

    /// Sleeps for `d`, or less when a stop is requested meanwhile.
    pub async fn sleep(&self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.wait() => {}
        }
    }
}
