//! Consent switches in a live run on a private nats-server (README "Consent (`[consent]`) and
//! personal data (PIPL)"): a value `{"off": [categories]}` under a rep's id in the key-value
//! bucket `touchstream_consent` switches those categories off for that rep. An event in a
//! switched-off category is dropped at the pipeline's NATS door (no session, no CDI), counted as
//! `touchstream_consent_dropped_total{category}`, and deleted from the input stream `TOUCH_IN`
//! once its batch is acked. A change of the bucket applies within one micro-batch; deleting the
//! key returns the rep to the pipeline file's setting (here: nothing off).
//!
//! Every expected figure is worked out by hand from the README (categories, CDI bands: high
//! ≥ 2.8, low < 1.5; sessions gap 30 min; watermark = greatest effective time − 5 min lateness),
//! not taken from a run.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{Context, kv};
use serde_json::Value;

use support::*;

/// Bound of every single wait; the whole test takes a few seconds when all is well.
const WAIT: Duration = Duration::from_secs(20);
/// After a change of the consent bucket: the README promises it applies within one micro-batch;
/// a batch waits at most `batch_max_wait_ms` = 200 ms for input, so this covers several.
const SETTLE: Duration = Duration::from_secs(1);
const MINUTE_MS: i64 = 60_000;
/// `[time] lateness` of the shipped pipeline.
const LATENESS_MS: i64 = 5 * MINUTE_MS;
const CONSENT_BUCKET: &str = "touchstream_consent";
const CDI_BUCKET: &str = "touchstream_cdi";
const INPUT: &str = "TOUCH_IN";
const DROPPED: &str = "touchstream_consent_dropped_total";

/// The shipped pipeline with test timings; health and CDI published every second instead of
/// every 15 s. No idle advancement: the watermark moves by event time alone (`tick`), so every
/// `as_of` and session boundary is known exactly.
fn fixture() -> anyhow::Result<Fixture> {
    let fx = Fixture::new(3600)?;
    let text = std::fs::read_to_string(&fx.pipeline)?;
    let from = "publish_interval_seconds = 15";
    if !text.contains(from) {
        bail!("pipelines/default.toml no longer has `{from}`; update tests/consent_live.rs");
    }
    std::fs::write(
        &fx.pipeline,
        text.replace(from, "publish_interval_seconds = 1"),
    )?;
    Ok(fx)
}

/// A `wecom.message`: `out` is from the rep (`wecom_userid`) to the customer.
fn wecom_out(event_id: &str, userid: &str, external: &str, t: i64) -> String {
    format!(
        r#"{{"event_id":"{event_id}","kind":"wecom.message","ts":"{}","wecom_userid":"{userid}","external_userid":"{external}","direction":"out"}}"#,
        rfc3339(t)
    )
}

/// A pair's CDI record as the bucket holds it (keys in alphabetical order, README "Outputs").
#[derive(Debug, Clone)]
struct Cdi {
    rep_id: &'static str,
    customer_id: &'static str,
    breadth: u64,
    cdi: u64,
    band: &'static str,
    as_of: i64,
}

impl Cdi {
    fn key(&self) -> String {
        format!("{}.{}", self.rep_id, self.customer_id)
    }

    /// Depth and density are 0 throughout: no asset is opened, and no customer message comes in.
    fn line(&self) -> String {
        format!(
            r#"{{"as_of":"{}","band":"{}","breadth":{},"cdi":{},"customer_id":"{}","density":0,"depth":0,"rep_id":"{}"}}"#,
            rfc3339(self.as_of),
            self.band,
            self.breadth,
            self.cdi,
            self.customer_id,
            self.rep_id
        )
    }

    /// `v` has these figures, `as_of` aside.
    fn same_figures(&self, v: &Value) -> bool {
        v["rep_id"] == self.rep_id
            && v["customer_id"] == self.customer_id
            && v["breadth"] == self.breadth
            && v["depth"] == 0
            && v["density"] == 0
            && v["cdi"] == self.cdi
            && v["band"] == self.band
    }
}

/// What a session record must say.
struct ExpectedSession {
    rep_id: &'static str,
    customer_id: &'static str,
    start: i64,
    channels: &'static [&'static str],
    messages_out: u64,
}

impl ExpectedSession {
    fn id(&self) -> String {
        format!("{}:{}:{}", self.rep_id, self.customer_id, self.start)
    }

    fn check(&self, sessions: &[Stored]) {
        let id = self.id();
        let found: Vec<&Stored> = sessions
            .iter()
            .filter(|s| s.msg_id.as_deref() == Some(id.as_str()))
            .collect();
        assert_eq!(found.len(), 1, "one session {id}: {sessions:#?}");
        let s = &found[0].json;
        assert_eq!(s["session_id"], id.as_str(), "{s}");
        assert_eq!(s["rep_id"], self.rep_id, "{s}");
        assert_eq!(s["customer_id"], self.customer_id, "{s}");
        assert_eq!(s["start"], rfc3339(self.start), "{s}");
        assert_eq!(s["event_count"], 1, "{s}");
        assert_eq!(s["channels"], serde_json::json!(self.channels), "{s}");
        assert_eq!(s["messages_out"], self.messages_out, "{s}");
        assert_eq!(s["messages_in"], 0, "{s}");
    }
}

/// One message of the input stream that is still held: (stream sequence, event_id).
type Held = (u64, String);

/// The input stream as it is now: the messages it still holds, in sequence order, and the
/// sequences between its first and last that it no longer holds (deleted messages leave gaps).
async fn read_input(js: &Context) -> anyhow::Result<(Vec<Held>, Vec<u64>)> {
    let mut s = js.get_stream(INPUT).await?;
    let state = s.info().await?.state.clone();
    let mut held = Vec::new();
    let mut gaps = Vec::new();
    if state.messages == 0 {
        return Ok((held, gaps));
    }
    for seq in state.first_sequence..=state.last_sequence {
        match s.get_raw_message(seq).await {
            Ok(m) => {
                let v: Value = serde_json::from_slice(&m.payload)
                    .with_context(|| format!("{INPUT} #{seq} is not JSON"))?;
                let id = v["event_id"].as_str().unwrap_or_default().to_string();
                let header = m.headers.get("Nats-Msg-Id").map(|h| h.as_str().to_string());
                assert_eq!(header.as_deref(), Some(id.as_str()), "{INPUT} #{seq}: {v}");
                held.push((seq, id));
            }
            Err(_) => gaps.push(seq),
        }
    }
    assert_eq!(
        held.len() as u64,
        state.messages,
        "{INPUT} says it holds {} messages; read {held:?}, missing {gaps:?}",
        state.messages
    );
    Ok((held, gaps))
}

fn holds(held: &[Held], event_id: &str) -> bool {
    held.iter().any(|(_, id)| id == event_id)
}

/// `touchstream_consent_dropped_total{category=...}` from `/metrics`; None when not exported.
async fn dropped(metrics: SocketAddr, category: &str) -> anyhow::Result<Option<f64>> {
    let (status, body) = http_get(metrics, "/metrics").await?;
    if !status.contains("200") {
        bail!("/metrics: {status}");
    }
    let label = format!("category=\"{category}\"");
    let mut value = None;
    for line in body.lines() {
        let Some(rest) = line.strip_prefix(DROPPED) else {
            continue;
        };
        let Some((labels, v)) = rest.rsplit_once(' ') else {
            continue;
        };
        if labels.starts_with('{') && labels.contains(&label) {
            let v: f64 = v
                .parse()
                .with_context(|| format!("/metrics line {line:?}"))?;
            value = Some(value.unwrap_or(0.0) + v);
        }
    }
    Ok(value)
}

/// Everything the run produced so far, for failure messages.
async fn seen(js: &Context, cdi: &kv::Store, metrics: SocketAddr) -> String {
    use futures::TryStreamExt as _;
    let mut out = String::new();
    let keys: Vec<String> = match cdi.keys().await {
        Ok(k) => k.try_collect().await.unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    out.push_str(&format!("{CDI_BUCKET}:\n"));
    for k in keys {
        let v = cdi.get(&k).await.ok().flatten().unwrap_or_default();
        out.push_str(&format!("  {k} = {}\n", String::from_utf8_lossy(&v)));
    }
    for stream in ["TOUCH_SESSIONS", "TOUCH_CDI", "TOUCH_DLQ"] {
        let records: Vec<Value> = read_stream(js, stream)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.json)
            .collect();
        out.push_str(&format!("{stream}: {records:#?}\n"));
    }
    out.push_str(&format!("{INPUT}: {:?}\n", read_input(js).await));
    out.push_str(&format!("input progress: {:?}\n", input_progress(js).await));
    let lines: Vec<String> = match http_get(metrics, "/metrics").await {
        Ok((_, body)) => body
            .lines()
            .filter(|l| l.starts_with(DROPPED) || l.starts_with("touchstream_events_in"))
            .map(str::to_string)
            .collect(),
        Err(e) => vec![format!("/metrics: {e}")],
    };
    out.push_str(&format!("/metrics: {lines:#?}\n"));
    out
}

/// Waits until the CDI bucket holds exactly `expected` under its key.
async fn wait_cdi(
    js: &Context,
    cdi: &kv::Store,
    metrics: SocketAddr,
    expected: &Cdi,
) -> anyhow::Result<()> {
    let want = expected.line();
    let k = expected.key();
    let found = wait_for(&format!("{CDI_BUCKET} {k} = {want}"), WAIT, || async {
        match cdi.entry(&k).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put && e.value == want.as_bytes() => {
                Some(())
            }
            _ => None,
        }
    })
    .await;
    if let Err(e) = found {
        bail!("{e:#}\nseen:\n{}", seen(js, cdi, metrics).await);
    }
    Ok(())
}

/// Waits until `TOUCH_SESSIONS` holds a session with `id`; returns every session.
async fn wait_session(
    js: &Context,
    cdi: &kv::Store,
    metrics: SocketAddr,
    id: &str,
) -> anyhow::Result<Vec<Stored>> {
    let found = wait_for(&format!("session {id}"), WAIT, || async {
        read_stream(js, "TOUCH_SESSIONS")
            .await
            .ok()
            .filter(|s| s.iter().any(|r| r.msg_id.as_deref() == Some(id)))
    })
    .await;
    match found {
        Ok(s) => Ok(s),
        Err(e) => bail!("{e:#}\nseen:\n{}", seen(js, cdi, metrics).await),
    }
}

/// Waits until every input is acked and the refused ones are gone from the input stream; then
/// checks that the kept ones are still there. Returns the messages held.
async fn wait_input(
    js: &Context,
    cdi: &kv::Store,
    metrics: SocketAddr,
    gone: &[&str],
    kept: &[&str],
) -> anyhow::Result<Vec<Held>> {
    if let Err(e) = wait_all_acked(js, WAIT).await {
        bail!("{e:#}\nseen:\n{}", seen(js, cdi, metrics).await);
    }
    // Refused inputs are deleted just after the batch's ack.
    let found = wait_for(&format!("{INPUT} without {gone:?}"), WAIT, || async {
        read_input(js)
            .await
            .ok()
            .filter(|(held, _)| gone.iter().all(|g| !holds(held, g)))
    })
    .await;
    let (held, _) = match found {
        Ok(h) => h,
        Err(e) => bail!("{e:#}\nseen:\n{}", seen(js, cdi, metrics).await),
    };
    for k in kept {
        assert!(
            holds(&held, k),
            "{INPUT} lost {k}, which was not refused: it holds {held:?}"
        );
    }
    Ok(held)
}

/// A run on a private nats-server, started after r1's value in the consent bucket was set to
/// `r1_off`; with the buckets it publishes to.
struct Started {
    server: NatsServer,
    js: Context,
    consent: kv::Store,
    cdi: kv::Store,
    metrics: SocketAddr,
    running: InProcessRun,
    /// The pipeline file and directory the run reads (kept until the test ends).
    _fx: Fixture,
}

async fn start(r1_off: &str) -> anyhow::Result<Started> {
    let server = NatsServer::start().await?;
    let url = server.url();
    let (_client, js) = connect(&url).await?;
    let consent = touchstream::live::open_kv(&js, CONSENT_BUCKET, Duration::ZERO).await?;
    consent.put("r1", r1_off.to_string().into()).await?;
    let fx = fixture()?;
    let metrics = free_addr()?;
    let running = InProcessRun::spawn(fx.run_args(&url, metrics));
    wait_input_stream(&js, WAIT).await?;
    let cdi = wait_for(&format!("the {CDI_BUCKET} bucket"), WAIT, || async {
        js.get_key_value(CDI_BUCKET).await.ok()
    })
    .await?;
    Ok(Started {
        server,
        js,
        consent,
        cdi,
        metrics,
        running,
        _fx: fx,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_switches_drop_count_and_forget_live() -> anyhow::Result<()> {
    let started = Instant::now();
    // Before the run: r1 switched chat off in the live bucket.
    let Started {
        server,
        js,
        consent,
        cdi,
        metrics,
        running,
        _fx,
    } = start(r#"{"off":["chat"]}"#).await?;
    let base = now_ms() - 3 * 60 * MINUTE_MS;

    // Phase 1: a WeCom message out from r1 to c1 (chat, off for r1) and one from r2 to c2; a
    // tick 40 min later brings the watermark (tick − 5 min) past r2's session end + 30 min gap.
    let r1_out_1 = "p1-r1-out";
    let r2_out = "p1-r2-out";
    let tick1 = base + 40 * MINUTE_MS;
    let phase1 = vec![
        wecom_out(r1_out_1, "wx_r1", "wo_c1", base),
        wecom_out(r2_out, "wx_r2", "wo_c2", base + MINUTE_MS),
        tick("p1-tick", tick1),
    ];
    assert_eq!(publish(&js, &phase1).await?, 3);
    // r2/c2: wechat only, one message out and none in: breadth 1, cdi 1 < 1.5: low.
    let r2c2 = Cdi {
        rep_id: "r2",
        customer_id: "c2",
        breadth: 1,
        cdi: 1,
        band: "low",
        as_of: tick1 - LATENESS_MS,
    };
    wait_cdi(&js, &cdi, metrics, &r2c2).await?;
    let r2_session = ExpectedSession {
        rep_id: "r2",
        customer_id: "c2",
        start: base + MINUTE_MS,
        channels: &["wechat"],
        messages_out: 1,
    };
    let sessions = wait_session(&js, &cdi, metrics, &r2_session.id()).await?;
    r2_session.check(&sessions);
    let held = wait_input(&js, &cdi, metrics, &[r1_out_1], &[r2_out, "p1-tick"]).await?;
    assert_eq!(held.len(), 2, "{held:?}");

    // r1's message left no trace: no CDI, no session.
    assert_eq!(
        cdi.get("r1.c1").await?,
        None,
        "r1 switched chat off, yet r1.c1 has a CDI"
    );
    let r1_sessions: Vec<&Stored> = sessions
        .iter()
        .filter(|s| s.json["rep_id"] == "r1")
        .collect();
    assert!(
        r1_sessions.is_empty(),
        "r1 switched chat off: {r1_sessions:#?}"
    );
    let cdi_records = read_stream(&js, "TOUCH_CDI").await?;
    assert!(
        cdi_records.iter().all(|r| r.json["rep_id"] != "r1"),
        "r1 switched chat off: {cdi_records:#?}"
    );
    assert_eq!(dropped(metrics, "chat").await?, Some(1.0), "chat dropped");
    assert_eq!(
        dropped(metrics, "calls").await?.unwrap_or(0.0),
        0.0,
        "no call was dropped yet"
    );

    // Phase 2: r1's key is deleted (back to the file: nothing off); a new message out from r1
    // is processed, after the watermark (tick1 − 5 min), so not late.
    consent.delete("r1").await?;
    tokio::time::sleep(SETTLE).await;
    let r1_out_2 = "p2-r1-out";
    let r1_at = base + 50 * MINUTE_MS;
    let tick2 = base + 90 * MINUTE_MS;
    assert_eq!(
        publish(
            &js,
            &[
                wecom_out(r1_out_2, "wx_r1", "wo_c1", r1_at),
                tick("p2-tick", tick2)
            ]
        )
        .await?,
        2
    );
    let r1c1 = Cdi {
        rep_id: "r1",
        customer_id: "c1",
        breadth: 1,
        cdi: 1,
        band: "low",
        as_of: tick2 - LATENESS_MS,
    };
    wait_cdi(&js, &cdi, metrics, &r1c1).await?;
    // The session holds the new message alone (the refused one was never state).
    let r1_session = ExpectedSession {
        rep_id: "r1",
        customer_id: "c1",
        start: r1_at,
        channels: &["wechat"],
        messages_out: 1,
    };
    let sessions = wait_session(&js, &cdi, metrics, &r1_session.id()).await?;
    r1_session.check(&sessions);
    let held = wait_input(
        &js,
        &cdi,
        metrics,
        &[r1_out_1],
        &[r2_out, "p1-tick", r1_out_2, "p2-tick"],
    )
    .await?;
    assert_eq!(held.len(), 4, "{held:?}");
    assert_eq!(
        dropped(metrics, "chat").await?,
        Some(1.0),
        "r1's chat is on again: nothing more dropped"
    );

    // Phase 3: r2 switches calls off; a call by r2 is dropped, a visit by r2 kept.
    consent.put("r2", r#"{"off":["calls"]}"#.into()).await?;
    tokio::time::sleep(SETTLE).await;
    let call = "p3-r2-call";
    let visit = "p3-r2-visit";
    let visit_at = base + 101 * MINUTE_MS;
    let tick3 = base + 140 * MINUTE_MS;
    assert_eq!(
        publish(
            &js,
            &[
                action(call, "r2", "c2", "call", "phone", base + 100 * MINUTE_MS),
                action(visit, "r2", "c2", "visit", "visit", visit_at),
                tick("p3-tick", tick3),
            ]
        )
        .await?,
        3
    );
    // r2/c2 in the 30-day window: wechat (phase 1) and visit; the call is not there (with it,
    // breadth 3 and cdi 3: high). breadth 2, cdi 2: mid (1.5 ≤ 2 < 2.8).
    let r2c2_after = Cdi {
        breadth: 2,
        cdi: 2,
        band: "mid",
        as_of: tick3 - LATENESS_MS,
        ..r2c2.clone()
    };
    wait_cdi(&js, &cdi, metrics, &r2c2_after).await?;
    // The session starts at the visit and holds it alone (with the call it would start a
    // minute earlier with two events).
    let r2_session_2 = ExpectedSession {
        rep_id: "r2",
        customer_id: "c2",
        start: visit_at,
        channels: &["visit"],
        messages_out: 0,
    };
    let sessions = wait_session(&js, &cdi, metrics, &r2_session_2.id()).await?;
    r2_session_2.check(&sessions);
    let held = wait_input(
        &js,
        &cdi,
        metrics,
        &[r1_out_1, call],
        &[r2_out, "p1-tick", r1_out_2, "p2-tick", visit, "p3-tick"],
    )
    .await?;
    assert_eq!(held.len(), 6, "{held:?}");
    assert_eq!(dropped(metrics, "calls").await?, Some(1.0), "calls dropped");
    assert_eq!(dropped(metrics, "chat").await?, Some(1.0), "chat dropped");
    assert_eq!(
        dropped(metrics, "visits").await?.unwrap_or(0.0),
        0.0,
        "r2's visits are on"
    );

    // Everything published, all told: exactly the three sessions, CDI records with only the
    // figures above, no dead letter.
    let mut ids: Vec<String> = sessions.iter().filter_map(|s| s.msg_id.clone()).collect();
    ids.sort();
    let mut want = vec![r2_session.id(), r1_session.id(), r2_session_2.id()];
    want.sort();
    assert_eq!(ids, want, "{sessions:#?}");
    let cdi_records = read_stream(&js, "TOUCH_CDI").await?;
    for r in &cdi_records {
        assert!(
            [&r2c2, &r1c1, &r2c2_after]
                .iter()
                .any(|e| e.same_figures(&r.json)),
            "unexpected CDI record {r:?}"
        );
    }
    let dead = read_stream(&js, "TOUCH_DLQ").await?;
    assert!(dead.is_empty(), "{dead:#?}");

    running.stop(WAIT).await?;
    drop(server);
    eprintln!("consent_live took {:?}", started.elapsed());
    Ok(())
}

/// Hits are checked against the rep of their asset when they join it (README "Consent"): with
/// `tracking` off for r1, an open that arrives before its quote's send (held in one batch,
/// joined and refused in a later one), an open after the send and an attributed web hit are all
/// dropped, counted, and deleted from `TOUCH_IN`; the send itself (category `sales`) is kept and
/// makes a session of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_on_the_assets_of_a_rep_without_tracking_are_forgotten() -> anyhow::Result<()> {
    let Started {
        server,
        js,
        consent: _,
        cdi,
        metrics,
        running,
        _fx,
    } = start(r#"{"off":["tracking"]}"#).await?;
    let base = now_ms() - 3 * 60 * MINUTE_MS;

    // First batch: the open alone. Its asset is unknown, so it waits for the send.
    let early = "t-open-before-send";
    assert_eq!(
        publish(&js, &[open(early, "q-t", base - MINUTE_MS)]).await?,
        1
    );
    if let Err(e) = wait_all_acked(&js, WAIT).await {
        bail!("{e:#}\nseen:\n{}", seen(&js, &cdi, metrics).await);
    }
    // Then the send, an open and a web hit after it, and a tick that moves the watermark
    // (tick − 5 min) past the session's end + 30 min gap.
    let send = "t-send";
    let later = "t-open";
    let web = "t-web";
    let web_hit = format!(
        r#"{{"event_id":"{web}","kind":"web.hit","ts":"{}","url":"https://shop.example.com/products/x?utm_content=q-t"}}"#,
        rfc3339(base + 11 * MINUTE_MS)
    );
    let rest = vec![
        quote_sent(send, "r1", "c1", "q-t", base),
        open(later, "q-t", base + 10 * MINUTE_MS),
        web_hit,
        tick("t-tick", base + 60 * MINUTE_MS),
    ];
    assert_eq!(publish(&js, &rest).await?, 4);

    // The send's session, with the send alone: one event, no open.
    let session = ExpectedSession {
        rep_id: "r1",
        customer_id: "c1",
        start: base,
        channels: &["email"],
        messages_out: 0,
    };
    let sessions = wait_session(&js, &cdi, metrics, &session.id()).await?;
    session.check(&sessions);
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    let s = &sessions[0].json;
    assert_eq!(s["event_count"], 1, "{s}");
    assert_eq!(s["opens"], 0, "{s}");
    let held = wait_input(&js, &cdi, metrics, &[early, later, web], &[send, "t-tick"]).await?;
    assert_eq!(held.len(), 2, "{held:?}");
    assert_eq!(
        dropped(metrics, "tracking").await?,
        Some(3.0),
        "hits dropped"
    );
    // The early open was refused, not left to expire as an unknown asset.
    let dead = read_stream(&js, "TOUCH_DLQ").await?;
    assert!(dead.is_empty(), "{dead:#?}");

    running.stop(WAIT).await?;
    drop(server);
    Ok(())
}
