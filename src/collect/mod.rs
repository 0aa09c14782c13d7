//! The collector (`touchstream collect`, also inside `run`): the HTTP front door for tracking
//! pixels, tracked links, website beacons and SDK batches. It turns requests into EVENTS.md
//! events on `touch.in.<kind>` with `Nats-Msg-Id` = `event_id`, after checking the asset token
//! (`token`), the batch (`batch`) and the rep's consent (`crate::consent`).
//!
//! `config`: the `[collect]` section. `token`: minting and verifying asset tokens (keyed MAC,
//! key rotation). `batch`: SDK batch bodies (JSON array or NDJSON) split into events, bounded.
//! `server`: the axum routes, publishing, the pixel buffer while NATS is away, metrics.

pub mod batch;
pub mod config;
pub mod server;
pub mod token;

pub use config::{CollectConfig, KeySpec};
