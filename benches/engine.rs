//! Engine throughput in replay, JSON decoding included, at 10 k, 100 k and 1 M active pairs
//! (issue 2): does the cost of an event grow with state? Each size generates a seeded workload
//! with `touchstream::gen`, warms the engine with all but the last events (setup, untimed), then
//! times the last events through `Engine::process` in 4096-line micro-batches on one thread.
//!
//! Run: `cargo bench --bench engine` (sizes: `TOUCHSTREAM_BENCH_PAIRS=10000,100000`; days
//! generated: `TOUCHSTREAM_BENCH_DAYS=7`; another pipeline file: `TOUCHSTREAM_BENCH_PIPELINE=FILE`).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use touchstream::config::Pipeline;
use touchstream::engine::{ClockMode, Engine};
use touchstream::r#gen::{GenArgs, generate_packed};

const BATCH: usize = 4096;
/// Events timed per size (the rest of the workload only builds state).
const MEASURED: usize = 1_000_000;

struct Result {
    pairs: usize,
    lines: usize,
    measured: usize,
    ns_per_event: f64,
    /// On-CPU time of the timed loop's thread (Linux): unlike the wall clock, it leaves out the
    /// time spent waiting for a core on a shared machine.
    cpu_ns_per_event: Option<f64>,
    decode_ns: f64,
}

/// Nanoseconds this thread has run on a CPU (`/proc/thread-self/schedstat`, Linux).
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn run(pairs: usize, pipeline: &Arc<Pipeline>) -> anyhow::Result<Result> {
    let customers_per_rep = 50;
    let args = GenArgs {
        seed: 7,
        regions: 8,
        reps: (pairs / customers_per_rep).max(1),
        customers_per_rep,
        // Enough days for every pair to be active and for the window state to fill.
        days: if let Some(days) = std::env::var("TOUCHSTREAM_BENCH_DAYS")
            .ok()
            .and_then(|d| d.parse().ok())
        {
            days
        } else if pairs >= 1_000_000 {
            3
        } else if pairs >= 100_000 {
            8
        } else {
            30
        },
        end: None,
        max_events: 0,
        noise: 0.01,
    };
    let packed = generate_packed(&args)?;
    let inputs = packed.inputs();
    let dir = packed.directory.clone();
    let mut engine = Engine::new(pipeline.clone(), dir, ClockMode::Replay)?;
    let now = i64::MAX / 4;
    let measured = MEASURED.min(inputs.len() / 2);
    let split = inputs.len() - measured;
    for chunk in inputs[..split].chunks(BATCH) {
        std::hint::black_box(engine.process(chunk, now));
    }
    // Decoding alone, for the share of the engine's cost that does not depend on state.
    let t0 = Instant::now();
    let mut decoded = 0usize;
    for input in &inputs[split..] {
        decoded += touchstream::event::decode(input.raw).is_ok() as usize;
    }
    let decode_ns = t0.elapsed().as_nanos() as f64 / measured as f64;
    std::hint::black_box(decoded);
    perf_control("enable");
    let cpu0 = thread_cpu_ns();
    let t0 = Instant::now();
    let mut outputs = 0usize;
    for chunk in inputs[split..].chunks(BATCH) {
        let out = engine.process(chunk, now);
        outputs += out.alerts.len() + out.sessions.len() + out.dead_letters.len();
    }
    let elapsed = t0.elapsed();
    let cpu = thread_cpu_ns().zip(cpu0).map(|(b, a)| b.saturating_sub(a));
    perf_control("disable");
    let state: Vec<String> = engine
        .state_sizes()
        .iter()
        .map(|(name, n)| format!("{name}={n}"))
        .collect();
    println!(
        "  state at the end: {}; outputs per timed event {:.3}",
        state.join(" "),
        outputs as f64 / measured as f64
    );
    std::hint::black_box(outputs);
    Ok(Result {
        pairs,
        lines: inputs.len(),
        measured,
        ns_per_event: elapsed.as_nanos() as f64 / measured as f64,
        cpu_ns_per_event: cpu.map(|c| c as f64 / measured as f64),
        decode_ns,
    })
}

/// Profiles only the timed part: `mkfifo /tmp/ctl; perf record -D -1 --control fifo:/tmp/ctl ...`
/// with `TOUCHSTREAM_PERF_CTL=/tmp/ctl` in the bench's environment.
fn perf_control(command: &str) {
    if let Ok(path) = std::env::var("TOUCHSTREAM_PERF_CTL") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(path) {
            let _ = writeln!(f, "{command}");
        }
    }
}

fn main() -> anyhow::Result<()> {
    // As `touchstream` does at start: before the workload is generated, not only at
    // `Engine::new`, so that the memory freed by setup is not returned to the OS and faulted
    // back during the timed part.
    touchstream::tune_allocator();
    let sizes: Vec<usize> = std::env::var("TOUCHSTREAM_BENCH_PAIRS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000, 1_000_000]);
    // TOUCHSTREAM_BENCH_PIPELINE=FILE measures another pipeline (e.g. other rules).
    let file = std::env::var("TOUCHSTREAM_BENCH_PIPELINE").map_or_else(
        |_| Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/default.toml"),
        std::path::PathBuf::from,
    );
    let pipeline = Arc::new(Pipeline::load(&file)?);
    println!(
        "pipeline {} ({} rules)",
        file.display(),
        pipeline.rules.len()
    );
    println!("engine/replay  (JSON decoding included, one thread, {BATCH}-line micro-batches)");
    let mut results = Vec::new();
    for pairs in sizes {
        let r = run(pairs, &pipeline)?;
        println!(
            "engine/replay/pairs={:<9} workload {:>9} lines, timed {:>8}: {:>7.0} ns/event  {:>10.0} events/s  (decoding alone {:>5.0} ns; on-CPU {} ns/event)",
            r.pairs,
            r.lines,
            r.measured,
            r.ns_per_event,
            1e9 / r.ns_per_event,
            r.decode_ns,
            r.cpu_ns_per_event
                .map_or_else(|| "?".to_owned(), |c| format!("{c:.0}"))
        );
        results.push(r);
    }
    if let (Some(first), Some(last)) = (results.first(), results.last())
        && results.len() > 1
    {
        println!(
            "per-event cost at {} pairs / at {} pairs = {:.2}",
            last.pairs,
            first.pairs,
            last.ns_per_event / first.ns_per_event
        );
        if let (Some(a), Some(b)) = (first.cpu_ns_per_event, last.cpu_ns_per_event) {
            println!("  on-CPU: {:.2}", b / a);
        }
    }
    Ok(())
}
