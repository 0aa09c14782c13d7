//! Alert delivery end to end (issue 3): `touchstream run` with a `[notify]` section on a private
//! nats-server, a real Alertmanager (Debian `prometheus-alertmanager`) whose webhook comes back
//! to this test, and a WeCom robot double that checks the wire format. A quote alert fires,
//! reaches both, a late contract resolves it (Alertmanager sends it on as resolved with `endsAt`),
//! a refusing robot yields a `delivery_failed` dead letter, and a consumer that starts over from
//! the first alert sends nothing twice (the delivery ledger).

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::routing::post;
use serde_json::{Value, json};

use support::alertmanager::Alertmanager;
use support::*;

const WAIT: Duration = Duration::from_secs(60);
const RULE: &str = "quote_hot_no_contract";

#[derive(Default)]
struct Captured {
    /// Bodies Alertmanager's webhook sent on.
    from_alertmanager: Vec<Value>,
    /// Markdown contents the WeCom double accepted.
    wecom: Vec<String>,
    /// Wire-format problems the WeCom double saw.
    problems: Vec<String>,
    /// Requests to the robot with key `flaky`, which answers 500 to the first two.
    flaky_calls: usize,
    /// Markdown contents the flaky robot accepted.
    flaky: Vec<String>,
}

type Shared = Arc<Mutex<Captured>>;

async fn am_webhook(State(c): State<Shared>, body: Bytes) -> &'static str {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    c.lock().expect("lock").from_alertmanager.push(v);
    "ok"
}

/// A WeCom group robot: `key` in the query, `msgtype` markdown with `content` of at most 4096
/// bytes. Key `bad` answers errcode 93000 (invalid webhook URL), as WeCom does.
async fn wecom(State(c): State<Shared>, uri: Uri, body: Bytes) -> (StatusCode, String) {
    let key = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("key="))
        .unwrap_or_default()
        .to_string();
    if key == "bad" {
        let refusal = json!({"errcode": 93000, "errmsg": "invalid webhook url, hint: [bad]"});
        return (StatusCode::OK, refusal.to_string());
    }
    let mut c = c.lock().expect("lock");
    if key == "flaky" {
        c.flaky_calls += 1;
        if c.flaky_calls <= 2 {
            return (StatusCode::INTERNAL_SERVER_ERROR, "busy".into());
        }
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let content = v["markdown"]["content"].as_str().unwrap_or_default();
        c.flaky.push(content.to_string());
        return (
            StatusCode::OK,
            json!({"errcode": 0, "errmsg": "ok"}).to_string(),
        );
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            c.problems.push(format!("not JSON: {e}"));
            let refusal = json!({"errcode": 40008, "errmsg": "invalid message type"});
            return (StatusCode::OK, refusal.to_string());
        }
    };
    if key != "east" {
        c.problems.push(format!("key {key:?}"));
    }
    match (v["msgtype"].as_str(), v["markdown"]["content"].as_str()) {
        (Some("markdown"), Some(content)) if content.len() <= 4096 => {
            c.wecom.push(content.to_string())
        }
        _ => c
            .problems
            .push(format!("not a WeCom markdown message: {v}")),
    }
    (
        StatusCode::OK,
        json!({"errcode": 0, "errmsg": "ok"}).to_string(),
    )
}

async fn capture_server() -> anyhow::Result<(SocketAddr, Shared)> {
    let shared: Shared = Arc::default();
    let app = Router::new()
        .route("/am", post(am_webhook))
        .route("/cgi-bin/webhook/send", post(wecom))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, shared))
}

fn notify_section(am: &str, capture: SocketAddr) -> String {
    format!(
        r#"
[notify]
dashboard_url = "http://grafana.example/d/touch-rep?var-rep={{{{ rep_id }}}}"

[notify.delivery]
retry_base_ms = 50
retry_cap_ms = 200
max_attempts = 3

[[notify.receivers]]
name = "am"
kind = "alertmanager"
url = "{am}"

[[notify.receivers]]
name = "east-wecom"
kind = "wecom"
webhook_url = "http://{capture}/cgi-bin/webhook/send?key=east"

[[notify.receivers]]
name = "broken-wecom"
kind = "wecom"
webhook_url = "http://{capture}/cgi-bin/webhook/send?key=bad"

[[notify.routes]]
region = "east"
receivers = ["am", "east-wecom"]
"#
    )
}

/// Waits until the notifier's consumer has acked the first `alerts` alerts and holds none.
async fn notifier_acked(js: &async_nats::jetstream::Context, alerts: u64) -> anyhow::Result<()> {
    wait_for("the notifier to ack the alerts", WAIT, || async {
        let stream = js.get_stream("TOUCH_ALERTS").await.ok()?;
        let mut c: async_nats::jetstream::consumer::PullConsumer = stream
            .get_consumer(touchstream::live::notify::DURABLE)
            .await
            .ok()?;
        let info = c.info().await.ok()?;
        (info.ack_floor.stream_sequence >= alerts && info.num_ack_pending == 0).then_some(())
    })
    .await
}

fn alert_id(asset: &str) -> String {
    format!("{RULE}:{asset}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_alertmanager_and_wecom_once_and_resolve() -> anyhow::Result<()> {
    let (capture, seen) = capture_server().await?;
    let am = Alertmanager::start(&format!("http://{capture}/am")).await?;
    let server = NatsServer::start().await?;
    let fx = Fixture::new(1)?;
    let mut text = std::fs::read_to_string(&fx.pipeline)?;
    text.push_str(&notify_section(&am.url(), capture));
    std::fs::write(&fx.pipeline, text)?;
    // The directory routes region east to the refusing robot too.
    std::fs::write(
        fx.directory.join("regions.csv"),
        "region,director,routes\neast,Chen Jie,broken-wecom\nsouth,Huang Li,\n",
    )?;

    let running = InProcessRun::spawn(fx.run_args(&server.url(), free_addr()?));
    let (_client, js) = connect(&server.url()).await?;
    wait_input_stream(&js, WAIT).await?;

    // A hot quote six days old: idle advancement fires it at once.
    let t0 = now_ms() - 6 * DAY_MS;
    publish(&js, &hot_quote("a", "r1", "c1", "q1", t0, 3)).await?;

    // Alertmanager holds it, with the labels the issue names.
    let active = wait_for("the alert in Alertmanager", WAIT, || async {
        am.alerts().await.ok().filter(|a| !a.is_empty())
    })
    .await?;
    assert_eq!(active.len(), 1, "{active:?}");
    let labels = &active[0]["labels"];
    assert_eq!(labels["alertname"], RULE);
    assert_eq!(labels["rep"], "r1");
    assert_eq!(labels["region"], "east");
    assert_eq!(labels["severity"], "warning");
    assert_eq!(labels["alert_id"], alert_id("q1").as_str());
    let fired = read_stream(&js, "TOUCH_ALERTS").await?;
    assert_eq!(fired.len(), 1);
    let starts =
        chrono::DateTime::parse_from_rfc3339(active[0]["startsAt"].as_str().unwrap_or(""))?;
    let fired_at =
        chrono::DateTime::parse_from_rfc3339(fired[0].json["fired_at"].as_str().unwrap_or(""))?;
    assert_eq!(starts, fired_at, "startsAt is fired_at");
    // Held active (firing_hold_hours, a week by default), not resolved after resolve_timeout.
    let ends = chrono::DateTime::parse_from_rfc3339(active[0]["endsAt"].as_str().unwrap_or(""))?;
    assert!(ends - starts > chrono::Duration::days(6), "{active:?}");
    assert!(
        active[0]["annotations"]["dashboard"]
            .as_str()
            .is_some_and(|d| d.ends_with("var-rep=r1")),
        "{active:?}"
    );

    // The WeCom robot got one message naming the rep and the customer from the directory.
    let messages = wait_for("the WeCom message", WAIT, || async {
        let c = seen.lock().expect("lock");
        (!c.wecom.is_empty()).then(|| c.wecom.clone())
    })
    .await?;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(messages[0].contains("Li Wei"), "{}", messages[0]);
    assert!(
        messages[0].contains("Kangda Pharmacy #12"),
        "{}",
        messages[0]
    );

    // The refusing robot's answer is a delivery_failed dead letter carrying the alert.
    let dead = wait_for("the delivery_failed dead letter", WAIT, || async {
        read_stream(&js, "TOUCH_DLQ")
            .await
            .ok()
            .filter(|d| !d.is_empty())
    })
    .await?;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].subject, "touch.dlq.delivery_failed");
    assert_eq!(dead[0].json["reason"], "delivery_failed");
    let error = dead[0].json["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("broken-wecom") && error.contains("93000"),
        "{error}"
    );
    let raw: Value = serde_json::from_str(dead[0].json["raw"].as_str().unwrap_or("null"))?;
    assert_eq!(raw["alert_id"], alert_id("q1").as_str());

    // Alertmanager sends the firing alert on (a group that never fired is not resolved later).
    wait_for("Alertmanager's firing notification", WAIT, || async {
        let c = seen.lock().expect("lock");
        c.from_alertmanager
            .iter()
            .flat_map(|b| b["alerts"].as_array().cloned().unwrap_or_default())
            .find(|a| a["status"] == "firing" && a["labels"]["alert_id"] == alert_id("q1").as_str())
    })
    .await?;

    // A contract one day after the send, arriving late: the alert resolves, and Alertmanager
    // passes the resolution on with endsAt = resolved_at.
    publish(&js, &[contract_sent("a-c", "r1", "c1", "k1", t0 + DAY_MS)]).await?;
    let resolved = wait_for("Alertmanager's resolved notification", WAIT, || async {
        let c = seen.lock().expect("lock");
        c.from_alertmanager
            .iter()
            .flat_map(|b| b["alerts"].as_array().cloned().unwrap_or_default())
            .find(|a| a["status"] == "resolved")
    })
    .await
    .map_err(|e| {
        let c = seen.lock().expect("lock");
        anyhow::anyhow!(
            "{e:#}; Alertmanager sent {:?}; WeCom got {:?}; Alertmanager's log:\n{}",
            c.from_alertmanager,
            c.wecom,
            am.log()
        )
    })?;
    let records = read_stream(&js, "TOUCH_ALERTS").await?;
    let resolved_record = records
        .iter()
        .find(|r| r.json["status"] == "resolved")
        .ok_or_else(|| anyhow::anyhow!("no resolved record: {records:?}"))?;
    let ends = chrono::DateTime::parse_from_rfc3339(resolved["endsAt"].as_str().unwrap_or(""))?;
    let resolved_at = chrono::DateTime::parse_from_rfc3339(
        resolved_record.json["evidence"]["resolved_at"]
            .as_str()
            .unwrap_or(""),
    )?;
    assert_eq!(ends, resolved_at, "{resolved}");
    assert_eq!(resolved["labels"]["alert_id"], alert_id("q1").as_str());
    wait_for("the resolved WeCom message", WAIT, || async {
        let c = seen.lock().expect("lock");
        (c.wecom.len() >= 2).then_some(())
    })
    .await?;
    wait_for("Alertmanager to drop the resolved alert", WAIT, || async {
        am.alerts().await.ok().filter(|a| a.is_empty())
    })
    .await?;
    // The refusing robot refuses the resolution too: a second dead letter, its own id.
    wait_for("the second delivery_failed dead letter", WAIT, || async {
        read_stream(&js, "TOUCH_DLQ")
            .await
            .ok()
            .filter(|d| d.len() >= 2)
    })
    .await?;
    running.stop(WAIT).await?;

    // Start over from the first alert (a new consumer, as after losing it): the ledger knows
    // every delivery, so no robot message and no dead letter is sent again.
    let stream = js.get_stream("TOUCH_ALERTS").await?;
    stream
        .delete_consumer(touchstream::live::notify::DURABLE)
        .await?;
    let before = seen.lock().expect("lock").wecom.len();
    let running = InProcessRun::spawn(fx.run_args(&server.url(), free_addr()?));
    notifier_acked(&js, 2).await?;
    running.stop(WAIT).await?;
    let (wecom, problems) = {
        let c = seen.lock().expect("lock");
        (c.wecom.clone(), c.problems.clone())
    };
    assert_eq!(wecom.len(), before, "{wecom:?}");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(read_stream(&js, "TOUCH_DLQ").await?.len(), 2);
    Ok(())
}

/// A robot that answers 500 through every retry of the first round: the alert is neither lost
/// nor dead-lettered, JetStream redelivers it and the second round delivers it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_away_through_every_retry_gets_the_alert_later() -> anyhow::Result<()> {
    let (capture, seen) = capture_server().await?;
    let server = NatsServer::start().await?;
    let fx = Fixture::new(1)?;
    let mut text = std::fs::read_to_string(&fx.pipeline)?;
    text.push_str(&format!(
        r#"
[notify]

[notify.delivery]
retry_base_ms = 50
retry_cap_ms = 100
max_attempts = 2

[[notify.receivers]]
name = "flaky-wecom"
kind = "wecom"
webhook_url = "http://{capture}/cgi-bin/webhook/send?key=flaky"

[[notify.routes]]
region = "*"
receivers = ["flaky-wecom"]
"#
    ));
    std::fs::write(&fx.pipeline, text)?;
    let running = InProcessRun::spawn(fx.run_args(&server.url(), free_addr()?));
    let (_client, js) = connect(&server.url()).await?;
    wait_input_stream(&js, WAIT).await?;
    publish(
        &js,
        &hot_quote("f", "r1", "c1", "q9", now_ms() - 6 * DAY_MS, 3),
    )
    .await?;

    // Two refused attempts, then (after the 30 s redelivery) the message.
    let got = wait_for(
        "the message after redelivery",
        Duration::from_secs(120),
        || async {
            let c = seen.lock().expect("lock");
            (!c.flaky.is_empty()).then(|| (c.flaky.clone(), c.flaky_calls))
        },
    )
    .await?;
    assert_eq!(got.0.len(), 1, "{got:?}");
    assert_eq!(got.1, 3, "two refusals, then the delivery");
    assert!(got.0[0].contains("Li Wei"), "{}", got.0[0]);
    notifier_acked(&js, 1).await?;
    running.stop(WAIT).await?;
    assert!(
        read_stream(&js, "TOUCH_DLQ").await?.is_empty(),
        "no dead letter"
    );
    let flaky = seen.lock().expect("lock").flaky.len();
    assert_eq!(flaky, 1, "delivered once");
    Ok(())
}
