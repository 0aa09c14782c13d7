//! The notifier's consumer (`touchstream notify`, and a task of `touchstream run`): alert records
//! from `touch.alerts.>` through a durable JetStream consumer → routes by region → the
//! receivers' workers (`notify::Dispatcher`) → the delivery ledger and `delivery_failed` dead
//! letters → ack. An alert is acked only after every receiver delivered it or it was dead-lettered.
//! The ledger (JetStream key-value, one key per alert id, status and receiver) makes a
//! redelivery after a crash skip what was already delivered.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::Context;
use async_nats::jetstream::kv::Store;
use async_nats::jetstream::{self, AckKind, Message};
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use tokio::task::JoinSet;

use super::{Stop, connect};
use crate::config::Pipeline;
use crate::directory::Directory;
use crate::engine::{DeadLetter, DeadReason};
use crate::notify::{AlertNames, AlertView, Dispatcher, Notifier, Report, Ticket};
use crate::sinks::nats::{ALERTS_STREAM, NatsSink, OUTPUT_MAX_AGE, OutputRecord};
use crate::telemetry::{NOTIFICATIONS, NOTIFY_LATENCY_SECONDS, UNROUTED_ALERTS};
use crate::wall_clock_ms;

type PullConsumer = jetstream::consumer::Consumer<pull::Config>;

/// The delivery ledger; its stream is `KV_touchstream_delivered`.
pub const LEDGER_BUCKET: &str = "touchstream_delivered";
/// The notifier's durable consumer on the alerts stream.
pub const DURABLE: &str = "touchstream-notify";
/// Alerts in flight (delivered or waiting for a receiver) at most.
const MAX_IN_FLIGHT: usize = 1000;
/// JetStream redelivers an unacked alert after this; a delivery that takes longer (retries,
/// robot rate limits) tells JetStream it is still working on it every `PROGRESS_EVERY`.
const ACK_WAIT: Duration = Duration::from_secs(60);
const PROGRESS_EVERY: Duration = Duration::from_secs(20);
const FETCH: usize = 100;
/// A receiver that stayed away through every retry gets the alert again after this.
const REDELIVER_AFTER: Duration = Duration::from_secs(30);
const FETCH_EXPIRES: Duration = Duration::from_secs(1);
const RETRY_START: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// After a stop request, how long deliveries in flight may still finish (the rest is
/// redelivered after the restart, and the ledger skips what was done).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, clap::Args)]
pub struct NotifyArgs {
    /// Pipeline file whose `[notify]` section declares receivers, routes and templates.
    #[arg(long)]
    pub pipeline: PathBuf,
    /// NATS server URL.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
    /// Folder with reps.csv, customers.csv and regions.csv; overrides the pipeline file.
    #[arg(long)]
    pub directory: Option<PathBuf>,
}

/// `touchstream notify`: delivers alerts until `shutdown` resolves.
pub async fn notify(
    args: NotifyArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (pipeline, directory) = super::load_pipeline(&args.pipeline, args.directory.as_deref())?;
    let Some(notifier) = prepare(&pipeline, &directory)? else {
        anyhow::bail!(
            "{}: [notify] declares no receivers; nothing to deliver to",
            pipeline.file.display()
        );
    };
    let stop = super::stop_on(
        shutdown,
        "stop requested: finishing the deliveries in flight",
    );
    let client = connect(&args.nats).await?;
    let js = jetstream::new(client.clone());
    let result = run_notifier(js, pipeline, directory, notifier, stop).await;
    super::close(&client).await;
    result
}

/// Validates `[notify]` against the directory: `None` when no receiver is declared. A region
/// whose `routes` names an unknown receiver is an error (a typo would silently lose alerts).
pub fn prepare(
    pipeline: &Pipeline,
    directory: &Directory,
) -> anyhow::Result<Option<Arc<Notifier>>> {
    if pipeline.notify.receivers.is_empty() {
        return Ok(None);
    }
    let notifier = Notifier::new(pipeline.notify.clone())
        .map_err(|e| anyhow::anyhow!("{}: {e}", pipeline.file.display()))?;
    let mut unknown = Vec::new();
    for r in &directory.regions {
        for name in notifier.route(&r.region, &r.routes).unknown {
            unknown.push(format!("region `{}` routes to `{name}`", r.region));
        }
    }
    if !unknown.is_empty() {
        anyhow::bail!(
            "regions.csv names receivers the pipeline file does not declare: {}",
            unknown.join(", ")
        );
    }
    Ok(Some(Arc::new(notifier)))
}

/// Consumes and delivers until `stop`; retries while NATS is away.
pub async fn run_notifier(
    js: Context,
    pipeline: Arc<Pipeline>,
    directory: Arc<Directory>,
    notifier: Arc<Notifier>,
    stop: Stop,
) -> anyhow::Result<()> {
    let mut delay = RETRY_START;
    let (consumer, ledger) = loop {
        match open(&js).await {
            Ok(x) => break x,
            Err(e) if !stop.requested() => {
                tracing::warn!("notifier: opening the alerts consumer: {e:#}; retrying");
                stop.sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
            Err(_) => return Ok(()),
        }
    };
    tracing::info!(
        receivers = notifier.config().receivers.len(),
        "notifier: delivering alerts"
    );
    let ctx = Arc::new(Shared {
        pipeline,
        directory,
        notifier: notifier.clone(),
        dispatcher: Dispatcher::start(notifier),
        ledger,
        sink: NatsSink::new(js),
        stop: stop.clone(),
    });
    let mut inflight: JoinSet<()> = JoinSet::new();
    let mut delay = RETRY_START;
    while !stop.requested() {
        while inflight.try_join_next().is_some() {}
        let room = MAX_IN_FLIGHT.saturating_sub(inflight.len()).min(FETCH);
        if room == 0 {
            tokio::select! {
                _ = inflight.join_next() => {}
                _ = stop.wait() => {}
            }
            continue;
        }
        let batch = consumer
            .fetch()
            .max_messages(room)
            .expires(FETCH_EXPIRES)
            .messages()
            .await;
        let mut messages = match batch {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("notifier: fetch failed: {e}; retrying");
                stop.sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
                continue;
            }
        };
        delay = RETRY_START;
        while let Some(m) = messages.next().await {
            match m {
                Ok(msg) => {
                    let ctx = ctx.clone();
                    inflight.spawn(async move { ctx.handle(msg).await });
                }
                Err(e) => tracing::debug!("notifier: fetch: {e}"),
            }
        }
    }
    // Let deliveries in flight finish (and ack) for a while; the rest is redelivered later.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while inflight.join_next().await.is_some() {}
    })
    .await;
    inflight.abort_all();
    Ok(())
}

/// Creates (idempotently) the ledger bucket and the durable consumer.
async fn open(js: &Context) -> anyhow::Result<(PullConsumer, Store)> {
    crate::sinks::nats::ensure_output_streams(js).await?;
    // Keys live as long as the alerts stream keeps alerts, so any alert JetStream can
    // redeliver is still remembered.
    let ledger = super::open_kv(js, LEDGER_BUCKET, OUTPUT_MAX_AGE).await?;
    let stream = js
        .get_stream(ALERTS_STREAM)
        .await
        .with_context(|| format!("opening stream {ALERTS_STREAM}"))?;
    let consumer: PullConsumer = stream
        .get_or_create_consumer(
            DURABLE,
            pull::Config {
                durable_name: Some(DURABLE.into()),
                // Every alert the stream holds: the ledger skips what was delivered before.
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: MAX_IN_FLIGHT as i64,
                filter_subject: "touch.alerts.>".into(),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("creating consumer {DURABLE}"))?;
    Ok((consumer, ledger))
}

struct Shared {
    pipeline: Arc<Pipeline>,
    directory: Arc<Directory>,
    notifier: Arc<Notifier>,
    dispatcher: Dispatcher,
    ledger: Store,
    sink: NatsSink,
    stop: Stop,
}

/// A ledger key for (alert id, status, receiver): URL-safe base64, as key-value keys allow only
/// `[-/_=.a-zA-Z0-9]` and alert ids contain `:`.
fn ledger_key(delivery_key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(delivery_key)
}

impl Shared {
    async fn handle(&self, msg: Message) {
        let payload = msg.payload.clone();
        let view = match self.view(&payload) {
            Ok(v) => v,
            Err(e) => {
                // Not an alert record this notifier can read: dead-letter it, whole.
                let key = format!("unreadable:{}", msg.subject);
                if self.dead_letter(&payload, &key, e).await {
                    ack(&msg).await;
                }
                return;
            }
        };
        let routes = self
            .directory
            .region(&view.region)
            .map(|r| r.routes.as_str())
            .unwrap_or_default();
        let route = self.notifier.route(&view.region, routes);
        if route.receivers.is_empty() {
            metrics::counter!(UNROUTED_ALERTS, "region" => view.region.clone()).increment(1);
            tracing::warn!(alert_id = %view.alert_id, region = %view.region, "no receiver for the region");
            ack(&msg).await;
            return;
        }
        // Ask the ledger about every receiver before sending anything: a ledger error then
        // leaves the alert unacked with no delivery in flight that the ledger would miss.
        let mut todo: Vec<(String, String)> = Vec::new();
        for r in route.receivers {
            let name = r.name().to_string();
            let key = view.delivery_key(&name);
            match self.ledger.get(ledger_key(&key)).await {
                Ok(Some(_)) => {
                    metrics::counter!(NOTIFICATIONS, "receiver" => name, "outcome" => "already_delivered")
                        .increment(1);
                }
                Ok(None) => todo.push((name, key)),
                Err(e) => {
                    // Cannot tell whether it was delivered: leave the alert unacked, so that
                    // it comes back once the ledger answers.
                    tracing::warn!("notifier: reading the ledger: {e}");
                    return;
                }
            }
        }
        let mut pending: Vec<(String, String, Ticket)> = Vec::new();
        for (name, key) in todo {
            match self.dispatcher.submit(&name, view.clone()) {
                Ok(ticket) => pending.push((name, key, ticket)),
                Err(e) => {
                    tracing::warn!("notifier: {e}");
                    return;
                }
            }
        }
        let mut all_done = true;
        let mut deferred = false;
        for (name, key, ticket) in pending {
            let Some(report) = self.wait_reporting_progress(&msg, ticket).await else {
                all_done = false;
                continue;
            };
            match &report {
                Report::Delivered { .. } => {
                    metrics::counter!(NOTIFICATIONS, "receiver" => name.clone(), "outcome" => "delivered")
                        .increment(1);
                    let latency = (wall_clock_ms() - view.fired_at_ms).max(0) as f64 / 1000.0;
                    metrics::histogram!(NOTIFY_LATENCY_SECONDS, "receiver" => name.clone())
                        .record(latency);
                }
                Report::Failed { .. } if report.gave_up() => {
                    // The receiver is away, not refusing: JetStream redelivers the alert after
                    // the delay, and the ledger skips the receivers that already have it.
                    metrics::counter!(NOTIFICATIONS, "receiver" => name.clone(), "outcome" => "deferred")
                        .increment(1);
                    tracing::warn!(alert_id = %view.alert_id, "{}; trying again in {:?}", report.error(&name).unwrap_or_default(), REDELIVER_AFTER);
                    deferred = true;
                    continue;
                }
                Report::Failed { .. } => {
                    metrics::counter!(NOTIFICATIONS, "receiver" => name.clone(), "outcome" => "failed")
                        .increment(1);
                    let error = report.error(&name).unwrap_or_default();
                    tracing::warn!(alert_id = %view.alert_id, "{error}");
                    if !self.dead_letter(&payload, &key, error).await {
                        all_done = false;
                        continue;
                    }
                }
            }
            let value = Bytes::from(if report.is_delivered() {
                "delivered"
            } else {
                "dead_lettered"
            });
            if let Err(e) = self.ledger.put(ledger_key(&key), value).await {
                // Acking anyway: the alert is delivered; only a crash before the ack could
                // send it twice now.
                tracing::warn!("notifier: writing the ledger: {e}");
            }
        }
        if deferred {
            if let Err(e) = msg.ack_with(AckKind::Nak(Some(REDELIVER_AFTER))).await {
                tracing::debug!("notifier: nak: {e}");
            }
        } else if all_done {
            ack(&msg).await;
        }
    }

    /// The alert as the templates see it: the record plus names from the directory and the
    /// rule's severity and summary from the pipeline file.
    fn view(&self, payload: &[u8]) -> Result<AlertView, String> {
        let v: serde_json::Value = serde_json::from_slice(payload)
            .map_err(|e| format!("alert record is not JSON: {e}"))?;
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default();
        let rule = self.pipeline.rules.iter().find(|r| r.name == field("rule"));
        let names = AlertNames {
            rep_name: self.directory.rep_name(field("rep_id")).map(str::to_string),
            customer_name: self
                .directory
                .customer_name(field("customer_id"))
                .map(str::to_string),
            director: self
                .directory
                .region(field("region"))
                .map(|r| r.director.clone()),
            severity: rule.map(|r| r.severity.clone()).unwrap_or_default(),
            summary: rule.map(|r| r.summary.clone()).unwrap_or_default(),
        };
        let view = AlertView::from_json(&v, names).map_err(|e| e.to_string())?;
        Ok(self.notifier.prepare(view))
    }

    /// Waits for a receiver's report, telling JetStream the alert is in progress meanwhile.
    async fn wait_reporting_progress(&self, msg: &Message, ticket: Ticket) -> Option<Report> {
        let wait = ticket.wait();
        tokio::pin!(wait);
        loop {
            tokio::select! {
                report = &mut wait => return report,
                _ = tokio::time::sleep(PROGRESS_EVERY) => {
                    if let Err(e) = msg.ack_with(AckKind::Progress).await {
                        tracing::debug!("notifier: progress ack: {e}");
                    }
                }
            }
        }
    }

    /// Publishes a `delivery_failed` dead letter (id from the delivery key, so a redelivery
    /// does not store it twice); false when it could not be stored before a stop.
    async fn dead_letter(&self, payload: &[u8], key: &str, error: String) -> bool {
        let dl = DeadLetter {
            reason: DeadReason::DeliveryFailed,
            error,
            raw: payload.to_vec(),
            at: wall_clock_ms(),
            received_at: None,
        };
        let record = OutputRecord {
            subject: dl.subject(),
            msg_id: format!("delivery_failed:{key}"),
            payload: Bytes::from(dl.to_json()),
        };
        let stop = self.stop.clone();
        match self
            .sink
            .publish_all(std::slice::from_ref(&record), move || stop.requested())
            .await
        {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!("notifier: publishing a dead letter: {e:#}");
                false
            }
        }
    }
}

async fn ack(msg: &Message) {
    if let Err(e) = msg.ack().await {
        tracing::warn!("notifier: ack: {e}");
    }
}
