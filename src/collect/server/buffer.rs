//! The bounded buffer between the hit endpoints (pixel, link, beacon, bad-token dead letters)
//! and JetStream. A request only pushes its event here and answers at once; a publisher task
//! sends what is buffered in chunks with `Nats-Msg-Id` and retries with backoff while NATS is
//! away, so nothing is lost while the buffer has room. When it is full, new events are
//! refused and counted as dropped (`touchstream_collect_dropped_total`), never lost silently.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::{COLLECT_BUFFER_DEPTH, COLLECT_DROPPED, COLLECT_PUBLISH_SECONDS};

/// Events sent before their acks are awaited (async-nats holds one permit per unacked
/// publish, 5 000 by default).
pub(super) const CHUNK: usize = 1000;
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest one send may wait for room in the client's queue (it blocks while NATS is away).
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// One message for JetStream.
#[derive(Debug, Clone)]
pub(super) struct Outgoing {
    pub subject: String,
    pub msg_id: String,
    pub payload: Bytes,
}

/// The sending side, held by the request handlers.
pub(super) struct Buffer {
    name: &'static str,
    tx: mpsc::UnboundedSender<Outgoing>,
    /// Events pushed and not yet stored by JetStream (queued or being published).
    depth: Arc<AtomicUsize>,
    capacity: usize,
}

/// The receiving side, owned by the publisher task.
pub(super) struct Drain {
    name: &'static str,
    rx: mpsc::UnboundedReceiver<Outgoing>,
    depth: Arc<AtomicUsize>,
}

pub(super) fn buffer(name: &'static str, capacity: usize) -> (Buffer, Drain) {
    let (tx, rx) = mpsc::unbounded_channel();
    let depth = Arc::new(AtomicUsize::new(0));
    metrics::gauge!(COLLECT_BUFFER_DEPTH, "buffer" => name).set(0.0);
    (
        Buffer {
            name,
            tx,
            depth: depth.clone(),
            capacity: capacity.max(1),
        },
        Drain { name, rx, depth },
    )
}

impl Buffer {
    /// Queues `msg`; false (and counted as dropped) when the buffer is full or closed.
    pub fn push(&self, msg: Outgoing) -> bool {
        let before = self.depth.fetch_add(1, Ordering::AcqRel);
        if before >= self.capacity {
            self.depth.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!(COLLECT_DROPPED, "buffer" => self.name, "reason" => "full")
                .increment(1);
            return false;
        }
        if self.tx.send(msg).is_err() {
            self.depth.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!(COLLECT_DROPPED, "buffer" => self.name, "reason" => "closed")
                .increment(1);
            return false;
        }
        metrics::gauge!(COLLECT_BUFFER_DEPTH, "buffer" => self.name).set((before + 1) as f64);
        true
    }
}

impl Drain {
    /// Publishes until `closing` turns true and everything queued by then is stored. While
    /// NATS is unreachable it waits, retrying with backoff from 100 ms to 5 s.
    pub async fn run(mut self, js: Context, mut closing: watch::Receiver<bool>) {
        let client = js.client();
        let mut batch: Vec<Outgoing> = Vec::with_capacity(CHUNK);
        let mut backoff = BACKOFF_START;
        let mut closed = false;
        loop {
            if batch.is_empty() {
                if closed {
                    if self.rx.recv_many(&mut batch, CHUNK).await == 0 {
                        return;
                    }
                } else {
                    tokio::select! {
                        n = self.rx.recv_many(&mut batch, CHUNK) => if n == 0 { return },
                        _ = closing.wait_for(|c| *c) => {
                            // No more pushes; what is queued is still received.
                            self.rx.close();
                            closed = true;
                            continue;
                        }
                    }
                }
            }
            if client.connection_state() != async_nats::connection::State::Connected {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            let sent = batch.len();
            let failed = publish(&js, std::mem::take(&mut batch), "buffer").await;
            let stored = sent - failed.len();
            let left = self.depth.fetch_sub(stored, Ordering::AcqRel) - stored;
            metrics::gauge!(COLLECT_BUFFER_DEPTH, "buffer" => self.name).set(left as f64);
            if failed.is_empty() {
                backoff = BACKOFF_START;
            } else {
                tracing::warn!(
                    buffer = self.name,
                    failed = failed.len(),
                    buffered = left,
                    retry_in_ms = backoff.as_millis() as u64,
                    "collector: publishing buffered events failed; retrying"
                );
                batch = failed;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    /// Counts what is left when the task had to be abandoned at shutdown.
    pub fn count_abandoned(name: &'static str, left: usize) {
        if left > 0 {
            metrics::counter!(COLLECT_DROPPED, "buffer" => name, "reason" => "shutdown")
                .increment(left as u64);
            metrics::gauge!(COLLECT_BUFFER_DEPTH, "buffer" => name).set(0.0);
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn depth_handle(&self) -> Arc<AtomicUsize> {
        self.depth.clone()
    }
}

/// Sends every message with its `Nats-Msg-Id`, then awaits every ack. Returns the messages
/// that were not stored (send or ack failed or timed out); JetStream deduplicates a retry of
/// one that was stored after all. Records the time in `touchstream_collect_publish_seconds`
/// with label `mode`.
pub(super) async fn publish(
    js: &Context,
    msgs: Vec<Outgoing>,
    mode: &'static str,
) -> Vec<Outgoing> {
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut acks = Vec::with_capacity(msgs.len());
    let mut msgs = msgs.into_iter();
    for m in msgs.by_ref() {
        let publish = PublishMessage::build()
            .payload(m.payload.clone())
            .message_id(&m.msg_id);
        match tokio::time::timeout(SEND_TIMEOUT, js.send_publish(m.subject.clone(), publish)).await
        {
            Ok(Ok(ack)) => acks.push((m, ack)),
            Ok(Err(e)) => {
                tracing::debug!("collector: publishing {} failed: {e}", m.msg_id);
                failed.push(m);
                break;
            }
            Err(_) => {
                failed.push(m);
                break;
            }
        }
    }
    // After a failed send the connection is in trouble: keep the rest for the next attempt.
    failed.extend(msgs);
    for (m, ack) in acks {
        if let Err(e) = ack.await {
            tracing::debug!("collector: ack of {} failed: {e}", m.msg_id);
            failed.push(m);
        }
    }
    metrics::histogram!(COLLECT_PUBLISH_SECONDS, "mode" => mode)
        .record(started.elapsed().as_secs_f64());
    failed
}
