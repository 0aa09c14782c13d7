//! `touchstream replay` (EVENTS.md §9): the live engine over a file, event time only. One line
//! is one input message; fixed-size micro-batches keep the output independent of the machine,
//! so the same input gives the same bytes.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::config::Pipeline;
use crate::directory::Directory;
use crate::engine::{ClockMode, Engine, Input, Outputs, Totals};
use crate::event::{Millis, parse_time};

#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Pipeline file.
    #[arg(long)]
    pub pipeline: PathBuf,
    /// Input events, one JSON object per line.
    #[arg(long)]
    pub input: PathBuf,
    /// Output folder (created): alerts.jsonl, sessions.jsonl, cdi.jsonl, dead_letters.jsonl,
    /// and health.jsonl (every rep's process-health figures as of the final watermark).
    #[arg(long)]
    pub out: PathBuf,
    /// Move the watermark at least this far at the end (RFC 3339 or epoch ms), firing what is due.
    #[arg(long, value_parser = parse_cli_time)]
    pub until: Option<Millis>,
    /// Pipeline clock for the future-timestamp check (default: the wall clock).
    #[arg(long, value_parser = parse_cli_time)]
    pub now: Option<Millis>,
    /// Directory folder (overrides the pipeline file's `directory.path`).
    #[arg(long)]
    pub directory: Option<PathBuf>,
    /// Lines per micro-batch.
    #[arg(long, default_value_t = 4096)]
    pub batch_lines: usize,
}

/// Parses an RFC 3339 time with offset, or integer epoch milliseconds.
pub fn parse_cli_time(s: &str) -> Result<Millis, String> {
    s.trim()
        .parse::<Millis>()
        .ok()
        .or_else(|| parse_time(s.trim()))
        .ok_or_else(|| format!("`{s}` is neither RFC 3339 with an offset nor epoch milliseconds"))
}

/// Loads a pipeline and its directory (`--directory` wins over the file's `directory.path`).
pub fn load(
    pipeline: &Path,
    directory: Option<&Path>,
) -> anyhow::Result<(Arc<Pipeline>, Arc<Directory>)> {
    let p = Pipeline::load(pipeline)?;
    let dir_path = directory.map_or_else(|| p.directory_path(), Path::to_path_buf);
    let dir = Directory::load(&dir_path)
        .with_context(|| format!("loading the directory from {}", dir_path.display()))?;
    Ok((Arc::new(p), Arc::new(dir)))
}

struct Writers {
    alerts: BufWriter<File>,
    sessions: BufWriter<File>,
    dead: BufWriter<File>,
}

impl Writers {
    fn write(&mut self, o: &Outputs) -> std::io::Result<()> {
        for a in &o.alerts {
            writeln!(self.alerts, "{}", a.to_json())?;
        }
        for s in &o.sessions {
            writeln!(self.sessions, "{}", s.to_json())?;
        }
        for d in &o.dead_letters {
            writeln!(self.dead, "{}", d.to_json())?;
        }
        Ok(())
    }
}

/// Runs a replay and writes its four outputs; returns the engine's totals.
pub fn replay(args: &ReplayArgs, wall_now: Millis) -> anyhow::Result<Totals> {
    let (p, dir) = load(&args.pipeline, args.directory.as_deref())?;
    let data =
        std::fs::read(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let create = |name: &str| -> anyhow::Result<BufWriter<File>> {
        let path = args.out.join(name);
        Ok(BufWriter::new(
            File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        ))
    };
    let mut w = Writers {
        alerts: create("alerts.jsonl")?,
        sessions: create("sessions.jsonl")?,
        dead: create("dead_letters.jsonl")?,
    };
    let mut engine = Engine::new(p, dir, ClockMode::Replay)?;
    let now = args.now.unwrap_or(wall_now);
    let batch_lines = args.batch_lines.max(1);
    let mut batch: Vec<Input<'_>> = Vec::with_capacity(batch_lines);
    for line in lines(&data) {
        batch.push(Input::line(line));
        if batch.len() == batch_lines {
            w.write(&engine.process(&batch, now))?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        w.write(&engine.process(&batch, now))?;
    }
    w.write(&engine.finish(args.until, now))?;
    let mut cdi = create("cdi.jsonl")?;
    for c in engine.cdi() {
        writeln!(cdi, "{}", c.to_json())?;
    }
    cdi.flush()?;
    let mut health = create("health.jsonl")?;
    for h in engine.health() {
        writeln!(
            health,
            "{}",
            h.to_json(engine.directory(), &engine.pipeline().health)
        )?;
    }
    health.flush()?;
    w.alerts.flush()?;
    w.sessions.flush()?;
    w.dead.flush()?;
    Ok(engine.totals().clone())
}

/// Lines of a JSONL buffer without their `\n` (and a `\r` before it); blank lines carry no
/// event and are skipped.
pub fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
}
