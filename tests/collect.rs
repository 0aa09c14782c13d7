//! The collector (issue 5) over real HTTP on loopback, with a private nats-server per test:
//! the pixel's GIF and the `pixel.hit` it publishes, forged and tampered tokens, tracked links
//! and open-redirect attempts, beacons, SDK batches (per-event results, limits, malformed
//! bodies), consent, minting, and NATS going away and coming back. Expectations come from the
//! issue and EVENTS.md, not from the server's code; the HTTP client is a raw socket, so what
//! is checked is exactly what goes over the wire.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use async_nats::jetstream::Context;
use serde_json::{Value, json};
use support::http::{Resp, dechunk, parse_head};
use support::{NatsServer, Stored, connect, now_ms, read_stream, rfc3339, wait_for};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use touchstream::collect::server::{self, ConsentCheck};
use touchstream::collect::token::{Claims, Keys};
use touchstream::collect::{CollectConfig, KeySpec};
use touchstream::event::Body;

/// Bound of every wait for something to land on a stream.
const WAIT: Duration = Duration::from_secs(30);
/// Bound of one HTTP exchange.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
const SECRET: &str = "collector-test-secret-0123456789abcdef";
const OTHER_SECRET: &str = "somebody-elses-secret-0123456789abcdef";
const PUBLIC_URL: &str = "https://t.example.net";
/// The exact 1×1 transparent GIF89a, written out here rather than taken from the server.
const GIF: [u8; 43] = [
    b'G', b'I', b'F', b'8', b'9', b'a', 1, 0, 1, 0, 0x80, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x21,
    0xf9, 4, 1, 0, 0, 0, 0, 0x2c, 0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 2, 0x44, 1, 0, 0x3b,
];
/// Requests from this loopback address come from "the proxy" (`trusted_proxies`); requests
/// from 127.0.0.1 come from an untrusted client.
const PROXY: &str = "127.0.0.2";

// ---------------------------------------------------------------------------------------------
// Harness

fn key(id: &str, secret: &str) -> KeySpec {
    KeySpec {
        id: id.into(),
        secret: Some(secret.into()),
        secret_env: None,
    }
}

fn config() -> CollectConfig {
    CollectConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        public_url: format!("{PUBLIC_URL}/"),
        keys: vec![key("k1", SECRET)],
        allowed_redirect_domains: vec!["example.com".into()],
        trusted_proxies: vec![PROXY.into(), "10.0.0.0/8".into()],
        max_body_bytes: 4096,
        max_batch_events: 10,
        request_timeout_ms: 3000,
        pixel_buffer_events: 1000,
    }
}

fn claims(asset: &str, rep: &str) -> Claims {
    Claims {
        asset_id: asset.into(),
        rep_id: rep.into(),
        medium: "quote".into(),
        campaign: None,
    }
}

/// A token minted with `SECRET` under key id `k1`.
fn token(asset: &str, rep: &str) -> String {
    Keys::new(&[key("k1", SECRET)])
        .and_then(|k| k.mint(&claims(asset, rep)).map_err(|e| e.to_string()))
        .expect("minting a test token")
}

/// A private nats-server with the input stream of the default pipeline and the output streams.
async fn start_nats() -> anyhow::Result<(NatsServer, Context)> {
    let server = NatsServer::start().await?;
    let (_client, js) = connect(&server.url()).await?;
    let pipeline = touchstream::config::Pipeline::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/default.toml"),
    )?;
    touchstream::source::jetstream::ensure_input_stream(&js, &pipeline).await?;
    touchstream::sinks::nats::ensure_output_streams(&js).await?;
    Ok((server, js))
}

/// A collector on a free loopback port, on a NATS connection of its own (as in production).
struct Collector {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Collector {
    async fn start(
        nats_url: &str,
        cfg: CollectConfig,
        consent: ConsentCheck,
    ) -> anyhow::Result<Collector> {
        let (_client, js) = connect(nats_url).await?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (addr, run) = server::bind(cfg, js, consent, async {
            let _ = rx.await;
        })
        .await?;
        Ok(Collector {
            addr,
            stop: Some(tx),
            task: tokio::spawn(run),
        })
    }

    /// Stops taking requests and waits until the buffered hits are published.
    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), &mut self.task)
            .await
            .map_err(|_| anyhow!("the collector did not stop within 20 s"))??
    }

    async fn get(&self, path: &str) -> anyhow::Result<Resp> {
        http(self.addr, None, "GET", path, &[], None).await
    }

    async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<Resp> {
        http(self.addr, None, "POST", path, headers, Some(body)).await
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One HTTP/1.1 exchange over a fresh connection (`Connection: close`), optionally from a
/// given loopback source address. `body: None` sends no body; `Some` sends it with a
/// `Content-Length` unless the headers ask for chunked transfer.
async fn http(
    addr: SocketAddr,
    from: Option<&str>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> anyhow::Result<Resp> {
    tokio::time::timeout(
        HTTP_TIMEOUT,
        exchange(addr, from, method, path, headers, body),
    )
    .await
    .map_err(|_| anyhow!("{method} {path}: no answer within {HTTP_TIMEOUT:?}"))?
}

async fn exchange(
    addr: SocketAddr,
    from: Option<&str>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> anyhow::Result<Resp> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(from) = from {
        socket.bind(SocketAddr::new(from.parse()?, 0))?;
    }
    let stream = socket.connect(addr).await.context("connecting")?;
    let (mut rd, mut wr) = stream.into_split();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && *v == "chunked");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if let (Some(b), false) = (body, chunked) {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        if chunked {
            for chunk in b.chunks(1000) {
                bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                bytes.extend_from_slice(chunk);
                bytes.extend_from_slice(b"\r\n");
            }
            bytes.extend_from_slice(b"0\r\n\r\n");
        } else {
            bytes.extend_from_slice(b);
        }
    }
    // Write and read at once: a server may answer (413) before it has read the whole body.
    let writing = tokio::spawn(async move {
        let _ = wr.write_all(&bytes).await;
        wr
    });
    let mut buf = Vec::new();
    let read = rd.read_to_end(&mut buf).await;
    let _ = writing.await;
    if buf.is_empty() {
        read.context("reading the response")?;
        bail!("empty response");
    }
    let mut resp = parse_head(&buf)?
        .ok_or_else(|| anyhow!("no end of headers in {:?}", String::from_utf8_lossy(&buf)))?;
    if resp.chunked() {
        resp.body = dechunk(&resp.body)?;
    }
    Ok(resp)
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The messages of `stream` whose subject is `subject`.
async fn on_subject(js: &Context, stream: &str, subject: &str) -> Vec<Stored> {
    read_stream(js, stream)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.subject == subject)
        .collect()
}

/// Waits until `stream` holds at least `n` messages on `subject`, and returns them all.
async fn wait_n(
    js: &Context,
    stream: &str,
    subject: &str,
    n: usize,
) -> anyhow::Result<Vec<Stored>> {
    wait_for(&format!("{n} message(s) on {subject}"), WAIT, || async {
        let got = on_subject(js, stream, subject).await;
        (got.len() >= n).then_some(got)
    })
    .await
}

/// Sends one valid pixel hit for asset `barrier` and waits until it is stored. Hits are
/// published in arrival order, so everything the collector queued before it is stored too.
async fn barrier(c: &Collector, js: &Context) -> anyhow::Result<Vec<Stored>> {
    let r = c
        .get(&format!("/px/{}.gif", token("barrier", "r1")))
        .await?;
    assert_eq!(r.status, 200);
    wait_for("the barrier hit", WAIT, || async {
        let all = on_subject(js, "TOUCH_IN", "touch.in.pixel.hit").await;
        all.iter()
            .any(|m| m.json["asset_id"] == "barrier")
            .then_some(())
    })
    .await?;
    read_stream(js, "TOUCH_IN").await
}

fn assert_gif(r: &Resp) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("image/gif"));
    assert_eq!(
        r.header("cache-control"),
        Some("no-cache, no-store, must-revalidate")
    );
    assert_eq!(r.body, GIF);
}

/// `ts` and `received_at` of a collector-made event: equal, RFC 3339 UTC with milliseconds,
/// and within a minute of now.
fn assert_stamped_now(ev: &Value) {
    let ts = ev["ts"].as_str().expect("ts is a string");
    assert_eq!(ev["received_at"].as_str(), Some(ts));
    assert!(ts.ends_with('Z') && ts.len() == 24, "{ts}");
    let ms = touchstream::event::parse_time(ts).expect("ts parses");
    assert!((ms - now_ms()).abs() < 60_000, "{ts}");
}

fn keys_of(v: &Value) -> HashSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn set(items: &[&str]) -> HashSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The value of the counter line `name{...labels...}` whose labels include all of `labels`.
fn counter(rendered: &str, name: &str, labels: &[&str]) -> Option<f64> {
    rendered
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|lab| l.contains(lab)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pixel_answers_the_gif_and_publishes_the_hit() -> anyhow::Result<()> {
    let (nats, js) = start_nats().await?;
    let c = Collector::start(&nats.url(), config(), server::allow_all()).await?;
    let t = token("q-1", "r1");
    let ua = "Mozilla/5.0 (Windows NT 10.0) Outlook/16.0";

    // From an untrusted client: its own X-Forwarded-For is ignored.
    let started = Instant::now();
    let r = http(
        c.addr,
        None,
        "GET",
        &format!("/px/{t}.gif?e=close&dwell_ms=65000&page=3"),
        &[("User-Agent", ua), ("X-Forwarded-For", "198.51.100.23")],
        None,
    )
    .await?;
    assert_gif(&r);
    assert!(started.elapsed() < Duration::from_secs(1));
    // Through the trusted proxy: the right-most address that is not a proxy.
    let r = http(
        c.addr,
        Some(PROXY),
        "GET",
        &format!("/px/{t}.gif?e=open"),
        &[
            ("User-Agent", ua),
            ("X-Forwarded-For", "1.2.3.4, 203.0.113.77, 10.1.2.3"),
        ],
        None,
    )
    .await?;
    assert_gif(&r);
    let r = http(
        c.addr,
        Some(PROXY),
        "GET",
        &format!("/px/{t}.gif?e=ping&page=0&dwell_ms=-5"),
        &[("X-Forwarded-For", "2001:db8:abcd:12::1")],
        None,
    )
    .await?;
    assert_gif(&r);
    // HEAD (a link checker) gets the headers and records nothing.
    let r = http(c.addr, None, "HEAD", &format!("/px/{t}.gif"), &[], None).await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/gif"));

    let hits = wait_n(&js, "TOUCH_IN", "touch.in.pixel.hit", 3).await?;
    let allowed = set(&[
        "event_id",
        "kind",
        "ts",
        "received_at",
        "asset_id",
        "hit",
        "dwell_ms",
        "page",
        "ua",
        "ip",
    ]);
    for h in &hits {
        assert_eq!(h.json["kind"], "pixel.hit");
        assert_eq!(h.json["asset_id"], "q-1");
        assert_eq!(h.msg_id.as_deref(), h.json["event_id"].as_str());
        assert!(keys_of(&h.json).is_subset(&allowed), "{}", h.json);
        assert_stamped_now(&h.json);
        // What went on the stream passes the pipeline's own decoder.
        touchstream::event::decode(h.json.to_string().as_bytes())
            .map_err(|e| anyhow!("{e}: {}", h.json))?;
    }
    let ids: HashSet<&str> = hits
        .iter()
        .filter_map(|h| h.json["event_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 3, "event ids are unique");

    let close = &hits[0].json;
    assert_eq!(close["hit"], "close");
    assert_eq!(close["dwell_ms"], 65000);
    assert_eq!(close["page"], 3);
    assert_eq!(close["ua"], ua);
    assert_eq!(close["ip"], "127.0.0.0", "the peer, to its /24");
    let open = &hits[1].json;
    assert_eq!(open["hit"], "open");
    assert_eq!(open["ip"], "203.0.113.0");
    assert!(open.get("dwell_ms").is_none() && open.get("page").is_none());
    let ping = &hits[2].json;
    assert_eq!(ping["hit"], "ping");
    assert_eq!(ping["ip"], "2001:db8:abcd::", "IPv6 to its /48");
    assert!(ping.get("page").is_none(), "page 0 is not a page");
    assert!(ping.get("dwell_ms").is_none() && ping.get("ua").is_none());

    // The HEAD request left nothing; stopping drains what is buffered.
    for i in 0..20 {
        let r = c
            .get(&format!("/px/{}.gif", token(&format!("drain-{i}"), "r1")))
            .await?;
        assert_gif(&r);
    }
    c.stop().await?;
    let all = on_subject(&js, "TOUCH_IN", "touch.in.pixel.hit").await;
    assert_eq!(all.len(), 23, "3 hits, no HEAD, 20 drained at shutdown");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_tampered_tokens_get_the_gif_but_no_event() -> anyhow::Result<()> {
    let (nats, js) = start_nats().await?;
    // Rotation: a new key signs, the old one still verifies.
    let mut cfg = config();
    cfg.keys = vec![
        key("k2", "the-new-key-after-rotation-0123456789"),
        key("k1", SECRET),
    ];
    let c = Collector::start(&nats.url(), cfg, server::allow_all()).await?;
    let metrics = touchstream::telemetry::exporter::install();

    let good = token("q-9", "r1");
    let (payload, tag) = good.split_once('.').unwrap();
    let mut tampered_payload = payload.to_string();
    // Change one character of the payload (the asset id): the MAC no longer matches.
    let last = tampered_payload.pop().unwrap();
    tampered_payload.push(if last == 'A' { 'B' } else { 'A' });
    let mut tampered_tag = tag.to_string();
    let first = tampered_tag.remove(0);
    tampered_tag.insert(0, if first == 'A' { 'B' } else { 'A' });
    let foreign = Keys::new(&[key("k1", OTHER_SECRET)])
        .unwrap()
        .mint(&claims("q-9", "r1"))
        .unwrap();
    let removed_key = Keys::new(&[key("k0", SECRET)])
        .unwrap()
        .mint(&claims("q-9", "r1"))
        .unwrap();
    let bad = [
        "not-a-token".to_string(),
        "AAAA.BBBB".to_string(),
        format!("{tampered_payload}.{tag}"),
        format!("{payload}.{tampered_tag}"),
        foreign,
        removed_key,
        "x".repeat(5000),
    ];
    for t in &bad {
        let r = c.get(&format!("/px/{t}.gif?e=open")).await?;
        assert_gif(&r);
    }
    // A tracked link with a bad token: 400, no redirect.
    let r = c
        .get(&format!(
            "/l/{}.{tag}?u={}",
            tampered_payload,
            enc("https://example.com/")
        ))
        .await?;
    assert_eq!(r.status, 400);
    assert!(r.header("location").is_none());

    let dead = wait_n(&js, "TOUCH_DLQ", "touch.dlq.bad_token", bad.len() + 1).await?;
    for (d, t) in dead.iter().zip(&bad) {
        assert_eq!(d.json["reason"], "bad_token");
        assert_eq!(
            d.json["raw"],
            format!("/px/{t}.gif?e=open")
                .chars()
                .take(2048)
                .collect::<String>()
        );
        assert!(
            !d.json["error"].as_str().unwrap_or("").is_empty(),
            "{}",
            d.json
        );
        assert!(d.json["at"].is_string());
        assert!(d.msg_id.is_some());
    }
    assert!(
        dead[bad.len()].json["raw"]
            .as_str()
            .unwrap_or("")
            .starts_with("/l/")
    );

    // Not one event from the bad tokens: only the barrier (whose token was signed by the old,
    // still listed key) is on the input stream.
    let input = barrier(&c, &js).await?;
    assert_eq!(input.len(), 1, "{input:?}");
    assert_eq!(input[0].json["asset_id"], "barrier");

    let rendered = metrics.render();
    let counted = counter(
        &rendered,
        "touchstream_collect_bad_tokens_total",
        &["endpoint=\"pixel\""],
    );
    assert!(counted.is_some_and(|n| n >= bad.len() as f64), "{rendered}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracked_links_redirect_to_allowed_domains_only() -> anyhow::Result<()> {
    let (nats, js) = start_nats().await?;
    let c = Collector::start(&nats.url(), config(), server::allow_all()).await?;
    let t = token("q-7", "r1");

    let target = "https://www.Example.com/products/x?a=1&utm_source=old&b=two%20words#specs";
    let r = http(
        c.addr,
        None,
        "GET",
        &format!("/l/{t}?u={}", enc(target)),
        &[("Referer", "https://mail.example.org/inbox")],
        None,
    )
    .await?;
    assert_eq!(r.status, 302, "{}", r.text());
    let location = r.header("location").expect("a Location").to_string();
    assert_eq!(
        location,
        "https://www.example.com/products/x?a=1&b=two%20words&utm_source=touchstream\
         &utm_medium=quote&utm_campaign=none&utm_content=q-7#specs"
    );
    let query: HashMap<String, String> = url::Url::parse(&location)?
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(query["utm_source"], "touchstream");
    assert_eq!(query["utm_medium"], "quote");
    assert_eq!(query["utm_content"], "q-7");

    // With a campaign in the token.
    let keys = Keys::new(&[key("k1", SECRET)]).unwrap();
    let campaign = keys
        .mint(&Claims {
            campaign: Some("spring-2026".into()),
            medium: "proposal".into(),
            ..claims("p-3", "r1")
        })
        .unwrap();
    let r = c
        .get(&format!("/l/{campaign}?u={}", enc("http://example.com")))
        .await?;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some(
            "http://example.com/?utm_source=touchstream&utm_medium=proposal\
             &utm_campaign=spring-2026&utm_content=p-3"
        )
    );

    for evil in [
        "https://evil.com/",
        "https://example.com@evil.com/",
        "https://example.com:pw@evil.com/",
        "https://evil.com/?x=example.com",
        "https://evil.com/#example.com",
        "https://example.com.evil.com/",
        "https://evilexample.com/",
        "https://evil.com\\@example.com/",
        "https:\\\\evil.com",
        "https:/\\evil.com",
        "//evil.com",
        "///evil.com",
        "/\\evil.com",
        "evil.com",
        "javascript:alert(document.domain)//example.com",
        "data:text/html,<script>alert(1)</script>",
        "ftp://example.com/",
        "https://%65vil.com/",
        "https://example.com%2F@evil.com/",
        "https://[::1]/",
        "https://93.184.216.34/",
        " https://example.com/",
        "https://example.com/\r\nSet-Cookie: a=b",
        "",
    ] {
        let r = c.get(&format!("/l/{t}?u={}", enc(evil))).await?;
        assert_eq!(
            r.status,
            400,
            "{evil:?} answered {}: {}",
            r.status,
            r.text()
        );
        assert!(r.header("location").is_none(), "{evil:?} redirected");
        assert!(r.text().contains("refused"), "{evil:?}: {}", r.text());
    }
    let r = c.get(&format!("/l/{t}")).await?;
    assert_eq!(r.status, 400);
    assert!(r.header("location").is_none());
    assert!(r.text().contains("u="), "{}", r.text());

    // Exactly the two landings were published, as web.hit with the final URL.
    barrier(&c, &js).await?;
    let web = on_subject(&js, "TOUCH_IN", "touch.in.web.hit").await;
    assert_eq!(web.len(), 2, "{web:?}");
    let hit = &web[0].json;
    assert_eq!(hit["kind"], "web.hit");
    assert_eq!(hit["url"], location.as_str());
    assert_eq!(hit["referrer"], "https://mail.example.org/inbox");
    assert_eq!(web[0].msg_id.as_deref(), hit["event_id"].as_str());
    assert_eq!(
        keys_of(hit),
        set(&["event_id", "kind", "ts", "received_at", "url", "referrer"])
    );
    assert_stamped_now(hit);
    assert!(web[1].json.get("referrer").is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_website_beacon_becomes_a_web_hit() -> anyhow::Result<()> {
    let (nats, js) = start_nats().await?;
    let c = Collector::start(&nats.url(), config(), server::allow_all()).await?;

    // navigator.sendBeacon sends a string as text/plain.
    let body = json!({
        "url": "https://www.example.com/products/a?utm_content=q-1",
        "referrer": "https://search.example/",
        "visitor_id": "v-42",
        "extra": "ignored"
    });
    let r = c
        .post(
            "/v1/web",
            &[("Content-Type", "text/plain;charset=UTF-8")],
            body.to_string().as_bytes(),
        )
        .await?;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let r = c
        .post(
            "/v1/web",
            &[("Content-Type", "application/json")],
            br#"{"url":"https://www.example.com/","referrer":null}"#,
        )
        .await?;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = http(c.addr, None, "OPTIONS", "/v1/web", &[], None).await?;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));

    for bad in [
        &b"not json"[..],
        br#"["https://www.example.com/"]"#,
        br#"{"referrer":"x"}"#,
        br#"{"url":"www.example.com/no-scheme"}"#,
        br#"{"url":"https://www.example.com/","visitor_id":7}"#,
    ] {
        let r = c.post("/v1/web", &[], bad).await?;
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(bad));
        assert!(r.json()?["error"].is_string());
    }

    barrier(&c, &js).await?;
    let web = on_subject(&js, "TOUCH_IN", "touch.in.web.hit").await;
    assert_eq!(web.len(), 2, "{web:?}");
    let hit = &web[0].json;
    assert_eq!(
        hit["url"],
        "https://www.example.com/products/a?utm_content=q-1"
    );
    assert_eq!(hit["referrer"], "https://search.example/");
    assert_eq!(hit["visitor_id"], "v-42");
    assert_eq!(
        keys_of(hit),
        set(&[
            "event_id",
            "kind",
            "ts",
            "received_at",
            "url",
            "referrer",
            "visitor_id"
        ])
    );
    assert_stamped_now(hit);
    assert_eq!(
        keys_of(&web[1].json),
        set(&["event_id", "kind", "ts", "received_at", "url"])
    );
    Ok(())
}

fn quote_sent(id: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","kind":"crm.action","ts":"{}","rep_id":"r1","customer_id":"c1","action":"quote_sent","channel":"email","asset_id":"q-{id}"}}"#,
        rfc3339(now_ms() - 60_000)
    )
}

fn wecom_message(id: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","kind":"wecom.message","ts":"{}","wecom_userid":"wx_r1","external_userid":"wo_c1","direction":"in"}}"#,
        rfc3339(now_ms() - 30_000)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_batches_get_a_result_per_event_after_the_acks() -> anyhow::Result<()> {
    let (nats, js) = start_nats().await?;
    let c = Collector::start(&nats.url(), config(), server::allow_all()).await?;

    // A JSON array: valid, schema violation (no ts), valid, unknown kind.
    let array = format!(
        "[{}, {}, {}, {}]",
        quote_sent("sdk-1"),
        r#"{"event_id":"sdk-bad-1","kind":"pixel.hit","asset_id":"q","hit":"open"}"#,
        wecom_message("sdk-2"),
        r#"{"event_id":"sdk-bad-2","kind":"fax.sent","ts":0}"#,
    );
    let r = c
        .post(
            "/v1/events",
            &[("Content-Type", "application/json")],
            array.as_bytes(),
        )
        .await?;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json()?;
    assert_eq!(v["accepted"], 2, "{v}");
    assert_eq!(v["rejected"], 2, "{v}");
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["index"], 0);
    assert_eq!(results[0]["status"], "accepted");
    assert_eq!(results[0]["event_id"], "sdk-1");
    assert_eq!(results[1]["index"], 1);
    assert_eq!(results[1]["status"], "rejected");
    assert_eq!(results[1]["reason"], "schema_violation");
    assert!(
        results[1]["error"].as_str().unwrap_or("").contains("ts"),
        "{v}"
    );
    assert_eq!(results[2]["status"], "accepted");
    assert_eq!(results[2]["event_id"], "sdk-2");
    assert_eq!(results[3]["status"], "rejected");
    assert_eq!(results[3]["reason"], "schema_violation");

    // The 200 came after the acks: the accepted events are already stored, with their ids.
    let stored = read_stream(&js, "TOUCH_IN").await?;
    let by_id: HashMap<String, &Stored> = stored
        .iter()
        .filter_map(|m| Some((m.msg_id.clone()?, m)))
        .collect();
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(by_id["sdk-1"].subject, "touch.in.crm.action");
    assert_eq!(by_id["sdk-2"].subject, "touch.in.wecom.message");
    for m in &stored {
        assert_eq!(m.msg_id.as_deref(), m.json["event_id"].as_str());
        assert_stamped_now_received(&m.json);
    }

    // NDJSON, sent as text/plain, with a line that is not JSON.
    let ndjson = format!(
        "{}\n{{\"event_id\": \"sdk-broken\", \"kind\":\n{}\n",
        quote_sent("sdk-3"),
        wecom_message("sdk-4")
    );
    let r = c
        .post(
            "/v1/events",
            &[("Content-Type", "text/plain")],
            ndjson.as_bytes(),
        )
        .await?;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json()?;
    assert_eq!(v["accepted"], 2, "{v}");
    assert_eq!(v["rejected"], 1, "{v}");
    assert_eq!(v["results"][1]["reason"], "invalid_json", "{v}");

    // Sending a batch again (a client retry) is answered the same and stored once.
    let r = c.post("/v1/events", &[], array.as_bytes()).await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()?["accepted"], 2);
    let stored = read_stream(&js, "TOUCH_IN").await?;
    let ids: Vec<String> = stored.iter().filter_map(|m| m.msg_id.clone()).collect();
    assert_eq!(ids, ["sdk-1", "sdk-2", "sdk-3", "sdk-4"]);
    Ok(())
}

/// SDK events keep their own `ts`; `received_at` is the collector's clock.
fn assert_stamped_now_received(ev: &Value) {
    let at = ev["received_at"].as_str().expect("received_at");
    let ms = touchstream::event::parse_time(at).expect("received_at parses");
    assert!((ms - now_ms()).abs() < 60_000, "{at}");
    assert_ne!(ev["ts"], ev["received_at"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_batches_are_refused_whole() -> anyhow::Result<()> {
    let (nats, js) = start_nats().await?;
    let c = Collector::start(&nats.url(), config(), server::allow_all()).await?;

    // Larger than max_body_bytes (4096): declared up front, streamed without a length, and
    // far larger than any buffer.
    let big: String = (0..40)
        .map(|i| quote_sent(&format!("big-{i}")) + "\n")
        .collect();
    assert!(big.len() > 4096);
    let huge = vec![b' '; 8 << 20];
    for (what, headers, body) in [
        ("declared", vec![], big.as_bytes()),
        (
            "chunked",
            vec![("Transfer-Encoding", "chunked")],
            big.as_bytes(),
        ),
        ("8 MiB", vec![], &huge[..]),
    ] {
        let r = c.post("/v1/events", &headers, body).await?;
        assert_eq!(r.status, 413, "{what}: {}", r.text());
        let msg = r.json()?["error"].as_str().unwrap_or_default().to_string();
        assert!(
            msg.contains("4096") && msg.contains("max_body_bytes"),
            "{what}: {msg}"
        );
    }
    // More events than max_batch_events (10), each small.
    let many: String = (0..11)
        .map(|i| quote_sent(&format!("m-{i}")) + "\n")
        .collect();
    assert!(many.len() < 4096);
    let r = c.post("/v1/events", &[], many.as_bytes()).await?;
    assert_eq!(r.status, 413, "{}", r.text());
    let msg = r.json()?["error"].as_str().unwrap_or_default().to_string();
    assert!(
        msg.contains("10") && msg.contains("max_batch_events"),
        "{msg}"
    );

    for (what, body) in [
        ("truncated array", &br#"[{"event_id":"x","kind":"#[..]),
        ("empty", b""),
        ("whitespace", b" \n\n "),
        ("empty array", b"[]"),
    ] {
        let r = c.post("/v1/events", &[], body).await?;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert!(r.json()?["error"].is_string(), "{what}");
    }
    // Nothing of any of it was stored.
    let input = barrier(&c, &js).await?;
    assert_eq!(input.len(), 1, "{input:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_a_rep_switched_off_are_dropped_at_the_door() -> anyhow::Result<()> {
    let (nats, js) = start_nats().await?;
    // Rep r1 has switched chat off; rep r-off has switched tracking off.
    let consent: ConsentCheck = Arc::new(|body: &Body, rep: Option<&str>| {
        !matches!(body, Body::WecomMessage(_)) && rep != Some("r-off")
    });
    let c = Collector::start(&nats.url(), config(), consent).await?;
    let metrics = touchstream::telemetry::exporter::install();

    let batch = format!("[{}, {}]", wecom_message("chat-1"), quote_sent("crm-1"));
    let r = c.post("/v1/events", &[], batch.as_bytes()).await?;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json()?;
    assert_eq!(v["accepted"], 1, "{v}");
    assert_eq!(v["results"][0]["status"], "rejected");
    assert_eq!(v["results"][0]["reason"], "consent");
    assert_eq!(v["results"][1]["status"], "accepted");

    let off = token("q-off", "r-off");
    assert_gif(&c.get(&format!("/px/{off}.gif")).await?);
    let r = c
        .get(&format!("/l/{off}?u={}", enc("https://example.com/x")))
        .await?;
    assert_eq!(r.status, 302, "the visitor still lands");

    let input = barrier(&c, &js).await?;
    let ids: Vec<Option<&str>> = input.iter().map(|m| m.msg_id.as_deref()).collect();
    assert_eq!(input.len(), 2, "{ids:?}");
    assert_eq!(ids[0], Some("crm-1"));
    assert_eq!(input[1].json["asset_id"], "barrier");

    let rendered = metrics.render();
    for endpoint in ["events", "pixel", "link"] {
        let n = counter(
            &rendered,
            "touchstream_collect_consent_dropped_total",
            &[&format!("endpoint=\"{endpoint}\"")],
        );
        assert!(n.is_some_and(|n| n >= 1.0), "{endpoint}: {rendered}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_are_minted_for_the_holder_of_the_key() -> anyhow::Result<()> {
    let (nats, js) = start_nats().await?;
    let c = Collector::start(&nats.url(), config(), server::allow_all()).await?;
    let body = json!({
        "asset_id": "q-42", "rep_id": "r1", "medium": "quote", "campaign": "autumn",
        "target_url": "https://example.com/products/x"
    })
    .to_string();

    for auth in [
        None,
        Some("Bearer wrong"),
        Some(&*format!("Basic {SECRET}")),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let r = c.post("/v1/assets", &headers, body.as_bytes()).await?;
        assert_eq!(r.status, 401, "{auth:?}");
    }
    let bearer = format!("Bearer {SECRET}");
    let r = c
        .post("/v1/assets", &[("Authorization", &bearer)], body.as_bytes())
        .await?;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json()?;
    let token = v["token"].as_str().expect("token").to_string();
    let verified = Keys::new(&[key("k1", SECRET)])
        .unwrap()
        .verify(&token)
        .unwrap();
    assert_eq!(verified.asset_id, "q-42");
    assert_eq!(verified.campaign.as_deref(), Some("autumn"));
    assert_eq!(v["pixel_url"], format!("{PUBLIC_URL}/px/{token}.gif"));
    assert_eq!(
        v["link_url"],
        format!(
            "{PUBLIC_URL}/l/{token}?u={}",
            enc("https://example.com/products/x")
        )
    );
    // `touchstream token` mints the same without a server.
    let direct = server::mint(
        &Keys::new(&[key("k1", SECRET)]).map_err(anyhow::Error::msg)?,
        PUBLIC_URL,
        &["example.com".to_string()],
        &Claims {
            campaign: Some("autumn".into()),
            ..claims("q-42", "r1")
        },
        Some("https://example.com/products/x"),
    )
    .map_err(anyhow::Error::msg)?;
    assert_eq!(direct.token, token);
    assert_eq!(Some(direct.pixel_url.as_str()), v["pixel_url"].as_str());
    assert_eq!(direct.link_url.as_deref(), v["link_url"].as_str());

    // The minted URLs work.
    let pixel = v["pixel_url"]
        .as_str()
        .unwrap()
        .trim_start_matches(PUBLIC_URL);
    assert_gif(&c.get(pixel).await?);
    let link = v["link_url"]
        .as_str()
        .unwrap()
        .trim_start_matches(PUBLIC_URL);
    let r = c.get(link).await?;
    assert_eq!(r.status, 302);
    assert!(
        r.header("location")
            .unwrap_or_default()
            .starts_with("https://example.com/products/x?utm_source=touchstream&utm_medium=quote&utm_campaign=autumn&utm_content=q-42")
    );
    let hits = wait_n(&js, "TOUCH_IN", "touch.in.pixel.hit", 1).await?;
    assert_eq!(hits[0].json["asset_id"], "q-42");

    // A target outside the allowed domains, and claims the token cannot carry.
    for bad in [
        json!({"asset_id": "q-1", "rep_id": "r1", "medium": "quote", "target_url": "https://evil.com/"}),
        json!({"asset_id": "q-1", "rep_id": "r1", "medium": "Quote!"}),
        json!({"asset_id": "", "rep_id": "r1", "medium": "quote"}),
        json!({"rep_id": "r1", "medium": "quote"}),
    ] {
        let r = c
            .post(
                "/v1/assets",
                &[("Authorization", &bearer)],
                bad.to_string().as_bytes(),
            )
            .await?;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(r.json()?["error"].is_string());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_nats_is_away_hits_are_buffered_and_batches_refused() -> anyhow::Result<()> {
    let (mut nats, js) = start_nats().await?;
    let metrics = touchstream::telemetry::exporter::install();
    let a = Collector::start(&nats.url(), config(), server::allow_all()).await?;
    // A second collector whose buffer holds three hits.
    let mut small = config();
    small.pixel_buffer_events = 3;
    let b = Collector::start(&nats.url(), small, server::allow_all()).await?;

    let before = format!("[{}, {}]", quote_sent("pre-1"), quote_sent("pre-2"));
    let r = a.post("/v1/events", &[], before.as_bytes()).await?;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()?["accepted"], 2);

    nats.stop();
    // Pixels never wait for NATS.
    for i in 0..25 {
        let started = Instant::now();
        assert_gif(
            &a.get(&format!(
                "/px/{}.gif?e=open",
                token(&format!("out-a-{i}"), "r1")
            ))
            .await?,
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "hit {i} waited for NATS"
        );
    }
    for i in 0..6 {
        assert_gif(
            &b.get(&format!("/px/{}.gif", token(&format!("out-b-{i}"), "r1")))
                .await?,
        );
    }
    // An SDK batch cannot be stored: 503, Retry-After, nothing reported accepted.
    let during = format!("[{}, {}]", quote_sent("mid-1"), wecom_message("mid-2"));
    let started = Instant::now();
    let r = a.post("/v1/events", &[], during.as_bytes()).await?;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(5));
    let retry: u64 = r
        .header("retry-after")
        .and_then(|s| s.parse().ok())
        .expect("a Retry-After in seconds");
    assert!(retry >= 1);
    let v = r.json()?;
    assert!(
        v.get("results").is_none() && v.get("accepted").is_none(),
        "{v}"
    );
    assert_eq!(a.get("/healthz").await?.status, 200);

    nats.restart().await?;
    // Every buffered hit of `a` arrives; `b` kept the three it had room for.
    let hits = wait_for("the buffered hits", Duration::from_secs(60), || async {
        let hits = on_subject(&js, "TOUCH_IN", "touch.in.pixel.hit").await;
        let a_hits = hits
            .iter()
            .filter(|h| {
                h.json["asset_id"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("out-a-"))
            })
            .count();
        let b_hits = hits.len() - a_hits;
        (a_hits == 25 && b_hits >= 3).then_some(hits)
    })
    .await?;
    let assets: HashSet<&str> = hits
        .iter()
        .filter_map(|h| h.json["asset_id"].as_str())
        .collect();
    for i in 0..25 {
        assert!(assets.contains(format!("out-a-{i}").as_str()));
    }
    let ids: HashSet<&str> = hits.iter().filter_map(|h| h.msg_id.as_deref()).collect();
    assert_eq!(ids.len(), hits.len(), "each hit stored once");

    // The client retries the refused batch: now accepted and stored.
    let r = wait_for("the batch to be accepted", WAIT, || async {
        let r = a.post("/v1/events", &[], during.as_bytes()).await.ok()?;
        (r.status == 200).then_some(r)
    })
    .await?;
    assert_eq!(r.json()?["accepted"], 2);

    // Settle `b`, then count: exactly three of its six hits, and no accepted event lost.
    barrier(&b, &js).await?;
    let stored = read_stream(&js, "TOUCH_IN").await?;
    let b_hits = stored
        .iter()
        .filter(|m| {
            m.json["asset_id"]
                .as_str()
                .is_some_and(|s| s.starts_with("out-b-"))
        })
        .count();
    assert_eq!(b_hits, 3);
    let batch_ids: Vec<&str> = stored
        .iter()
        .filter(|m| m.subject != "touch.in.pixel.hit")
        .filter_map(|m| m.msg_id.as_deref())
        .collect();
    assert_eq!(batch_ids, ["pre-1", "pre-2", "mid-1", "mid-2"]);

    let rendered = metrics.render();
    let dropped = counter(
        &rendered,
        "touchstream_collect_dropped_total",
        &["buffer=\"hits\"", "reason=\"full\""],
    );
    assert!(dropped.is_some_and(|n| n >= 3.0), "{rendered}");
    let refused = counter(
        &rendered,
        "touchstream_collect_requests_total",
        &["endpoint=\"events\"", "status=\"503\""],
    );
    assert!(refused.is_some_and(|n| n >= 1.0), "{rendered}");
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

/// Reads from `stream` until the server closes it (or `limit` passes: an error); returns what
/// came before the close.
async fn read_until_closed(
    stream: &mut tokio::net::TcpStream,
    limit: Duration,
) -> anyhow::Result<Vec<u8>> {
    let mut got = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut got))
        .await
        .map_err(|_| anyhow!("the connection was still open after {limit:?}"))?
        .or_else(|e| {
            // A reset is a close too.
            (e.kind() == std::io::ErrorKind::ConnectionReset)
                .then_some(0)
                .ok_or(e)
        })?;
    Ok(got)
}

/// `got` is a whole `GET /healthz` response: 200 and `ok`.
fn assert_healthz_ok(got: &[u8]) {
    let text = String::from_utf8_lossy(got);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("ok\n"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_do_not_send_a_request_head_in_time_are_disconnected() -> anyhow::Result<()> {
    let (nats, _js) = start_nats().await?;
    let mut cfg = config();
    cfg.request_timeout_ms = 1000;
    let c = Collector::start(&nats.url(), cfg, server::allow_all()).await?;
    // Far more than the request timeout, far less than the test's patience.
    let limit = Duration::from_secs(15);

    // A head that stops half-way (a slow-loris client): closed, with no response, or an
    // error status and never a 200.
    let mut slow = tokio::net::TcpStream::connect(c.addr).await?;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: t.example.net\r\nUser-Ag")
        .await?;
    let got = read_until_closed(&mut slow, limit).await?;
    if !got.is_empty() {
        let head = String::from_utf8_lossy(&got);
        assert!(!head.starts_with("HTTP/1.1 200"), "{head}");
    }

    // A connection that sends nothing at all: closed too.
    let mut silent = tokio::net::TcpStream::connect(c.addr).await?;
    assert_eq!(read_until_closed(&mut silent, limit).await?, b"");

    // A keep-alive connection that answered a request and then stays idle: closed too.
    let mut idle = tokio::net::TcpStream::connect(c.addr).await?;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: t.example.net\r\n\r\n")
        .await?;
    let got = read_until_closed(&mut idle, limit).await?;
    assert_healthz_ok(&got);

    // A head sent in pieces well within the timeout is answered.
    let mut pieces = tokio::net::TcpStream::connect(c.addr).await?;
    pieces
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t.")
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    pieces
        .write_all(b"example.net\r\nConnection: close\r\n\r\n")
        .await?;
    let got = read_until_closed(&mut pieces, limit).await?;
    assert_healthz_ok(&got);
    // And the server still takes new requests.
    assert_eq!(c.get("/healthz").await?.status, 200);
    c.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_closes_idle_keep_alive_connections_and_refuses_new_ones() -> anyhow::Result<()> {
    let (nats, _js) = start_nats().await?;
    let mut cfg = config();
    // Far longer than `Collector::stop` waits: the head timer must not be what ends them.
    cfg.request_timeout_ms = 120_000;
    let c = Collector::start(&nats.url(), cfg, server::allow_all()).await?;
    let addr = c.addr;

    // Two keep-alive connections: one answered and idle, one that has sent nothing yet.
    let mut idle = tokio::net::TcpStream::connect(addr).await?;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: t.example.net\r\n\r\n")
        .await?;
    let mut head = [0u8; 12];
    idle.read_exact(&mut head).await?;
    assert_eq!(&head, b"HTTP/1.1 200");
    let mut silent = tokio::net::TcpStream::connect(addr).await?;
    // Let the server accept the silent one before stopping.
    tokio::time::sleep(Duration::from_millis(200)).await;

    c.stop().await?;
    // Both are closed by the server (not left to the 120 s head timer).
    read_until_closed(&mut idle, Duration::from_secs(5)).await?;
    assert_eq!(
        read_until_closed(&mut silent, Duration::from_secs(5)).await?,
        b""
    );
    // And nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    Ok(())
}
