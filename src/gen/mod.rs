//! Seeded workload generator (`touchstream gen`, benches, tests): a pharmacy chain's reps and
//! customers (EVENTS.md §3 directory) and what they do over some days, as input lines (§1–2)
//! in arrival order, with deliberate noise. The same arguments give the same bytes.
//!
//! `directory` builds the reference data, `behaviour` decides what happens when, `render`
//! writes the lines. Generation walks day by day and emits a day's arrivals as soon as no later
//! decision can land in it, so memory stays at about one day of events.

mod behaviour;
mod directory;
mod render;
#[cfg(test)]
mod tests;

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use directory::Directory;

/// The default end of the generated activity, `--end`.
pub const DEFAULT_END: &str = "2026-11-01T00:00:00Z";

#[derive(Debug, Clone, clap::Args)]
pub struct GenArgs {
    /// RNG seed; the same seed gives byte-identical output.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Number of sales regions (the pharmacy chain has 8).
    #[arg(long, default_value_t = 8)]
    pub regions: usize,
    /// Number of sales reps (the chain has 1436).
    #[arg(long, default_value_t = 1436)]
    pub reps: usize,
    /// Customers per rep; each customer belongs to one rep (one pair each).
    #[arg(long, default_value_t = 12)]
    pub customers_per_rep: usize,
    /// Days of activity to generate, ending at --end.
    #[arg(long, default_value_t = 14)]
    pub days: u32,
    /// End of the generated activity (RFC 3339; default 2026-11-01T00:00:00Z).
    #[arg(long)]
    pub end: Option<String>,
    /// Stop after this many lines (0 = no limit).
    #[arg(long, default_value_t = 0)]
    pub max_events: usize,
    /// Fraction of noise lines (malformed JSON, schema violations, unknown ids, duplicates,
    /// unknown assets); skewed device clocks and late arrivals scale with it.
    #[arg(long, default_value_t = 0.01)]
    pub noise: f64,
}

impl Default for GenArgs {
    fn default() -> Self {
        GenArgs {
            seed: 42,
            regions: 8,
            reps: 1436,
            customers_per_rep: 12,
            days: 14,
            end: None,
            max_events: 0,
            noise: 0.01,
        }
    }
}

/// A whole generated workload in memory.
pub struct Workload {
    pub reps_csv: String,
    pub customers_csv: String,
    pub regions_csv: String,
    /// JSON lines (noise included), in arrival order.
    pub events: Vec<String>,
}

impl Workload {
    /// Writes `events.jsonl` and `directory/{reps,customers,regions}.csv` into `dir`.
    pub fn write_to(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("events.jsonl");
        let file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = std::io::BufWriter::new(file);
        for line in &self.events {
            w.write_all(line.as_bytes())?;
            w.write_all(b"\n")?;
        }
        w.flush()
            .with_context(|| format!("writing {}", path.display()))?;
        self.directory().write_to(&dir.join("directory"))
    }

    pub fn directory(&self) -> Directory {
        Directory {
            reps_csv: self.reps_csv.clone(),
            customers_csv: self.customers_csv.clone(),
            regions_csv: self.regions_csv.clone(),
        }
    }
}

/// What a noise line is, and so what the pipeline should make of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Noise {
    /// Not JSON (truncated, trailing comma, single quotes): dead letter `invalid_json`.
    InvalidJson,
    /// JSON that breaks EVENTS.md §1–2: dead letter `schema_violation`.
    SchemaViolation,
    /// A valid event naming a rep the directory does not know: `unresolved_identity`.
    UnknownRep,
    /// An exact repeat of an earlier line (same `event_id`): dropped and counted.
    Duplicate,
    /// A pixel hit for an asset that was never sent: `unknown_asset` once the join gives up.
    UnknownAsset,
}

impl Noise {
    /// The dead-letter reason the pipeline should give the line (EVENTS.md §8), if any.
    pub fn dead_letter_reason(self) -> Option<&'static str> {
        match self {
            Noise::InvalidJson => Some("invalid_json"),
            Noise::SchemaViolation => Some("schema_violation"),
            Noise::UnknownRep => Some("unresolved_identity"),
            Noise::Duplicate => None,
            Noise::UnknownAsset => Some("unknown_asset"),
        }
    }
}

/// Generates the whole workload in memory.
pub fn generate(args: &GenArgs) -> anyhow::Result<Workload> {
    let mut events = Vec::new();
    let dir = generate_each(args, |line| events.push(line.to_owned()))?;
    Ok(Workload {
        reps_csv: dir.reps_csv,
        customers_csv: dir.customers_csv,
        regions_csv: dir.regions_csv,
        events,
    })
}

/// Streaming variant for big runs: calls `f` with each line in arrival order without keeping
/// them, and returns the directory.
pub fn generate_each(args: &GenArgs, mut f: impl FnMut(&str)) -> anyhow::Result<Directory> {
    run(args, &mut |line, _| {
        f(line);
        Ok(())
    })
}

/// A workload packed in one buffer (benches): the lines back to back, and where each ends.
pub struct Packed {
    pub data: Vec<u8>,
    pub ends: Vec<usize>,
    pub directory: std::sync::Arc<crate::directory::Directory>,
}

impl Packed {
    /// The lines as engine inputs, in arrival order.
    pub fn inputs(&self) -> Vec<crate::engine::Input<'_>> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                let raw = &self.data[start..end];
                start = end;
                crate::engine::Input::line(raw)
            })
            .collect()
    }
}

/// Generates a workload into one buffer, with its directory loaded.
pub fn generate_packed(args: &GenArgs) -> anyhow::Result<Packed> {
    let mut data: Vec<u8> = Vec::new();
    let mut ends: Vec<usize> = Vec::new();
    let csv = generate_each(args, |line| {
        data.extend_from_slice(line.as_bytes());
        ends.push(data.len());
    })?;
    let directory = std::sync::Arc::new(crate::directory::Directory::from_csv(
        &csv.reps_csv,
        &csv.customers_csv,
        &csv.regions_csv,
    )?);
    Ok(Packed {
        data,
        ends,
        directory,
    })
}

/// Like [`generate_each`], with each line's noise tag (`None` for a valid event), so tests can
/// predict dead letters and duplicates.
pub fn generate_each_tagged(
    args: &GenArgs,
    mut f: impl FnMut(&str, Option<Noise>),
) -> anyhow::Result<Directory> {
    run(args, &mut |line, noise| {
        f(line, noise);
        Ok(())
    })
}

/// Streams the workload to `dir/events.jsonl` and `dir/directory/*.csv` without holding the
/// events in memory. Returns the number of lines written.
pub fn write_streaming(args: &GenArgs, dir: &Path) -> anyhow::Result<u64> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("events.jsonl");
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut lines = 0u64;
    let directory = run(args, &mut |line, _| {
        w.write_all(line.as_bytes())?;
        w.write_all(b"\n")?;
        lines += 1;
        Ok(())
    })
    .with_context(|| format!("writing {}", path.display()))?;
    w.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    directory.write_to(&dir.join("directory"))?;
    Ok(lines)
}

/// Checked arguments.
struct Spec {
    end: i64,
    start: i64,
}

fn check(args: &GenArgs) -> anyhow::Result<Spec> {
    let mut problems = Vec::new();
    if args.regions == 0 || args.regions > 10_000 {
        problems.push(format!("--regions must be 1..=10000, got {}", args.regions));
    }
    if args.reps == 0 {
        problems.push("--reps must be at least 1".to_owned());
    }
    if args.customers_per_rep == 0 {
        problems.push("--customers-per-rep must be at least 1".to_owned());
    }
    match args.reps.checked_mul(args.customers_per_rep) {
        Some(p) if p < u32::MAX as usize => {}
        _ => problems.push("--reps x --customers-per-rep must stay below 2^32".to_owned()),
    }
    if args.days == 0 || args.days > 3660 {
        problems.push(format!("--days must be 1..=3660, got {}", args.days));
    }
    if !(0.0..=1.0).contains(&args.noise) {
        problems.push(format!("--noise must be within 0..=1, got {}", args.noise));
    }
    let end_text = args.end.as_deref().unwrap_or(DEFAULT_END);
    let end = match chrono::DateTime::parse_from_rfc3339(end_text) {
        Ok(t) => t.timestamp_millis(),
        Err(e) => {
            problems.push(format!("--end {end_text:?} is not RFC 3339: {e}"));
            0
        }
    };
    if !problems.is_empty() {
        bail!("invalid gen arguments: {}", problems.join("; "));
    }
    Ok(Spec {
        end,
        start: end - i64::from(args.days) * behaviour::DAY,
    })
}

fn run(args: &GenArgs, sink: &mut render::Sink<'_>) -> anyhow::Result<Directory> {
    let spec = check(args)?;
    // Independent streams, so that e.g. another --days leaves the directory unchanged.
    let stream =
        |n: u64| ChaCha8Rng::seed_from_u64(args.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let world = directory::World::build(
        args.regions,
        args.reps,
        args.customers_per_rep,
        &mut stream(1),
    );
    let planner = behaviour::Planner::new(
        &world,
        stream(2),
        (spec.start, spec.end),
        args.days,
        args.noise,
    );
    let renderer = render::Renderer::new(&world, stream(3), args.noise, args.max_events);
    emit_days(args.days, planner, renderer, sink)?;
    Ok(world.directory)
}

fn emit_days(
    days: u32,
    mut planner: behaviour::Planner<'_>,
    mut renderer: render::Renderer<'_>,
    sink: &mut render::Sink<'_>,
) -> anyhow::Result<()> {
    // The window may start mid-day, so it can touch one more local date than `days`.
    let local_days = days as usize + 1;
    for d in 0..local_days {
        planner.day(d as u32);
        // Everything decided later happens (and so arrives) on a later local day.
        let bucket = planner.take_bucket(d);
        renderer.emit_all(&bucket, sink)?;
        if renderer.done() {
            return Ok(());
        }
    }
    // Late arrivals and follow-ups of the last days.
    let mut d = local_days;
    while d < planner.bucket_count() && !renderer.done() {
        let bucket = planner.take_bucket(d);
        renderer.emit_all(&bucket, sink)?;
        d += 1;
    }
    renderer.finish(sink)
}
