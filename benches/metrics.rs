//! What the metrics cost the engine (issue 4), and how many series the generated organisation
//! (1 436 reps, `touchstream gen` defaults) exports. Two engines take the same micro-batches,
//! alternating batch by batch so that the machine's noise hits both alike: A with no recorder
//! (every metric call is a no-op), B recording into touchstream's Prometheus recorder and
//! exporting the per-rep health snapshot every `EXPORT_EVERY` events (a live run exports every
//! 15 s, i.e. every few million events at full speed: this is the pessimistic case).
//!
//! Run: `cargo bench --bench metrics`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use touchstream::config::Pipeline;
use touchstream::engine::{ClockMode, Engine};
use touchstream::r#gen::{GenArgs, generate_packed};

const BATCH: usize = 4096;
const EXPORT_EVERY: usize = 100_000;

fn main() -> anyhow::Result<()> {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/default.toml");
    let pipeline = Arc::new(Pipeline::load(&file)?);
    let args = GenArgs::default();
    let packed = generate_packed(&args)?;
    let inputs = packed.inputs();
    let dir = packed.directory.clone();
    println!(
        "metrics: generated organisation, {} reps x {} customers, {} days: {} lines, {BATCH}-line batches",
        args.reps,
        args.customers_per_rep,
        args.days,
        inputs.len()
    );
    let recorder = touchstream::telemetry::exporter::recorder();
    let handle = recorder.handle();
    let now = i64::MAX / 4;
    let mut a = Engine::new(pipeline.clone(), dir.clone(), ClockMode::Replay)?;
    let mut b = Engine::new(pipeline.clone(), dir.clone(), ClockMode::Replay)?;
    let (mut time_a, mut time_b, mut time_export) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let (mut exports, mut since_export) = (0u32, 0usize);
    for chunk in inputs.chunks(BATCH) {
        let t0 = Instant::now();
        std::hint::black_box(a.process(chunk, now));
        time_a += t0.elapsed();
        let t0 = Instant::now();
        std::hint::black_box(metrics::with_local_recorder(&recorder, || {
            b.process(chunk, now)
        }));
        since_export += chunk.len();
        let t1 = Instant::now();
        if since_export >= EXPORT_EVERY {
            since_export = 0;
            exports += 1;
            metrics::with_local_recorder(&recorder, || {
                b.emit_state_metrics();
                touchstream::telemetry::health::export(&b.health(), &dir, &pipeline.health);
            });
            time_export += t1.elapsed();
        }
        time_b += t0.elapsed();
    }
    metrics::with_local_recorder(&recorder, || {
        touchstream::telemetry::health::export(&b.health(), &dir, &pipeline.health);
    });
    let n = inputs.len() as f64;
    let ns = |d: Duration| d.as_nanos() as f64 / n;
    println!(
        "metrics/off  {:>7.0} ns/event\nmetrics/on   {:>7.0} ns/event (health snapshot + export every {EXPORT_EVERY} events: {exports} exports, {:.1} ms each)",
        ns(time_a),
        ns(time_b),
        time_export.as_secs_f64() * 1000.0 / f64::from(exports.max(1))
    );
    println!(
        "metrics cost: on / off = {:.3}",
        time_b.as_secs_f64() / time_a.as_secs_f64()
    );
    let text = handle.render();
    let samples: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    let per_rep = samples
        .iter()
        .filter(|l| l.starts_with("touchstream_rep_"))
        .count();
    println!(
        "series exported: {} in all, {} per-rep (touchstream_rep_*), {} for {} reps = {:.1} per rep",
        samples.len(),
        per_rep,
        per_rep,
        dir.reps.len(),
        per_rep as f64 / dir.reps.len() as f64
    );
    Ok(())
}
