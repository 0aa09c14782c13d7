//! `touchstream demo`: a private nats-server (unless `--nats`), a generated workload ending now,
//! `run` in-process on it, the events published at a steady rate, and every alert printed the
//! way a sales manager would read it. Also `publish_lines`, shared with `gen --publish`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use futures::StreamExt as _;
use serde_json::Value;

use super::nats_server::{NatsServer, ScratchDir};
use super::run::{RunArgs, run_with};
use super::{Stop, shutdown_signal};
use crate::config::Pipeline;
use crate::directory::Directory;
use crate::event::format_time;
use crate::r#gen::{GenArgs, generate};
use crate::source::jetstream::ensure_input_stream;
use crate::wall_clock_ms;

/// The pipeline the demo runs: the shipped default, built in so the demo works from any folder.
const DEFAULT_PIPELINE: &str = include_str!("../../pipelines/default.toml");
/// Subject of input lines that are not JSON objects with a usable `kind`.
const UNKNOWN_SUBJECT: &str = "touch.in.unknown";

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Use this NATS server instead of starting a private one.
    #[arg(long)]
    pub nats: Option<String>,
    /// Workload seed (same seed, same events).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Number of sales reps in the generated workload.
    #[arg(long, default_value_t = 200)]
    pub reps: usize,
    /// Where to serve Prometheus /metrics.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// Stop after this many seconds (0 = run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub duration_secs: u64,
    /// Publish rate, events per second (0 = as fast as possible).
    #[arg(long, default_value_t = 20000)]
    pub rate: u64,
}

pub async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let scratch = ScratchDir::new("demo")?;
    let server = match &args.nats {
        Some(_) => None,
        None => Some(NatsServer::start().await?),
    };
    let url = match (&args.nats, &server) {
        (Some(url), _) => url.clone(),
        (None, Some(s)) => s.url(),
        (None, None) => anyhow::bail!("no NATS server"),
    };
    if server.is_some() {
        println!("nats-server (private, JetStream) at {url}");
    }

    // The workload ends now, so its five-day deadlines fall in the past and fire as it streams.
    let gen_args = GenArgs {
        seed: args.seed,
        reps: args.reps,
        end: Some(format_time(wall_clock_ms())),
        ..GenArgs::default()
    };
    let workload = tokio::task::spawn_blocking(move || generate(&gen_args))
        .await
        .context("generator task")??;
    workload.write_to(scratch.path())?;
    let pipeline_path = scratch.path().join("pipeline.toml");
    std::fs::write(&pipeline_path, DEFAULT_PIPELINE)
        .with_context(|| format!("writing {}", pipeline_path.display()))?;
    let directory_path = scratch.path().join("directory");
    let names = Names::load(&directory_path)?;
    let pipeline = Pipeline::load(&pipeline_path)?;
    println!(
        "workload: {} events, {} reps (seed {}), in {}",
        workload.events.len(),
        args.reps,
        args.seed,
        scratch.path().display()
    );

    // A quiet connection (no disconnect warnings when the private server goes at the end).
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(url.as_str())
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let js = jetstream::new(client.clone());
    // `run` creates it too; the publisher may get there first.
    ensure_input_stream(&js, &pipeline).await?;
    let mut alerts = client.subscribe("touch.alerts.>").await?;

    let stop = Stop::new();
    {
        let stop = stop.clone();
        let duration = args.duration_secs;
        tokio::spawn(async move {
            if duration == 0 {
                shutdown_signal().await;
            } else {
                tokio::select! {
                    _ = shutdown_signal() => {}
                    _ = tokio::time::sleep(Duration::from_secs(duration)) => {}
                }
            }
            stop.request();
        });
    }

    let run_args = RunArgs {
        pipeline: pipeline_path,
        nats: url,
        directory: Some(directory_path),
        metrics_addr: args.metrics_addr,
    };
    let running = async {
        let result = run_with(run_args, stop.wait(), |addr| {
            println!("metrics: http://{addr}/metrics   (Ctrl-C to stop)");
        })
        .await;
        // A run that fails stops the demo too.
        stop.request();
        result
    };
    let publishing = async {
        tokio::select! {
            r = publish_lines(&js, &workload.events, args.rate) => match r {
                Ok(n) => println!("published {n} events to touch.in.<kind>"),
                Err(e) => eprintln!("publishing stopped: {e:#}"),
            },
            _ = stop.wait() => {}
        }
    };
    let printing = async {
        let (mut firing, mut resolved) = (0u64, 0u64);
        loop {
            tokio::select! {
                msg = alerts.next() => match msg {
                    Some(msg) => match serde_json::from_slice::<Value>(&msg.payload) {
                        Ok(alert) => {
                            if alert["status"] == "resolved" { resolved += 1 } else { firing += 1 }
                            println!("{}", describe_alert(&alert, &names));
                        }
                        Err(e) => eprintln!("unreadable alert on {}: {e}", msg.subject),
                    },
                    None => break,
                },
                _ = stop.wait() => break,
            }
        }
        (firing, resolved)
    };
    let (result, (), (firing, resolved)) = tokio::join!(running, publishing, printing);
    println!("{firing} alert(s) fired, {resolved} resolved");
    drop(alerts);
    super::close(&client).await;
    drop(server);
    result
}

/// Publishes JSON lines to `touch.in.<kind>` with `Nats-Msg-Id` = `event_id`, at `rate` lines
/// per second (0 = as fast as acks come back), awaiting JetStream's acks in chunks. Lines that
/// are not JSON objects with a plain `kind` go to `touch.in.unknown` (the pipeline dead-letters
/// them); blank lines are skipped. Returns the number of lines published.
pub async fn publish_lines<I, S>(
    js: &jetstream::Context,
    lines: I,
    rate: u64,
) -> anyhow::Result<u64>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    // Small chunks at low rates keep the pacing smooth; 1 000 is where awaiting acks stops
    // costing throughput (TECH-NOTES).
    let chunk_size = if rate == 0 {
        1000
    } else {
        usize::try_from(rate / 20).unwrap_or(1000).clamp(1, 1000)
    };
    let started = Instant::now();
    let mut sent = 0u64;
    let mut lines = lines
        .into_iter()
        .filter(|l| !l.as_ref().trim().is_empty())
        .peekable();
    while lines.peek().is_some() {
        let mut acks = Vec::with_capacity(chunk_size);
        for line in lines.by_ref().take(chunk_size) {
            let line = line.as_ref();
            let (subject, msg_id) = route(line);
            let mut msg = PublishMessage::build().payload(Bytes::copy_from_slice(line.as_bytes()));
            if let Some(id) = msg_id {
                msg = msg.message_id(id);
            }
            acks.push(
                js.send_publish(subject, msg)
                    .await
                    .context("publishing an input event")?,
            );
        }
        for ack in acks {
            ack.await.context(
                "input event not stored (is the input stream there? start `touchstream run` first)",
            )?;
            sent += 1;
        }
        if rate > 0 {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(ahead).await;
            }
        }
    }
    Ok(sent)
}

/// Subject and `Nats-Msg-Id` of an input line.
fn route(line: &str) -> (String, Option<String>) {
    let Ok(Value::Object(v)) = serde_json::from_str::<Value>(line) else {
        return (UNKNOWN_SUBJECT.into(), None);
    };
    let subject = match v.get("kind").and_then(Value::as_str) {
        Some(kind) if is_subject_tokens(kind) => format!("touch.in.{kind}"),
        _ => UNKNOWN_SUBJECT.into(),
    };
    let msg_id = v
        .get("event_id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty() && !id.chars().any(char::is_control))
        .map(str::to_string);
    (subject, msg_id)
}

/// Whether `kind` can extend a subject: dot-separated tokens of `[a-z0-9_-]`, none empty.
fn is_subject_tokens(kind: &str) -> bool {
    !kind.is_empty()
        && kind.split('.').all(|t| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        })
}

/// Rep and customer names from the directory, for alerts people can read.
struct Names {
    reps: HashMap<String, String>,
    customers: HashMap<String, String>,
}

impl Names {
    fn load(dir: &Path) -> anyhow::Result<Names> {
        let d = Directory::load(dir)?;
        Ok(Names {
            reps: d.reps.into_iter().map(|r| (r.rep_id, r.name)).collect(),
            customers: d
                .customers
                .into_iter()
                .map(|c| (c.customer_id, c.name))
                .collect(),
        })
    }
}

/// Two lines per alert: who and whom, then what happened and by when.
fn describe_alert(a: &Value, names: &Names) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let rep_id = s(&a["rep_id"]);
    let customer_id = s(&a["customer_id"]);
    let rep = names.reps.get(&rep_id).map_or("?", String::as_str);
    let customer = names
        .customers
        .get(&customer_id)
        .map_or("?", String::as_str);
    let region = s(&a["region"]);
    let ev = &a["evidence"];
    let asset = a["asset_id"].as_str().unwrap_or("-");
    let who = format!("{rep} ({rep_id}, {region}) -> {customer} ({customer_id})");
    let rule = s(&a["rule"]);
    if rule != "quote_hot_no_contract" {
        let head = if a["status"] == "resolved" {
            "RESOLVED"
        } else {
            "ALERT   "
        };
        let what = match (rule.as_str(), a["status"] == "resolved") {
            ("ghost_followup", false) => format!(
                "ghost follow-up: {} assets sent since {}, the last ({asset}) {}; none opened by {}",
                ev["assets_sent_14d"],
                human_time(&ev["first_sent_at"]),
                human_time(&ev["quote_sent_at"]),
                human_time(&a["due_at"]),
            ),
            ("impossible_visits", false) => format!(
                "impossible visits: {} in {}, yet {} in {}: less than an hour apart",
                human_time(&ev["other_visit_at"]),
                s(&ev["other_city"]),
                human_time(&ev["action_at"]),
                s(&ev["city"]),
            ),
            (_, true) => format!(
                "{rule}: resolved {} by late data",
                human_time(&ev["resolved_at"])
            ),
            (_, false) => format!("{rule} on {asset}, due {}", human_time(&a["due_at"])),
        };
        return format!("{head}  {who}\n          {what}");
    }
    if a["status"] == "resolved" {
        format!(
            "RESOLVED  {who}\n          resolved {} by late contract event {}: quote {asset} is no longer overdue",
            human_time(&ev["resolved_at"]),
            s(&ev["resolved_by"]),
        )
    } else {
        let last = match ev["last_open_at"].as_str() {
            Some(_) => format!(", last {}", human_time(&ev["last_open_at"])),
            None => String::new(),
        };
        let online = if ev["customer_online_at_send"] == true {
            ", customer was online on WeCom at send"
        } else {
            ""
        };
        format!(
            "ALERT     {who}\n          quote {asset} sent {}{online}; opened {} times{last}; no contract by {}",
            human_time(&ev["quote_sent_at"]),
            ev["counted_opens"],
            human_time(&a["due_at"]),
        )
    }
}

/// `2026-11-02T09:00:00.000Z` as `2026-11-02 09:00 UTC`.
fn human_time(v: &Value) -> String {
    match v
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    {
        Some(t) => t.format("%Y-%m-%d %H:%M UTC").to_string(),
        None => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_route_by_kind_and_carry_their_event_id() {
        let (subject, id) =
            route(r#"{"event_id":"e1","kind":"pixel.hit","ts":1,"asset_id":"a","hit":"open"}"#);
        assert_eq!(subject, "touch.in.pixel.hit");
        assert_eq!(id.as_deref(), Some("e1"));
    }

    #[test]
    fn malformed_or_odd_lines_go_to_unknown() {
        assert_eq!(route("{not json").0, "touch.in.unknown");
        assert_eq!(route("[1,2]").0, "touch.in.unknown");
        assert_eq!(
            route(r#"{"event_id":"e2"}"#),
            ("touch.in.unknown".into(), Some("e2".into()))
        );
        assert_eq!(route(r#"{"kind":"a.>"}"#).0, "touch.in.unknown");
        assert_eq!(route(r#"{"kind":"crm action"}"#).0, "touch.in.unknown");
        assert_eq!(route(r#"{"kind":"crm..action"}"#).0, "touch.in.unknown");
    }

    #[test]
    fn an_alert_reads_like_a_sentence() {
        let names = Names {
            reps: HashMap::from([("r1".into(), "Li Wei".into())]),
            customers: HashMap::from([("c1".into(), "Kangda Pharmacy #12".into())]),
        };
        let alert: Value = serde_json::from_str(
            r#"{"alert_id":"quote_hot_no_contract:q1","rule":"quote_hot_no_contract","status":"firing",
            "rep_id":"r1","customer_id":"c1","region":"east","asset_id":"q1",
            "due_at":"2026-11-07T09:00:00.000Z","fired_at":"2026-11-07T09:00:02.000Z",
            "evidence":{"quote_sent_at":"2026-11-02T09:00:00.000Z","counted_opens":3,"excluded_opens":1,
            "last_open_at":"2026-11-03T14:10:00.000Z","customer_online_at_send":false,"product_page_visits_30m":0}}"#,
        )
        .unwrap_or_default();
        let text = describe_alert(&alert, &names);
        assert_eq!(
            text,
            "ALERT     Li Wei (r1, east) -> Kangda Pharmacy #12 (c1)\n          \
             quote q1 sent 2026-11-02 09:00 UTC; opened 3 times, last 2026-11-03 14:10 UTC; \
             no contract by 2026-11-07 09:00 UTC"
        );

        let mut resolved = alert.clone();
        resolved["status"] = "resolved".into();
        resolved["evidence"]["resolved_at"] = "2026-11-08T10:00:00.000Z".into();
        resolved["evidence"]["resolved_by"] = "e-77".into();
        assert_eq!(
            describe_alert(&resolved, &names),
            "RESOLVED  Li Wei (r1, east) -> Kangda Pharmacy #12 (c1)\n          \
             resolved 2026-11-08 10:00 UTC by late contract event e-77: quote q1 is no longer overdue"
        );

        let mut ghost = alert.clone();
        ghost["rule"] = "ghost_followup".into();
        ghost["evidence"]["assets_sent_14d"] = 3.into();
        ghost["evidence"]["first_sent_at"] = "2026-10-25T09:00:00.000Z".into();
        assert_eq!(
            describe_alert(&ghost, &names),
            "ALERT     Li Wei (r1, east) -> Kangda Pharmacy #12 (c1)\n          \
             ghost follow-up: 3 assets sent since 2026-10-25 09:00 UTC, the last (q1) \
             2026-11-02 09:00 UTC; none opened by 2026-11-07 09:00 UTC"
        );
    }
}
