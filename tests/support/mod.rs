//! Shared helpers for the NATS integration tests: a private nats-server per test (through the
//! library's launcher), a pipeline and directory in a temp dir, `touchstream run` in-process or
//! as a child process of the built binary, reading output streams, and bounded polling.

#![allow(dead_code)] // each test binary uses a different subset

pub mod alertmanager;
pub mod http;
pub mod prometheus;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use async_nats::jetstream::{self, Context};
use chrono::SecondsFormat;
use serde_json::Value;

pub use touchstream::live::nats_server::NatsServer;
use touchstream::live::run::{RunArgs, run};

pub const DAY_MS: i64 = 86_400_000;
pub const HOUR_MS: i64 = 3_600_000;

/// A temp dir with `pipeline.toml` (the shipped default with test timings) and `directory/`
/// (reps r1 in east and r2 in south, customers c1 and c2, WeCom ids `wo_c1`, `wo_c2`).
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub pipeline: PathBuf,
    pub directory: PathBuf,
}

impl Fixture {
    /// `idle_advance_after_seconds`: 1 lets deadlines pass by the wall clock within a test; a
    /// large value leaves the watermark to event time alone (see `tick`).
    pub fn new(idle_advance_after_seconds: u64) -> anyhow::Result<Fixture> {
        let dir = tempfile::tempdir()?;
        let default = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/default.toml"),
        )?;
        // Small batches, so that a burst takes many of them and an outage can land in the
        // middle of it.
        let mut text = default;
        let idle = format!("idle_advance_after_seconds = {idle_advance_after_seconds}");
        for (from, to) in [
            ("idle_advance_after_seconds = 10", idle.as_str()),
            ("batch_max_events = 2000", "batch_max_events = 100"),
        ] {
            if !text.contains(from) {
                bail!("pipelines/default.toml no longer has `{from}`; update the test fixture");
            }
            text = text.replace(from, to);
        }
        let pipeline = dir.path().join("pipeline.toml");
        std::fs::write(&pipeline, text)?;
        let directory = dir.path().join("directory");
        std::fs::create_dir_all(&directory)?;
        std::fs::write(
            directory.join("reps.csv"),
            "rep_id,name,region,wecom_userid,dingtalk_staff_id\n\
             r1,Li Wei,east,wx_r1,dt_r1\n\
             r2,Wang Fang,south,wx_r2,dt_r2\n",
        )?;
        std::fs::write(
            directory.join("customers.csv"),
            "customer_id,name,wecom_external_userid,tier\n\
             c1,Kangda Pharmacy #12,wo_c1,A\n\
             c2,Renhe Pharmacy #3,wo_c2,B\n",
        )?;
        std::fs::write(
            directory.join("regions.csv"),
            "region,director,routes\neast,Chen Jie,\nsouth,Huang Li,\n",
        )?;
        Ok(Fixture {
            dir,
            pipeline,
            directory,
        })
    }

    pub fn run_args(&self, nats_url: &str, metrics_addr: SocketAddr) -> RunArgs {
        RunArgs {
            pipeline: self.pipeline.clone(),
            nats: nats_url.to_string(),
            directory: Some(self.directory.clone()),
            metrics_addr,
        }
    }
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// `touchstream::live::run` on a runtime of its own thread (the engine need not be `Send`).
pub struct InProcessRun {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::sync::oneshot::Receiver<anyhow::Result<()>>>,
}

impl InProcessRun {
    pub fn spawn(args: RunArgs) -> InProcessRun {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let result = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| {
                    rt.block_on(run(args, async {
                        let _ = stop_rx.await;
                    }))
                });
            let _ = done_tx.send(result);
        });
        InProcessRun {
            stop: Some(stop_tx),
            done: Some(done_rx),
        }
    }

    /// Asks the run to stop and returns what it returned.
    pub async fn stop(mut self, timeout: Duration) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let done = self.done.take().ok_or_else(|| anyhow!("already stopped"))?;
        tokio::time::timeout(timeout, done)
            .await
            .map_err(|_| anyhow!("run did not stop within {timeout:?}"))?
            .map_err(|_| anyhow!("run thread ended without a result"))?
    }
}

impl Drop for InProcessRun {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// `touchstream run` as a child process of the built binary; killed on drop.
pub struct ChildRun {
    child: Option<Child>,
    pub log: PathBuf,
}

impl ChildRun {
    pub fn start(args: &RunArgs, log: PathBuf) -> anyhow::Result<ChildRun> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_touchstream"));
        cmd.arg("run")
            .arg("--pipeline")
            .arg(&args.pipeline)
            .arg("--nats")
            .arg(&args.nats)
            .arg("--metrics-addr")
            .arg(args.metrics_addr.to_string());
        if let Some(d) = &args.directory {
            cmd.arg("--directory").arg(d);
        }
        let child = cmd
            .env(
                "RUST_LOG",
                std::env::var("TOUCHSTREAM_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .context("starting the touchstream binary")?;
        Ok(ChildRun {
            child: Some(child),
            log,
        })
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the exit code.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<i32> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("not running"))?;
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return status.code().ok_or_else(|| anyhow!("killed by a signal"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("touchstream did not exit within {timeout:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ChildRun {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn connect(url: &str) -> anyhow::Result<(async_nats::Client, Context)> {
    let client = touchstream::live::connect(url).await?;
    let js = jetstream::new(client.clone());
    Ok((client, js))
}

/// One stored output message.
#[derive(Debug, Clone)]
pub struct Stored {
    pub subject: String,
    pub msg_id: Option<String>,
    pub json: Value,
}

/// Every message in `stream`, in sequence order (empty when the stream does not exist yet).
pub async fn read_stream(js: &Context, stream: &str) -> anyhow::Result<Vec<Stored>> {
    let Ok(mut s) = js.get_stream(stream).await else {
        return Ok(Vec::new());
    };
    let state = s.info().await?.state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return Ok(out);
    }
    for seq in state.first_sequence..=state.last_sequence {
        let m = s
            .get_raw_message(seq)
            .await
            .with_context(|| format!("{stream} #{seq}"))?;
        out.push(Stored {
            subject: m.subject.to_string(),
            msg_id: m.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_string()),
            json: serde_json::from_slice(&m.payload)
                .with_context(|| format!("{stream} #{seq} is not JSON"))?,
        });
    }
    Ok(out)
}

/// (ack floor of the durable consumer, last sequence of the input stream).
pub async fn input_progress(js: &Context) -> Option<(u64, u64)> {
    let mut s = js.get_stream("TOUCH_IN").await.ok()?;
    let last = s.info().await.ok()?.state.last_sequence;
    let floor = s
        .consumer_info("touchstream")
        .await
        .ok()?
        .ack_floor
        .stream_sequence;
    Some((floor, last))
}

/// Waits until the durable consumer has acked everything in the input stream.
pub async fn wait_all_acked(js: &Context, timeout: Duration) -> anyhow::Result<u64> {
    wait_for("every input message acked", timeout, || async {
        match input_progress(js).await {
            Some((floor, last)) if last > 0 && floor == last => Some(last),
            _ => None,
        }
    })
    .await
}

/// Waits (polling every 5 ms) until the durable consumer has acked at least `seq`; returns
/// (ack floor, last input sequence) at that moment.
pub async fn wait_acked_at_least(
    js: &Context,
    seq: u64,
    timeout: Duration,
) -> anyhow::Result<(u64, u64)> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((floor, last)) = input_progress(js).await
            && floor >= seq
        {
            return Ok((floor, last));
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for input sequence {seq} to be acked");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How many stored messages carry each `Nats-Msg-Id`.
pub fn count_by_msg_id(records: &[Stored]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in records {
        *counts
            .entry(r.msg_id.clone().unwrap_or_default())
            .or_insert(0) += 1;
    }
    counts
}

/// RFC 3339 UTC with milliseconds, as EVENTS.md §8 writes times.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Input event lines (EVENTS.md §2).
pub fn quote_sent(event_id: &str, rep: &str, customer: &str, asset: &str, t: i64) -> String {
    format!(
        r#"{{"event_id":"{event_id}","kind":"crm.action","ts":"{}","rep_id":"{rep}","customer_id":"{customer}","action":"quote_sent","channel":"email","asset_id":"{asset}"}}"#,
        rfc3339(t)
    )
}

/// A `crm.action` without an asset (EVENTS.md §2).
pub fn action(
    event_id: &str,
    rep: &str,
    customer: &str,
    action: &str,
    channel: &str,
    t: i64,
) -> String {
    format!(
        r#"{{"event_id":"{event_id}","kind":"crm.action","ts":"{}","rep_id":"{rep}","customer_id":"{customer}","action":"{action}","channel":"{channel}"}}"#,
        rfc3339(t)
    )
}

pub fn contract_sent(event_id: &str, rep: &str, customer: &str, asset: &str, t: i64) -> String {
    format!(
        r#"{{"event_id":"{event_id}","kind":"crm.action","ts":"{}","rep_id":"{rep}","customer_id":"{customer}","action":"contract_sent","channel":"email","asset_id":"{asset}"}}"#,
        rfc3339(t)
    )
}

pub fn open(event_id: &str, asset: &str, t: i64) -> String {
    format!(
        r#"{{"event_id":"{event_id}","kind":"pixel.hit","ts":"{}","asset_id":"{asset}","hit":"open","ua":"Mozilla/5.0"}}"#,
        rfc3339(t)
    )
}

/// A WeCom presence change: an event of no pair (EVENTS.md §4: presence is state, not an
/// interaction) whose only effect here is to move the watermark to `t` - lateness.
pub fn tick(event_id: &str, t: i64) -> String {
    format!(
        r#"{{"event_id":"{event_id}","kind":"wecom.presence","ts":"{}","external_userid":"wo_c1","status":"online"}}"#,
        rfc3339(t)
    )
}

/// A quote with `opens` counted opens one hour apart (well clear of the prefetch and reload
/// exclusions), sent at `t0`.
pub fn hot_quote(
    prefix: &str,
    rep: &str,
    customer: &str,
    asset: &str,
    t0: i64,
    opens: usize,
) -> Vec<String> {
    let mut lines = vec![quote_sent(&format!("{prefix}-q"), rep, customer, asset, t0)];
    for i in 1..=opens {
        lines.push(open(
            &format!("{prefix}-o{i}"),
            asset,
            t0 + i as i64 * HOUR_MS,
        ));
    }
    lines
}

/// Publishes lines with the library's publisher (subject from `kind`, `Nats-Msg-Id` = `event_id`).
pub async fn publish(js: &Context, lines: &[String]) -> anyhow::Result<u64> {
    touchstream::live::demo::publish_lines(js, lines, 0).await
}

/// Waits until `touchstream run` has created the input stream.
pub async fn wait_input_stream(js: &Context, timeout: Duration) -> anyhow::Result<()> {
    wait_for("the input stream", timeout, || async {
        js.get_stream("TOUCH_IN").await.ok().map(|_| ())
    })
    .await
}

/// A plain HTTP/1.1 GET on loopback; returns (status line, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, body.to_string()))
}
