//! Alert delivery against local emulators of the WeCom and DingTalk group robots, a signed
//! webhook and Alertmanager's v2 API (each an HTTP server on 127.0.0.1:0). The emulators check
//! the wire format as the real services define it (message types and fields, WeCom's 4096-byte
//! markdown limit, DingTalk's per-request timestamp and HMAC signature recomputed here from the
//! secret, the webhook's HMAC header and v4 body) and answer with scripted rate-limit codes,
//! 500s, bad-key codes and delays beyond the client's timeout.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use serde_json::{Value, json};

use touchstream::notify::deliver::Sender;
use touchstream::notify::{
    AlertNames, AlertView, Dispatcher, Notifier, NotifyConfig, Receiver, Report,
};

const DINGTALK_SECRET: &str = "SECtest-secret";
const WEBHOOK_SECRET: &str = "hook-secret";
const CLIENT_TIMEOUT_MS: u64 = 300;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Wecom,
    Dingtalk,
    Webhook,
    Alertmanager,
}

/// What the emulator answers next (after the script: success).
#[derive(Clone, Debug)]
enum Step {
    /// HTTP status and body.
    Reply(u16, &'static str),
    /// Wait this long, then succeed (the client has given up by then).
    Stall(Duration),
}

#[derive(Debug, Clone)]
struct Seen {
    /// Wall clock at arrival, ms.
    at_ms: i64,
    query: Vec<(String, String)>,
    body: Value,
    /// Wire-format violations found by the emulator.
    problems: Vec<String>,
}

struct Emulator {
    kind: Kind,
    script: Mutex<VecDeque<Step>>,
    seen: Mutex<Vec<Seen>>,
}

struct Server {
    emulator: Arc<Emulator>,
    addr: SocketAddr,
}

impl Server {
    async fn start(kind: Kind, script: Vec<Step>) -> Server {
        let emulator = Arc::new(Emulator {
            kind,
            script: Mutex::new(script.into()),
            seen: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/cgi-bin/webhook/send", post(handle))
            .route("/robot/send", post(handle))
            .route("/hook", post(handle))
            .route("/api/v2/alerts", post(handle))
            .with_state(emulator.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Server { emulator, addr }
    }

    fn seen(&self) -> Vec<Seen> {
        self.emulator.seen.lock().expect("lock").clone()
    }

    fn receiver_toml(&self, name: &str, extra: &str) -> String {
        let a = self.addr;
        match self.emulator.kind {
            Kind::Wecom => format!(
                "[[receivers]]\nname = \"{name}\"\nkind = \"wecom\"\n\
                 webhook_url = \"http://{a}/cgi-bin/webhook/send?key=test-key\"\n{extra}\n"
            ),
            Kind::Dingtalk => format!(
                "[[receivers]]\nname = \"{name}\"\nkind = \"dingtalk\"\n\
                 webhook_url = \"http://{a}/robot/send?access_token=test-token\"\n{extra}\n"
            ),
            Kind::Webhook => format!(
                "[[receivers]]\nname = \"{name}\"\nkind = \"webhook\"\nurl = \"http://{a}/hook\"\n{extra}\n"
            ),
            Kind::Alertmanager => format!(
                "[[receivers]]\nname = \"{name}\"\nkind = \"alertmanager\"\nurl = \"http://{a}\"\n{extra}\n"
            ),
        }
    }
}

fn now_ms() -> i64 {
    touchstream::wall_clock_ms()
}

fn hmac_sha256(key: &str, message: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    ring::hmac::sign(&key, message).as_ref().to_vec()
}

async fn handle(
    State(emulator): State<Arc<Emulator>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at_ms = now_ms();
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let param = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.clone());
    let mut problems = Vec::new();
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            problems.push(format!("body is not JSON: {e}"));
            Value::Null
        }
    };
    match headers.get("content-type").and_then(|v| v.to_str().ok()) {
        Some(ct) if ct.starts_with("application/json") => {}
        other => problems.push(format!("content-type {other:?}")),
    }
    match emulator.kind {
        Kind::Wecom => check_wecom(&param("key"), &parsed, &mut problems),
        Kind::Dingtalk => check_dingtalk(&param, at_ms, &parsed, &mut problems),
        Kind::Webhook => check_webhook(&headers, &body, &parsed, &mut problems),
        Kind::Alertmanager => check_alertmanager(uri.path(), &parsed, &mut problems),
    }
    let bad = !problems.is_empty();
    emulator.seen.lock().expect("lock").push(Seen {
        at_ms,
        query: query.clone(),
        body: parsed,
        problems,
    });
    let ok = match emulator.kind {
        Kind::Wecom | Kind::Dingtalk => (StatusCode::OK, r#"{"errcode":0,"errmsg":"ok"}"#),
        Kind::Webhook | Kind::Alertmanager => (StatusCode::OK, ""),
    };
    if bad {
        // What the real services do with a malformed request: reject it.
        return match emulator.kind {
            Kind::Wecom => (
                StatusCode::OK,
                r#"{"errcode":40008,"errmsg":"invalid message type"}"#,
            ),
            Kind::Dingtalk => (
                StatusCode::OK,
                r#"{"errcode":310000,"errmsg":"sign not match"}"#,
            ),
            _ => (StatusCode::BAD_REQUEST, "malformed"),
        }
        .into_response();
    }
    let step = emulator.script.lock().expect("lock").pop_front();
    match step {
        None => ok.into_response(),
        Some(Step::Reply(status, body)) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body,
        )
            .into_response(),
        Some(Step::Stall(d)) => {
            tokio::time::sleep(d).await;
            ok.into_response()
        }
    }
}

fn check_wecom(key: &Option<String>, body: &Value, problems: &mut Vec<String>) {
    if key.as_deref() != Some("test-key") {
        problems.push(format!("key {key:?}"));
    }
    match body["msgtype"].as_str() {
        Some("markdown") => match body["markdown"]["content"].as_str() {
            Some(c) if !c.is_empty() && c.len() <= 4096 => {}
            Some(c) => problems.push(format!("markdown.content of {} bytes", c.len())),
            None => problems.push("markdown.content missing".into()),
        },
        Some("text") => {
            match body["text"]["content"].as_str() {
                Some(c) if !c.is_empty() && c.len() <= 2048 => {}
                other => problems.push(format!("text.content {other:?}")),
            }
            match body["text"]["mentioned_mobile_list"].as_array() {
                Some(list) if list.iter().all(Value::is_string) => {}
                other => problems.push(format!("text.mentioned_mobile_list {other:?}")),
            }
        }
        other => problems.push(format!("msgtype {other:?}")),
    }
}

fn check_dingtalk(
    param: &dyn Fn(&str) -> Option<String>,
    at_ms: i64,
    body: &Value,
    problems: &mut Vec<String>,
) {
    if param("access_token").as_deref() != Some("test-token") {
        problems.push("access_token missing".into());
    }
    // DingTalk: the timestamp must be within an hour of the server's clock, and the sign the
    // HMAC-SHA256 of "timestamp\nsecret" keyed by the secret, base64, URL-encoded.
    let timestamp = param("timestamp").and_then(|t| t.parse::<i64>().ok());
    match (timestamp, param("sign")) {
        (Some(ts), Some(sign)) => {
            if (at_ms - ts).abs() > 3_600_000 {
                problems.push(format!("stale timestamp {ts}"));
            }
            let expected = base64::engine::general_purpose::STANDARD.encode(hmac_sha256(
                DINGTALK_SECRET,
                format!("{ts}\n{DINGTALK_SECRET}").as_bytes(),
            ));
            if sign != expected {
                problems.push(format!("sign {sign} != {expected}"));
            }
        }
        other => problems.push(format!("timestamp/sign missing: {other:?}")),
    }
    if body["msgtype"] != "markdown" {
        problems.push(format!("msgtype {}", body["msgtype"]));
    }
    if body["markdown"]["title"].as_str().is_none_or(str::is_empty) {
        problems.push("markdown.title".into());
    }
    if !body["markdown"]["text"]
        .as_str()
        .is_some_and(|t| !t.is_empty() && t.len() <= 20_000)
    {
        problems.push("markdown.text".into());
    }
    if !body["at"]["atMobiles"].is_array() || body["at"]["isAtAll"] != false {
        problems.push(format!("at {}", body["at"]));
    }
}

fn check_webhook(headers: &HeaderMap, raw: &[u8], body: &Value, problems: &mut Vec<String>) {
    let hex: String = hmac_sha256(WEBHOOK_SECRET, raw)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let expected = format!("sha256={hex}");
    match headers
        .get("x-touchstream-signature")
        .and_then(|v| v.to_str().ok())
    {
        Some(sig) if sig == expected => {}
        other => problems.push(format!("signature {other:?}, expected {expected}")),
    }
    if body["version"] != "4" {
        problems.push(format!("version {}", body["version"]));
    }
    for key in [
        "groupKey",
        "status",
        "receiver",
        "groupLabels",
        "commonLabels",
        "commonAnnotations",
        "externalURL",
    ] {
        if body.get(key).is_none() {
            problems.push(format!("{key} missing"));
        }
    }
    match body["alerts"].as_array() {
        Some(alerts) if !alerts.is_empty() => {
            for a in alerts {
                for key in [
                    "status",
                    "labels",
                    "annotations",
                    "startsAt",
                    "endsAt",
                    "generatorURL",
                    "fingerprint",
                ] {
                    if a.get(key).is_none() {
                        problems.push(format!("alerts[].{key} missing"));
                    }
                }
            }
        }
        _ => problems.push("alerts empty".into()),
    }
}

fn check_alertmanager(path: &str, body: &Value, problems: &mut Vec<String>) {
    if path != "/api/v2/alerts" {
        problems.push(format!("path {path}"));
    }
    let Some(alerts) = body.as_array().filter(|a| !a.is_empty()) else {
        problems.push("body is not a non-empty array".into());
        return;
    };
    for a in alerts {
        for label in ["alertname", "rep", "region", "severity"] {
            if !a["labels"][label].is_string() {
                problems.push(format!("label {label} missing"));
            }
        }
        for annotation in ["summary", "description"] {
            if !a["annotations"][annotation].is_string() {
                problems.push(format!("annotation {annotation} missing"));
            }
        }
        if !a["startsAt"].is_string() {
            problems.push("startsAt missing".into());
        }
    }
}

/// A notifier over the receivers' TOML, with fast retries and a short request timeout.
fn notifier(receivers: &str, max_attempts: u32) -> Arc<Notifier> {
    let text = format!(
        "dashboard_url = \"https://grafana.example.com/d/touch-rep?var-rep={{{{ rep_id }}}}\"\n\
         [delivery]\nrequest_timeout_ms = {CLIENT_TIMEOUT_MS}\nretry_base_ms = 10\nretry_cap_ms = 50\n\
         max_attempts = {max_attempts}\n{receivers}"
    );
    let config: NotifyConfig = toml::from_str(&text).expect("notify config parses");
    Arc::new(Notifier::new(config).expect("notify config is valid"))
}

fn alert(i: usize, customer_name: &str) -> AlertView {
    let record = json!({
        "alert_id": format!("quote_hot_no_contract:q{i}"),
        "rule": "quote_hot_no_contract",
        "status": "firing",
        "rep_id": "r1",
        "customer_id": format!("c{i}"),
        "region": "east",
        "asset_id": format!("q{i}"),
        "due_at": "2026-11-07T01:00:00.000Z",
        "fired_at": "2026-11-07T01:00:00.000Z",
        "evidence": {
            "quote_sent_at": "2026-11-02T01:00:00.000Z",
            "counted_opens": 3,
            "excluded_opens": 0,
            "last_open_at": "2026-11-05T01:00:00.000Z",
            "customer_online_at_send": false,
            "product_page_visits_30m": 1
        }
    });
    let names = AlertNames {
        rep_name: Some("李伟".into()),
        customer_name: Some(customer_name.into()),
        director: Some("陈杰".into()),
        severity: "warning".into(),
        summary: "报价已被打开 3 次以上，5 天内未发合同".into(),
    };
    AlertView::from_bytes(record.to_string().as_bytes(), names).expect("alert parses")
}

async fn deliver(n: &Arc<Notifier>, name: &str, alerts: &[AlertView]) -> Report {
    let receiver: &Receiver = n.receiver(name).expect("receiver exists");
    let alerts: Vec<AlertView> = alerts.iter().map(|a| n.prepare(a.clone())).collect();
    Sender::new(n.clone())
        .deliver(receiver, &alerts, None)
        .await
}

fn assert_wire_ok(seen: &[Seen]) {
    for s in seen {
        assert!(
            s.problems.is_empty(),
            "wire format problems: {:?}",
            s.problems
        );
    }
}

#[tokio::test]
async fn wecom_markdown_within_4096_bytes_then_mentions() {
    let server = Server::start(Kind::Wecom, vec![]).await;
    let n = notifier(
        &server.receiver_toml("wx", "mentioned_mobile_list = [\"13800000000\"]"),
        3,
    );
    // A customer name of 3 000 Chinese characters: 9 000 bytes, so the message must be cut.
    let long_name = "康".repeat(3000);
    let report = deliver(&n, "wx", &[alert(1, &long_name)]).await;
    assert_eq!(report, Report::Delivered { attempts: 1 });
    let seen = server.seen();
    assert_wire_ok(&seen);
    assert_eq!(seen.len(), 2, "markdown, then the text with mentions");
    assert_eq!(seen[0].body["msgtype"], "markdown");
    let content = seen[0].body["markdown"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(
        content.len() <= 4096 && content.len() > 4000,
        "{} bytes",
        content.len()
    );
    assert!(content.ends_with('…'));
    assert!(content.contains("**【告警】报价已被打开 3 次以上，5 天内未发合同**"));
    assert_eq!(seen[1].body["msgtype"], "text");
    assert_eq!(
        seen[1].body["text"]["mentioned_mobile_list"],
        json!(["13800000000"])
    );
}

#[tokio::test]
async fn wecom_rate_limit_and_500_are_retried_until_delivered() {
    let script = vec![
        Step::Reply(200, r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#),
        Step::Reply(500, "internal error"),
        Step::Stall(Duration::from_millis(CLIENT_TIMEOUT_MS * 3)),
    ];
    let server = Server::start(Kind::Wecom, script).await;
    let n = notifier(&server.receiver_toml("wx", ""), 5);
    let report = deliver(&n, "wx", &[alert(1, "康达大药房 12 号店")]).await;
    assert_eq!(report, Report::Delivered { attempts: 4 });
    let seen = server.seen();
    assert_wire_ok(&seen);
    assert_eq!(seen.len(), 4);
    // The same message each time.
    assert!(seen.iter().all(|s| s.body == seen[0].body));
    let content = seen[0].body["markdown"]["content"]
        .as_str()
        .unwrap_or_default();
    for needle in [
        "李伟",
        "康达大药房 12 号店",
        "有效打开：3 次",
        "var-rep=r1",
        "quote_hot_no_contract:q1",
    ] {
        assert!(content.contains(needle), "{needle:?} not in {content}");
    }
}

#[tokio::test]
async fn wecom_invalid_key_is_permanent_with_the_response() {
    let script = vec![Step::Reply(
        200,
        r#"{"errcode":93000,"errmsg":"invalid webhook url"}"#,
    )];
    let server = Server::start(Kind::Wecom, script).await;
    let n = notifier(&server.receiver_toml("wx", ""), 5);
    let report = deliver(&n, "wx", &[alert(1, "c")]).await;
    match &report {
        Report::Failed {
            why,
            response,
            attempts,
        } => {
            assert!(why.contains("93000"), "{why}");
            assert!(
                response
                    .as_deref()
                    .unwrap_or_default()
                    .contains("invalid webhook url"),
                "{response:?}"
            );
            assert_eq!(*attempts, 1);
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(server.seen().len(), 1, "a permanent failure is not retried");
    let error = report.error("wx").unwrap_or_default();
    assert!(
        error.starts_with("receiver wx: ") && error.contains("invalid webhook url"),
        "{error}"
    );
}

#[tokio::test]
async fn dingtalk_signs_every_request_afresh_and_retries() {
    let script = vec![
        // Beyond the client's timeout: the retry comes at least that much later.
        Step::Stall(Duration::from_millis(CLIENT_TIMEOUT_MS * 3)),
        Step::Reply(
            200,
            r#"{"errcode":130101,"errmsg":"send too fast, exceed 20 times per minute"}"#,
        ),
    ];
    let server = Server::start(Kind::Dingtalk, script).await;
    let n = notifier(
        &server.receiver_toml(
            "ding",
            &format!("secret = \"{DINGTALK_SECRET}\"\nat_mobiles = [\"13900000000\"]"),
        ),
        5,
    );
    let report = deliver(&n, "ding", &[alert(1, "康达大药房 12 号店")]).await;
    assert_eq!(report, Report::Delivered { attempts: 3 });
    let seen = server.seen();
    assert_wire_ok(&seen);
    assert_eq!(seen.len(), 3);
    let timestamps: Vec<i64> = seen
        .iter()
        .map(|s| {
            s.query
                .iter()
                .find(|(k, _)| k == "timestamp")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0)
        })
        .collect();
    for (s, ts) in seen.iter().zip(&timestamps) {
        // Taken when the request was made, not when the message was built.
        assert!(
            (s.at_ms - ts).abs() < 5_000,
            "timestamp {ts} vs arrival {}",
            s.at_ms
        );
    }
    assert!(
        timestamps[1] >= timestamps[0] + CLIENT_TIMEOUT_MS as i64,
        "the retry after a timeout is signed anew: {timestamps:?}"
    );
    let body = &seen[2].body;
    assert_eq!(body["msgtype"], "markdown");
    assert_eq!(
        body["markdown"]["title"],
        "【告警】报价已被打开 3 次以上，5 天内未发合同"
    );
    let text = body["markdown"]["text"].as_str().unwrap_or_default();
    assert!(text.contains("客户：康达大药房 12 号店"), "{text}");
    assert!(text.ends_with("@13900000000"), "{text}");
    assert_eq!(
        body["at"],
        json!({"atMobiles": ["13900000000"], "isAtAll": false})
    );
}

#[tokio::test]
async fn dingtalk_wrong_secret_is_dead_lettered_on_310000() {
    let server = Server::start(Kind::Dingtalk, vec![]).await;
    let n = notifier(&server.receiver_toml("ding", "secret = \"SECwrong\""), 5);
    let report = deliver(&n, "ding", &[alert(1, "c")]).await;
    match report {
        Report::Failed { why, response, .. } => {
            assert!(why.contains("310000"), "{why}");
            assert!(response.unwrap_or_default().contains("sign not match"));
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].problems.iter().any(|p| p.starts_with("sign ")),
        "{:?}",
        seen[0].problems
    );
}

#[tokio::test]
async fn webhook_is_signed_v4_and_4xx_is_permanent() {
    let server = Server::start(Kind::Webhook, vec![Step::Reply(503, "busy")]).await;
    let n = notifier(
        &server.receiver_toml("hook", &format!("hmac_secret = \"{WEBHOOK_SECRET}\"")),
        3,
    );
    let report = deliver(&n, "hook", &[alert(1, "c1"), alert(2, "c2")]).await;
    assert_eq!(report, Report::Delivered { attempts: 2 });
    let seen = server.seen();
    assert_wire_ok(&seen);
    let body = &seen[1].body;
    assert_eq!(body["receiver"], "hook");
    assert_eq!(body["status"], "firing");
    assert_eq!(
        body["groupLabels"],
        json!({"alertname": "quote_hot_no_contract"})
    );
    assert_eq!(body["alerts"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        body["alerts"][1]["labels"]["alert_id"],
        "quote_hot_no_contract:q2"
    );
    assert_eq!(
        body["alerts"][0]["generatorURL"],
        "https://grafana.example.com/d/touch-rep?var-rep=r1"
    );

    let rejecting =
        Server::start(Kind::Webhook, vec![Step::Reply(422, "unprocessable: nope")]).await;
    let n = notifier(
        &rejecting.receiver_toml("hook", &format!("hmac_secret = \"{WEBHOOK_SECRET}\"")),
        3,
    );
    match deliver(&n, "hook", &[alert(1, "c1")]).await {
        Report::Failed { why, response, .. } => {
            assert!(why.contains("422"), "{why}");
            assert!(response.unwrap_or_default().contains("unprocessable: nope"));
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(rejecting.seen().len(), 1);

    // A wrong secret: the emulator rejects with 400, which is permanent.
    let checking = Server::start(Kind::Webhook, vec![]).await;
    let n = notifier(
        &checking.receiver_toml("hook", "hmac_secret = \"other\""),
        3,
    );
    assert!(!deliver(&n, "hook", &[alert(1, "c1")]).await.is_delivered());
}

#[tokio::test]
async fn alertmanager_gets_postable_alerts_and_retries_5xx() {
    let server = Server::start(Kind::Alertmanager, vec![Step::Reply(503, "")]).await;
    let n = notifier(&server.receiver_toml("am", ""), 3);
    let report = deliver(&n, "am", &[alert(1, "c1")]).await;
    assert_eq!(report, Report::Delivered { attempts: 2 });
    let seen = server.seen();
    assert_wire_ok(&seen);
    let a = &seen[1].body[0];
    assert_eq!(a["labels"]["alertname"], "quote_hot_no_contract");
    assert_eq!(a["labels"]["rep"], "r1");
    assert_eq!(a["labels"]["region"], "east");
    assert_eq!(a["startsAt"], "2026-11-07T01:00:00.000Z");
    assert_eq!(
        a["annotations"]["dashboard"],
        "https://grafana.example.com/d/touch-rep?var-rep=r1"
    );

    let rejecting =
        Server::start(Kind::Alertmanager, vec![Step::Reply(400, "{\"code\":400}")]).await;
    let n = notifier(&rejecting.receiver_toml("am", ""), 3);
    assert!(!deliver(&n, "am", &[alert(1, "c1")]).await.is_delivered());
    assert_eq!(rejecting.seen().len(), 1);
}

#[tokio::test]
async fn retries_run_out_and_say_why() {
    let script = vec![Step::Reply(500, "down"); 10];
    let server = Server::start(Kind::Wecom, script).await;
    let n = notifier(&server.receiver_toml("wx", ""), 3);
    match deliver(&n, "wx", &[alert(1, "c")]).await {
        Report::Failed { why, attempts, .. } => {
            assert_eq!(attempts, 3);
            assert!(
                why.starts_with("gave up after 3 attempts") && why.contains("HTTP 500: down"),
                "{why}"
            );
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(server.seen().len(), 3);

    // Nobody listening: connection errors are retried, then reported.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let text = format!(
        "[[receivers]]\nname = \"wx\"\nkind = \"wecom\"\n\
         webhook_url = \"http://{closed}/cgi-bin/webhook/send?key=k\"\n"
    );
    let n = notifier(&text, 2);
    match deliver(&n, "wx", &[alert(1, "c")]).await {
        Report::Failed { why, attempts, .. } => {
            assert_eq!(attempts, 2);
            assert!(why.contains("connect"), "{why}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// 25 alerts to one robot within a minute: at most 20 messages, every alert in one of them.
#[tokio::test]
async fn burst_beyond_the_robot_limit_is_merged_into_digests() {
    let server = Server::start(Kind::Wecom, vec![]).await;
    let n = notifier(&server.receiver_toml("wx", ""), 3);
    let dispatcher = Dispatcher::start(n.clone());
    let submit = |range: std::ops::Range<usize>| {
        range
            .map(|i| {
                dispatcher
                    .submit("wx", n.prepare(alert(i, &format!("药房 {i} 号店"))))
                    .expect("receiver exists")
            })
            .collect::<Vec<_>>()
    };
    // 15 one after another (each its own message), then 10 at once into the 5 slots left.
    for ticket in submit(0..15) {
        assert_eq!(ticket.wait().await, Some(Report::Delivered { attempts: 1 }));
    }
    for ticket in submit(15..25) {
        assert_eq!(ticket.wait().await, Some(Report::Delivered { attempts: 1 }));
    }
    dispatcher.shutdown().await;
    let seen = server.seen();
    assert_wire_ok(&seen);
    assert!(seen.len() <= 20, "{} messages", seen.len());
    let contents: Vec<&str> = seen
        .iter()
        .map(|s| s.body["markdown"]["content"].as_str().unwrap_or_default())
        .collect();
    // An alert appears alone (its full message ends with its id) or as a digest line.
    let missing: Vec<usize> = (0..25)
        .filter(|i| {
            let alone = format!("编号：quote_hot_no_contract:q{i}");
            let line = format!("（quote_hot_no_contract:q{i}）");
            !contents
                .iter()
                .any(|c| c.ends_with(&alone) || c.contains(&line))
        })
        .collect();
    assert!(missing.is_empty(), "alerts in no message: {missing:?}");
    assert!(
        contents.iter().any(|c| c.starts_with("**告警汇总：")),
        "the alerts beyond the limit came as a digest"
    );
}
