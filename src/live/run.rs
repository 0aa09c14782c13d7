//! `touchstream run`: the engine between the JetStream input and the JetStream outputs.
//! One fetch is one micro-batch; its outputs are published and acked by JetStream before the
//! input is acked, and a restart rebuilds the engine's state by replaying what was acked.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use bytes::Bytes;

use super::checkpoint::{Checkpoint, State};
use super::{Stop, connect};
use crate::config::Pipeline;
use crate::directory::Directory;
use crate::engine::{AlertStatus, ClockMode, Engine, Input, Outputs};
use crate::event::Millis;
use crate::sinks::nats::{NatsSink, OutputRecord, ensure_output_streams};
use crate::source::jetstream::{JetStreamSource, Replay, ack_floor, ensure_input_stream, input};
use crate::telemetry::{
    ACKED, ALERT_LATENCY_SECONDS, BATCH_DURATION_SECONDS, BATCH_EVENTS, WATERMARK_LAG_SECONDS,
    exporter,
};
use crate::wall_clock_ms;

/// After a stop request, how long publishing may keep retrying before the run gives up (and
/// leaves the batch unacked, to be processed again after the restart).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// While sources are idle, how often the watermark follows the wall clock.
const IDLE_ADVANCE_EVERY: Duration = Duration::from_secs(1);
/// While idle, how often the checkpoint is written even when nothing fired.
const IDLE_CHECKPOINT_EVERY: Duration = Duration::from_secs(10);
/// How often the durable consumer's backlog is read for `touchstream_consumer_pending_messages`.
const CONSUMER_LAG_EVERY: Duration = Duration::from_secs(5);
const ACK_ATTEMPTS: u32 = 5;
const RETRY_START: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Pipeline file (e.g. pipelines/default.toml).
    #[arg(long)]
    pub pipeline: PathBuf,
    /// NATS server URL.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
    /// Folder with reps.csv, customers.csv and regions.csv; overrides the pipeline file.
    #[arg(long)]
    pub directory: Option<PathBuf>,
    /// Where to serve Prometheus /metrics (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
}

/// Runs until `shutdown` resolves (then finishes the batch in flight, acks it and returns
/// `Ok`), or until a fatal error (bad pipeline or directory, outputs that could not be
/// published before the shutdown grace ran out).
pub async fn run(
    args: RunArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with(args, shutdown, |_| {}).await
}

/// `run`, telling `on_metrics` where /metrics was bound (the demo prints it; port 0 in
/// `--metrics-addr` picks a free port).
pub(super) async fn run_with(
    args: RunArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_metrics: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let (pipeline, directory) = super::load_pipeline(&args.pipeline, args.directory.as_deref())?;
    // Fail fast on a bad pipeline or directory, before touching NATS.
    drop(Engine::new(
        pipeline.clone(),
        directory.clone(),
        ClockMode::Live,
    )?);
    let notifier = super::notify::prepare(&pipeline, &directory)?;

    let stop = super::stop_on(shutdown, "stop requested: finishing the batch in flight");
    let (metrics_addr, server) =
        exporter::bind(args.metrics_addr, exporter::install(), stop.wait()).await?;
    crate::telemetry::zero_rule_series(pipeline.rules.iter().map(|r| r.name.as_str()));
    tokio::spawn(server);
    tracing::info!("metrics on http://{metrics_addr}/metrics");
    on_metrics(metrics_addr);

    let client = connect(&args.nats).await?;
    let js = jetstream::new(client.clone());
    // The notifier (when `[notify]` declares receivers) delivers what the engine publishes.
    let notifying = notifier.map(|notifier| {
        tokio::spawn(super::notify::run_notifier(
            js.clone(),
            pipeline.clone(),
            directory.clone(),
            notifier,
            stop.clone(),
        ))
    });
    // The collector (when `[collect]` is configured) publishes what the engine consumes.
    let collecting = match &pipeline.collect {
        None => None,
        Some(_) => {
            let (addr, server) =
                super::collect::start(&js, &pipeline, directory.clone(), stop.wait()).await?;
            tracing::info!("collector on http://{addr}");
            Some(tokio::spawn(server))
        }
    };
    let result = match Live::start(js, pipeline, directory, stop.clone()).await {
        Ok(Some(mut live)) => live.run().await,
        Ok(None) => Ok(()), // stopped before NATS was reachable
        Err(e) => Err(e),
    };
    if let Some(task) = collecting {
        stop.request();
        match task.await {
            Ok(Err(e)) => tracing::warn!("collector: {e:#}"),
            Err(e) => tracing::warn!("collector task: {e}"),
            Ok(Ok(())) => {}
        }
    }
    if let Some(task) = notifying {
        stop.request();
        match task.await {
            Ok(Err(e)) => tracing::warn!("notifier: {e:#}"),
            Err(e) => tracing::warn!("notifier task: {e}"),
            Ok(Ok(())) => {}
        }
    }
    super::close(&client).await;
    result
}

/// The running pipeline: engine, input, outputs, checkpoint.
struct Live {
    pipeline: Arc<Pipeline>,
    engine: Engine,
    source: JetStreamSource,
    sink: NatsSink,
    checkpoint: Checkpoint,
    stop: Stop,
    /// Highest input sequence acked.
    acked_seq: u64,
    cdi: super::cdi::CdiPublisher,
    /// The input stream (refused inputs are deleted from it).
    input: jetstream::stream::Stream,
    last_health: Instant,
    /// Consent in force, and live updates from the `[consent] bucket` watcher.
    consent: crate::consent::Consent,
    consent_updates: super::ConsentUpdates,
}

impl Live {
    /// Sets up streams and checkpoint, rebuilds the engine's state from the input stream and
    /// opens the durable consumer after it, all retried (with a fresh engine) while NATS is
    /// unreachable. `None` when a stop came first.
    async fn start(
        js: jetstream::Context,
        pipeline: Arc<Pipeline>,
        directory: Arc<Directory>,
        stop: Stop,
    ) -> anyhow::Result<Option<Live>> {
        let mut delay = RETRY_START;
        loop {
            // A bad pipeline or directory is fatal; only the NATS part is retried.
            let mut engine = Engine::new(pipeline.clone(), directory.clone(), ClockMode::Live)?;
            // From the rebuild on: after a restart every pair's CDI is written again.
            engine.track_cdi_changes();
            match Self::try_start(&js, &pipeline, engine, &stop).await {
                Ok(Some(live)) => return Ok(Some(live)),
                Ok(None) => return Ok(None),
                Err(e) if !stop.requested() => {
                    tracing::warn!("starting on JetStream: {e:#}; retrying");
                    stop.sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
                Err(_) => return Ok(None),
            }
        }
    }

    async fn try_start(
        js: &jetstream::Context,
        pipeline: &Arc<Pipeline>,
        mut engine: Engine,
        stop: &Stop,
    ) -> anyhow::Result<Option<Live>> {
        let (input, checkpoint, saved, acked_through) = setup(js, pipeline).await?;
        // The consent in force now applies to the rebuild too: switched-off data stays out.
        let (consent, consent_updates) = super::consent_feed(js, &pipeline.consent).await?;
        engine.set_consent(&consent);
        if !rebuild(&mut engine, &input, pipeline, acked_through, saved, stop).await? {
            return Ok(None);
        }
        let source = JetStreamSource::open(&input, pipeline, acked_through).await?;
        let cdi = super::cdi::CdiPublisher::open(js).await?;
        tracing::info!(
            stream = %pipeline.source.stream,
            durable = %pipeline.source.durable,
            from_sequence = acked_through + 1,
            "consuming live"
        );
        Ok(Some(Live {
            pipeline: pipeline.clone(),
            engine,
            source,
            sink: NatsSink::new(js.clone()),
            checkpoint,
            stop: stop.clone(),
            acked_seq: acked_through,
            cdi,
            input,
            last_health: Instant::now(),
            consent,
            consent_updates,
        }))
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        let idle_after = Duration::from_secs(self.pipeline.time.idle_advance_after_seconds);
        let health_every = Duration::from_secs(self.pipeline.health.publish_interval_seconds);
        let mut last_lag = Instant::now() - CONSUMER_LAG_EVERY;
        let mut last_input = Instant::now();
        let mut last_advance: Option<Instant> = None;
        let mut last_checkpoint = Instant::now();
        let mut fetch_delay = RETRY_START;
        while !self.stop.requested() {
            self.apply_consent_updates();
            let batch = match self.source.next_batch().await {
                Ok(b) => {
                    fetch_delay = RETRY_START;
                    b
                }
                Err(e) => {
                    // NATS is restarting or unreachable: the client reconnects by itself.
                    tracing::warn!("fetch failed: {e:#}; retrying");
                    self.stop.sleep(fetch_delay).await;
                    fetch_delay = (fetch_delay * 2).min(RETRY_MAX);
                    continue;
                }
            };
            if !batch.is_empty() {
                self.process_batch(&batch).await?;
                last_input = Instant::now();
                last_checkpoint = last_input;
            } else if last_input.elapsed() >= idle_after
                && last_advance.is_none_or(|t| t.elapsed() >= IDLE_ADVANCE_EVERY)
            {
                last_advance = Some(Instant::now());
                let fired = self.advance_idle().await?;
                if fired || last_checkpoint.elapsed() >= IDLE_CHECKPOINT_EVERY {
                    self.save_checkpoint().await;
                    last_checkpoint = Instant::now();
                }
            }
            if last_lag.elapsed() >= CONSUMER_LAG_EVERY {
                last_lag = Instant::now();
                match self.source.pending().await {
                    Ok(n) => metrics::gauge!(crate::telemetry::CONSUMER_PENDING).set(n as f64),
                    Err(e) => tracing::debug!("consumer lag: {e:#}"),
                }
            }
            if self.last_health.elapsed() >= health_every {
                self.last_health = Instant::now();
                self.publish_health().await;
            }
        }
        tracing::info!(acked_seq = self.acked_seq, "stopped");
        Ok(())
    }

    /// One micro-batch: engine, publish outputs (acked), ack input, checkpoint.
    async fn process_batch(&mut self, batch: &[jetstream::Message]) -> anyhow::Result<()> {
        let started = Instant::now();
        let now = wall_clock_ms();
        let (mut outputs, last_seq) = {
            let inputs: Vec<Input<'_>> = batch.iter().map(input).collect();
            let last_seq = inputs.iter().filter_map(|i| i.stream_seq).max();
            let engine = &mut self.engine;
            (unbudgeted(|| engine.process(&inputs, now)).await, last_seq)
        };
        let refused = std::mem::take(&mut outputs.refused);
        self.publish(outputs).await?;
        // Only now is everything this batch caused durable: ack it.
        if self.ack(batch).await {
            self.forget(&refused).await;
            metrics::counter!(ACKED).increment(batch.len() as u64);
            if let Some(seq) = last_seq {
                self.acked_seq = self.acked_seq.max(seq.get());
            }
            // Written after the ack: the persisted watermark never runs ahead of the acked
            // input, so a restart never treats unacked events as late.
            self.save_checkpoint().await;
        }
        self.engine.emit_state_metrics();
        metrics::histogram!(BATCH_EVENTS).record(batch.len() as f64);
        metrics::histogram!(BATCH_DURATION_SECONDS).record(started.elapsed().as_secs_f64());
        self.record_lag();
        Ok(())
    }

    /// Idle advancement (EVENTS.md §7): no input for a while, so the watermark follows the wall
    /// clock and deadlines pass at night. Returns whether anything was published.
    async fn advance_idle(&mut self) -> anyhow::Result<bool> {
        let now = wall_clock_ms();
        let watermark = now - self.pipeline.lateness_ms();
        let engine = &mut self.engine;
        let outputs = unbudgeted(|| engine.advance_to(watermark, now)).await;
        let fired = !outputs.is_empty();
        self.publish(outputs).await?;
        self.engine.emit_state_metrics();
        self.record_lag();
        Ok(fired)
    }

    /// Publishes a step's outputs and waits for every JetStream ack. On a restart, the batch
    /// in flight is processed again and its records are published again with the same
    /// `Nats-Msg-Id`; JetStream's duplicate window (24 h on alerts and sessions) drops the
    /// second copy. Everything acked before the restart is replayed with outputs discarded.
    async fn publish(&self, outputs: Outputs) -> anyhow::Result<()> {
        if outputs.is_empty() {
            return Ok(());
        }
        let firing: Vec<(Millis, String)> = outputs
            .alerts
            .iter()
            .filter(|a| a.status == AlertStatus::Firing)
            .map(|a| (a.due_at, a.rule.clone()))
            .collect();
        let records = to_records(outputs);
        let stop = self.stop.clone();
        let published = self
            .sink
            .publish_all(&records, move || stop.overdue(SHUTDOWN_GRACE))
            .await
            .context("stopping with outputs unpublished; the input is not acked and will be processed again")?;
        if published.duplicates > 0 {
            tracing::info!(
                duplicates = published.duplicates,
                "outputs already stored (republished after a restart)"
            );
        }
        let now = wall_clock_ms();
        for (due, rule) in firing {
            let latency = (now - due) as f64 / 1000.0;
            metrics::histogram!(ALERT_LATENCY_SECONDS, "rule" => rule).record(latency.max(0.0));
        }
        Ok(())
    }

    /// Acks a batch, retrying a few times. If the ack still fails, the messages come back
    /// after `ack_wait`; the engine drops them as repeated event ids and their outputs are
    /// already published, so nothing is lost or doubled.
    async fn ack(&self, batch: &[jetstream::Message]) -> bool {
        let mut delay = RETRY_START;
        for attempt in 1..=ACK_ATTEMPTS {
            match JetStreamSource::ack_batch(batch).await {
                Ok(()) => return true,
                Err(e) if attempt < ACK_ATTEMPTS => {
                    tracing::warn!("ack failed (attempt {attempt}): {e:#}; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
                Err(e) => tracing::error!("ack failed, messages will be redelivered: {e:#}"),
            }
        }
        false
    }

    /// Deletes inputs refused for consent from the input stream, so that switched-off data is
    /// not kept there either. A failure is logged: the message then ages out with the stream.
    async fn forget(&self, sequences: &[u64]) {
        for seq in sequences {
            if let Err(e) = self.input.delete_message(*seq).await {
                tracing::warn!(seq, "deleting a refused input from the stream: {e}");
            }
        }
    }

    /// Live consent changes from the bucket, applied between batches.
    fn apply_consent_updates(&mut self) {
        let mut changed = false;
        while let Ok((rep_id, off)) = self.consent_updates.try_recv() {
            tracing::info!(rep = %rep_id, ?off, "consent updated");
            self.consent.set_live(&rep_id, off);
            changed = true;
        }
        if changed {
            self.engine.set_consent(&self.consent);
        }
    }

    /// Exports the per-rep gauges and publishes the CDI of pairs that changed. A failure is
    /// logged, not fatal: the changed pairs are lost for this round only if NATS refused them,
    /// and the gauges are set again next time.
    async fn publish_health(&mut self) {
        let reps = self.engine.health();
        crate::telemetry::health::export(&reps, self.engine.directory(), &self.pipeline.health);
        let changed = self.engine.take_changed_cdi();
        if changed.is_empty() {
            return;
        }
        let stop = self.stop.clone();
        if let Err(e) = self
            .cdi
            .publish(changed, move || stop.overdue(SHUTDOWN_GRACE))
            .await
        {
            tracing::warn!("publishing CDI: {e:#}");
        }
    }

    async fn save_checkpoint(&self) {
        let state = State {
            watermark_ms: self.engine.watermark(),
            input_seq: self.acked_seq,
        };
        if let Err(e) = self.checkpoint.save(state).await {
            // Not fatal: an older checkpoint only means a restart re-derives less of the idle
            // advancement, which the next idle tick redoes.
            tracing::warn!("saving checkpoint: {e:#}");
        }
    }

    fn record_lag(&self) {
        if let Some(w) = self.engine.watermark() {
            let lag = (wall_clock_ms() - w) as f64 / 1000.0;
            metrics::gauge!(WATERMARK_LAG_SECONDS).set(lag);
        }
    }
}

/// Streams, checkpoint and the point to resume from.
async fn setup(
    js: &jetstream::Context,
    p: &Pipeline,
) -> anyhow::Result<(jetstream::stream::Stream, Checkpoint, Option<State>, u64)> {
    let mut input = ensure_input_stream(js, p).await?;
    ensure_output_streams(js).await?;
    let checkpoint = Checkpoint::open(js, &p.source.durable).await?;
    let mut saved = checkpoint.load().await?;
    let floor = ack_floor(&input, &p.source.durable).await?;
    let last_seq = input.info().await?.state.last_sequence;
    if saved.is_some_and(|s| s.input_seq > last_seq) {
        // The stream was re-created since the checkpoint was written: it describes other data.
        tracing::warn!("checkpoint is ahead of the input stream; ignoring it");
        saved = None;
    }
    // The consumer's ack floor is the authority; the checkpoint covers a consumer that is gone
    // (or lost its last acks), and never runs ahead of what was acked.
    let acked_through = floor
        .unwrap_or(0)
        .max(saved.map_or(0, |s| s.input_seq))
        .min(last_seq);
    // Written before the consumer is re-created, so a crash in between still knows where the
    // acked input ends.
    checkpoint
        .save(State {
            watermark_ms: saved.and_then(|s| s.watermark_ms),
            input_seq: acked_through,
        })
        .await?;
    Ok((input, checkpoint, saved, acked_through))
}

/// Rebuilds the engine's five-day and thirty-day state after a restart: replays the acked
/// input (sequences up to `acked_through`) with outputs discarded, since they were all
/// published before the restart, then moves the watermark to the checkpointed one so that
/// what idle advancement fired before is not fired again.
/// Returns `false` when a stop request interrupted it.
async fn rebuild(
    engine: &mut Engine,
    input: &jetstream::stream::Stream,
    p: &Pipeline,
    acked_through: u64,
    saved: Option<State>,
    stop: &Stop,
) -> anyhow::Result<bool> {
    let started = Instant::now();
    let mut replay = Replay::start(input, p, acked_through).await?;
    let mut replayed = 0usize;
    loop {
        if stop.requested() {
            tracing::info!(replayed, "stop requested during the state rebuild");
            return Ok(false);
        }
        let batch = replay.next_batch().await?;
        if batch.is_empty() {
            break;
        }
        let inputs: Vec<Input<'_>> = batch.iter().map(crate::source::jetstream::input).collect();
        // Outputs discarded (published before the restart) and metrics muted: these events
        // were counted by the process that first saw them.
        let now = wall_clock_ms();
        let _discarded = unbudgeted(|| {
            metrics::with_local_recorder(&metrics::NoopRecorder, || engine.process(&inputs, now))
        })
        .await;
        replayed += batch.len();
        tracing::debug!(replayed, "rebuilding state");
    }
    if let Some(w) = saved.and_then(|s| s.watermark_ms) {
        let now = wall_clock_ms();
        let _discarded = unbudgeted(|| {
            metrics::with_local_recorder(&metrics::NoopRecorder, || engine.advance_to(w, now))
        })
        .await;
    }
    engine.emit_state_metrics();
    tracing::info!(
        replayed,
        through_sequence = acked_through,
        watermark = ?engine.watermark(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "state rebuilt from the input stream"
    );
    Ok(true)
}

/// Runs a synchronous engine step outside tokio's cooperative budget. The engine drives its
/// DataFusion plans with a blocking executor; DataFusion's streams yield (Pending, then wake)
/// once the enclosing tokio task has spent its budget, and a blocking executor inside that
/// task would then spin forever. A replay that never waits on the network spends it fast.
async fn unbudgeted<T>(step: impl FnOnce() -> T) -> T {
    tokio::task::unconstrained(async move { step() }).await
}

/// The wire form of a step's outputs, in the engine's order within each kind.
fn to_records(outputs: Outputs) -> Vec<OutputRecord> {
    let mut records = Vec::with_capacity(
        outputs.alerts.len() + outputs.sessions.len() + outputs.dead_letters.len(),
    );
    for a in &outputs.alerts {
        records.push(OutputRecord {
            subject: a.subject(),
            msg_id: a.msg_id(),
            payload: Bytes::from(a.to_json()),
        });
    }
    for s in &outputs.sessions {
        records.push(OutputRecord {
            subject: s.subject(),
            msg_id: s.msg_id(),
            payload: Bytes::from(s.to_json()),
        });
    }
    for d in &outputs.dead_letters {
        records.push(OutputRecord {
            subject: d.subject(),
            msg_id: d.msg_id(),
            payload: Bytes::from(d.to_json()),
        });
    }
    records
}
