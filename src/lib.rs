//! touchstream: real-time sales-behaviour telemetry.
//!
//! A tour, in the direction the data flows:
//! - [`event`]: the input contract (EVENTS.md): kinds, strict decoding, time forms.
//! - [`config`]: the pipeline file, validated with every problem located.
//! - [`directory`]: reps, customers, regions; WeCom/DingTalk ids to pairs.
//! - [`engine`]: micro-batches through dedup, effective time, watermark and reordering into
//!   the [`operators`] (asset join, sessions, CDI aggregates), then [`rules`] (SQL over
//!   operator tables, via DataFusion), producing alerts, sessions, CDI and dead letters.
//! - [`replay`]: the engine over a file, event time only. [`live`]: the engine on NATS
//!   JetStream ([`source`], [`sinks`]), with `/metrics` ([`telemetry`]).
//! - [`collect`]: the HTTP front door (pixels, tracked links, beacons, SDK batches) that
//!   publishes events to NATS; [`consent`]: the reps' consent switches, enforced at every door.
//! - [`gen`]: a seeded workload generator for tests, benches and the demo.

/// mimalloc for every binary (touchstream, tests, benches): DataFusion allocates and frees
/// batch-sized buffers on every kernel run, which glibc's allocator answers with `brk`/`munmap`
/// and fresh page faults each time; see README "Benchmark figures".
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod collect;
pub mod config;
pub mod consent;
pub mod directory;
pub mod engine;
pub mod event;
pub mod r#gen;
pub mod live;
pub mod notify;
pub mod operators;
pub mod replay;
pub mod rules;
pub mod sinks;
pub mod source;
pub mod telemetry;

/// Wall-clock milliseconds: the only read of the system clock, for the CLI and live loops.
pub fn wall_clock_ms() -> event::Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as event::Millis)
        .unwrap_or(0)
}
