//! Issue 5's "done when", end to end through `touchstream run` (in-process, with `[collect]` in
//! the pipeline file, so the run starts the collector itself) on a private nats-server:
//! a new user mints a tracked quote (`POST /v1/assets`), sends it (`POST /v1/events`), opens its
//! pixel URL with a plain HTTP/1.1 GET as curl sends it, and sees the hit count toward the
//! headline rule (`touchstream_counted_opens_total` on the run's `/metrics`) and become part of
//! the pair's interaction session (`touch.sessions`).
//!
//! Every expected figure is worked out by hand from EVENTS.md (§4: counted opens, channel of a
//! pixel hit, sessions split where consecutive events are more than 30 min apart; §7: watermark
//! = greatest effective time − 5 min lateness; §8: the session record), not taken from a run.
//! No idle advancement: the watermark moves by event time alone, through presence "ticks" of an
//! unrelated customer (presence is state, not an interaction).

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use async_nats::jetstream::Context;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use touchstream::collect::KeySpec;
use touchstream::collect::server;
use touchstream::collect::token::{Claims, Keys};

use support::http::{Resp, dechunk, parse_head};
use support::{
    Fixture, InProcessRun, NatsServer, Stored, connect, free_addr, now_ms, read_stream, rfc3339,
    wait_for, wait_input_stream,
};

/// Bound of every single wait; the whole test takes a few seconds when all is well.
const WAIT: Duration = Duration::from_secs(20);
/// Bound of one HTTP exchange.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
const SECRET: &str = "collect-e2e-secret-0123456789abcdefghij";
const KEY_ID: &str = "k1";
const MINUTE_MS: i64 = 60_000;
/// `[sessions] gap_seconds` of the shipped pipeline.
const GAP_MS: i64 = 30 * MINUTE_MS;
/// `[time] allowed_lateness_seconds` of the shipped pipeline.
const LATENESS_MS: i64 = 5 * MINUTE_MS;
/// `[opens] prefetch_seconds` of the shipped pipeline.
const PREFETCH_MS: i64 = 10_000;
const COUNTED: &str = "touchstream_counted_opens_total";
const EXCLUDED: &str = "touchstream_excluded_opens_total";
/// The exact 1×1 transparent GIF89a, written out here rather than taken from the server.
const GIF: [u8; 43] = [
    b'G', b'I', b'F', b'8', b'9', b'a', 1, 0, 1, 0, 0x80, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x21,
    0xf9, 4, 1, 0, 0, 0, 0, 0x2c, 0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 2, 0x44, 1, 0, 0x3b,
];
/// What curl 8 sends as its user agent.
const CURL_UA: &str = "curl/8.5.0";

// ---------------------------------------------------------------------------------------------
// HTTP on loopback, over a raw socket: what is checked is exactly what goes over the wire.

/// Writes `request` on a fresh connection and reads one response: the head, then
/// `Content-Length` bytes (the connection may stay open, as with curl's keep-alive), a chunked
/// body, or everything up to the close.
async fn exchange(addr: SocketAddr, request: Vec<u8>) -> anyhow::Result<Resp> {
    tokio::time::timeout(HTTP_TIMEOUT, async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        s.write_all(&request).await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut resp = loop {
            if let Some(resp) = parse_head(&buf)? {
                break resp;
            }
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                bail!(
                    "connection closed before the end of the headers: {:?}",
                    String::from_utf8_lossy(&buf)
                );
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let length = resp
            .header("content-length")
            .map(str::parse::<usize>)
            .transpose()
            .context("Content-Length")?;
        let chunked = resp.chunked();
        let mut body = std::mem::take(&mut resp.body);
        match length {
            Some(len) => {
                while body.len() < len {
                    let n = s.read(&mut chunk).await?;
                    if n == 0 {
                        bail!("body cut short: {} of {len} bytes", body.len());
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
                if body.len() > len {
                    bail!("{} bytes after a body of {len}", body.len() - len);
                }
            }
            None => {
                s.read_to_end(&mut body).await?;
                if chunked {
                    body = dechunk(&body)?;
                }
            }
        }
        resp.body = body;
        Ok(resp)
    })
    .await
    .map_err(|_| anyhow!("no answer from {addr} within {HTTP_TIMEOUT:?}"))?
}

/// A GET exactly as `curl http://ADDR/PATH` sends it (keep-alive, no `Connection: close`).
async fn curl_get(addr: SocketAddr, path: &str) -> anyhow::Result<Resp> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: {CURL_UA}\r\nAccept: */*\r\n\r\n"
    );
    exchange(addr, req.into_bytes()).await
}

async fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<Resp> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: {CURL_UA}\r\nAccept: */*\r\n\
         Connection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    exchange(addr, req.into_bytes()).await
}

/// `POST /v1/events` of one event; checks the 200 with exactly that event accepted.
async fn send_event(collector: SocketAddr, event: &Value) -> anyhow::Result<()> {
    let body = format!("[{event}]");
    let r = post(
        collector,
        "/v1/events",
        &[("Content-Type", "application/json")],
        &body,
    )
    .await?;
    if r.status != 200 {
        bail!("POST /v1/events {body}: {} {}", r.status, r.text());
    }
    let v = r.json()?;
    let want = json!({
        "accepted": 1,
        "rejected": 0,
        "results": [{"index": 0, "event_id": event["event_id"], "status": "accepted"}],
    });
    if v != want {
        bail!("POST /v1/events {body}: answered {v}, expected {want}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// What the run shows

/// The sum of every series of `name` on `/metrics` (None when not exported at all).
fn metric(body: &str, name: &str) -> anyhow::Result<Option<f64>> {
    let mut sum = None;
    for line in body.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let (_, v) = rest
            .rsplit_once(' ')
            .ok_or_else(|| anyhow!("/metrics line {line:?}"))?;
        let v: f64 = v
            .parse()
            .with_context(|| format!("/metrics line {line:?}"))?;
        sum = Some(sum.unwrap_or(0.0) + v);
    }
    Ok(sum)
}

async fn metrics_text(addr: SocketAddr) -> anyhow::Result<String> {
    let r = exchange(
        addr,
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").into_bytes(),
    )
    .await?;
    if r.status != 200 {
        bail!("/metrics: {} {}", r.status, r.text());
    }
    Ok(r.text())
}

/// Everything the run produced so far, for failure messages.
async fn seen(js: &Context, metrics: SocketAddr) -> String {
    let mut out = String::new();
    match metrics_text(metrics).await {
        Ok(body) => {
            let lines: Vec<&str> = body
                .lines()
                .filter(|l| {
                    [
                        COUNTED,
                        EXCLUDED,
                        "touchstream_events_in",
                        "touchstream_late_events",
                        "touchstream_dead_letters",
                        "touchstream_watermark_seconds",
                        "touchstream_sessions",
                        "touchstream_input_acked",
                        "touchstream_collect_requests",
                        "touchstream_collect_bad_tokens",
                        "touchstream_collect_dropped",
                    ]
                    .iter()
                    .any(|p| l.starts_with(p))
                })
                .collect();
            out.push_str(&format!("/metrics: {lines:#?}\n"));
        }
        Err(e) => out.push_str(&format!("/metrics: {e:#}\n")),
    }
    for stream in ["TOUCH_IN", "TOUCH_SESSIONS", "TOUCH_ALERTS", "TOUCH_DLQ"] {
        let records: Vec<String> = read_stream(js, stream)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|r| format!("{} {}", r.subject, r.json))
            .collect();
        out.push_str(&format!("{stream}: {records:#?}\n"));
    }
    out.push_str(&format!(
        "input progress: {:?}\n",
        support::input_progress(js).await
    ));
    out
}

/// `wait_for`, and on a timeout everything seen so far in the error.
async fn wait_or_dump<T, F, Fut>(
    what: &str,
    js: &Context,
    metrics: SocketAddr,
    check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    match wait_for(what, WAIT, check).await {
        Ok(v) => Ok(v),
        Err(e) => bail!("{e:#}\nseen:\n{}", seen(js, metrics).await),
    }
}

/// A presence change of c2 (`wo_c2`), an unrelated customer: no interaction of any pair
/// (EVENTS.md §4), so its only effect is to move the watermark to `t` − lateness.
fn tick(event_id: &str, t: i64) -> Value {
    json!({
        "event_id": event_id,
        "kind": "wecom.presence",
        "ts": rfc3339(t),
        "external_userid": "wo_c2",
        "status": "online",
    })
}

fn millis(rfc3339: &str) -> anyhow::Result<i64> {
    Ok(chrono::DateTime::parse_from_rfc3339(rfc3339)
        .with_context(|| format!("{rfc3339:?} is not RFC 3339"))?
        .timestamp_millis())
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_quote_opened_with_curl_is_counted_and_joins_the_pairs_session()
-> anyhow::Result<()> {
    let started = Instant::now();
    let server = NatsServer::start().await?;
    let url = server.url();
    let (_client, js) = connect(&url).await?;

    // The fixture's pipeline (no idle advancement: event time alone moves the watermark) with
    // a `[collect]` section on a free loopback port.
    let fx = Fixture::new(3600)?;
    let collector = free_addr()?;
    let public_url = format!("http://{collector}");
    let mut text = std::fs::read_to_string(&fx.pipeline)?;
    if text.contains("[collect]") {
        bail!("the fixture's pipeline already has [collect]; update tests/collect_e2e.rs");
    }
    text.push_str(&format!(
        "\n[collect]\nlisten = \"{collector}\"\npublic_url = \"{public_url}\"\n\
         keys = [{{ id = \"{KEY_ID}\", secret = \"{SECRET}\" }}]\n\
         allowed_redirect_domains = [\"example.com\"]\n"
    ));
    std::fs::write(&fx.pipeline, text)?;
    let metrics = free_addr()?;
    let running = InProcessRun::spawn(fx.run_args(&url, metrics));
    wait_input_stream(&js, WAIT).await?;
    wait_or_dump("the collector's /healthz", &js, metrics, || async {
        curl_get(collector, "/healthz")
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await?;

    // 1. Mint the quote's URLs; the same as `touchstream token` mints offline.
    let r = post(
        collector,
        "/v1/assets",
        &[
            ("Authorization", &format!("Bearer {SECRET}")),
            ("Content-Type", "application/json"),
        ],
        r#"{"asset_id":"q1","rep_id":"r1","medium":"quote"}"#,
    )
    .await?;
    assert_eq!(r.status, 200, "POST /v1/assets: {}", r.text());
    let minted = r.json()?;
    let offline = server::mint(
        &Keys::new(&[KeySpec {
            id: KEY_ID.into(),
            secret: Some(SECRET.into()),
            secret_env: None,
        }])
        .map_err(anyhow::Error::msg)?,
        &public_url,
        &["example.com".to_string()],
        &Claims {
            asset_id: "q1".into(),
            rep_id: "r1".into(),
            medium: "quote".into(),
            campaign: None,
        },
        None,
    )
    .map_err(anyhow::Error::msg)?;
    assert_eq!(
        offline.pixel_url,
        format!("{public_url}/px/{}.gif", offline.token)
    );
    assert_eq!(
        minted,
        json!({"asset_id": "q1", "token": offline.token, "pixel_url": offline.pixel_url}),
        "POST /v1/assets against server::mint"
    );
    let pixel_path = offline
        .pixel_url
        .strip_prefix(&public_url)
        .ok_or_else(|| anyhow!("{} is not under {public_url}", offline.pixel_url))?;

    // 2. The quote goes out by email, two minutes ago.
    let sent_at = now_ms() - 2 * MINUTE_MS;
    send_event(
        collector,
        &json!({
            "event_id": "e2e-quote",
            "kind": "crm.action",
            "ts": rfc3339(sent_at),
            "rep_id": "r1",
            "customer_id": "c1",
            "action": "quote_sent",
            "channel": "email",
            "asset_id": "q1",
        }),
    )
    .await?;

    // 3. The customer opens it: the pixel URL as curl fetches it.
    let excluded_before = metric(&metrics_text(metrics).await?, EXCLUDED)?.unwrap_or(0.0);
    let before = now_ms();
    let r = curl_get(collector, &format!("{pixel_path}?e=open")).await?;
    let after = now_ms();
    assert_eq!(r.status, 200, "pixel: {r:?}");
    assert_eq!(r.body, GIF, "pixel body");
    assert_eq!(r.header("content-type"), Some("image/gif"), "{r:?}");
    assert_eq!(
        r.header("cache-control"),
        Some("no-cache, no-store, must-revalidate"),
        "{r:?}"
    );

    // The hit lands on the input stream as a `pixel.hit` of q1 at the collector's clock.
    let hit = wait_or_dump("the pixel.hit on TOUCH_IN", &js, metrics, || async {
        read_stream(&js, "TOUCH_IN")
            .await
            .ok()?
            .into_iter()
            .find(|m| m.subject == "touch.in.pixel.hit")
    })
    .await?;
    let h = &hit.json;
    assert_eq!(h["kind"], "pixel.hit", "{h}");
    assert_eq!(h["asset_id"], "q1", "{h}");
    assert_eq!(h["hit"], "open", "{h}");
    assert_eq!(h["ua"], CURL_UA, "{h}");
    assert_eq!(h["ip"], "127.0.0.0", "IPv4 anonymised to /24: {h}");
    assert_eq!(
        hit.msg_id.as_deref(),
        h["event_id"].as_str(),
        "Nats-Msg-Id: {h}"
    );
    let ts = h["ts"].as_str().ok_or_else(|| anyhow!("no ts: {h}"))?;
    assert_eq!(h["received_at"].as_str(), Some(ts), "{h}");
    let opened_at = millis(ts)?;
    assert!(
        (before..=after).contains(&opened_at),
        "open at {ts}, requested between {} and {}",
        rfc3339(before),
        rfc3339(after)
    );
    // More than 10 s after the send, no proxy user agent, the first open: a counted open.
    assert!(opened_at - sent_at >= PREFETCH_MS, "{sent_at} {opened_at}");

    // 4. The open counts toward the headline rule once the watermark passes it: a tick ten
    // minutes ahead brings the watermark (tick − 5 min) past the send and the open.
    let tick1 = now_ms() + 10 * MINUTE_MS;
    assert!(tick1 - LATENESS_MS > opened_at);
    send_event(collector, &tick("e2e-tick-1", tick1)).await?;
    wait_or_dump(
        &format!("{COUNTED} 1 on /metrics"),
        &js,
        metrics,
        || async {
            let body = metrics_text(metrics).await.ok()?;
            (metric(&body, COUNTED).ok()?? == 1.0).then_some(())
        },
    )
    .await?;
    let body = metrics_text(metrics).await?;
    assert_eq!(
        metric(&body, EXCLUDED)?.unwrap_or(0.0),
        excluded_before,
        "the open was excluded as well as counted?\nseen:\n{}",
        seen(&js, metrics).await
    );

    // 5. The open is part of the pair's session. A tick an hour ahead brings the watermark
    // past the open + the 30 min gap, which closes the session.
    let tick2 = now_ms() + 60 * MINUTE_MS;
    assert!(tick2 - LATENESS_MS > opened_at + GAP_MS);
    send_event(collector, &tick("e2e-tick-2", tick2)).await?;
    let session_id = format!("r1:c1:{sent_at}");
    let sessions: Vec<Stored> = wait_or_dump(
        &format!("session {session_id} on TOUCH_SESSIONS"),
        &js,
        metrics,
        || async {
            read_stream(&js, "TOUCH_SESSIONS").await.ok().filter(|s| {
                s.iter()
                    .any(|r| r.msg_id.as_deref() == Some(session_id.as_str()))
            })
        },
    )
    .await?;
    // By hand (EVENTS.md §4, §8): the pair r1/c1 has two events, the quote at `sent_at` and
    // the open at `opened_at`, 2 min apart (within the 30 min gap): one session from the quote
    // to the open; the open takes its asset's channel, email; one counted open; no messages.
    // The presence ticks are no interaction: no other session.
    let want = json!({
        "session_id": session_id,
        "rep_id": "r1",
        "customer_id": "c1",
        "start": rfc3339(sent_at),
        "end": rfc3339(opened_at),
        "event_count": 2,
        "channels": ["email"],
        "opens": 1,
        "messages_in": 0,
        "messages_out": 0,
    });
    let all: Vec<&Value> = sessions.iter().map(|s| &s.json).collect();
    assert_eq!(sessions.len(), 1, "exactly one session: {all:#?}");
    let s = &sessions[0].json;
    assert_eq!(sessions[0].subject, "touch.sessions", "{s}");
    for field in want.as_object().into_iter().flatten().map(|(k, _)| k) {
        assert_eq!(s[field], want[field], "session field `{field}`: {s}");
    }
    assert_eq!(
        s.as_object().map(|o| o.len()),
        want.as_object().map(|o| o.len()),
        "session fields: {s}"
    );
    let (start, end) = (
        millis(s["start"].as_str().unwrap_or_default())?,
        millis(s["end"].as_str().unwrap_or_default())?,
    );
    assert!(
        (start..=end).contains(&opened_at),
        "the open is inside the session: {s}"
    );

    // Still one counted open and nothing excluded, no dead letter, no alert.
    let body = metrics_text(metrics).await?;
    assert_eq!(metric(&body, COUNTED)?, Some(1.0));
    assert_eq!(metric(&body, EXCLUDED)?.unwrap_or(0.0), excluded_before);
    let dead = read_stream(&js, "TOUCH_DLQ").await?;
    assert!(dead.is_empty(), "dead letters: {dead:#?}");
    let alerts = read_stream(&js, "TOUCH_ALERTS").await?;
    assert!(alerts.is_empty(), "alerts: {alerts:#?}");

    running.stop(WAIT).await?;
    drop(server);
    eprintln!("collect_e2e took {:?}", started.elapsed());
    Ok(())
}
