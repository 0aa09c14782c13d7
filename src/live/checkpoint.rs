//! The live run's checkpoint in the JetStream key-value bucket `touchstream_state`: the last
//! watermark whose outputs are published (idle advancement is the one part of the watermark a
//! replay of the input cannot rebuild) and the input sequence acked with it.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use async_nats::jetstream::context::Context;
use async_nats::jetstream::kv::Store;
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
    /// Opens (creating if needed) the bucket.
    pub async fn open(js: &Context, durable: &str) -> anyhow::Result<Checkpoint> {
        let kv = super::open_kv(js, BUCKET, Duration::ZERO).await?;
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
