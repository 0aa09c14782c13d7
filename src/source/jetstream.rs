//! The JetStream input: the input stream (Limits retention long enough to rebuild state by
//! replay), the durable pull consumer that feeds the live run one micro-batch per fetch, and
//! the ordered-consumer replay of already-acked sequences used after a restart.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use async_nats::jetstream::consumer::pull::{self, OrderedConfig};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::{ConsumerInfoErrorKind, Context};
use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType, Stream};
use async_nats::jetstream::{self, consumer::pull::Ordered};
use futures::{FutureExt as _, StreamExt as _};

use crate::config::Pipeline;

/// Dedup window of the input stream: publishers set `Nats-Msg-Id` = `event_id`, so a publisher
/// retry within this window is stored once (the engine also drops repeated event ids).
const INPUT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long a delivered message may stay unacked before the server redelivers it. Longer than
/// any batch takes, including output publish retries through a short NATS outage.
const ACK_WAIT: Duration = Duration::from_secs(60);
/// During the replay, a silence this long means the stream holds nothing more up to the target
/// sequence (messages aged out or were deleted).
const REPLAY_IDLE: Duration = Duration::from_secs(10);
/// Slack on top of the fetch wait before a fetch that got no answer is abandoned.
const FETCH_SLACK: Duration = Duration::from_secs(10);

/// Creates or updates the input stream from the pipeline's `[source]`.
pub async fn ensure_input_stream(js: &Context, p: &Pipeline) -> anyhow::Result<Stream> {
    let s = &p.source;
    js.create_or_update_stream(Config {
        name: s.stream.clone(),
        subjects: vec![s.subjects.clone()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        max_age: Duration::from_secs(s.retention_days.saturating_mul(24 * 3600)),
        duplicate_window: INPUT_DUPLICATE_WINDOW,
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating or updating stream {}", s.stream))?;
    js.get_stream(&s.stream)
        .await
        .with_context(|| format!("opening stream {}", s.stream))
}

/// The stream sequence up to which the durable consumer has acked (its ack floor), or `None`
/// when the consumer does not exist.
pub async fn ack_floor(stream: &Stream, durable: &str) -> anyhow::Result<Option<u64>> {
    match stream.consumer_info(durable).await {
        Ok(info) => Ok(Some(info.ack_floor.stream_sequence)),
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!(e)).with_context(|| format!("reading consumer {durable}")),
    }
}

/// A delivered message as the engine's input: its bytes, publish time and stream sequence.
pub fn input(m: &jetstream::Message) -> crate::engine::Input<'_> {
    let info = m.info().ok();
    crate::engine::Input {
        raw: m.payload.as_ref(),
        received_at: info
            .as_ref()
            .and_then(|i| i64::try_from(i.published.unix_timestamp_nanos() / 1_000_000).ok()),
        stream_seq: info.and_then(|i| std::num::NonZeroU64::new(i.stream_sequence)),
    }
}

/// The stream sequence of a delivered message.
pub fn stream_sequence(m: &jetstream::Message) -> Option<u64> {
    m.info().ok().map(|i| i.stream_sequence)
}

/// The live input: a durable pull consumer with `AckPolicy::All`, fetched one micro-batch at a
/// time; acking a batch's highest sequence acks the whole batch.
pub struct JetStreamSource {
    consumer: PullConsumer,
    batch_max_events: usize,
    batch_max_wait: Duration,
}

impl JetStreamSource {
    /// (Re-)creates the durable consumer so that it delivers from `acked_through + 1`.
    ///
    /// Re-creating (rather than re-using) matters after a crash: messages delivered to the dead
    /// process but never acked would otherwise come back only after `ack_wait`. The durable's
    /// only state that counts is its ack floor, which the caller has read (and checkpointed)
    /// before calling this.
    pub async fn open(
        stream: &Stream,
        p: &Pipeline,
        acked_through: u64,
    ) -> anyhow::Result<JetStreamSource> {
        let s = &p.source;
        if ack_floor(stream, &s.durable).await?.is_some() {
            stream
                .delete_consumer(&s.durable)
                .await
                .with_context(|| format!("deleting consumer {} to re-create it", s.durable))?;
        }
        let deliver_policy = if acked_through == 0 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: acked_through + 1,
            }
        };
        let batch = s.batch_max_events.max(1);
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(s.durable.clone()),
                description: Some("touchstream live input".into()),
                deliver_policy,
                ack_policy: AckPolicy::All,
                ack_wait: ACK_WAIT,
                // One batch in flight plus the next request; more would only be redelivered.
                max_ack_pending: i64::try_from(batch.saturating_mul(2).max(1000))
                    .unwrap_or(i64::MAX),
                // One subject: nats-server 2.9 silently ignores `filter_subjects`.
                filter_subject: s.subjects.clone(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating consumer {}", s.durable))?;
        Ok(JetStreamSource {
            consumer,
            batch_max_events: batch,
            batch_max_wait: Duration::from_millis(s.batch_max_wait_ms),
        })
    }

    /// Fetches the next micro-batch: up to `batch_max_events` messages, waiting up to
    /// `batch_max_wait_ms` for them. An empty batch means nothing arrived in that time.
    /// Messages the durable consumer has yet to deliver plus those delivered and not acked.
    pub async fn pending(&mut self) -> anyhow::Result<u64> {
        let info = self
            .consumer
            .info()
            .await
            .context("reading consumer info")?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }

    pub async fn next_batch(&self) -> anyhow::Result<Vec<jetstream::Message>> {
        let request = async {
            let mut batch = if self.batch_max_wait.is_zero() {
                self.consumer
                    .fetch()
                    .max_messages(self.batch_max_events)
                    .messages()
                    .await
            } else {
                self.consumer
                    .batch()
                    .max_messages(self.batch_max_events)
                    .expires(self.batch_max_wait)
                    .messages()
                    .await
            }
            .map_err(|e| anyhow!(e).context("requesting a batch"))?;
            let mut out = Vec::new();
            while let Some(item) = batch.next().await {
                match item {
                    Ok(m) => out.push(m),
                    // Keep what arrived: those messages are delivered and will be acked.
                    Err(e) if !out.is_empty() => {
                        tracing::debug!("batch ended early: {e}");
                        break;
                    }
                    Err(e) => return Err(anyhow!(e).context("fetching a batch")),
                }
            }
            Ok(out)
        };
        tokio::time::timeout(self.batch_max_wait + FETCH_SLACK, request)
            .await
            .unwrap_or_else(|_| Err(anyhow!("fetch got no answer from the server")))
    }

    /// Acks every message of the batch (AckPolicy::All: acking the highest stream sequence acks
    /// everything below it) and waits for the server to confirm.
    pub async fn ack_batch(batch: &[jetstream::Message]) -> anyhow::Result<()> {
        let Some(last) = batch.iter().max_by_key(|m| stream_sequence(m).unwrap_or(0)) else {
            return Ok(());
        };
        last.double_ack()
            .await
            .map_err(|e| anyhow!(e).context("acking the batch"))
    }
}

/// Replays stream sequences `..= through` (from the oldest one still stored) with an ordered
/// consumer, in batches, so that a restarted run can rebuild its state.
pub struct Replay {
    messages: Option<Ordered>,
    through: u64,
    batch_max_events: usize,
}

impl Replay {
    /// Starts a replay of the input stream up to `through`. Nothing to replay when `through`
    /// is 0 or the stream no longer holds any of those sequences.
    pub async fn start(stream: &Stream, p: &Pipeline, through: u64) -> anyhow::Result<Replay> {
        let info = stream
            .get_info()
            .await
            .context("reading input stream info")?;
        let first = info.state.first_sequence.max(1);
        let empty = info.state.messages == 0 || first > through;
        let messages = if through == 0 || empty {
            None
        } else {
            let consumer = stream
                .create_consumer(OrderedConfig {
                    description: Some("touchstream state rebuild".into()),
                    filter_subject: p.source.subjects.clone(),
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: first,
                    },
                    ..Default::default()
                })
                .await
                .context("creating the replay consumer")?;
            Some(
                consumer
                    .messages()
                    .await
                    .context("starting the replay consumer")?,
            )
        };
        Ok(Replay {
            messages,
            through,
            batch_max_events: p.source.batch_max_events.max(1),
        })
    }

    /// The next batch of replayed messages; empty when the replay has reached `through`.
    pub async fn next_batch(&mut self) -> anyhow::Result<Vec<jetstream::Message>> {
        let Some(messages) = self.messages.as_mut() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut done = false;
        // Wait for the first message; take the rest only while they are already buffered, so
        // that batches stay close to what the live run would have fetched.
        let first = match tokio::time::timeout(REPLAY_IDLE, messages.next()).await {
            Ok(item) => item,
            Err(_) => {
                tracing::warn!(
                    through = self.through,
                    "replay: no message for {REPLAY_IDLE:?}; assuming the rest aged out"
                );
                None
            }
        };
        let mut next = first;
        while let Some(item) = next {
            let m = item.map_err(|e| anyhow!(e).context("replaying the input stream"))?;
            let seq = stream_sequence(&m).unwrap_or(u64::MAX);
            if seq > self.through {
                done = true;
                break;
            }
            out.push(m);
            if seq == self.through {
                done = true;
                break;
            }
            if out.len() >= self.batch_max_events {
                break;
            }
            next = messages.next().now_or_never().flatten();
        }
        if out.is_empty() || done {
            // Dropping the ordered consumer's stream ends its subscription; the ephemeral
            // consumer is removed by the server after its inactivity threshold.
            self.messages = None;
        }
        Ok(out)
    }
}
