//! Golden replay cases: every folder under `tests/cases/` is replayed through the real
//! `touchstream replay` binary and its four outputs are compared with expectations written by
//! hand from EVENTS.md. `TOUCHSTREAM_BLESS=1` rewrites the expectations from actual output.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A replay of a case with a few dozen lines takes well under a second; this only stops a hang.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest excerpt of one JSON line shown in a failure report (oversized raws are 70 kB).
const SHOW_CHARS: usize = 400;
/// Shared directory folder: not a case.
const DIRECTORY: &str = "directory";

/// How a file's lines are compared.
#[derive(Clone, Copy)]
enum Order {
    /// The engine may write records in any order: compare sorted multisets.
    Any,
    /// The file order is part of the contract (cdi: sorted by rep_id, customer_id).
    File,
}

struct OutputFile {
    name: &'static str,
    order: Order,
    /// Dead letters: `error` is free wording, compared only as "a non-empty string".
    free_error: bool,
    /// Compared only in cases that have its `expected_` file (cases about it).
    optional: bool,
}

const OUTPUTS: [OutputFile; 5] = [
    OutputFile {
        name: "alerts.jsonl",
        order: Order::Any,
        free_error: false,
        optional: false,
    },
    OutputFile {
        name: "sessions.jsonl",
        order: Order::Any,
        free_error: false,
        optional: false,
    },
    OutputFile {
        name: "cdi.jsonl",
        order: Order::File,
        free_error: false,
        optional: false,
    },
    OutputFile {
        name: "dead_letters.jsonl",
        order: Order::Any,
        free_error: true,
        optional: false,
    },
    OutputFile {
        name: "health.jsonl",
        order: Order::File,
        free_error: false,
        optional: true,
    },
];

struct Case {
    name: String,
    dir: PathBuf,
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cases_root() -> PathBuf {
    manifest_dir().join("tests").join("cases")
}

fn cases() -> Vec<Case> {
    let root = cases_root();
    let mut found: Vec<Case> = fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", root.display()))
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().is_dir() && entry.file_name() != DIRECTORY)
        .map(|entry| Case {
            name: entry.file_name().to_string_lossy().into_owned(),
            dir: entry.path(),
        })
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(!found.is_empty(), "no cases under {}", root.display());
    found
}

fn bless_mode() -> bool {
    std::env::var("TOUCHSTREAM_BLESS").is_ok_and(|v| v == "1")
}

/// Runs `touchstream replay` for `case`, writing its outputs to `out` (created here).
fn replay(case: &Case, out: &Path) -> Result<(), String> {
    let events = case.dir.join("events.jsonl");
    if !events.is_file() {
        return Err(format!("{} is missing", events.display()));
    }
    let pipeline = match case.dir.join("pipeline.toml") {
        own if own.is_file() => own,
        _ => manifest_dir().join("pipelines").join("default.toml"),
    };
    let directory = match case.dir.join(DIRECTORY) {
        own if own.is_dir() => own,
        _ => cases_root().join(DIRECTORY),
    };
    let extra = match fs::read_to_string(case.dir.join("args")) {
        Ok(text) => text.split_whitespace().map(str::to_owned).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("cannot read args: {e}")),
    };
    fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let log_path = out.with_extension("log");
    let log = fs::File::create(&log_path).map_err(|e| format!("cannot create log: {e}"))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cannot clone log: {e}"))?;

    let mut child = Command::new(env!("CARGO_BIN_EXE_touchstream"))
        .arg("replay")
        .arg("--pipeline")
        .arg(&pipeline)
        .arg("--input")
        .arg(&events)
        .arg("--out")
        .arg(out)
        .arg("--directory")
        .arg(&directory)
        .args(&extra)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("cannot start touchstream: {e}"))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > REPLAY_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("replay did not finish within {REPLAY_TIMEOUT:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for touchstream: {e}")),
        }
    };
    if status.success() {
        return Ok(());
    }
    let log_text = fs::read_to_string(&log_path).unwrap_or_default();
    let tail: Vec<&str> = log_text.lines().rev().take(30).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!(
        "touchstream replay {} failed ({status}); output tail:\n{}",
        extra.join(" "),
        tail.join("\n")
    ))
}

/// JSON with object keys sorted at every level, so equal values print equally whatever order
/// the engine wrote the keys in.
fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, String> =
                map.iter().map(|(k, v)| (k, canonical(v))).collect();
            let fields: Vec<String> = sorted
                .into_iter()
                .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(canonical).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

/// Parses a JSONL text into canonical lines; a dead letter's non-empty `error` becomes a marker.
fn records(text: &str, spec: &OutputFile) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut value: Value = serde_json::from_str(line)
            .map_err(|e| format!("line {} is not JSON ({e}): {}", i + 1, excerpt(line)))?;
        if spec.free_error
            && let Some(error) = value.get_mut("error")
            && error.as_str().is_some_and(|s| !s.is_empty())
        {
            *error = Value::String("<any non-empty string>".to_owned());
        }
        out.push(canonical(&value));
    }
    Ok(out)
}

fn excerpt(line: &str) -> String {
    if line.chars().count() <= SHOW_CHARS {
        return line.to_owned();
    }
    let cut: String = line.chars().take(SHOW_CHARS).collect();
    format!("{cut}... ({} bytes)", line.len())
}

/// Compares one output file; `None` when equal, else a readable diff.
fn compare(spec: &OutputFile, expected: &str, actual: &str) -> Option<String> {
    let expected = match records(expected, spec) {
        Ok(r) => r,
        Err(e) => return Some(format!("  expected_{}: {e}\n", spec.name)),
    };
    let actual = match records(actual, spec) {
        Ok(r) => r,
        Err(e) => return Some(format!("  {}: {e}\n", spec.name)),
    };
    let mut report = String::new();
    match spec.order {
        Order::Any => {
            let mut count: BTreeMap<&str, i64> = BTreeMap::new();
            for line in &expected {
                *count.entry(line).or_default() += 1;
            }
            for line in &actual {
                *count.entry(line).or_default() -= 1;
            }
            for (line, n) in &count {
                for _ in 0..n.abs() {
                    let side = if *n > 0 {
                        "- expected, not produced"
                    } else {
                        "+ produced, not expected"
                    };
                    let _ = writeln!(report, "  {side}: {}", excerpt(line));
                }
            }
        }
        Order::File => {
            for i in 0..expected.len().max(actual.len()) {
                let (e, a) = (expected.get(i), actual.get(i));
                if e == a {
                    continue;
                }
                let _ = writeln!(report, "  line {}:", i + 1);
                if let Some(e) = e {
                    let _ = writeln!(report, "  - expected: {}", excerpt(e));
                }
                if let Some(a) = a {
                    let _ = writeln!(report, "  + produced: {}", excerpt(a));
                }
            }
        }
    }
    (!report.is_empty()).then_some(report)
}

fn read_output(path: &Path) -> Result<String, String> {
    fs::read(path)
        .map_err(|e| format!("{} was not written: {e}", path.display()))
        .and_then(|bytes| {
            String::from_utf8(bytes).map_err(|e| format!("{} is not UTF-8: {e}", path.display()))
        })
}

/// Replays one case and returns its failure report (empty when it passes).
fn check_case(case: &Case, bless: bool) -> String {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let out = tmp.path().join("out");
    if let Err(e) = replay(case, &out) {
        return format!("  {e}\n");
    }
    let mut report = String::new();
    for spec in &OUTPUTS {
        let expected_path = case.dir.join(format!("expected_{}", spec.name));
        if spec.optional && !expected_path.exists() {
            continue;
        }
        let actual = match read_output(&out.join(spec.name)) {
            Ok(text) => text,
            Err(e) => {
                let _ = writeln!(report, "  {e}");
                continue;
            }
        };
        if bless {
            if let Err(e) = fs::write(&expected_path, &actual) {
                let _ = writeln!(report, "  cannot bless {}: {e}", expected_path.display());
            }
            continue;
        }
        let expected = match fs::read_to_string(&expected_path) {
            Ok(text) => text,
            Err(e) => {
                let _ = writeln!(report, "  {} is missing: {e}", expected_path.display());
                continue;
            }
        };
        if let Some(diff) = compare(spec, &expected, &actual) {
            let _ = writeln!(report, "  {}:", spec.name);
            report.push_str(&diff);
        }
    }
    report
}

#[test]
fn golden_cases() {
    let bless = bless_mode();
    let all = cases();
    let mut failures = String::new();
    let mut failed = 0;
    for case in &all {
        let report = check_case(case, bless);
        if !report.is_empty() {
            failed += 1;
            let _ = writeln!(
                failures,
                "=== {} ({})\n{report}",
                case.name,
                case.dir.display()
            );
        }
    }
    assert!(
        failed == 0,
        "{failed} of {} golden cases failed (`-` expected, `+` produced; \
         TOUCHSTREAM_BLESS=1 rewrites expectations after a deliberate change):\n\n{failures}",
        all.len()
    );
}

/// EVENTS.md §9: same input, same output, byte for byte.
#[test]
fn replay_is_deterministic() {
    let all = cases();
    let mut failures = String::new();
    for case in &all {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let (first, second) = (tmp.path().join("first"), tmp.path().join("second"));
        if let Err(e) = replay(case, &first).and_then(|()| replay(case, &second)) {
            let _ = writeln!(failures, "=== {}\n  {e}", case.name);
            continue;
        }
        for spec in &OUTPUTS {
            match (
                fs::read(first.join(spec.name)),
                fs::read(second.join(spec.name)),
            ) {
                (Ok(a), Ok(b)) if a == b => {}
                (Ok(_), Ok(_)) => {
                    let _ = writeln!(
                        failures,
                        "=== {}\n  {} differs between runs",
                        case.name, spec.name
                    );
                }
                (a, b) => {
                    let _ = writeln!(
                        failures,
                        "=== {}\n  {} missing (first run: {}, second run: {})",
                        case.name,
                        spec.name,
                        a.is_ok(),
                        b.is_ok()
                    );
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "replays differ between two runs:\n{failures}"
    );
}

/// The harness itself: comparison rules as the case README promises.
#[test]
fn comparison_rules() {
    let sessions = &OUTPUTS[1];
    let cdi = &OUTPUTS[2];
    let dead = &OUTPUTS[3];
    // Order-insensitive, key-order-insensitive, but multiplicity counts.
    assert!(
        compare(
            sessions,
            "{\"a\":1,\"b\":2}\n{\"c\":3}\n",
            "{\"c\":3}\n{\"b\":2,\"a\":1}\n"
        )
        .is_none()
    );
    assert!(compare(sessions, "{\"c\":3}\n{\"c\":3}\n", "{\"c\":3}\n").is_some());
    // cdi keeps file order.
    assert!(compare(cdi, "{\"r\":1}\n{\"r\":2}\n", "{\"r\":2}\n{\"r\":1}\n").is_some());
    // Dead letters: any non-empty error matches, an empty one does not, other fields exactly.
    let expected = "{\"reason\":\"invalid_json\",\"error\":\"x\",\"raw\":\"{\",\"at\":\"1970-01-01T00:00:00.000Z\"}\n";
    let other_words = "{\"reason\":\"invalid_json\",\"error\":\"EOF\",\"raw\":\"{\",\"at\":\"1970-01-01T00:00:00.000Z\"}\n";
    let empty = "{\"reason\":\"invalid_json\",\"error\":\"\",\"raw\":\"{\",\"at\":\"1970-01-01T00:00:00.000Z\"}\n";
    let other_raw = "{\"reason\":\"invalid_json\",\"error\":\"x\",\"raw\":\"[\",\"at\":\"1970-01-01T00:00:00.000Z\"}\n";
    assert!(compare(dead, expected, other_words).is_none());
    assert!(compare(dead, expected, empty).is_some());
    assert!(compare(dead, expected, other_raw).is_some());
    // Numbers compare as JSON values: 3 and 3.0 are different records.
    assert!(compare(cdi, "{\"cdi\":3}\n", "{\"cdi\":3.0}\n").is_some());
}
