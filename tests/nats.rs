//! End to end on a real NATS JetStream (a private nats-server per test): `touchstream run`
//! consumes `touch.in.*`, publishes alerts, sessions and dead letters, survives a NATS server
//! restart and its own SIGKILL without losing or doubling an output. Expectations come from
//! EVENTS.md §5 and §8, not from the engine.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use support::*;

const WAIT: Duration = Duration::from_secs(60);
const RULE: &str = "quote_hot_no_contract";

fn alert_id(asset: &str) -> String {
    format!("{RULE}:{asset}")
}

/// `n` quotes `<prefix>-<i>` of one pair, sent a minute apart from `t0`, each opened three
/// times an hour apart: `4 n` events in event-time order (so none is late), `n` alerts once
/// their deadlines pass, and one session (no two consecutive events 30 min apart).
fn burst_of_hot_quotes(prefix: &str, rep: &str, customer: &str, n: i64, t0: i64) -> Vec<String> {
    let mut timed: Vec<(i64, String)> = Vec::new();
    for i in 0..n {
        let sent = t0 + i * 60_000;
        let lines = hot_quote(
            &format!("{prefix}{i}"),
            rep,
            customer,
            &format!("{prefix}-{i}"),
            sent,
            3,
        );
        for (k, line) in lines.into_iter().enumerate() {
            timed.push((sent + k as i64 * HOUR_MS, line));
        }
    }
    timed.sort_by_key(|(t, _)| *t);
    timed.into_iter().map(|(_, line)| line).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_and_dead_letter_land_on_their_subjects() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let fx = Fixture::new(1)?;
    let metrics = free_addr()?;
    let running = InProcessRun::spawn(fx.run_args(&server.url(), metrics));
    let (_client, js) = connect(&server.url()).await?;
    wait_input_stream(&js, WAIT).await?;

    // A quote sent six days ago, opened three times, no contract: due five days after the
    // send (EVENTS.md §5), long past, so idle advancement fires it.
    let t0 = now_ms() - 6 * DAY_MS;
    let mut lines = hot_quote("a", "r1", "c1", "q1", t0, 3);
    let malformed = r#"{"event_id":"bad-1","kind":"pixel.hit","ts":"#.to_string();
    lines.push(malformed.clone());
    assert_eq!(publish(&js, &lines).await?, 5);

    let alerts = wait_for("the alert", WAIT, || async {
        read_stream(&js, "TOUCH_ALERTS")
            .await
            .ok()
            .filter(|a| !a.is_empty())
    })
    .await?;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a.subject, "touch.alerts.quote_hot_no_contract");
    assert_eq!(a.msg_id.as_deref(), Some(alert_id("q1").as_str()));
    assert_eq!(a.json["alert_id"], alert_id("q1"));
    assert_eq!(a.json["rule"], RULE);
    assert_eq!(a.json["status"], "firing");
    assert_eq!(a.json["rep_id"], "r1");
    assert_eq!(a.json["customer_id"], "c1");
    assert_eq!(a.json["region"], "east");
    assert_eq!(a.json["asset_id"], "q1");
    assert_eq!(a.json["due_at"], rfc3339(t0 + 5 * DAY_MS));
    assert_eq!(a.json["evidence"]["quote_sent_at"], rfc3339(t0));
    assert_eq!(a.json["evidence"]["counted_opens"], 3);

    let dead = wait_for("the dead letter", WAIT, || async {
        read_stream(&js, "TOUCH_DLQ")
            .await
            .ok()
            .filter(|d| !d.is_empty())
    })
    .await?;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].subject, "touch.dlq.invalid_json");
    assert_eq!(dead[0].json["reason"], "invalid_json");
    assert_eq!(dead[0].json["raw"], malformed.as_str());
    assert!(dead[0].msg_id.is_some());

    // Four events of the pair, each more than the 30 min gap from the next: four sessions,
    // each published with its session id as Nats-Msg-Id.
    let sessions = wait_for("four sessions", WAIT, || async {
        read_stream(&js, "TOUCH_SESSIONS")
            .await
            .ok()
            .filter(|s| s.len() >= 4)
    })
    .await?;
    let ids: HashSet<String> = sessions.iter().filter_map(|s| s.msg_id.clone()).collect();
    let expected: HashSet<String> = (0..4)
        .map(|i| format!("r1:c1:{}", t0 + i * HOUR_MS))
        .collect();
    assert_eq!(ids, expected);
    for s in &sessions {
        assert_eq!(s.json["session_id"].as_str(), s.msg_id.as_deref());
        assert_eq!(s.json["event_count"], 1);
    }

    // Everything was acked, and /metrics says so.
    assert_eq!(wait_all_acked(&js, WAIT).await?, 5);
    let (status, body) = http_get(metrics, "/metrics").await?;
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("touchstream_input_acked_total"), "{body}");
    assert!(
        body.contains("touchstream_batch_duration_seconds_bucket"),
        "{body}"
    );
    let (status, _) = http_get(metrics, "/healthz").await?;
    assert!(status.contains("200"), "{status}");

    running.stop(WAIT).await?;
    Ok(())
}

/// Lets the watermark move by event time alone: after a phase's events, a presence change
/// `TICK_AFTER_DUE` past the phase's last deadline brings the watermark past it (lateness is
/// 5 min), and the next phase starts after the tick, so none of its events is late.
const TICK_AFTER_DUE: i64 = 10 * 60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restart_loses_nothing() -> anyhow::Result<()> {
    let mut server = NatsServer::start().await?;
    let url = server.url();
    let fx = Fixture::new(3600)?;
    let running = InProcessRun::spawn(fx.run_args(&url, "127.0.0.1:0".parse()?));
    let (_client, js) = connect(&url).await?;
    wait_input_stream(&js, WAIT).await?;
    let base = now_ms() - 20 * DAY_MS;

    // Before the outage: one hot quote, due five days after its send.
    let t1 = base;
    let mut phase1 = hot_quote("before", "r1", "c1", "q-before", t1, 3);
    phase1.push(tick("tick1", t1 + 5 * DAY_MS + TICK_AFTER_DUE));
    publish(&js, &phase1).await?;
    wait_for("the first alert", WAIT, || async {
        read_stream(&js, "TOUCH_ALERTS")
            .await
            .ok()
            .filter(|a| a.len() == 1)
    })
    .await?;

    // Outage while touchstream is idle.
    server.restart().await?;
    let t2 = t1 + 5 * DAY_MS + TICK_AFTER_DUE + 60_000;
    let mut phase2 = hot_quote("after", "r2", "c2", "q-after", t2, 3);
    phase2.push(tick("tick2", t2 + 5 * DAY_MS + TICK_AFTER_DUE));
    publish(&js, &phase2).await?;

    // Outage while touchstream is busy: a burst of 500 hot quotes of one pair (2 000 events,
    // 20 batches of 100), and the server killed as soon as part of it is acked.
    let t3 = t2 + 5 * DAY_MS + TICK_AFTER_DUE + 60_000;
    let mut burst = burst_of_hot_quotes("burst", "r1", "c2", 500, t3);
    burst.push(tick("tick3", t3 + 5 * DAY_MS + 12 * HOUR_MS));
    let acked = wait_all_acked(&js, WAIT).await?;
    publish(&js, &burst).await?;
    let (floor, last) = wait_acked_at_least(&js, acked + 1, WAIT).await?;
    server.restart().await?;
    eprintln!("NATS restarted with input acked through {floor} of {last}");

    let expected: HashSet<String> = ["q-before".to_string(), "q-after".to_string()]
        .into_iter()
        .chain((0..500).map(|i| format!("burst-{i}")))
        .map(|a| alert_id(&a))
        .collect();
    let alerts = wait_for("every alert", WAIT, || async {
        read_stream(&js, "TOUCH_ALERTS")
            .await
            .ok()
            .filter(|a| a.len() >= expected.len())
    })
    .await?;
    let counts = count_by_msg_id(&alerts);
    assert_eq!(counts.keys().cloned().collect::<HashSet<_>>(), expected);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    assert_eq!(alerts.len(), expected.len());
    assert_eq!(wait_all_acked(&js, WAIT).await?, 5 + 5 + 2001);

    // The burst is one session of its pair (no two consecutive events 30 min apart), with
    // every one of its events: none was lost in the outage.
    let session = wait_for("the burst's session", WAIT, || async {
        read_stream(&js, "TOUCH_SESSIONS").await.ok().and_then(|s| {
            s.into_iter()
                .find(|s| s.json["rep_id"] == "r1" && s.json["customer_id"] == "c2")
        })
    })
    .await?;
    assert_eq!(session.msg_id, Some(format!("r1:c2:{t3}")));
    assert_eq!(session.json["event_count"], 2000);

    running.stop(WAIT).await?;
    Ok(())
}

/// Every output publish seen on the wire (core NATS sees JetStream duplicates too), by
/// `Nats-Msg-Id`.
#[derive(Clone, Default)]
struct Wire(Arc<Mutex<Vec<String>>>);

impl Wire {
    async fn tap(client: &async_nats::Client) -> anyhow::Result<Wire> {
        let wire = Wire::default();
        for subject in ["touch.alerts.>", "touch.sessions", "touch.dlq.>"] {
            let mut sub = client.subscribe(subject).await?;
            let seen = wire.0.clone();
            tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    let id = m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Nats-Msg-Id"))
                        .map(|v| v.as_str().to_string())
                        .unwrap_or_default();
                    if let Ok(mut seen) = seen.lock() {
                        seen.push(id);
                    }
                }
            });
        }
        // Make sure the subscriptions are registered before anything is published.
        client.flush().await?;
        Ok(wire)
    }

    fn snapshot(&self) -> Vec<String> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touchstream_restart_rebuilds_state_and_publishes_nothing_twice() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let url = server.url();
    let fx = Fixture::new(3600)?;
    let args = fx.run_args(&url, "127.0.0.1:0".parse()?);
    let log = fx.dir.path().join("touchstream.log");
    let (client, js) = connect(&url).await?;
    let wire = Wire::tap(&client).await?;
    let base = now_ms() - 20 * DAY_MS;

    // Phase 1: a hot quote, its alert, its four sessions (opens an hour apart, gap 30 min) and
    // a dead letter, all published and acked; then SIGKILL.
    let mut first = ChildRun::start(&args, log.clone())?;
    wait_input_stream(&js, WAIT).await?;
    let t1 = base;
    let mut phase1 = hot_quote("p1", "r1", "c1", "qa", t1, 3);
    phase1.push("not json at all".to_string());
    phase1.push(tick("tick1", t1 + 5 * DAY_MS + TICK_AFTER_DUE));
    publish(&js, &phase1).await?;
    let phase1_sessions: HashSet<String> = (0..4)
        .map(|i| format!("r1:c1:{}", t1 + i * HOUR_MS))
        .collect();
    let phase1_done = async {
        wait_for("the phase-1 alert", WAIT, || async {
            read_stream(&js, "TOUCH_ALERTS")
                .await
                .ok()
                .filter(|a| a.len() == 1)
        })
        .await?;
        wait_all_acked(&js, WAIT).await?;
        wait_for("the phase-1 sessions", WAIT, || async {
            let ids: HashSet<String> = read_stream(&js, "TOUCH_SESSIONS")
                .await
                .ok()?
                .into_iter()
                .filter_map(|s| s.msg_id)
                .collect();
            (ids == phase1_sessions).then_some(())
        })
        .await
    };
    if let Err(e) = phase1_done.await {
        anyhow::bail!("{e:#}\n--- touchstream log ---\n{}", first.log_text());
    }
    // Let the checkpoint settle, then kill without warning.
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.kill();
    let before_wire = wire.snapshot();
    let before: HashSet<String> = before_wire.iter().cloned().collect();
    assert!(before.contains(&alert_id("qa")), "{before:?}");

    // Phase 2: a contract for the pair inside [sent, due], arriving after the alert fired.
    // Only a rebuilt state knows the quote and that its alert fired, and must publish the same
    // alert as resolved (EVENTS.md §5).
    let mut second = ChildRun::start(&args, log.clone())?;
    publish(
        &js,
        &[contract_sent(
            "p2-contract",
            "r1",
            "c1",
            "contract-1",
            t1 + 4 * DAY_MS,
        )],
    )
    .await?;
    let resolved_id = format!("{}:resolved", alert_id("qa"));
    let resolved = wait_for("the resolved alert", WAIT, || async {
        read_stream(&js, "TOUCH_ALERTS")
            .await
            .ok()?
            .into_iter()
            .find(|r| r.msg_id.as_deref() == Some(resolved_id.as_str()))
    })
    .await;
    let resolved = match resolved {
        Ok(r) => r,
        Err(e) => anyhow::bail!("{e:#}\n--- touchstream log ---\n{}", second.log_text()),
    };
    assert_eq!(resolved.json["alert_id"], alert_id("qa"));
    assert_eq!(resolved.json["status"], "resolved");
    assert_eq!(resolved.json["due_at"], rfc3339(t1 + 5 * DAY_MS));
    assert_eq!(resolved.json["evidence"]["resolved_by"], "p2-contract");
    wait_all_acked(&js, WAIT).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Nothing published before the kill went on the wire again after it.
    let republished: Vec<String> = wire
        .snapshot()
        .into_iter()
        .skip(before_wire.len())
        .filter(|id| before.contains(id))
        .collect();
    assert!(
        republished.is_empty(),
        "republished after restart: {republished:?}"
    );

    // Phase 3: a burst of 500 hot quotes of another pair (2 000 events, 20 batches), and a
    // second SIGKILL as soon as part of it is acked: nothing lost, nothing stored twice.
    let t3 = t1 + 5 * DAY_MS + TICK_AFTER_DUE + 60_000;
    let mut burst = burst_of_hot_quotes("qb", "r2", "c2", 500, t3);
    burst.push(tick("tick3", t3 + 5 * DAY_MS + 12 * HOUR_MS));
    let acked = wait_all_acked(&js, WAIT).await?;
    publish(&js, &burst).await?;
    let (floor, last) = wait_acked_at_least(&js, acked + 1, WAIT).await?;
    second.kill();
    eprintln!("touchstream killed with input acked through {floor} of {last}");
    let mut third = ChildRun::start(&args, log.clone())?;
    let expected: HashSet<String> = [alert_id("qa"), resolved_id.clone()]
        .into_iter()
        .chain((0..500).map(|i| alert_id(&format!("qb-{i}"))))
        .collect();
    let alerts = wait_for("every alert after the second kill", WAIT, || async {
        read_stream(&js, "TOUCH_ALERTS")
            .await
            .ok()
            .filter(|a| a.len() >= expected.len())
    })
    .await;
    let alerts = match alerts {
        Ok(a) => a,
        Err(e) => anyhow::bail!("{e:#}\n--- touchstream log ---\n{}", third.log_text()),
    };
    let counts = count_by_msg_id(&alerts);
    assert_eq!(counts.keys().cloned().collect::<HashSet<_>>(), expected);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    assert_eq!(wait_all_acked(&js, WAIT).await?, 6 + 1 + 2001);

    // Sessions: each stored once; the phase-1 ones are there, and the burst is one session
    // holding all 2 000 of its events, half of them seen only through the rebuilt state.
    let burst_session = wait_for("the burst's session", WAIT, || async {
        read_stream(&js, "TOUCH_SESSIONS")
            .await
            .ok()?
            .into_iter()
            .find(|s| s.json["rep_id"] == "r2" && s.json["customer_id"] == "c2")
    })
    .await?;
    assert_eq!(burst_session.msg_id, Some(format!("r2:c2:{t3}")));
    assert_eq!(burst_session.json["event_count"], 2000);
    let sessions = read_stream(&js, "TOUCH_SESSIONS").await?;
    let session_counts = count_by_msg_id(&sessions);
    assert!(
        session_counts.values().all(|&n| n == 1),
        "{session_counts:?}"
    );
    for id in &phase1_sessions {
        assert!(
            session_counts.contains_key(id),
            "{id} missing: {session_counts:?}"
        );
    }

    // SIGTERM: finish the batch in flight, ack, exit 0.
    let code = third.terminate(WAIT).await?;
    if std::env::var_os("TOUCHSTREAM_TEST_LOG").is_some() {
        eprintln!("{}", third.log_text());
    }
    assert_eq!(code, 0, "{}", third.log_text());
    drop(server);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_idle_advancement_fired_is_not_fired_again_after_a_restart() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let url = server.url();
    let fx = Fixture::new(1)?;
    let args = fx.run_args(&url, "127.0.0.1:0".parse()?);
    let log = fx.dir.path().join("touchstream.log");
    let (client, js) = connect(&url).await?;
    let wire = Wire::tap(&client).await?;

    // No event moves the watermark past the deadline: only the wall clock does (EVENTS.md §7).
    let mut first = ChildRun::start(&args, log.clone())?;
    wait_input_stream(&js, WAIT).await?;
    let t0 = now_ms() - 6 * DAY_MS;
    publish(&js, &hot_quote("idle", "r1", "c1", "q-idle", t0, 3)).await?;
    let fired = wait_for("the alert fired by idle advancement", WAIT, || async {
        read_stream(&js, "TOUCH_ALERTS")
            .await
            .ok()
            .filter(|a| a.len() == 1)
    })
    .await;
    if let Err(e) = fired {
        anyhow::bail!("{e:#}\n--- touchstream log ---\n{}", first.log_text());
    }
    // The checkpoint holds the advanced watermark, past the deadline.
    let kv = js.get_key_value("touchstream_state").await?;
    let saved = wait_for("the checkpointed watermark", WAIT, || async {
        let bytes = kv.get("touchstream.watermark").await.ok()??;
        let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        v["watermark_ms"].as_i64().filter(|&w| w >= t0 + 5 * DAY_MS)
    })
    .await?;
    assert!(saved <= now_ms());
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.kill();
    let before_wire = wire.snapshot();
    assert!(before_wire.contains(&alert_id("q-idle")), "{before_wire:?}");

    // Restarted, the run replays the quote and its opens (watermark: last open - 5 min, before
    // the deadline), then moves to the checkpointed watermark with outputs discarded; its own
    // idle ticks afterwards must find nothing new to fire.
    let mut second = ChildRun::start(&args, log.clone())?;
    wait_for("the restarted run to consume live", WAIT, || async {
        (second.log_text().matches("consuming live").count() >= 2).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after: Vec<String> = wire
        .snapshot()
        .into_iter()
        .skip(before_wire.len())
        .collect();
    assert!(
        after.is_empty(),
        "published again after the restart: {after:?}"
    );
    assert_eq!(second.terminate(WAIT).await?, 0, "{}", second.log_text());
    drop(server);
    Ok(())
}
