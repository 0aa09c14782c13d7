//! The live run's checkpoint in the JetStream key-value bucket `touchstream_state`: the last
//! watermark whose outputs are published (idle advancement is the one part of the watermark a
//! replay of the input cannot rebuild) and the input sequence acked with it.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use async_nats::jetstream::context::Context;
use async_nats::jetstream::kv::Store;
use async_nats::jetstream::stream::{Config, DiscardPolicy, StorageType};
use serde::{Deserialize, Serialize};

use crate::event::Millis;

/// The bucket; its stream is `KV_touchstream_state`.
pub const BUCKET: &str = "touchstream_state";

/// What is stored under `<durable>.watermark`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Watermark (epoch ms) whose outputs are all published; `None` before the first event.
    pub watermark_ms: Option<Millis>,
    /// Highest input stream sequence acked when it was written.
    pub input_seq: u64,
}

pub struct Checkpoint {
    kv: Store,
    key: String,
}

impl Checkpoint {
    /// Opens (creating if needed) the bucket. Created by hand: async-nats 0.51's
    /// `create_key_value` cannot parse nats-server 2.9's account info (TECH-NOTES), so the
    /// `KV_<bucket>` stream is made with the settings a KV bucket has, then opened as a bucket.
    pub async fn open(js: &Context, durable: &str) -> anyhow::Result<Checkpoint> {
        js.get_or_create_stream(Config {
            name: format!("KV_{BUCKET}"),
            subjects: vec![format!("$KV.{BUCKET}.>")],
            max_messages_per_subject: 1,
            storage: StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: DiscardPolicy::New,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating the KV_{BUCKET} stream"))?;
        let kv = js
            .get_key_value(BUCKET)
            .await
            .with_context(|| format!("opening bucket {BUCKET}"))?;
        Ok(Checkpoint {
            kv,
            key: format!("{durable}.watermark"),
        })
    }

    pub async fn load(&self) -> anyhow::Result<Option<State>> {
        let Some(bytes) = self
            .kv
            .get(self.key.clone())
            .await
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("reading {BUCKET}/{}", self.key))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("decoding {BUCKET}/{}", self.key))
    }

    pub async fn save(&self, state: State) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(&state)?;
        self.kv
            .put(&self.key, bytes.into())
            .await
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("writing {BUCKET}/{}", self.key))?;
        Ok(())
    }
}
