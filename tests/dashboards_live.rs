//! The boards show data for real (issue 4): `touchstream run` on a private nats-server with
//! generated traffic of a small organisation, delivering its alerts to a local webhook, and a
//! private Prometheus (Debian `prometheus`) scraping it every second with the rules of
//! `prometheus/rules/`. Every query of every panel of every board in `grafana/dashboards/`,
//! once with each variable at "All" and once with the first variable at a real value, must
//! return a sample that is a number (not NaN) through Prometheus's HTTP API; so must every
//! variable's own query and every recording rule. Everything is on loopback and the test stops
//! by itself within three minutes.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use axum::Router;
use axum::routing::post;
use bytes::Bytes;

use support::prometheus::{
    Prometheus, dashboards, label_values, panel_queries, substitute, variables,
};
use support::*;
use touchstream::r#gen::{GenArgs, generate};
use touchstream::live::run::RunArgs;

const WAIT: Duration = Duration::from_secs(60);
/// The whole test, start to finish.
const BUDGET: Duration = Duration::from_secs(170);
/// After the input is acked, how long the queries may take to all return data: the per-rep
/// figures are published every second here, and scraped every second.
const SETTLE: Duration = Duration::from_secs(40);
/// Events per second published: the traffic takes about ten seconds, so counters grow across
/// several scrapes (a counter's first sample is not an increase).
const RATE: u64 = 600;
/// Grafana's built-in intervals, as a board open on the last few minutes would have them.
const BUILTINS: [(&str, &str); 3] = [
    ("__rate_interval", "1m"),
    ("__interval", "1m"),
    ("__range", "5m"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_of_every_board_returns_data() -> anyhow::Result<()> {
    tokio::time::timeout(BUDGET, scenario())
        .await
        .map_err(|_| anyhow!("the test did not finish within {BUDGET:?}"))?
}

async fn scenario() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let server = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;

    // A small organisation: two regions, 20 reps, two weeks ending now (about 6 000 events with
    // 2 % noise: dead letters, late events), so that the watermark is recent and idle
    // advancement fires what is due.
    let gen_args = GenArgs {
        seed: 11,
        regions: 2,
        reps: 20,
        customers_per_rep: 12,
        days: 14,
        end: Some(rfc3339(now_ms())),
        noise: 0.02,
        ..GenArgs::default()
    };
    let workload = tokio::task::spawn_blocking(move || generate(&gen_args)).await??;
    let directory = dir.path().join("directory");
    workload.directory().write_to(&directory)?;

    let (hook, delivered) = webhook().await?;
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        pipeline_text(root, &format!("http://{hook}/hook"))?,
    )?;

    let metrics = free_addr()?;
    let running = InProcessRun::spawn(RunArgs {
        pipeline,
        nats: server.url(),
        directory: Some(directory),
        metrics_addr: metrics,
    });
    let (client, js) = connect(&server.url()).await?;
    wait_input_stream(&js, WAIT).await?;

    let rules = root.join("prometheus/rules/touchstream.rules.yml");
    let prom = Prometheus::start(metrics, std::slice::from_ref(&rules)).await?;
    prom.wait_target_up(WAIT)
        .await
        .with_context(|| prom.log())?;

    publish_at(&js, &workload.events, RATE).await?;
    // Repeats of event ids that JetStream's duplicate window did not catch (published without
    // a Nats-Msg-Id), which the pipeline drops and counts as duplicates.
    let repeats: Vec<&String> = workload
        .events
        .iter()
        .filter(|l| l.starts_with("{\"event_id\"") && l.contains("\"kind\":\"crm.action\""))
        .take(20)
        .collect();
    for line in &repeats {
        js.publish("touch.in.crm.action", Bytes::from(line.to_string()))
            .await?
            .await
            .context("publishing a repeated event")?;
    }
    wait_all_acked(&js, WAIT).await?;

    let queries = all_queries(&prom, &rules).await?;
    let failures = until_all_return_data(&prom, queries, SETTLE).await;
    let delivered = delivered.load(Ordering::SeqCst);

    running.stop(Duration::from_secs(30)).await?;
    drop(client);
    if !failures.is_empty() {
        let names = prom.metric_names("touchstream").await.unwrap_or_default();
        bail!(
            "{} quer{} returned no data after {SETTLE:?} (webhook deliveries: {delivered}):\n\n{}\n\n\
             touchstream metrics Prometheus holds: {names:?}",
            failures.len(),
            if failures.len() == 1 { "y" } else { "ies" },
            failures.join("\n\n")
        );
    }
    Ok(())
}

/// The shipped pipeline with per-rep figures published every second, idle advancement after a
/// second, and every region's alerts delivered to `hook` (so that deliveries are counted).
fn pipeline_text(root: &Path, hook: &str) -> anyhow::Result<String> {
    let mut text = std::fs::read_to_string(root.join("pipelines/default.toml"))?;
    for (from, to) in [
        (
            "publish_interval_seconds = 15",
            "publish_interval_seconds = 1",
        ),
        (
            "idle_advance_after_seconds = 10",
            "idle_advance_after_seconds = 1",
        ),
    ] {
        if !text.contains(from) {
            bail!("pipelines/default.toml no longer has `{from}`; update tests/dashboards_live.rs");
        }
        text = text.replace(from, to);
    }
    text.push_str(&format!(
        "\n[notify]\n\n[[notify.receivers]]\nname = \"ops\"\nkind = \"webhook\"\nurl = \"{hook}\"\n\n\
         [[notify.routes]]\nregion = \"*\"\nreceivers = [\"ops\"]\n"
    ));
    Ok(text)
}

/// A webhook receiver on loopback that accepts everything; counts the requests.
async fn webhook() -> anyhow::Result<(std::net::SocketAddr, Arc<AtomicUsize>)> {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let app = Router::new().route(
        "/hook",
        post(move |_body: Bytes| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, count))
}

/// One query to run, and what it is for the failure message.
struct Check {
    what: String,
    expr: String,
}

/// Every variable query, every panel query with the variables at "All" (`.*`) and with the
/// first variable at its first real value, and every recording rule.
async fn all_queries(prom: &Prometheus, rules: &Path) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    let builtins: BTreeMap<String, String> = BUILTINS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (file, board) in dashboards()? {
        let vars = variables(&board);
        let mut all = builtins.clone();
        for v in &vars {
            all.insert(v.name.clone(), ".*".into());
        }
        // The first variable at a real value: its query's first answer (resolved with the
        // variables at All, as Grafana would before anything is picked).
        let mut one = all.clone();
        for (i, v) in vars.iter().enumerate() {
            let (selector, label) = label_values(&v.query)
                .ok_or_else(|| anyhow!("{file}: variable {}: not label_values(...)", v.name))?;
            let expr = format!("group by ({label}) ({})", substitute(&selector, &all)?);
            checks.push(Check {
                what: format!("{file} · variable ${} ({})", v.name, v.query),
                expr: expr.clone(),
            });
            if i == 0 {
                let values = prom.query(&expr).await.unwrap_or_default();
                if let Some(first) = values.iter().filter_map(|s| s.labels.get(&label)).min() {
                    one.insert(v.name.clone(), regex_escape(first));
                }
            }
        }
        let passes = if one == all {
            vec![("All", &all)]
        } else {
            vec![("All", &all), ("one", &one)]
        };
        for (pass, values) in passes {
            let shown: Vec<String> = vars
                .iter()
                .map(|v| format!("${}={}", v.name, values[&v.name]))
                .collect();
            for q in panel_queries(&file, &board) {
                checks.push(Check {
                    what: format!(
                        "{file} · {:?} · {} ({pass}: {})",
                        q.panel,
                        q.ref_id,
                        shown.join(" ")
                    ),
                    expr: substitute(&q.expr, values)?,
                });
            }
        }
    }
    let text = std::fs::read_to_string(rules)?;
    for name in text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record:"))
    {
        checks.push(Check {
            what: format!("recording rule {}", name.trim()),
            expr: name.trim().to_owned(),
        });
    }
    Ok(checks)
}

/// Runs the checks every two seconds, dropping those that returned data, until none is left
/// or `within` has passed; returns what is left, each with Prometheus's last answer.
async fn until_all_return_data(
    prom: &Prometheus,
    mut checks: Vec<Check>,
    within: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut last: BTreeMap<usize, String> = BTreeMap::new();
    loop {
        let mut left = Vec::new();
        for c in checks {
            let answer = match prom.query(&c.expr).await {
                Ok(samples) if samples.iter().any(|s| !s.value.is_nan()) => continue,
                Ok(samples) if samples.is_empty() => "no samples".to_owned(),
                Ok(samples) => format!("only NaN ({} series)", samples.len()),
                Err(e) => format!("error: {e:#}"),
            };
            last.insert(left.len(), answer);
            left.push(c);
        }
        checks = left;
        if checks.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    checks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "{}: {}\n    {}",
                c.what,
                last.get(&i).map_or("", String::as_str),
                c.expr.replace('\n', "\n    ")
            )
        })
        .collect()
}

/// A label value as a regular expression matching only itself (Grafana escapes the same way
/// for `=~`).
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Publishes at `rate` events per second with the library's publisher.
async fn publish_at(
    js: &async_nats::jetstream::Context,
    lines: &[String],
    rate: u64,
) -> anyhow::Result<u64> {
    touchstream::live::demo::publish_lines(js, lines, rate).await
}

#[test]
fn values_are_escaped_for_regex_matchers() {
    assert_eq!(regex_escape("east"), "east");
    assert_eq!(regex_escape("a.b"), "a\\\\.b");
    let values = BTreeMap::from([
        ("region".to_owned(), ".*".to_owned()),
        ("__range".to_owned(), "5m".to_owned()),
    ]);
    assert_eq!(
        substitute(
            r#"sum(increase(x{region=~"$region", r=~"${region:regex}"}[$__range]))[[region]]"#,
            &values
        )
        .expect("substituted"),
        r#"sum(increase(x{region=~".*", r=~".*"}[5m])).*"#
    );
    assert!(substitute("x{a=~\"$nope\"}", &values).is_err());
}
