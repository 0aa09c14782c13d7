//! The JetStream sink: the output streams (alerts, sessions, dead letters, CDI) and a publisher that
//! sends a batch's records with `Nats-Msg-Id` and awaits every ack, retrying with backoff and
//! never dropping a record. The run loop acks its input only after `publish_all` returns.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::context::{Context, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
use bytes::Bytes;

use crate::telemetry::PUBLISH_RETRIES;

/// Stream of alert records (`touch.alerts.<rule>`).
pub const ALERTS_STREAM: &str = "TOUCH_ALERTS";
/// Stream of session records (`touch.sessions`).
pub const SESSIONS_STREAM: &str = "TOUCH_SESSIONS";
/// Stream of dead letters (`touch.dlq.<reason>`).
pub const DLQ_STREAM: &str = "TOUCH_DLQ";
/// Stream of per-customer CDI records (`touch.cdi`).
pub const CDI_STREAM: &str = "TOUCH_CDI";
/// Subject of per-customer CDI records.
pub const CDI_SUBJECT: &str = "touch.cdi";

/// How long the output streams keep records.
pub const OUTPUT_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Dedup window of alerts and sessions. A record is republished only when touchstream stops
/// between publishing a batch's outputs and acking its input; JetStream drops the second copy
/// by `Nats-Msg-Id` as long as the restart comes within this window.
const OUTPUT_DUPLICATE_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Dead letters can be many (garbage input); a shorter window keeps the server's id table small
/// and still covers a restart.
const DLQ_DUPLICATE_WINDOW: Duration = Duration::from_secs(3600);
/// Records published before their acks are awaited. async-nats holds one permit per unacked
/// publish (5 000 by default), so larger chunks would wait on themselves.
const PUBLISH_CHUNK: usize = 1000;
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Creates or updates the output streams.
pub async fn ensure_output_streams(js: &Context) -> anyhow::Result<()> {
    let streams = [
        (ALERTS_STREAM, "touch.alerts.>", OUTPUT_DUPLICATE_WINDOW),
        (SESSIONS_STREAM, "touch.sessions", OUTPUT_DUPLICATE_WINDOW),
        (DLQ_STREAM, "touch.dlq.>", DLQ_DUPLICATE_WINDOW),
        (CDI_STREAM, CDI_SUBJECT, DLQ_DUPLICATE_WINDOW),
    ];
    for (name, subject, window) in streams {
        js.create_or_update_stream(Config {
            name: name.to_string(),
            subjects: vec![subject.to_string()],
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            max_age: OUTPUT_MAX_AGE,
            duplicate_window: window,
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating or updating stream {name}"))?;
    }
    Ok(())
}

/// One output record as it goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    pub subject: String,
    /// `Nats-Msg-Id`: alert id (or `<alert_id>:resolved`), session id, or the dead letter's id.
    pub msg_id: String,
    pub payload: Bytes,
}

/// What a `publish_all` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Records stored by JetStream.
    pub stored: usize,
    /// Records JetStream recognised as already stored (same `Nats-Msg-Id` within the window).
    pub duplicates: usize,
    /// Publish attempts that failed and were retried.
    pub retries: usize,
}

/// Publishes output records to JetStream and waits until each one is stored.
#[derive(Clone)]
pub struct NatsSink {
    js: Context,
}

impl NatsSink {
    pub fn new(js: Context) -> Self {
        NatsSink { js }
    }

    /// Publishes every record and awaits its ack. Failed records are retried with exponential
    /// backoff (100 ms to 5 s) until they are stored; `give_up` is asked before each retry and
    /// ends the attempt with an error (used on shutdown when NATS stays away: the input is then
    /// not acked, and the records are produced again after the restart).
    pub async fn publish_all(
        &self,
        records: &[OutputRecord],
        give_up: impl Fn() -> bool,
    ) -> anyhow::Result<Published> {
        let mut result = Published::default();
        for chunk in records.chunks(PUBLISH_CHUNK) {
            let mut pending: Vec<&OutputRecord> = chunk.iter().collect();
            let mut backoff = BACKOFF_START;
            loop {
                let (stored, duplicates, failed, stream_missing) = self.try_publish(&pending).await;
                result.stored += stored;
                result.duplicates += duplicates;
                if failed.is_empty() {
                    break;
                }
                result.retries += failed.len();
                for r in &failed {
                    metrics::counter!(PUBLISH_RETRIES, "stream" => stream_of(&r.subject))
                        .increment(1);
                }
                if give_up() {
                    anyhow::bail!(
                        "{} output record(s) not published (first: {} on {})",
                        failed.len(),
                        failed[0].msg_id,
                        failed[0].subject
                    );
                }
                tracing::warn!(
                    failed = failed.len(),
                    retry_in_ms = backoff.as_millis() as u64,
                    "publishing outputs failed; retrying"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                if stream_missing {
                    // Someone deleted an output stream: put it back rather than spin.
                    if let Err(e) = ensure_output_streams(&self.js).await {
                        tracing::warn!("re-creating output streams: {e:#}");
                    }
                }
                pending = failed;
            }
        }
        Ok(result)
    }

    /// One attempt: send all, then await all acks. Returns (stored, duplicates, failed,
    /// whether a stream was missing).
    async fn try_publish<'a>(
        &self,
        records: &[&'a OutputRecord],
    ) -> (usize, usize, Vec<&'a OutputRecord>, bool) {
        let mut acks = Vec::with_capacity(records.len());
        let mut failed = Vec::new();
        let mut stream_missing = false;
        for &r in records {
            let msg = PublishMessage::build()
                .payload(r.payload.clone())
                .message_id(&r.msg_id);
            match self.js.send_publish(r.subject.clone(), msg).await {
                Ok(ack) => acks.push((r, ack)),
                Err(e) => {
                    tracing::debug!("publish {} failed: {e}", r.msg_id);
                    failed.push(r);
                }
            }
        }
        let (mut stored, mut duplicates) = (0, 0);
        for (r, ack) in acks {
            match ack.await {
                Ok(a) if a.duplicate => duplicates += 1,
                Ok(_) => stored += 1,
                Err(e) => {
                    if e.kind() == PublishErrorKind::StreamNotFound {
                        stream_missing = true;
                    }
                    tracing::debug!("ack of {} failed: {e}", r.msg_id);
                    failed.push(r);
                }
            }
        }
        (stored, duplicates, failed, stream_missing)
    }
}

/// The `stream` label of a subject, bounded to the output streams.
fn stream_of(subject: &str) -> &'static str {
    if subject.starts_with("touch.alerts.") {
        ALERTS_STREAM
    } else if subject == "touch.sessions" {
        SESSIONS_STREAM
    } else if subject.starts_with("touch.dlq.") {
        DLQ_STREAM
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_label_names_the_output_stream() {
        assert_eq!(
            stream_of("touch.alerts.quote_hot_no_contract"),
            "TOUCH_ALERTS"
        );
        assert_eq!(stream_of("touch.sessions"), "TOUCH_SESSIONS");
        assert_eq!(stream_of("touch.dlq.invalid_json"), "TOUCH_DLQ");
        assert_eq!(stream_of("somewhere.else"), "other");
    }
}
