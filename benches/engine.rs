//! Engine throughput in replay, JSON decoding included, at 10 k, 100 k and 1 M active pairs
//! (issue 2): does the cost of an event grow with state? Each size generates a seeded workload
//! with `touchstream::gen` and warms an engine with all but the last events (setup, untimed).
//! Then the last events of every size go through `Engine::process` in 4096-line micro-batches
//! on one thread, the sizes taking turns slice by slice, so that the ratio of their costs is
//! measured over the same stretch of time on a machine whose speed drifts.
//!
//! Run: `cargo bench --bench engine` (sizes: `TOUCHSTREAM_BENCH_PAIRS=10000,100000`; days
//! generated: `TOUCHSTREAM_BENCH_DAYS=7`; slices: `TOUCHSTREAM_BENCH_SLICES=8`, 1 times the
//! sizes one after the other; another pipeline file: `TOUCHSTREAM_BENCH_PIPELINE=FILE`). It
//! also prints two checks of the machine: decoding alone per size (compute) at preparation and
//! after the timed part, and the latency of a random load from memory before and after it; and
//! short readings of both and of the shared cache just before and just after every slice, by
//! which `scripts/bench-quiet` keeps only the slices measured on a quiet machine. Per size it
//! prints the minor page faults and kernel CPU time of the timed part too.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use touchstream::config::Pipeline;
use touchstream::engine::{ClockMode, Engine};
use touchstream::r#gen::{GenArgs, generate_packed};

const BATCH: usize = 4096;
/// Events timed per size (the rest of the workload only builds state).
const MEASURED: usize = 1_000_000;
/// The processing time passed to the engine: far in the future, so no event is refused.
const NOW: i64 = i64::MAX / 4;
/// Lines decoded, and random loads chased, by each reading of the machine between slices
/// (about 2 ms each on a quiet machine).
const PROBE_LINES: usize = 4096;
const PROBE_LOADS: usize = 16_384;

/// One size, ready to be timed: its workload and an engine warmed with all but the timed events.
struct Prepared {
    pairs: usize,
    lines: Vec<touchstream::engine::Input<'static>>,
    engine: Engine,
    /// Where the timed events start in `lines`.
    split: usize,
    decode_ns: f64,
    /// The warm-up lines that `read_machine` decodes around this size's slices.
    probe_lines: std::ops::Range<usize>,
    timed: Timed,
}

/// What the timed events cost, summed over the slices.
#[derive(Default)]
struct Timed {
    events: usize,
    wall_ns: u128,
    /// On-CPU time of the timed loop's thread (Linux): unlike the wall clock, it leaves out the
    /// time spent waiting for a core on a shared machine.
    cpu_ns: Option<u64>,
    /// The first micro-batch of each slice, which finds the caches filled by the other sizes.
    first_events: usize,
    first_cpu_ns: u64,
    outputs: usize,
    /// On-CPU ns/event of each slice in order: the same slice of the same workload in several
    /// runs is the same work, so runs can be combined slice by slice (`scripts/bench-min`,
    /// `scripts/bench-quiet`).
    slice_ns: Vec<f64>,
    /// The machine just before and just after each slice (`read_machine`).
    slice_machine: Vec<(Reading, Reading)>,
    /// Page faults and kernel time of the timed loop's thread, summed over the slices: what
    /// memory taken from the OS costs (the kernel clears it at the fault), whether the state grew
    /// into it or the allocator had returned it.
    kernel: Option<KernelTime>,
}

/// Minor page faults and kernel CPU time of this thread (`/proc/thread-self/stat`, Linux; the
/// kernel time is counted in clock ticks, so only a sum over many slices means much).
#[derive(Default, Clone, Copy)]
struct KernelTime {
    faults: u64,
    ns: u64,
}

impl KernelTime {
    fn read() -> Option<KernelTime> {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
        // Fields after the command name (which may hold spaces): state is field 3, minflt 10,
        // stime 15 (man 5 proc).
        let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| rest.get(n - 3)?.parse::<u64>().ok();
        let ticks = field(15)?;
        // USER_HZ is 100 on every Linux architecture this builds for.
        Some(KernelTime {
            faults: field(10)?,
            ns: ticks * 10_000_000,
        })
    }

    /// Adds what the thread took between two readings.
    fn add_between(&mut self, from: KernelTime, to: KernelTime) {
        self.faults += to.faults.saturating_sub(from.faults);
        self.ns += to.ns.saturating_sub(from.ns);
    }
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

fn prepare(pairs: usize, pipeline: &Arc<Pipeline>) -> anyhow::Result<Prepared> {
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
    // Leaked: the engines of every size live until the end, each timed in turn.
    let packed = Box::leak(Box::new(generate_packed(&args)?));
    let lines = packed.inputs();
    let dir = packed.directory.clone();
    let mut engine = Engine::new(pipeline.clone(), dir, ClockMode::Replay)?;
    let measured = MEASURED.min(lines.len() / 2);
    let split = lines.len() - measured;
    for chunk in lines[..split].chunks(BATCH) {
        std::hint::black_box(engine.process(chunk, NOW));
    }
    let decode_ns = decode_alone(&lines[split..]);
    Ok(Prepared {
        pairs,
        lines,
        engine,
        split,
        decode_ns,
        probe_lines: split.saturating_sub(PROBE_LINES)..split,
        timed: Timed {
            cpu_ns: thread_cpu_ns().map(|_| 0),
            kernel: KernelTime::read().map(|_| KernelTime::default()),
            ..Timed::default()
        },
    })
}

/// Decoding alone of `lines`, ns per line: the share of the engine's cost that does not depend
/// on state, and a check of the machine's compute speed (measured at preparation and again
/// after the timed part: the sizes are prepared long before they are timed).
fn decode_alone(lines: &[touchstream::engine::Input<'_>]) -> f64 {
    let t0 = Instant::now();
    let mut decoded = 0usize;
    for input in lines {
        decoded += touchstream::event::decode(input.raw).is_ok() as usize;
    }
    std::hint::black_box(decoded);
    t0.elapsed().as_nanos() as f64 / lines.len().max(1) as f64
}

/// The machine at one moment, read just before and just after every slice: compute (decoding
/// the same warm-up lines of the size, ns/line), the shared cache (a stretch of a chase through
/// 4 MiB, just read in order so that it is cached, ns/load) and memory (a stretch of the
/// 256 MiB chase, ns/load). The neighbours on a shared host slow each of them for seconds at a
/// time: compute through the core, the cache by taking it over (what a small state like 10 k
/// pairs' feels), memory by its traffic. A slice with quiet readings on both sides was measured
/// on a quiet machine (`scripts/bench-quiet`).
#[derive(Debug, Clone, Copy)]
struct Reading {
    decode_ns: f64,
    cache_ns: f64,
    load_ns: f64,
}

/// The chases the readings take.
struct Probes {
    cache: Chase,
    memory: Chase,
}

fn read_machine(p: &Prepared, probes: &Probes) -> Reading {
    let decode_ns = decode_alone(&p.lines[p.probe_lines.clone()]);
    probes.cache.read_in_order();
    Reading {
        decode_ns,
        cache_ns: probes.cache.stretch(PROBE_LOADS),
        load_ns: probes.memory.stretch(PROBE_LOADS),
    }
}

/// Times slice `k` of `slices` of a size's timed events.
fn time_slice(p: &mut Prepared, k: usize, slices: usize, probes: &Probes) {
    let batches: Vec<_> = p.lines[p.split..].chunks(BATCH).collect();
    let (from, to) = (k * batches.len() / slices, (k + 1) * batches.len() / slices);
    let before = read_machine(p, probes);
    let kernel0 = KernelTime::read();
    perf_control("enable");
    let events0 = p.timed.events;
    let cpu0 = thread_cpu_ns();
    let t0 = Instant::now();
    let mut cpu_first = None;
    for (i, chunk) in batches[from..to].iter().enumerate() {
        let out = p.engine.process(chunk, NOW);
        p.timed.outputs += out.alerts.len() + out.sessions.len() + out.dead_letters.len();
        p.timed.events += chunk.len();
        if i == 0 {
            cpu_first = thread_cpu_ns();
            p.timed.first_events += chunk.len();
        }
    }
    let wall = t0.elapsed();
    let cpu1 = thread_cpu_ns();
    perf_control("disable");
    let kernel1 = KernelTime::read();
    if let (Some(sum), Some(a), Some(b)) = (&mut p.timed.kernel, kernel0, kernel1) {
        sum.add_between(a, b);
    }
    let after = read_machine(p, probes);
    p.timed.slice_machine.push((before, after));
    p.timed.wall_ns += wall.as_nanos();
    if let (Some(sum), Some(a), Some(b)) = (&mut p.timed.cpu_ns, cpu0, cpu1) {
        *sum += b.saturating_sub(a);
    }
    if let (Some(a), Some(f)) = (cpu0, cpu_first) {
        p.timed.first_cpu_ns += f.saturating_sub(a);
    }
    let events = p.timed.events - events0;
    if let (Some(a), Some(b)) = (cpu0, cpu1)
        && events > 0
    {
        p.timed
            .slice_ns
            .push(b.saturating_sub(a) as f64 / events as f64);
    }
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

/// How long one dependent random load takes over a table (a pointer chase through one random
/// cycle of its words). Over 256 MiB, which no cache holds, it is the machine's memory latency at
/// the moment, which the neighbours on a shared host move by twofold and more: printed before
/// and after the timed part, beside "decoding alone" (compute), and read around every slice.
struct Chase {
    next: Vec<u32>,
    /// Where the chase stands: each stretch goes on from where the last one stopped.
    at: std::cell::Cell<u32>,
}

impl Chase {
    /// The 256 MiB table, and the stretch printed before and after the timed part.
    const MEMORY_WORDS: usize = 64 << 20;
    const LOADS: usize = 2_000_000;
    /// The table read in order before each cache reading: 4 MiB, twice a core's L2 here and a
    /// ninth of the shared L3.
    const CACHE_WORDS: usize = 1 << 20;

    fn new(words: usize) -> Self {
        // Sattolo's shuffle: one cycle through every word, so the chase visits them all.
        let mut next: Vec<u32> = (0..words as u32).collect();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in (1..next.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            next.swap(i, (x % i as u64) as usize);
        }
        Chase {
            next,
            at: std::cell::Cell::new(0),
        }
    }

    /// Reads the whole table in order (brings it into the caches).
    fn read_in_order(&self) {
        std::hint::black_box(self.next.iter().fold(0u32, |a, w| a ^ w));
    }

    /// ns per load over the next `loads` steps of the chase.
    fn stretch(&self, loads: usize) -> f64 {
        let t0 = Instant::now();
        let mut at = self.at.get();
        for _ in 0..loads {
            at = self.next[at as usize];
        }
        self.at.set(std::hint::black_box(at));
        t0.elapsed().as_nanos() as f64 / loads as f64
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
    // The sizes are timed in turns, slice by slice, so that each size's figure is taken over the
    // same stretch of time: on a shared machine the speed of memory drifts by tens of percent
    // within minutes, which timed one after the other lands on one size and not the other.
    let slices: usize = std::env::var("TOUCHSTREAM_BENCH_SLICES")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(8);
    let mut sizes: Vec<Prepared> = sizes
        .into_iter()
        .map(|pairs| prepare(pairs, &pipeline))
        .collect::<anyhow::Result<_>>()?;
    let probes = Probes {
        cache: Chase::new(Chase::CACHE_WORDS),
        memory: Chase::new(Chase::MEMORY_WORDS),
    };
    let memory_before = probes.memory.stretch(Chase::LOADS);
    for k in 0..slices {
        // Forwards and backwards in turn: which size follows which is the same for all.
        let order: Vec<usize> = if k % 2 == 0 {
            (0..sizes.len()).collect()
        } else {
            (0..sizes.len()).rev().collect()
        };
        for i in order {
            time_slice(&mut sizes[i], k, slices, &probes);
        }
    }
    let memory_after = probes.memory.stretch(Chase::LOADS);
    drop(probes);
    let decode_after: Vec<f64> = sizes
        .iter()
        .map(|p| decode_alone(&p.lines[p.split..]))
        .collect();
    println!(
        "  timed in {slices} slices per size, the sizes in turns (TOUCHSTREAM_BENCH_SLICES=1: one after the other)"
    );
    println!(
        "  machine: a random load from memory (256 MiB chase) {memory_before:.0} ns before the timed part, {memory_after:.0} ns after"
    );
    for (p, decode_after) in sizes.iter().zip(&decode_after) {
        let t = &p.timed;
        let state: Vec<String> = p
            .engine
            .state_sizes()
            .iter()
            .map(|(name, n)| format!("{name}={n}"))
            .collect();
        println!(
            "  state at the end: {}; outputs per timed event {:.3}",
            state.join(" "),
            t.outputs as f64 / t.events as f64
        );
        let ns = t.wall_ns as f64 / t.events as f64;
        let rest = t.cpu_ns.map(|c| c.saturating_sub(t.first_cpu_ns));
        println!(
            "engine/replay/pairs={:<9} workload {:>9} lines, timed {:>8}: {:>7.0} ns/event  {:>10.0} events/s  (decoding alone {:>5.0} ns, after the timed part {:>5.0}; on-CPU {} ns/event; first batch of a slice {} ns/event, the rest {})",
            p.pairs,
            p.lines.len(),
            t.events,
            ns,
            1e9 / ns,
            p.decode_ns,
            decode_after,
            per_event(t.cpu_ns, t.events),
            per_event(Some(t.first_cpu_ns), t.first_events),
            per_event(rest, t.events - t.first_events),
        );
        if let Some(k) = t.kernel {
            println!(
                "  pairs={} in the kernel during the timed part: {} minor page faults ({:.2} per 1000 events), {} ns/event of kernel CPU (counted in 10 ms ticks)",
                p.pairs,
                k.faults,
                k.faults as f64 * 1000.0 / t.events.max(1) as f64,
                per_event(Some(k.ns), t.events),
            );
        }
        let slices: Vec<String> = t.slice_ns.iter().map(|ns| format!("{ns:.0}")).collect();
        println!(
            "  pairs={} on-CPU ns/event by slice: {}",
            p.pairs,
            slices.join(" ")
        );
        let machine: Vec<String> = t
            .slice_machine
            .iter()
            .map(|(b, a)| {
                format!(
                    "{:.0},{:.0},{:.0}/{:.0},{:.0},{:.0}",
                    b.decode_ns, b.cache_ns, b.load_ns, a.decode_ns, a.cache_ns, a.load_ns
                )
            })
            .collect();
        println!(
            "  pairs={} machine before/after each slice (decoding ns/line,cache ns/load,memory ns/load): {}",
            p.pairs,
            machine.join(" ")
        );
    }
    if let (Some(first), Some(last)) = (sizes.first(), sizes.last())
        && sizes.len() > 1
    {
        let (a, b) = (&first.timed, &last.timed);
        println!(
            "per-event cost at {} pairs / at {} pairs = {:.2}",
            last.pairs,
            first.pairs,
            (b.wall_ns as f64 / b.events as f64) / (a.wall_ns as f64 / a.events as f64)
        );
        if let (Some(x), Some(y)) = (a.cpu_ns, b.cpu_ns) {
            println!(
                "  on-CPU: {:.2}",
                (y as f64 / b.events as f64) / (x as f64 / a.events as f64)
            );
        }
    }
    Ok(())
}

/// Nanoseconds per event, or `?` when the time is unknown (no schedstat) or no event ran.
fn per_event(ns: Option<u64>, events: usize) -> String {
    match ns {
        Some(ns) if events > 0 => format!("{:.0}", ns as f64 / events as f64),
        _ => "?".to_owned(),
    }
}
