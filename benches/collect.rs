//! The collector over real HTTP on loopback (issue 5): a private nats-server, the collector
//! in-process as `touchstream collect` runs it (multi-threaded runtime with a worker per core,
//! Prometheus recorder installed), and a minimal HTTP/1.1 client on keep-alive connections, all
//! on the same cores.
//!
//! - Pixel latency: `GET /px/<token>.gif?e=open` one request at a time on one connection. The
//!   handler's own time is not observable from outside; the round trip is an upper bound on it.
//!   Back to back, each request overlaps the publishing of the previous hit, so `GET /healthz`
//!   (the same HTTP stack, no handler work) is timed alone and between the pixel requests, and
//!   pixel requests are also timed spaced out, the previous hit published by then.
//! - Pixel throughput: `CONNECTIONS` connections share a fixed number of requests; the rate
//!   is given at the last answer (HTTP) and once the input stream holds every hit (end to end:
//!   HTTP, then JetStream acknowledged). Rounds alternate with a bare JetStream publish loop of
//!   the same events (pipelined like the collector's buffer, `CHUNK` sends before the acks are
//!   awaited), and the ratio of the medians is printed.
//! - SDK batches: `POST /v1/events` with `BATCH` valid events, one connection and then
//!   `BATCH_CONNECTIONS`; the 200 comes after JetStream acknowledged every event.
//!
//! Everything is bounded by request counts; every wait is bounded; nothing leaves loopback.
//! On-CPU time per request of the collector, the load generator and nats-server comes from
//! `/proc/*/task/*/schedstat` (Linux): with everything on two cores, it says what the rate is
//! bound by.
//!
//! One batch in the sequential run takes tens of ms: nats-server's map of message ids in the
//! duplicate window (a Go map) doubles when the stream passes 425 984 ids (6.5 x 2^16), which
//! falls there; it moves with the number of messages sent before.
//!
//! Run: `cargo bench --bench collect` (needs `nats-server`, as the tests do).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use async_nats::jetstream::{self, Context, message::PublishMessage};
use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use touchstream::collect::server;
use touchstream::collect::token::{Claims, Keys};
use touchstream::collect::{CollectConfig, KeySpec};
use touchstream::event::format_time;
use touchstream::live::nats_server::NatsServer;
use touchstream::wall_clock_ms;

const SECRET: &str = "collector-bench-secret-0123456789abcdef";
/// Untimed sequential pixel requests first (connection, allocator, JetStream warm).
const WARMUP: usize = 2_000;
/// Timed sequential pixel requests (and as many `/healthz`, interleaved).
const SEQUENTIAL: usize = 20_000;
/// Timed pixel requests with a pause before each, so that the previous hit is published by then.
const PACED: usize = 5_000;
const PACE: Duration = Duration::from_micros(500);
/// Keep-alive connections of a throughput round, and the pixel requests they share.
const CONNECTIONS: usize = 16;
const LOAD: usize = 50_000;
/// Rounds of (bare publish loop, pixel throughput), alternating so drift hits both alike.
const ROUNDS: usize = 3;
/// Events of a bare publish round, and the sends in flight before their acks are awaited (the
/// collector's buffer publishes in chunks of 1 000 too).
const BARE: usize = 50_000;
const CHUNK: usize = 1_000;
/// A bare loop that awaits each ack before the next publish, for reference.
const BARE_ONE_BY_ONE: usize = 5_000;
/// Events in one SDK batch; batches sent on one connection, then over `BATCH_CONNECTIONS`.
const BATCH: usize = 100;
const BATCHES: usize = 1_000;
const BATCH_CONNECTIONS: usize = 8;
const BATCHES_LOADED: usize = 2_000;
/// Bound of one HTTP exchange and of every wait for the stream.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const WAIT: Duration = Duration::from_secs(60);
/// Name of the collector runtime's threads (for the CPU accounting).
const SERVER_THREADS: &str = "collector";

fn main() -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // As `touchstream collect`: a worker per core, the process-wide recorder.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name(SERVER_THREADS)
        .enable_all()
        .build()?;
    let _metrics = touchstream::telemetry::exporter::install();
    let pipeline = touchstream::config::Pipeline::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/default.toml"),
    )
    .map_err(|e| anyhow!("{e}"))?;
    let stream_name = pipeline.source.stream.clone();

    let (nats, js, collector) = rt.block_on(async {
        let nats = NatsServer::start().await?;
        let js = jetstream::new(touchstream::live::connect(&nats.url()).await?);
        touchstream::source::jetstream::ensure_input_stream(&js, &pipeline).await?;
        touchstream::sinks::nats::ensure_output_streams(&js).await?;
        // The collector on a NATS connection of its own, as in production.
        let cjs = jetstream::new(touchstream::live::connect(&nats.url()).await?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr, run) = server::bind(config(), cjs, server::allow_all(), async {
            let _ = stopped.await;
        })
        .await?;
        let task = tokio::spawn(run);
        anyhow::Ok((nats, js, (addr, stop, task)))
    })?;
    let (addr, stop, task) = collector;
    let nats_pid = nats_pid();
    let stored = |expected: u64| rt.block_on(wait_stored(&js, &stream_name, expected));

    let token = Keys::new(&[key()]).map_err(|e| anyhow!(e))?.mint(&Claims {
        asset_id: "bench-quote-1".into(),
        rep_id: "r1".into(),
        medium: "quote".into(),
        campaign: Some("bench".into()),
    })?;
    let pixel_req = format!(
        "GET /px/{token}.gif?e=open HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: touchstream-bench/1\r\n\r\n"
    )
    .into_bytes();
    let health_req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes();
    println!(
        "collect: collector in-process ({cores} tokio workers), nats-server and the load generator on the same {cores} cores, loopback, keep-alive HTTP/1.1"
    );

    // --- Pixel latency, one request at a time.
    let mut expected = 0u64;
    let mut conn = Conn::open(addr)?;
    for _ in 0..WARMUP {
        conn.pixel(&pixel_req)?;
    }
    expected += WARMUP as u64;
    stored(expected)?;
    // The HTTP stack alone while nothing else runs (no hits, so NATS idle).
    let mut alone = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..SEQUENTIAL {
        let t0 = Instant::now();
        let (status, body) = conn.exchange(&health_req)?;
        alone.push(t0.elapsed().as_nanos() as u64);
        ensure!(
            status == 200 && body == b"ok\n",
            "/healthz answered {status}"
        );
    }
    let (mut px, mut hz) = (
        Vec::with_capacity(SEQUENTIAL),
        Vec::with_capacity(SEQUENTIAL),
    );
    for _ in 0..SEQUENTIAL {
        let t0 = Instant::now();
        conn.pixel(&pixel_req)?;
        let t1 = Instant::now();
        let (status, body) = conn.exchange(&health_req)?;
        ensure!(
            status == 200 && body == b"ok\n",
            "/healthz answered {status}"
        );
        px.push((t1 - t0).as_nanos() as u64);
        hz.push(t1.elapsed().as_nanos() as u64);
    }
    expected += SEQUENTIAL as u64;
    stored(expected)?;
    // Hits spaced out, so that the previous one is published before the next request: the
    // round trip of a lone pixel request.
    let mut paced = Vec::with_capacity(PACED);
    for _ in 0..PACED {
        std::thread::sleep(PACE);
        let t0 = Instant::now();
        conn.pixel(&pixel_req)?;
        paced.push(t0.elapsed().as_nanos() as u64);
    }
    drop(conn);
    expected += PACED as u64;
    stored(expected)?;
    let (px, hz) = (Stats::of(px), Stats::of(hz));
    println!(
        "pixel latency, 1 connection, one request at a time, after {WARMUP} warm-up (the round trip is an upper bound on server time)"
    );
    println!("  {}", Stats::HEADER);
    println!(
        "  {}",
        Stats::of(alone).row(&format!("healthz x{SEQUENTIAL}, no hits"))
    );
    println!(
        "  {}",
        px.row(&format!("pixel x{SEQUENTIAL}, back to back"))
    );
    println!(
        "  {}",
        hz.row(&format!("healthz x{SEQUENTIAL}, between them"))
    );
    println!(
        "  {}",
        Stats::of(paced).row(&format!("pixel x{PACED}, {} µs apart", PACE.as_micros()))
    );
    println!(
        "  pixel - healthz between them, at p50: {:.1} µs (token check, event, buffer push)",
        (px.p50 as f64 - hz.p50 as f64) / 1e3
    );

    // --- Pixel throughput against the bare publish loop, alternating.
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The bare loop on a NATS connection of its own too, from a worker like the buffer's task.
    let pub_js = rt.block_on(async {
        anyhow::Ok(jetstream::new(
            touchstream::live::connect(&nats.url()).await?,
        ))
    })?;
    let events: Vec<(String, Bytes)> = (0..BARE_ONE_BY_ONE)
        .map(|i| pixel_event(&format!("bare-one-{i}")))
        .collect();
    let t0 = Instant::now();
    rt.block_on(rt.spawn(bare_one_by_one(pub_js.clone(), events)))??;
    let one_by_one = BARE_ONE_BY_ONE as f64 / t0.elapsed().as_secs_f64();
    expected += BARE_ONE_BY_ONE as u64;
    stored(expected)?;
    println!(
        "pixel throughput, {CONNECTIONS} connections x {LOAD} requests, against a bare JetStream publish loop of {BARE} pixel.hit events ({CHUNK} in flight), {ROUNDS} alternating rounds"
    );
    println!(
        "  round  bare publish/s  healthz req/s  pixel HTTP req/s   pixel stored/s   stored/bare   loaded p50     p99   p99.9     max"
    );
    let (mut bares, mut https, mut ends, mut ceilings) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut bare_cpu, mut pixel_cpu, mut ceiling_cpu) =
        (Cpu::default(), Cpu::default(), Cpu::default());
    for round in 0..ROUNDS {
        let events: Vec<(String, Bytes)> = (0..BARE)
            .map(|i| pixel_event(&format!("bare-{round}-{i}")))
            .collect();
        let c0 = Cpu::now(nats_pid);
        let t0 = Instant::now();
        rt.block_on(rt.spawn(bare_pipelined(pub_js.clone(), events)))??;
        let bare = BARE as f64 / t0.elapsed().as_secs_f64();
        bare_cpu.add(Cpu::now(nats_pid).since(c0));
        expected += BARE as u64;
        stored(expected)?;

        // The ceiling: the same HTTP stack and load generator with no handler work at all.
        let c0 = Cpu::now(nats_pid);
        let t0 = Instant::now();
        client_rt.block_on(http_load(addr, Arc::new(health_req.clone()), check_ok))?;
        let ceiling = LOAD as f64 / t0.elapsed().as_secs_f64();
        ceiling_cpu.add(Cpu::now(nats_pid).since(c0));

        let c0 = Cpu::now(nats_pid);
        let t0 = Instant::now();
        let lat = client_rt.block_on(http_load(addr, Arc::new(pixel_req.clone()), check_gif))?;
        let http = t0.elapsed();
        expected += LOAD as u64;
        stored(expected)?;
        let end = t0.elapsed();
        pixel_cpu.add(Cpu::now(nats_pid).since(c0));
        let lat = Stats::of(lat);
        let (http, end) = (
            LOAD as f64 / http.as_secs_f64(),
            LOAD as f64 / end.as_secs_f64(),
        );
        println!(
            "  {:>5}  {:>14.0}  {:>13.0}   {:>16.0}   {:>14.0}   {:>11.2}   {:>8}  {:>6}  {:>6}  {:>6}",
            round + 1,
            bare,
            ceiling,
            http,
            end,
            end / bare,
            us(lat.p50),
            us(lat.p99),
            us(lat.p999),
            us(lat.max)
        );
        bares.push(bare);
        ceilings.push(ceiling);
        https.push(http);
        ends.push(end);
    }
    let (bare, http, end) = (median(bares), median(https), median(ends));
    let ceiling = median(ceilings);
    println!(
        "  median {:>13.0}  {:>13.0}   {:>16.0}   {:>14.0}   {:>11.2}",
        bare,
        ceiling,
        http,
        end,
        end / bare
    );
    println!(
        "  pixel requests/s end to end (HTTP, then JetStream acknowledged): {end:.0}; bare publish {bare:.0}/s; ratio {:.2} (goal: >= 30 000/s and >= 0.70)",
        end / bare
    );
    println!(
        "  the HTTP ceiling (GET /healthz, no handler work, nothing published) / bare publish = {:.2}; pixel stored / that ceiling = {:.2}",
        ceiling / bare,
        end / ceiling
    );
    println!(
        "  bare publish awaiting each ack before the next: {one_by_one:.0}/s; pixel stored / that = {:.2}",
        end / one_by_one
    );
    if nats_pid.is_some() {
        let (p, b) = ((LOAD * ROUNDS) as f64, (BARE * ROUNDS) as f64);
        println!(
            "  on-CPU µs per pixel request: collector runtime {:.1}, load generator {:.1}, nats-server {:.1}, total {:.1} ({cores} cores: at most {:.0} req/s); runnable but waiting for a core {:.1}",
            pixel_cpu.server as f64 / p / 1e3,
            pixel_cpu.generator as f64 / p / 1e3,
            pixel_cpu.nats as f64 / p / 1e3,
            pixel_cpu.total() as f64 / p / 1e3,
            cores as f64 * 1e9 * p / pixel_cpu.total() as f64,
            pixel_cpu.waited as f64 / p / 1e3
        );
        println!(
            "  on-CPU µs per GET /healthz (the ceiling): collector runtime {:.1}, load generator {:.1}, nats-server {:.1}",
            ceiling_cpu.server as f64 / p / 1e3,
            ceiling_cpu.generator as f64 / p / 1e3,
            ceiling_cpu.nats as f64 / p / 1e3,
        );
        let bare_total = bare_cpu.total() as f64 / b / 1e3;
        println!(
            "  on-CPU µs per bare-published event: publisher {:.1}, nats-server {:.1}, total {:.1}",
            bare_cpu.server as f64 / b / 1e3,
            bare_cpu.nats as f64 / b / 1e3,
            bare_total
        );
        // What 0.7 of the bare rate leaves for HTTP once publishing costs what the bare loop
        // pays: the load generator's share and the collector's HTTP stack must fit in it.
        let budget = cores as f64 * 1e6 / (0.7 * bare);
        println!(
            "  0.70 x bare = {:.0} req/s allows {budget:.1} µs of the {cores} cores per request; publishing as the bare loop does takes {bare_total:.1}, leaving {:.1} for the load generator and the HTTP server together (measured above: {:.1} + {:.1})",
            0.7 * bare,
            budget - bare_total,
            ceiling_cpu.generator as f64 / p / 1e3,
            ceiling_cpu.server as f64 / p / 1e3,
        );
    }

    // --- SDK batches.
    println!("POST /v1/events, batches of {BATCH} valid events (200 after every JetStream ack)");
    println!(
        "  {:<28} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8}",
        "", "batches/s", "events/s", "p50", "p90", "p99", "max"
    );
    let bodies = sdk_bodies("seq", BATCHES);
    let mut conn = Conn::open(addr)?;
    let mut lat = Vec::with_capacity(BATCHES);
    let t0 = Instant::now();
    for body in &bodies {
        let t = Instant::now();
        let (status, resp) = conn.exchange(body)?;
        lat.push(t.elapsed().as_nanos() as u64);
        check_batch(status, resp)?;
    }
    let took = t0.elapsed().as_secs_f64();
    drop(conn);
    expected += (BATCHES * BATCH) as u64;
    stored(expected)?;
    batch_row("1 connection, sequential", BATCHES, took, Stats::of(lat));

    let bodies = Arc::new(sdk_bodies("loaded", BATCHES_LOADED));
    let t0 = Instant::now();
    let lat = client_rt.block_on(batch_load(addr, bodies))?;
    let took = t0.elapsed().as_secs_f64();
    expected += (BATCHES_LOADED * BATCH) as u64;
    stored(expected)?;
    batch_row(
        &format!("{BATCH_CONNECTIONS} connections"),
        BATCHES_LOADED,
        took,
        Stats::of(lat),
    );

    let _ = stop.send(());
    rt.block_on(async { tokio::time::timeout(WAIT, task).await })
        .map_err(|_| anyhow!("the collector did not stop within {WAIT:?}"))???;
    drop(nats);
    Ok(())
}

fn key() -> KeySpec {
    KeySpec {
        id: "k1".into(),
        secret: Some(SECRET.into()),
        secret_env: None,
    }
}

/// The README's `[collect]` defaults, on a free loopback port.
fn config() -> CollectConfig {
    CollectConfig {
        listen: "127.0.0.1:0".parse().expect("a socket address"),
        public_url: "https://t.example.net/".into(),
        keys: vec![key()],
        allowed_redirect_domains: vec!["example.com".into()],
        trusted_proxies: vec![],
        max_body_bytes: 1 << 20,
        max_batch_events: 500,
        request_timeout_ms: 10_000,
        pixel_buffer_events: 100_000,
    }
}

/// Waits until `stream` holds `expected` messages (bounded); more is an error too.
async fn wait_stored(js: &Context, stream: &str, expected: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    let mut s = js.get_stream(stream).await?;
    loop {
        let have = s.info().await?.state.messages;
        ensure!(
            have <= expected,
            "{stream} holds {have} messages, expected {expected}"
        );
        if have == expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{stream} holds {have} of {expected} messages after {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A `pixel.hit` as the collector writes it, with its `Nats-Msg-Id`.
fn pixel_event(id: &str) -> (String, Bytes) {
    let now = format_time(wall_clock_ms());
    let json = format!(
        r#"{{"event_id":"{id}","kind":"pixel.hit","ts":"{now}","received_at":"{now}","asset_id":"bench-quote-1","hit":"open","ua":"touchstream-bench/1","ip":"127.0.0.0"}}"#
    );
    (id.to_string(), Bytes::from(json))
}

/// Sends one event with its `Nats-Msg-Id`, as the collector does; the ack is to be awaited.
async fn publish(
    js: &Context,
    id: String,
    payload: Bytes,
) -> anyhow::Result<jetstream::context::PublishAckFuture> {
    let msg = PublishMessage::build().payload(payload).message_id(id);
    js.send_publish("touch.in.pixel.hit", msg)
        .await
        .context("publishing")
}

/// Sends `CHUNK` events, then awaits their acks, and so on (what the collector's buffer does).
async fn bare_pipelined(js: Context, events: Vec<(String, Bytes)>) -> anyhow::Result<()> {
    let mut acks = Vec::with_capacity(CHUNK);
    for chunk in events.chunks(CHUNK) {
        for (id, payload) in chunk {
            acks.push(publish(&js, id.clone(), payload.clone()).await?);
        }
        for ack in acks.drain(..) {
            ack.await.context("ack")?;
        }
    }
    Ok(())
}

async fn bare_one_by_one(js: Context, events: Vec<(String, Bytes)>) -> anyhow::Result<()> {
    for (id, payload) in events {
        publish(&js, id, payload).await?.await.context("ack")?;
    }
    Ok(())
}

/// `LOAD` requests `req` over `CONNECTIONS` keep-alive connections, each answer checked.
async fn http_load(
    addr: SocketAddr,
    req: Arc<Vec<u8>>,
    check: fn(u16, &[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<u64>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        let (next, req) = (next.clone(), req.clone());
        tasks.spawn(async move {
            let mut conn = AsyncConn::open(addr).await?;
            let mut lat = Vec::with_capacity(LOAD / CONNECTIONS + 1);
            while next.fetch_add(1, Ordering::Relaxed) < LOAD {
                let t = Instant::now();
                let (status, body) = conn.exchange(&req).await?;
                lat.push(t.elapsed().as_nanos() as u64);
                check(status, body)?;
            }
            anyhow::Ok(lat)
        });
    }
    let mut all = Vec::with_capacity(LOAD);
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    Ok(all)
}

/// `bodies` over `BATCH_CONNECTIONS` connections; the latency of each.
async fn batch_load(addr: SocketAddr, bodies: Arc<Vec<Vec<u8>>>) -> anyhow::Result<Vec<u64>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..BATCH_CONNECTIONS {
        let (next, bodies) = (next.clone(), bodies.clone());
        tasks.spawn(async move {
            let mut conn = AsyncConn::open(addr).await?;
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let t = Instant::now();
                let (status, resp) = conn.exchange(body).await?;
                lat.push(t.elapsed().as_nanos() as u64);
                check_batch(status, resp)?;
            }
            anyhow::Ok(lat)
        });
    }
    let mut all = Vec::with_capacity(bodies.len());
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    Ok(all)
}

/// `n` requests `POST /v1/events`, each a JSON array of `BATCH` valid events (CRM quotes and
/// WeCom messages of r1 and c1) with ids of their own.
fn sdk_bodies(label: &str, n: usize) -> Vec<Vec<u8>> {
    let ts = format_time(wall_clock_ms() - 60_000);
    (0..n)
        .map(|b| {
            let events: Vec<String> = (0..BATCH)
                .map(|i| {
                    let id = format!("sdk-{label}-{b}-{i}");
                    if i % 2 == 0 {
                        format!(
                            r#"{{"event_id":"{id}","kind":"crm.action","ts":"{ts}","rep_id":"r1","customer_id":"c1","action":"quote_sent","channel":"email","asset_id":"q-{id}"}}"#
                        )
                    } else {
                        format!(
                            r#"{{"event_id":"{id}","kind":"wecom.message","ts":"{ts}","wecom_userid":"wx_r1","external_userid":"wo_c1","direction":"in"}}"#
                        )
                    }
                })
                .collect();
            let body = format!("[{}]", events.join(","));
            let mut req = format!(
                "POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            req.extend_from_slice(body.as_bytes());
            req
        })
        .collect()
}

fn check_ok(status: u16, body: &[u8]) -> anyhow::Result<()> {
    ensure!(
        status == 200 && body == b"ok\n",
        "/healthz answered {status}"
    );
    Ok(())
}

fn check_gif(status: u16, body: &[u8]) -> anyhow::Result<()> {
    ensure!(
        status == 200 && body == server::GIF,
        "pixel answered {status} with {} bytes",
        body.len()
    );
    Ok(())
}

fn check_batch(status: u16, body: &[u8]) -> anyhow::Result<()> {
    let text = String::from_utf8_lossy(body);
    ensure!(status == 200, "POST /v1/events answered {status}: {text}");
    let v: serde_json::Value = serde_json::from_slice(body).context("batch answer")?;
    ensure!(
        v["accepted"] == BATCH,
        "not every event was accepted: {text}"
    );
    Ok(())
}

fn batch_row(label: &str, batches: usize, secs: f64, lat: Stats) {
    println!(
        "  {:<28} {:>9.0} {:>10.0} {:>8} {:>8} {:>8} {:>8}",
        label,
        batches as f64 / secs,
        (batches * BATCH) as f64 / secs,
        us(lat.p50),
        us(lat.p90),
        us(lat.p99),
        us(lat.max)
    );
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client: one request at a time per keep-alive connection, responses with
// `Content-Length` (what the collector sends).

struct Head {
    status: u16,
    body_start: usize,
    end: usize,
}

/// The head of the response in `buf`, once it is complete.
fn parse_head(buf: &[u8]) -> anyhow::Result<Option<Head>> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("response head")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .ok_or_else(|| anyhow!("response without Content-Length: {head}"))?;
    Ok(Some(Head {
        status,
        body_start: head_end + 4,
        end: head_end + 4 + length,
    }))
}

/// Blocking, for the sequential measurements: no runtime between the socket and the clock.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).context("connecting")?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn {
            s,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    fn exchange(&mut self, req: &[u8]) -> anyhow::Result<(u16, &[u8])> {
        self.s.write_all(req).context("sending")?;
        self.buf.clear();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(h) = parse_head(&self.buf)?
                && self.buf.len() >= h.end
            {
                ensure!(self.buf.len() == h.end, "bytes after the response");
                return Ok((h.status, &self.buf[h.body_start..h.end]));
            }
            let n = self.s.read(&mut chunk).context("reading")?;
            ensure!(n > 0, "the collector closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn pixel(&mut self, req: &[u8]) -> anyhow::Result<()> {
        let (status, body) = self.exchange(req)?;
        check_gif(status, body)
    }
}

/// The same on tokio, for many connections from one thread.
struct AsyncConn {
    s: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl AsyncConn {
    async fn open(addr: SocketAddr) -> anyhow::Result<AsyncConn> {
        let s = tokio::time::timeout(IO_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connecting: timed out"))?
            .context("connecting")?;
        s.set_nodelay(true)?;
        Ok(AsyncConn {
            s,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    async fn exchange(&mut self, req: &[u8]) -> anyhow::Result<(u16, &[u8])> {
        let (s, buf) = (&mut self.s, &mut self.buf);
        let head = tokio::time::timeout(IO_TIMEOUT, async {
            s.write_all(req).await.context("sending")?;
            buf.clear();
            loop {
                if let Some(h) = parse_head(buf)?
                    && buf.len() >= h.end
                {
                    ensure!(buf.len() == h.end, "bytes after the response");
                    return anyhow::Ok(h);
                }
                let n = s.read_buf(buf).await.context("reading")?;
                ensure!(n > 0, "the collector closed the connection");
            }
        })
        .await
        .map_err(|_| anyhow!("no answer within {IO_TIMEOUT:?}"))??;
        Ok((head.status, &self.buf[head.body_start..head.end]))
    }
}

// ---------------------------------------------------------------------------------------------
// Figures

/// Latency percentiles in ns.
struct Stats {
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
    mean: u64,
}

impl Stats {
    const HEADER: &str =
        "                                     p50      p90      p99    p99.9      max     mean";

    fn of(mut v: Vec<u64>) -> Stats {
        if v.is_empty() {
            v.push(0);
        }
        v.sort_unstable();
        let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        Stats {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: v[v.len() - 1],
            mean: v.iter().sum::<u64>() / v.len() as u64,
        }
    }

    fn row(&self, label: &str) -> String {
        format!(
            "{label:<34} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            us(self.p50),
            us(self.p90),
            us(self.p99),
            us(self.p999),
            us(self.max),
            us(self.mean)
        )
    }
}

/// ns as µs, one decimal below 100 µs.
fn us(ns: u64) -> String {
    let us = ns as f64 / 1e3;
    if us < 100.0 {
        format!("{us:.1}µs")
    } else {
        format!("{us:.0}µs")
    }
}

/// On-CPU and run-queue time (ns, `/proc/*/task/*/schedstat`; Linux only) of the collector
/// runtime's threads, of the bench's other threads (the load generator), and of nats-server.
#[derive(Clone, Copy, Default)]
struct Cpu {
    server: u64,
    generator: u64,
    nats: u64,
    waited: u64,
}

impl Cpu {
    fn now(nats_pid: Option<u32>) -> Cpu {
        let mut c = Cpu::default();
        for (comm, run, wait) in tasks("/proc/self/task") {
            if comm.starts_with(SERVER_THREADS) {
                c.server += run;
            } else {
                c.generator += run;
            }
            c.waited += wait;
        }
        if let Some(pid) = nats_pid {
            for (_, run, wait) in tasks(&format!("/proc/{pid}/task")) {
                c.nats += run;
                c.waited += wait;
            }
        }
        c
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            server: self.server.saturating_sub(before.server),
            generator: self.generator.saturating_sub(before.generator),
            nats: self.nats.saturating_sub(before.nats),
            waited: self.waited.saturating_sub(before.waited),
        }
    }

    fn add(&mut self, d: Cpu) {
        self.server += d.server;
        self.generator += d.generator;
        self.nats += d.nats;
        self.waited += d.waited;
    }

    fn total(&self) -> u64 {
        self.server + self.generator + self.nats
    }
}

/// (name, on-CPU ns, run-queue ns) of every thread under `dir`.
fn tasks(dir: &str) -> Vec<(String, u64, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            let stat = std::fs::read_to_string(e.path().join("schedstat")).ok()?;
            let mut f = stat.split_whitespace().map(|x| x.parse::<u64>().ok());
            Some((comm.trim().to_string(), f.next()??, f.next()??))
        })
        .collect()
}

/// The nats-server this process started.
fn nats_pid() -> Option<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1;
        let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == me && comm == "nats-server").then_some(pid)
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
