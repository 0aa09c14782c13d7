//! Per-customer CDI from a live run on a private nats-server: every `[health]` interval the run
//! publishes the CDI of each pair whose CDI changed to `touch.cdi` (stream `TOUCH_CDI`,
//! `Nats-Msg-Id` = `<rep_id>:<customer_id>:<as_of ms>`) and writes it to the key-value bucket
//! `touchstream_cdi` under `<rep_id>.<customer_id>`. The expected figures are worked out by hand
//! from EVENTS.md §6 (CDI), §7 (watermark = greatest effective time − 5 min lateness) and §8
//! (the cdi record), not taken from the engine.

mod support;

use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::kv;
use serde_json::Value;

use support::*;
use touchstream::live::cdi::{BUCKET, key};
use touchstream::sinks::nats::{CDI_STREAM, CDI_SUBJECT};

/// Bound of every single wait; the whole test takes a few seconds when all is well.
const WAIT: Duration = Duration::from_secs(20);
/// `[time] lateness` of the shipped pipeline (EVENTS.md §7 default).
const LATENESS_MS: i64 = 5 * 60_000;
const MINUTE_MS: i64 = 60_000;

/// A fixture whose run publishes health and CDI every second instead of every 15 s.
fn fixture(idle_advance_after_seconds: u64) -> anyhow::Result<Fixture> {
    let fx = Fixture::new(idle_advance_after_seconds)?;
    let text = std::fs::read_to_string(&fx.pipeline)?;
    let from = "publish_interval_seconds = 15";
    if !text.contains(from) {
        bail!("pipelines/default.toml no longer has `{from}`; update tests/cdi_live.rs");
    }
    std::fs::write(
        &fx.pipeline,
        text.replace(from, "publish_interval_seconds = 1"),
    )?;
    Ok(fx)
}

/// A `wecom.message` (EVENTS.md §2): `in` from the customer, `out` from the rep.
fn wecom_message(event_id: &str, userid: &str, external: &str, direction: &str, t: i64) -> String {
    format!(
        r#"{{"event_id":"{event_id}","kind":"wecom.message","ts":"{}","wecom_userid":"{userid}","external_userid":"{external}","direction":"{direction}"}}"#,
        rfc3339(t)
    )
}

/// A cdi record as EVENTS.md §8 defines it.
#[derive(Debug, Clone)]
struct Expected {
    rep_id: &'static str,
    customer_id: &'static str,
    breadth: u64,
    depth: u64,
    density: u64,
    cdi: u64,
    band: &'static str,
    as_of: i64,
}

impl Expected {
    fn json(&self) -> Value {
        serde_json::json!({
            "rep_id": self.rep_id,
            "customer_id": self.customer_id,
            "breadth": self.breadth,
            "depth": self.depth,
            "density": self.density,
            "cdi": self.cdi,
            "band": self.band,
            "as_of": rfc3339(self.as_of),
        })
    }

    fn key(&self) -> String {
        key(self.rep_id, self.customer_id)
    }

    /// The record as bytes: one JSON object, keys in alphabetical order (README "Outputs").
    fn line(&self) -> String {
        format!(
            r#"{{"as_of":"{}","band":"{}","breadth":{},"cdi":{},"customer_id":"{}","density":{},"depth":{},"rep_id":"{}"}}"#,
            rfc3339(self.as_of),
            self.band,
            self.breadth,
            self.cdi,
            self.customer_id,
            self.density,
            self.depth,
            self.rep_id
        )
    }

    /// The figures of `v` equal these, `as_of` aside.
    fn same_figures(&self, v: &Value) -> bool {
        let mut a = v.clone();
        let mut b = self.json();
        a["as_of"] = Value::Null;
        b["as_of"] = Value::Null;
        a == b
    }
}

/// The current value of `key` in the bucket: (revision, JSON); None when absent or deleted.
async fn kv_entry(kv: &kv::Store, key: &str) -> anyhow::Result<Option<(u64, Value)>> {
    let Some(entry) = kv.entry(key).await? else {
        return Ok(None);
    };
    if entry.operation != kv::Operation::Put {
        return Ok(None);
    }
    let json = serde_json::from_slice(&entry.value)
        .with_context(|| format!("{BUCKET} {key} is not JSON: {:?}", entry.value))?;
    Ok(Some((entry.revision, json)))
}

/// Waits until the bucket holds exactly `expected` (byte for byte) under its key; returns the
/// revision. On a timeout, says what the bucket held instead (and what the stream and dead
/// letters hold).
async fn wait_kv(
    js: &async_nats::jetstream::Context,
    kv: &kv::Store,
    expected: &Expected,
) -> anyhow::Result<u64> {
    let want = expected.line();
    let k = expected.key();
    let found = wait_for(&format!("{BUCKET} {k} = {want}"), WAIT, || async {
        match kv.entry(&k).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put && e.value == want.as_bytes() => {
                Some(e.revision)
            }
            _ => None,
        }
    })
    .await;
    match found {
        Ok(rev) => Ok(rev),
        Err(e) => {
            let held = kv_entry(kv, &k).await;
            let stream: Vec<Value> = read_stream(js, CDI_STREAM)
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|r| r.json)
                .collect();
            let dead: Vec<Value> = read_stream(js, "TOUCH_DLQ")
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|r| r.json)
                .collect();
            bail!(
                "{e:#}\nbucket holds under {k}: {held:?}\n{CDI_STREAM}: {stream:#?}\ndead letters: {dead:#?}"
            )
        }
    }
}

/// Every record in `TOUCH_CDI` is on `touch.cdi`, has the eight fields of EVENTS.md §8 and
/// `Nats-Msg-Id` = `<rep_id>:<customer_id>:<as_of in epoch ms>`.
fn check_stream_records(records: &[Stored]) -> anyhow::Result<()> {
    for r in records {
        assert_eq!(r.subject, CDI_SUBJECT, "{r:?}");
        let fields: Vec<&str> = r
            .json
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let mut fields = fields;
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "as_of",
                "band",
                "breadth",
                "cdi",
                "customer_id",
                "density",
                "depth",
                "rep_id"
            ],
            "{r:?}"
        );
        let as_of = r.json["as_of"].as_str().unwrap_or_default();
        let ms = chrono::DateTime::parse_from_rfc3339(as_of)
            .with_context(|| format!("as_of of {r:?}"))?
            .timestamp_millis();
        assert_eq!(rfc3339(ms), as_of, "as_of not RFC 3339 UTC with ms: {r:?}");
        let id = format!(
            "{}:{}:{ms}",
            r.json["rep_id"].as_str().unwrap_or_default(),
            r.json["customer_id"].as_str().unwrap_or_default()
        );
        assert_eq!(r.msg_id.as_deref(), Some(id.as_str()), "{r:?}");
    }
    Ok(())
}

/// The stream holds `expected` (figures and `as_of`) with its documented message id.
fn assert_in_stream(records: &[Stored], expected: &Expected) {
    let id = format!(
        "{}:{}:{}",
        expected.rep_id, expected.customer_id, expected.as_of
    );
    let want = expected.json();
    assert!(
        records
            .iter()
            .any(|r| r.json == want && r.msg_id.as_deref() == Some(id.as_str())),
        "{CDI_STREAM} has no record {want} with Nats-Msg-Id {id}: {records:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_cdi_reaches_the_stream_and_the_bucket() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let url = server.url();
    // No idle advancement: the watermark moves by event time alone (ticks), so `as_of` is
    // known exactly.
    let fx = fixture(3600)?;
    let running = InProcessRun::spawn(fx.run_args(&url, "127.0.0.1:0".parse()?));
    let (_client, js) = connect(&url).await?;
    wait_input_stream(&js, WAIT).await?;
    let base = now_ms() - HOUR_MS;

    // Phase 1, all events in event-time order and in the past of the final tick, so that the
    // watermark after it (tick − 5 min) has passed every one of them.
    let tick1 = base + 20 * MINUTE_MS;
    let phase1 = vec![
        // r1/c1: email (quote and its pixel open), wechat (one message out, two in).
        quote_sent("p1-quote", "r1", "c1", "q1", base),
        // 30 s after the send (not a prefetch), an ordinary browser UA (not a proxy): counted.
        open("p1-open", "q1", base + 30_000),
        wecom_message("p1-out", "wx_r1", "wo_c1", "out", base + MINUTE_MS),
        wecom_message("p1-in1", "wx_r1", "wo_c1", "in", base + 2 * MINUTE_MS),
        wecom_message("p1-in2", "wx_r1", "wo_c1", "in", base + 3 * MINUTE_MS),
        // r2/c2: one call.
        action("p1-call", "r2", "c2", "call", "phone", base + 4 * MINUTE_MS),
        tick("p1-tick", tick1),
    ];
    assert_eq!(publish(&js, &phase1).await?, 7);

    let w1 = tick1 - LATENESS_MS;
    // breadth 2 (email, wechat); depth 0 (no close hit, so no dwell); density 1 (2 in >
    // 1.5 × 1 out); cdi 3 ≥ 2.8: high.
    let r1c1 = Expected {
        rep_id: "r1",
        customer_id: "c1",
        breadth: 2,
        depth: 0,
        density: 1,
        cdi: 3,
        band: "high",
        as_of: w1,
    };
    // breadth 1 (phone); no messages, no dwell; cdi 1 < 1.5: low.
    let r2c2 = Expected {
        rep_id: "r2",
        customer_id: "c2",
        breadth: 1,
        depth: 0,
        density: 0,
        cdi: 1,
        band: "low",
        as_of: w1,
    };
    assert_eq!(r1c1.key(), "r1.c1");
    assert_eq!(r2c2.key(), "r2.c2");

    // The bucket is created by the run (async-nats 0.51 cannot create one on nats-server 2.9).
    let kv = wait_for(&format!("the {BUCKET} bucket"), WAIT, || async {
        js.get_key_value(BUCKET).await.ok()
    })
    .await?;
    let r1c1_rev = wait_kv(&js, &kv, &r1c1).await?;
    let r2c2_rev = wait_kv(&js, &kv, &r2c2).await?;
    assert_eq!(wait_all_acked(&js, WAIT).await?, 7);

    let records = read_stream(&js, CDI_STREAM).await?;
    check_stream_records(&records)?;
    assert_in_stream(&records, &r1c1);
    assert_in_stream(&records, &r2c2);
    // Nothing but these two pairs, and no record for them with other figures.
    for r in &records {
        assert!(
            r1c1.same_figures(&r.json) || r2c2.same_figures(&r.json),
            "unexpected CDI record {r:?}"
        );
    }

    // Phase 2: a visit for r2/c2 (after the watermark, so not late), then a tick past it.
    let visit_at = base + 25 * MINUTE_MS;
    assert!(visit_at > w1);
    let tick2 = base + 40 * MINUTE_MS;
    let phase2 = vec![
        action("p2-visit", "r2", "c2", "visit", "visit", visit_at),
        tick("p2-tick", tick2),
    ];
    assert_eq!(publish(&js, &phase2).await?, 2);
    let w2 = tick2 - LATENESS_MS;
    // breadth 2 (phone, visit); cdi 2: mid (1.5 ≤ 2 < 2.8).
    let r2c2_after = Expected {
        breadth: 2,
        cdi: 2,
        band: "mid",
        as_of: w2,
        ..r2c2.clone()
    };
    let r2c2_rev_after = wait_kv(&js, &kv, &r2c2_after).await?;
    assert!(r2c2_rev_after > r2c2_rev);
    assert_eq!(wait_all_acked(&js, WAIT).await?, 9);
    // Two more publish rounds: r1/c1 did not change, so it is neither rewritten nor republished.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        kv_entry(&kv, &r1c1.key()).await?,
        Some((r1c1_rev, r1c1.json())),
        "r1.c1 changed although none of its events did"
    );
    let records = read_stream(&js, CDI_STREAM).await?;
    check_stream_records(&records)?;
    assert_in_stream(&records, &r2c2_after);
    let r1_records: Vec<&Stored> = records
        .iter()
        .filter(|r| r.json["rep_id"] == "r1" && r.json["customer_id"] == "c1")
        .collect();
    assert!(
        r1_records.iter().all(|r| r.json == r1c1.json()),
        "r1/c1 republished with other figures or as_of: {r1_records:#?}"
    );
    for r in &records {
        assert!(
            r1c1.same_figures(&r.json)
                || r2c2.same_figures(&r.json)
                || r2c2_after.same_figures(&r.json),
            "unexpected CDI record {r:?}"
        );
    }

    // None of the inputs was rejected.
    let dead = read_stream(&js, "TOUCH_DLQ").await?;
    assert!(dead.is_empty(), "{dead:#?}");

    running.stop(WAIT).await?;
    drop(server);
    Ok(())
}

/// Touches that arrive ahead of the watermark (any event newer than lateness, i.e. every event
/// arriving in real time) are not in the CDI until the watermark passes them (EVENTS.md §7);
/// when it does, the pair's CDI has changed and must be published, even if a publish round
/// happened in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdi_is_published_when_the_watermark_passes_touches_that_arrived_ahead_of_it()
-> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let url = server.url();
    let fx = fixture(3600)?;
    let running = InProcessRun::spawn(fx.run_args(&url, "127.0.0.1:0".parse()?));
    let (_client, js) = connect(&url).await?;
    wait_input_stream(&js, WAIT).await?;
    let base = now_ms() - HOUR_MS;

    // The call alone: the watermark is then the call − 5 min, so the call is not in the CDI yet.
    let call_at = base;
    publish(&js, &[action("call", "r2", "c2", "call", "phone", call_at)]).await?;
    assert_eq!(wait_all_acked(&js, WAIT).await?, 1);
    // At least one publish round (every 1 s) while the call is ahead of the watermark.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // A tick 10 min later: the watermark (tick − 5 min) passes the call.
    let tick_at = call_at + 10 * MINUTE_MS;
    publish(&js, &[tick("tick", tick_at)]).await?;
    assert_eq!(wait_all_acked(&js, WAIT).await?, 2);
    let kv = js
        .get_key_value(BUCKET)
        .await
        .context("the run creates the bucket")?;
    let r2c2 = Expected {
        rep_id: "r2",
        customer_id: "c2",
        breadth: 1,
        depth: 0,
        density: 0,
        cdi: 1,
        band: "low",
        as_of: tick_at - LATENESS_MS,
    };
    wait_kv(&js, &kv, &r2c2).await?;
    let records = read_stream(&js, CDI_STREAM).await?;
    check_stream_records(&records)?;
    assert_in_stream(&records, &r2c2);

    running.stop(WAIT).await?;
    drop(server);
    Ok(())
}

/// A pair with no event left in the 30-day window is deleted from the bucket (README
/// "Outputs"); a pair that still has one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_that_left_the_window_is_deleted_from_the_bucket() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let url = server.url();
    let fx = fixture(3600)?;
    let running = InProcessRun::spawn(fx.run_args(&url, "127.0.0.1:0".parse()?));
    let (_client, js) = connect(&url).await?;
    wait_input_stream(&js, WAIT).await?;
    let base = now_ms() - 40 * DAY_MS;

    // r1/c2: one call 40 days ago; the watermark moves 10 min past it.
    let tick1 = base + 15 * MINUTE_MS;
    publish(
        &js,
        &[
            action("old-call", "r1", "c2", "call", "phone", base),
            tick("tick1", tick1),
        ],
    )
    .await?;
    let kv = wait_for(&format!("the {BUCKET} bucket"), WAIT, || async {
        js.get_key_value(BUCKET).await.ok()
    })
    .await?;
    let r1c2 = Expected {
        rep_id: "r1",
        customer_id: "c2",
        breadth: 1,
        depth: 0,
        density: 0,
        cdi: 1,
        band: "low",
        as_of: tick1 - LATENESS_MS,
    };
    wait_kv(&js, &kv, &r1c2).await?;

    // 31 days later: a WeCom message out from r2 to c2 (a pair of its own), then a tick. The
    // window (as_of − 30 d, as_of] no longer holds r1/c2's call: its key goes; r2/c2 stays.
    let msg_at = base + 31 * DAY_MS;
    let tick2 = msg_at + 10 * MINUTE_MS;
    publish(
        &js,
        &[
            wecom_message("new-out", "wx_r2", "wo_c2", "out", msg_at),
            tick("tick2", tick2),
        ],
    )
    .await?;
    // wechat; one message out and none in: density 0.
    let r2c2 = Expected {
        rep_id: "r2",
        customer_id: "c2",
        breadth: 1,
        depth: 0,
        density: 0,
        cdi: 1,
        band: "low",
        as_of: tick2 - LATENESS_MS,
    };
    wait_kv(&js, &kv, &r2c2).await?;
    let k = r1c2.key();
    let gone = wait_for(&format!("{BUCKET} {k} deleted"), WAIT, || async {
        match kv.entry(&k).await {
            Ok(Some(e)) if e.operation != kv::Operation::Put => Some(()),
            _ => None,
        }
    })
    .await;
    if let Err(e) = gone {
        bail!("{e:#}; it holds {:?}", kv_entry(&kv, &k).await);
    }
    assert_eq!(kv.get(&k).await?, None);
    assert_eq!(wait_all_acked(&js, WAIT).await?, 4);

    let records = read_stream(&js, CDI_STREAM).await?;
    check_stream_records(&records)?;
    assert_in_stream(&records, &r1c2);
    assert_in_stream(&records, &r2c2);
    let dead = read_stream(&js, "TOUCH_DLQ").await?;
    assert!(dead.is_empty(), "{dead:#?}");

    running.stop(WAIT).await?;
    drop(server);
    Ok(())
}
