//! Generator tests. Expectations come from EVENTS.md (formats, headers, the headline rule's
//! definition of a counted open); lines are re-read here with serde_json and chrono, apart from
//! the generator's own formatting code.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::*;
use crate::event::{RejectReason, decode};

const DAY_MS: i64 = 86_400_000;

fn small(seed: u64, noise: f64) -> GenArgs {
    GenArgs {
        seed,
        regions: 4,
        reps: 60,
        customers_per_rep: 5,
        days: 14,
        end: None,
        max_events: 0,
        noise,
    }
}

fn tagged(args: &GenArgs) -> (Directory, Vec<(String, Option<Noise>)>) {
    let mut lines = Vec::new();
    let dir =
        generate_each_tagged(args, |l, n| lines.push((l.to_owned(), n))).expect("valid arguments");
    (dir, lines)
}

/// A time field as epoch ms: integer, or RFC 3339 string (EVENTS.md §1).
fn time_of(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_millis()),
        _ => None,
    }
}

/// Effective time per EVENTS.md §1.
fn effective(v: &Value) -> i64 {
    let ts = time_of(&v["ts"]).expect("ts");
    match (v.get("sent_at"), v.get("received_at")) {
        (Some(s), Some(r)) => {
            time_of(r).expect("received_at") - (time_of(s).expect("sent_at") - ts)
        }
        _ => ts,
    }
}

fn str_field<'a>(v: &'a Value, name: &str) -> &'a str {
    v[name].as_str().unwrap_or("")
}

/// The first column of each data row of a CSV.
fn ids(csv: &str) -> Vec<String> {
    csv.lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn same_seed_gives_identical_output() {
    let a = tagged(&small(7, 0.02));
    let b = tagged(&small(7, 0.02));
    assert_eq!(a.0, b.0);
    assert_eq!(a.1, b.1);
    assert!(a.1.len() > 1000, "only {} lines", a.1.len());
}

#[test]
fn different_seeds_differ() {
    let a = generate(&small(1, 0.01)).expect("gen");
    let b = generate(&small(2, 0.01)).expect("gen");
    assert_ne!(a.events, b.events);
    assert_ne!(a.reps_csv, b.reps_csv);
}

#[test]
fn directory_has_the_contract_headers_and_the_requested_sizes() {
    let w = generate(&small(3, 0.0)).expect("gen");
    // Headers of EVENTS.md §3, verbatim.
    assert_eq!(
        w.reps_csv.lines().next(),
        Some("rep_id,name,region,wecom_userid,dingtalk_staff_id")
    );
    assert_eq!(
        w.customers_csv.lines().next(),
        Some("customer_id,name,wecom_external_userid,tier")
    );
    assert_eq!(w.regions_csv.lines().next(), Some("region,director,routes"));

    let regions: Vec<Vec<&str>> = w
        .regions_csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(regions.len(), 4);
    assert_eq!(regions[0], ["east", "Chen Jie", ""]);
    assert_eq!(regions[1][0], "south");
    let region_names: BTreeSet<&str> = regions.iter().map(|r| r[0]).collect();

    let reps: Vec<Vec<&str>> = w
        .reps_csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(reps.len(), 60);
    assert_eq!(reps[0][0], "r0001");
    assert_eq!(reps[59][0], "r0060");
    for r in &reps {
        assert_eq!(r.len(), 5, "{r:?}");
        assert!(region_names.contains(r[2]), "{r:?}");
        assert_eq!(r[3], format!("wx_{}", r[0]));
        assert_eq!(r[4], format!("dt_{}", r[0]));
    }
    let used: BTreeSet<&str> = reps.iter().map(|r| r[2]).collect();
    assert_eq!(used, region_names, "every region has reps");

    let customers: Vec<Vec<&str>> = w
        .customers_csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(customers.len(), 300);
    assert_eq!(customers[0][0], "c000001");
    assert_eq!(customers[299][0], "c000300");
    for c in &customers {
        assert_eq!(c.len(), 4, "{c:?}");
        assert_eq!(c[2], format!("wo_{}", c[0]));
        assert!(["A", "B", "C"].contains(&c[3]), "{c:?}");
    }
}

#[test]
fn valid_lines_decode_and_noise_lines_are_what_their_tag_says() {
    let (dir, lines) = tagged(&small(11, 0.05));
    let reps: BTreeSet<String> = ids(&dir.reps_csv).into_iter().collect();
    let mut sent_assets = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut per_tag: BTreeMap<String, usize> = BTreeMap::new();
    for (line, tag) in &lines {
        *per_tag.entry(format!("{tag:?}")).or_default() += 1;
        let decoded = decode(line.as_bytes());
        match tag {
            None => {
                let ev = decoded.unwrap_or_else(|r| panic!("{r:?} for valid line {line}"));
                let v: Value = serde_json::from_str(line).expect("json");
                if let Some(a) = v.get("asset_id")
                    && v["kind"] == "crm.action"
                {
                    sent_assets.insert(a.as_str().unwrap_or("").to_owned());
                }
                assert!(seen.insert(ev.event_id.clone()), "event_id reused: {line}");
            }
            Some(Noise::InvalidJson) => {
                assert!(serde_json::from_str::<Value>(line).is_err(), "{line}");
                let r = decoded.expect_err("invalid json must be rejected");
                assert_eq!(r.reason, RejectReason::InvalidJson, "{line}");
            }
            Some(Noise::SchemaViolation) => {
                assert!(serde_json::from_str::<Value>(line).is_ok(), "{line}");
                let r = decoded.expect_err("schema violation must be rejected");
                assert_eq!(r.reason, RejectReason::SchemaViolation, "{line}");
            }
            Some(Noise::UnknownRep) => {
                decoded.unwrap_or_else(|r| panic!("{r:?} for {line}"));
                let v: Value = serde_json::from_str(line).expect("json");
                let rep = ["rep_id", "wecom_userid", "staff_id"]
                    .iter()
                    .find_map(|f| v.get(*f).and_then(Value::as_str))
                    .expect("a rep id field");
                let rep = rep.trim_start_matches("wx_").trim_start_matches("dt_");
                assert!(!reps.contains(rep), "{rep} is in the directory");
            }
            Some(Noise::Duplicate) => {
                let ev = decoded.unwrap_or_else(|r| panic!("{r:?} for {line}"));
                assert!(
                    seen.contains(&ev.event_id),
                    "duplicate before its original: {line}"
                );
                assert!(
                    lines.iter().any(|(l, t)| t.is_none() && l == line),
                    "not an exact copy: {line}"
                );
            }
            Some(Noise::UnknownAsset) => {
                decoded.unwrap_or_else(|r| panic!("{r:?} for {line}"));
            }
        }
    }
    for (line, tag) in &lines {
        if *tag == Some(Noise::UnknownAsset) {
            let v: Value = serde_json::from_str(line).expect("json");
            assert!(!sent_assets.contains(str_field(&v, "asset_id")), "{line}");
        }
    }
    let noise: usize = lines.iter().filter(|(_, t)| t.is_some()).count();
    let share = noise as f64 / lines.len() as f64;
    assert!(
        (0.03..0.07).contains(&share),
        "noise share {share}, {per_tag:?}"
    );
    for tag in [
        "InvalidJson",
        "SchemaViolation",
        "UnknownRep",
        "Duplicate",
        "UnknownAsset",
    ] {
        assert!(
            per_tag.contains_key(&format!("Some({tag})")),
            "no {tag}: {per_tag:?}"
        );
    }
}

#[test]
fn no_noise_means_no_noise_lines_and_no_late_arrivals() {
    let (_, lines) = tagged(&small(5, 0.0));
    let mut max_eff = i64::MIN;
    for (line, tag) in &lines {
        assert!(tag.is_none(), "{line}");
        let v: Value = serde_json::from_str(line).expect("json");
        let eff = effective(&v);
        // Jitter only: never more than two minutes behind the greatest effective time seen,
        // well inside the default allowed lateness of 5 min (EVENTS.md §7).
        assert!(
            eff >= max_eff.saturating_sub(120_000),
            "late by {} ms: {line}",
            max_eff - eff
        );
        max_eff = max_eff.max(eff);
    }
}

#[test]
fn ids_in_valid_lines_resolve_through_the_directory() {
    let (dir, lines) = tagged(&small(13, 0.02));
    let reps: BTreeSet<String> = ids(&dir.reps_csv).into_iter().collect();
    let customers: BTreeSet<String> = ids(&dir.customers_csv).into_iter().collect();
    let start = chrono::DateTime::parse_from_rfc3339("2026-10-18T00:00:00Z")
        .expect("time")
        .timestamp_millis();
    let end = start + 14 * DAY_MS;
    for (line, _) in lines.iter().filter(|(_, t)| t.is_none()) {
        let v: Value = serde_json::from_str(line).expect("json");
        let eff = effective(&v);
        assert!(
            (start..end).contains(&eff),
            "outside the 14 days before --end: {line}"
        );
        for (field, prefix, set) in [
            ("rep_id", "", &reps),
            ("wecom_userid", "wx_", &reps),
            ("staff_id", "dt_", &reps),
            ("customer_id", "", &customers),
            ("external_userid", "wo_", &customers),
        ] {
            if let Some(id) = v.get(field).and_then(Value::as_str) {
                let id = id
                    .strip_prefix(prefix)
                    .unwrap_or_else(|| panic!("{field}: {line}"));
                assert!(set.contains(id), "{field} {id} unknown: {line}");
            }
        }
        // A customer belongs to one rep: c000001..c000005 to r0001, and so on.
        let rep = v
            .get("rep_id")
            .or(v.get("wecom_userid"))
            .and_then(Value::as_str)
            .map(|r| r.trim_start_matches("wx_"));
        let customer = v
            .get("customer_id")
            .or(v.get("external_userid"))
            .and_then(Value::as_str)
            .map(|c| c.trim_start_matches("wo_"));
        if let (Some(r), Some(c)) = (rep, customer) {
            let r: usize = r[1..].parse().expect("rep number");
            let c: usize = c[1..].parse().expect("customer number");
            assert_eq!((c - 1) / 5 + 1, r, "{line}");
        }
    }
}

/// EVENTS.md §4: counted opens of an asset sent at `t0`.
fn counted_opens(t0: i64, mut opens: Vec<(i64, String)>) -> Vec<i64> {
    opens.sort();
    let mut counted: Vec<i64> = Vec::new();
    for (t, ua) in opens {
        let proxy = ["GoogleImageProxy", "YahooMailProxy", "Apple-Mail-Privacy"]
            .iter()
            .any(|p| ua.contains(p));
        let reload = counted.last().is_some_and(|last| t - last < 60_000);
        if t >= t0 + 10_000 && !proxy && !reload {
            counted.push(t);
        }
    }
    counted
}

/// What the headline rule (EVENTS.md §5) should decide for the quotes of a workload.
#[derive(Debug, Default)]
struct Headline {
    quotes: usize,
    /// >= 3 counted opens, no contract event of the pair in [t0, due].
    fires: usize,
    /// >= 3 counted opens and a contract in time.
    saved: usize,
    /// Fires when the watermark reaches due, then a contract in [t0, due] arrives late.
    resolved_late: usize,
    /// Not decidable: due after the last effective time.
    open_at_end: usize,
    proxy_opens: usize,
}

fn headline(lines: &[(String, Option<Noise>)]) -> Headline {
    // asset -> (t0, rep, customer)
    let mut quotes: BTreeMap<String, (i64, String, String)> = BTreeMap::new();
    let mut opens: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    // pair -> (effective time, arrival index) of contract events
    let mut contracts: BTreeMap<(String, String), Vec<(i64, usize)>> = BTreeMap::new();
    // watermark after each arrival: max effective time - 5 min allowed lateness (§7)
    let mut watermarks = Vec::new();
    let mut max_eff = i64::MIN;
    let mut out = Headline::default();
    for (idx, (line, _)) in lines.iter().enumerate().filter(|(_, (_, t))| t.is_none()) {
        let v: Value = serde_json::from_str(line).expect("json");
        let eff = effective(&v);
        max_eff = max_eff.max(eff);
        watermarks.push((idx, max_eff - 5 * 60_000));
        match str_field(&v, "kind") {
            "crm.action" => {
                let pair = (
                    str_field(&v, "rep_id").to_owned(),
                    str_field(&v, "customer_id").to_owned(),
                );
                match str_field(&v, "action") {
                    "quote_sent" => {
                        quotes.insert(str_field(&v, "asset_id").to_owned(), (eff, pair.0, pair.1));
                    }
                    "contract_sent" => contracts.entry(pair).or_default().push((eff, idx)),
                    _ => {}
                }
            }
            "dingtalk.approval"
                if str_field(&v, "type") == "start"
                    && str_field(&v, "process_code") == "PROC-CONTRACT" =>
            {
                let rep = str_field(&v, "staff_id")
                    .trim_start_matches("dt_")
                    .to_owned();
                let customer = str_field(&v, "customer_id").to_owned();
                contracts
                    .entry((rep, customer))
                    .or_default()
                    .push((eff, idx));
            }
            "pixel.hit" if str_field(&v, "hit") == "open" => {
                let ua = str_field(&v, "ua").to_owned();
                if ua.contains("GoogleImageProxy") || ua.contains("Apple-Mail-Privacy") {
                    out.proxy_opens += 1;
                }
                opens
                    .entry(str_field(&v, "asset_id").to_owned())
                    .or_default()
                    .push((eff, ua));
            }
            _ => {}
        }
    }
    out.quotes = quotes.len();
    for (asset, (t0, rep, customer)) in &quotes {
        let counted = counted_opens(*t0, opens.get(asset).cloned().unwrap_or_default());
        if counted.len() < 3 {
            continue;
        }
        assert!(counted.windows(2).all(|w| w[1] - w[0] > 60_000));
        let due = (t0 + 5 * DAY_MS).max(counted[2]);
        if due > max_eff {
            out.open_at_end += 1;
            continue;
        }
        let fired_at_idx = watermarks
            .iter()
            .find(|(_, wm)| *wm >= due)
            .map_or(usize::MAX, |(i, _)| *i);
        let pair = (rep.clone(), customer.clone());
        let in_time: Vec<usize> = contracts
            .get(&pair)
            .map(|cs| {
                cs.iter()
                    .filter(|(t, _)| (*t0..=due).contains(t))
                    .map(|(_, i)| *i)
                    .collect()
            })
            .unwrap_or_default();
        if in_time.is_empty() {
            out.fires += 1;
        } else if in_time.iter().all(|i| *i > fired_at_idx) {
            out.resolved_late += 1;
        } else {
            out.saved += 1;
        }
    }
    out
}

#[test]
fn some_hot_quotes_get_no_contract_in_time_and_some_do() {
    let args = GenArgs {
        reps: 200,
        customers_per_rep: 10,
        ..small(21, 0.01)
    };
    let (_, lines) = tagged(&args);
    let h = headline(&lines);
    assert!(h.fires >= 1, "no hot quote without contract: {h:?}");
    assert!(h.saved >= 1, "no hot quote with a contract in time: {h:?}");
    assert!(
        h.resolved_late >= 1,
        "no contract arriving after the alert: {h:?}"
    );
    assert!(h.proxy_opens >= 1, "no proxy opens: {h:?}");
    // A realistic share: alerts for some quotes, not for most.
    assert!(h.fires * 4 < h.quotes && h.fires * 100 > h.quotes, "{h:?}");
}

#[test]
fn lines_show_the_variety_the_contract_allows() {
    let (_, lines) = tagged(&small(17, 0.02));
    let mut kinds = BTreeSet::new();
    let mut actions = BTreeSet::new();
    let (mut epoch, mut local, mut skewed, mut attributed_web, mut late) = (0, 0, 0, 0, 0);
    let mut max_eff = i64::MIN;
    for (line, _) in lines.iter().filter(|(_, t)| t.is_none()) {
        let v: Value = serde_json::from_str(line).expect("json");
        kinds.insert(str_field(&v, "kind").to_owned());
        if v["kind"] == "crm.action" {
            actions.insert(str_field(&v, "action").to_owned());
        }
        match &v["ts"] {
            Value::Number(_) => epoch += 1,
            Value::String(s) if s.ends_with("+08:00") => local += 1,
            _ => {}
        }
        if let (Some(s), Some(r)) = (v.get("sent_at"), v.get("received_at")) {
            // received_at - sent_at = minus the device clock's error (plus nothing else).
            let drift = time_of(r).expect("received_at") - time_of(s).expect("sent_at");
            if drift.abs() >= 2 * 60_000 {
                skewed += 1;
            }
        }
        if str_field(&v, "url").contains("/products/")
            && str_field(&v, "url").contains("utm_content=a-")
        {
            attributed_web += 1;
        }
        let eff = effective(&v);
        if eff < max_eff.saturating_sub(5 * 60_000) {
            late += 1;
        }
        max_eff = max_eff.max(eff);
    }
    let all_kinds = [
        "crm.action",
        "dingtalk.approval",
        "pixel.hit",
        "web.hit",
        "wecom.message",
        "wecom.presence",
    ];
    assert_eq!(kinds, all_kinds.iter().map(|k| k.to_string()).collect());
    for a in [
        "lead_assigned",
        "quote_sent",
        "proposal_sent",
        "case_sent",
        "contract_sent",
        "call",
        "visit",
        "email",
        "message",
        "meeting",
        "deal_won",
        "deal_lost",
    ] {
        assert!(actions.contains(a), "no {a}");
    }
    let n = lines.len();
    assert!(local > n / 2, "mostly +08:00: {local} of {n}");
    assert!(epoch > n / 50, "some epoch ms: {epoch} of {n}");
    assert!(
        skewed > 0 && attributed_web > 0 && late > 0,
        "{skewed} {attributed_web} {late}"
    );
}

#[test]
fn max_events_stops_the_stream() {
    let mut args = small(9, 0.05);
    args.max_events = 777;
    let w = generate(&args).expect("gen");
    assert_eq!(w.events.len(), 777);
    let full = generate(&small(9, 0.05)).expect("gen");
    assert_eq!(w.events[..], full.events[..777]);
}

#[test]
fn bad_arguments_are_reported_together() {
    let mut args = small(1, 1.5);
    args.reps = 0;
    args.end = Some("yesterday".to_owned());
    let err = generate(&args).err().expect("must fail").to_string();
    assert!(
        err.contains("--reps") && err.contains("--noise") && err.contains("--end"),
        "{err}"
    );
}

#[test]
fn end_moves_the_window() {
    let mut args = small(4, 0.0);
    args.days = 2;
    args.end = Some("2027-03-10T12:00:00+08:00".to_owned());
    let w = generate(&args).expect("gen");
    let end = chrono::DateTime::parse_from_rfc3339("2027-03-10T12:00:00+08:00")
        .expect("time")
        .timestamp_millis();
    assert!(!w.events.is_empty());
    for line in &w.events {
        let v: Value = serde_json::from_str(line).expect("json");
        let eff = effective(&v);
        assert!((end - 2 * DAY_MS..end).contains(&eff), "{line}");
    }
}

#[test]
fn files_written_streaming_equal_the_in_memory_workload() {
    let args = small(8, 0.01);
    let w = generate(&args).expect("gen");
    let a = tempfile::tempdir().expect("tmp");
    let b = tempfile::tempdir().expect("tmp");
    w.write_to(a.path()).expect("write");
    let n = write_streaming(&args, b.path()).expect("write");
    assert_eq!(n as usize, w.events.len());
    for f in [
        "events.jsonl",
        "directory/reps.csv",
        "directory/customers.csv",
        "directory/regions.csv",
    ] {
        let x = std::fs::read(a.path().join(f)).expect("read");
        let y = std::fs::read(b.path().join(f)).expect("read");
        assert_eq!(x, y, "{f}");
    }
    let text = std::fs::read_to_string(a.path().join("events.jsonl")).expect("read");
    assert_eq!(text.lines().count(), w.events.len());
}

/// The event mix for the default arguments, and generation speed at bench scale.
/// `cargo test --release gen::tests::event_mix -- --ignored --nocapture`
#[test]
#[ignore = "prints a report; slow in debug builds"]
fn event_mix_report() {
    let args = GenArgs::default();
    let t = std::time::Instant::now();
    let mut mix: BTreeMap<String, usize> = BTreeMap::new();
    let mut total = 0usize;
    let mut bytes = 0usize;
    generate_each_tagged(&args, |line, tag| {
        total += 1;
        bytes += line.len() + 1;
        let key = match tag {
            Some(n) => format!("noise {n:?}"),
            None => {
                let v: Value = serde_json::from_str(line).expect("json");
                match str_field(&v, "kind") {
                    "crm.action" => format!("crm.action {}", str_field(&v, "action")),
                    "pixel.hit" => format!("pixel.hit {}", str_field(&v, "hit")),
                    "dingtalk.approval" => format!(
                        "dingtalk.approval {} {}",
                        str_field(&v, "process_code"),
                        str_field(&v, "type")
                    ),
                    "wecom.message" => format!("wecom.message {}", str_field(&v, "direction")),
                    "wecom.presence" => format!("wecom.presence {}", str_field(&v, "status")),
                    "web.hit" if str_field(&v, "url").contains("utm_content=") => {
                        "web.hit attributed".to_owned()
                    }
                    k => k.to_owned(),
                }
            }
        };
        *mix.entry(key).or_default() += 1;
    })
    .expect("gen");
    println!(
        "default args: {total} lines, {bytes} bytes, {:?} (incl. JSON re-parse)",
        t.elapsed()
    );
    let (_, lines) = tagged(&args);
    println!("headline rule: {:?}", headline(&lines));
    for (k, n) in &mix {
        println!("{k:40} {n:>9}");
    }

    let big = GenArgs {
        reps: 20_000,
        customers_per_rep: 50,
        days: 1,
        max_events: 1_000_000,
        ..GenArgs::default()
    };
    let t = std::time::Instant::now();
    let mut n = 0usize;
    generate_each(&big, |_| n += 1).expect("gen");
    println!("1M pairs, first 1M lines: {n} lines in {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let mut n = 0usize;
    generate_each(
        &GenArgs {
            max_events: 0,
            days: 14,
            ..big
        },
        |_| n += 1,
    )
    .expect("gen");
    println!("1M pairs, 14 days: {n} lines in {:?}", t.elapsed());
}
