//! The collector's HTTP server (axum): tracking pixels, tracked links, website beacons, SDK
//! batches and minting, publishing EVENTS.md events to `touch.in.<kind>` with `Nats-Msg-Id` =
//! `event_id`.
//!
//! | route | answer | publishes |
//! |---|---|---|
//! | `GET /px/{token}.gif?e=&dwell_ms=&page=` | always the 43-byte transparent GIF | `pixel.hit` via the buffer; bad token: `touch.dlq.bad_token` |
//! | `GET /l/{token}?u=URL` | 302 to URL + UTM, or 400 | `web.hit` of the landing URL via the buffer |
//! | `POST /v1/web` (sendBeacon, any content type) | 204 | `web.hit` via the buffer |
//! | `POST /v1/events` (JSON array or NDJSON) | 200 with a result per event, after every ack; 413, 400, 503 + `Retry-After` | each accepted event, synchronously |
//! | `POST /v1/assets` (`Authorization: Bearer <secret of the first key>`) | token, pixel and link URLs | nothing |
//! | `GET /healthz` | `ok` | |
//!
//! Hits (pixel, link, beacon) never wait for NATS: the handler validates the event with the
//! same decoder as the pipeline, checks consent, pushes it into a bounded buffer (`buffer`)
//! and answers; a publisher task drains the buffer to JetStream and holds events while NATS is
//! away. SDK batches are answered only once JetStream has acknowledged every accepted event,
//! so a 200 means stored; while NATS is unreachable they get 503 and nothing is reported
//! accepted (a retry of the same batch is deduplicated by `event_id`).
//!
//! Every event the collector writes carries `received_at` = its clock on arrival (for SDK
//! events this replaces whatever the device sent), so buffered hits keep their time.

mod buffer;
mod ip;
mod link;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::Context;
use axum::Router;
use axum::body::Body as HttpBody;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use ring::hmac;
use ring::rand::{SecureRandom as _, SystemRandom};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use url::{Url, form_urlencoded};

pub use ip::{anonymise, client_ip, is_trusted};
pub use link::{check_target, domain_allowed, with_utm};

use self::buffer::{Buffer, Drain, Outgoing};
use super::batch::{self, BatchError, Limits};
use super::config::{CollectConfig, parse_cidr};
use super::token::{Claims, Keys};
use crate::engine::{DeadLetter, DeadReason};
use crate::event::{Body, HitKind, decode, format_time};
use crate::wall_clock_ms;

// Metric names live in `crate::telemetry` with every other name.
pub use crate::telemetry::{
    COLLECT_BAD_TOKENS, COLLECT_BATCH_EVENTS, COLLECT_BUFFER_DEPTH, COLLECT_CONSENT_DROPPED,
    COLLECT_DROPPED, COLLECT_PUBLISH_SECONDS, COLLECT_REQUESTS,
};

/// The 1×1 transparent GIF every pixel request gets (GIF89a, one transparent colour).
pub const GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];
/// `Retry-After` (seconds) of a 503.
pub const RETRY_AFTER_SECONDS: u64 = 5;
/// Dead letters of bad tokens buffered at most (a flood of forged tokens cannot crowd real
/// hits out: they have a buffer of their own).
const DEAD_LETTER_BUFFER: usize = 10_000;
/// Longest `ua` and `referrer` kept, in bytes (cut at a character boundary).
const MAX_UA_BYTES: usize = 512;
const MAX_REFERRER_BYTES: usize = 2048;
const MAX_VISITOR_ID_BYTES: usize = 128;
/// Longest request path kept as the `raw` of a bad-token dead letter.
const MAX_RAW_BYTES: usize = 2048;
/// Largest body of a beacon or a mint request (one event's worth).
const MAX_SMALL_BODY: usize = crate::event::MAX_EVENT_BYTES;
/// How long shutdown waits for the buffers to reach JetStream.
const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// Integers in events may not exceed 2^53 - 1 (EVENTS.md schemas).
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Whether an event may be kept: `(body, rep)` → allowed. `rep` is the rep id a pixel or link
/// token names; `None` for beacons and SDK events, whose rep (if any) is in the body.
pub type ConsentCheck = Arc<dyn Fn(&Body, Option<&str>) -> bool + Send + Sync>;

/// A consent check that allows everything.
pub fn allow_all() -> ConsentCheck {
    Arc::new(|_, _| true)
}

/// Binds `cfg.listen` (port 0 picks a free one) and returns the bound address at once and the
/// collector as a future to spawn or await. It serves until `shutdown` resolves, then stops
/// taking requests, gives the buffered hits up to 10 s to reach JetStream (counting what is
/// left as dropped) and returns.
///
/// The input stream (`touch.in.>`) and, for bad-token dead letters, the `TOUCH_DLQ` stream
/// must exist (`source::jetstream::ensure_input_stream`, `sinks::nats::ensure_output_streams`);
/// until they do, hits stay buffered and are retried.
pub async fn bind(
    cfg: CollectConfig,
    js: Context,
    consent: ConsentCheck,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(
    SocketAddr,
    impl Future<Output = anyhow::Result<()>> + Send + 'static,
)> {
    let problems = cfg.check();
    if !problems.is_empty() {
        let list: Vec<String> = problems
            .iter()
            .map(|(path, msg)| format!("{path}: {msg}"))
            .collect();
        anyhow::bail!("invalid [collect] settings:\n{}", list.join("\n"));
    }
    let keys = Keys::new(&cfg.keys).map_err(|e| anyhow::anyhow!("[collect] keys: {e}"))?;
    let mint_secret = cfg.keys[0]
        .secret_bytes()
        .map_err(|e| anyhow::anyhow!("[collect] keys: {e}"))?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding the collector on {}", cfg.listen))?;
    let local = listener.local_addr()?;

    let (hits, hits_drain) = buffer::buffer("hits", cfg.pixel_buffer_events);
    let (dead, dead_drain) = buffer::buffer(
        "dead_letters",
        cfg.pixel_buffer_events.min(DEAD_LETTER_BUFFER),
    );
    let inner = Arc::new(Inner::new(
        &cfg,
        keys,
        &mint_secret,
        js.clone(),
        consent,
        hits,
        dead,
    ));
    let app = router(inner);
    let head_timeout = Duration::from_millis(cfg.request_timeout_ms);

    let run = async move {
        let (closing_tx, closing_rx) = watch::channel(false);
        let drains: Vec<(&'static str, _, _)> = [hits_drain, dead_drain]
            .into_iter()
            .map(|d: Drain| {
                let name = d.name();
                let depth = d.depth_handle();
                let task = tokio::spawn(d.run(js.clone(), closing_rx.clone()));
                (name, depth, task)
            })
            .collect();
        crate::serve::serve(listener, app, head_timeout, shutdown).await;
        let _ = closing_tx.send(true);
        let deadline = tokio::time::Instant::now() + DRAIN_GRACE;
        for (name, depth, mut task) in drains {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                let left = depth.load(Ordering::Acquire);
                tracing::error!(
                    buffer = name,
                    left,
                    "collector: NATS stayed unreachable at shutdown; buffered events dropped"
                );
                Drain::count_abandoned(name, left);
            }
        }
        Ok(())
    };
    Ok((local, run))
}

/// `bind`, then runs until `shutdown` resolves.
pub async fn serve(
    cfg: CollectConfig,
    js: Context,
    consent: ConsentCheck,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (addr, run) = bind(cfg, js, consent, shutdown).await?;
    tracing::info!("collector listening on http://{addr}");
    run.await
}

/// What the handlers share.
struct Inner {
    keys: Keys,
    /// `public_url` without a trailing `/`.
    public_url: String,
    allowed_domains: Vec<String>,
    trusted: Vec<(IpAddr, u8)>,
    limits: Limits,
    timeout: Duration,
    js: Context,
    nats: async_nats::Client,
    consent: ConsentCheck,
    hits: Buffer,
    dead: Buffer,
    ids: IdGen,
    /// `Authorization: Bearer` of `/v1/assets` is checked as an HMAC under a random key of the
    /// presented value against this tag of the first key's secret: a constant-time compare
    /// that leaks neither content nor length.
    auth_key: hmac::Key,
    auth_tag: hmac::Tag,
}

/// Where a hit went.
enum Hit {
    Queued,
    ConsentRefused,
    /// The event the request describes breaks the contract (message for the requester).
    Invalid(String),
    /// The buffer is full: counted as dropped.
    Full,
}

impl Inner {
    fn new(
        cfg: &CollectConfig,
        keys: Keys,
        mint_secret: &[u8],
        js: Context,
        consent: ConsentCheck,
        hits: Buffer,
        dead: Buffer,
    ) -> Inner {
        let mut random = [0u8; 32];
        if SystemRandom::new().fill(&mut random).is_err() {
            // Practically impossible; the tag then still compares in constant time.
            random = *b"touchstream-collector-auth-key!!";
        }
        let auth_key = hmac::Key::new(hmac::HMAC_SHA256, &random);
        let auth_tag = hmac::sign(&auth_key, mint_secret);
        Inner {
            keys,
            public_url: cfg.public_url.trim_end_matches('/').to_string(),
            allowed_domains: cfg
                .allowed_redirect_domains
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            trusted: cfg
                .trusted_proxies
                .iter()
                .filter_map(|t| parse_cidr(t))
                .collect(),
            limits: Limits {
                max_body_bytes: cfg.max_body_bytes,
                max_events: cfg.max_batch_events,
            },
            timeout: Duration::from_millis(cfg.request_timeout_ms),
            nats: js.client(),
            js,
            consent,
            hits,
            dead,
            ids: IdGen::new(),
            auth_key,
            auth_tag,
        }
    }

    /// True once the client has lost its connection (a batch is then refused at once).
    /// While the first connection is still pending, a batch is tried and bounded by its
    /// deadline instead.
    fn nats_lost(&self) -> bool {
        self.nats.connection_state() == async_nats::connection::State::Disconnected
    }

    /// Validates `event` with the pipeline's decoder, checks consent and buffers it.
    fn hit(&self, endpoint: &'static str, event: JsonObject, rep: Option<&str>) -> Hit {
        let raw = event.finish();
        let ev = match decode(&raw) {
            Ok(ev) => ev,
            Err(r) => return Hit::Invalid(r.error),
        };
        if !(self.consent)(&ev.body, rep) {
            metrics::counter!(COLLECT_CONSENT_DROPPED, "endpoint" => endpoint).increment(1);
            return Hit::ConsentRefused;
        }
        let msg = Outgoing {
            subject: format!("touch.in.{}", ev.kind().as_str()),
            msg_id: ev.event_id.into_string(),
            payload: Bytes::from(raw),
        };
        if self.hits.push(msg) {
            Hit::Queued
        } else {
            Hit::Full
        }
    }

    /// Envelope of an event the collector writes: a fresh `event_id`, `ts` = `received_at` = now.
    fn envelope(&self, kind: &str) -> JsonObject {
        let now = format_time(wall_clock_ms());
        let mut m = JsonObject::new();
        m.str("event_id", &self.ids.next());
        m.str("kind", kind);
        m.str("ts", &now);
        m.str("received_at", &now);
        m
    }

    /// Counts a bad token and dead-letters it as `bad_token` with the request path as `raw`.
    fn bad_token(&self, endpoint: &'static str, error: String, uri: &Uri) {
        metrics::counter!(COLLECT_BAD_TOKENS, "endpoint" => endpoint).increment(1);
        tracing::debug!(endpoint, "collector: bad token: {error}");
        let raw = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        let now = wall_clock_ms();
        let dl = DeadLetter {
            reason: DeadReason::BadToken,
            error,
            raw: clip(raw, MAX_RAW_BYTES).as_bytes().to_vec(),
            at: now,
            received_at: Some(now),
        };
        self.dead.push(Outgoing {
            subject: dl.subject(),
            msg_id: format!("bad_token:{}", self.ids.next()),
            payload: Bytes::from(dl.to_json()),
        });
    }

    fn authorised(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return false;
        };
        let value = value.as_bytes();
        let Some(presented) = value
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|_| &value[7..])
        else {
            return false;
        };
        hmac::verify(&self.auth_key, presented, self.auth_tag.as_ref()).is_ok()
    }
}

fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/px/{*rest}", get(pixel))
        .route("/l/{*rest}", get(link))
        .route("/v1/web", post(beacon).options(preflight))
        .route("/v1/events", post(events).options(preflight))
        .route("/v1/assets", post(assets))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(middleware::from_fn_with_state(inner.clone(), observe))
        .with_state(inner)
}

/// Counts every request by endpoint and status, and bounds its time (a safety net above the
/// handlers' own limits).
async fn observe(State(inner): State<Arc<Inner>>, req: Request, next: Next) -> Response {
    let endpoint = endpoint_of(req.uri().path());
    let resp = if matches!(endpoint, "pixel" | "link" | "healthz") {
        // These never wait on anything: no timer needed.
        next.run(req).await
    } else {
        let limit = inner.timeout + Duration::from_secs(1);
        match tokio::time::timeout(limit, next.run(req)).await {
            Ok(resp) => resp,
            Err(_) => unavailable("the request took too long"),
        }
    };
    let status = resp.status();
    let code = match status.as_u16() {
        200 => "200",
        204 => "204",
        302 => "302",
        400 => "400",
        404 => "404",
        413 => "413",
        503 => "503",
        _ => "",
    };
    let code = if code.is_empty() {
        metrics::SharedString::from(status.as_u16().to_string())
    } else {
        metrics::SharedString::const_str(code)
    };
    metrics::counter!(COLLECT_REQUESTS, "endpoint" => endpoint, "status" => code).increment(1);
    resp
}

fn endpoint_of(path: &str) -> &'static str {
    if path.starts_with("/px/") {
        "pixel"
    } else if path.starts_with("/l/") {
        "link"
    } else {
        match path {
            "/v1/web" => "web",
            "/v1/events" => "events",
            "/v1/assets" => "assets",
            "/healthz" => "healthz",
            _ => "other",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pixel

async fn pixel(
    State(inner): State<Arc<Inner>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    // HEAD (link checkers) gets the headers and records nothing.
    if method == Method::GET {
        pixel_hit(&inner, peer.ip(), &uri, &headers);
    }
    gif()
}

fn pixel_hit(inner: &Inner, peer: IpAddr, uri: &Uri, headers: &HeaderMap) {
    let path = uri.path();
    let token = path.strip_prefix("/px/").unwrap_or(path);
    let token = token.strip_suffix(".gif").unwrap_or(token);
    let claims = match inner.keys.verify(token) {
        Ok(c) => c,
        Err(e) => return inner.bad_token("pixel", e.to_string(), uri),
    };
    // Unknown or invalid parameters are ignored: a mail client must never break, and a hit
    // without them is still an open.
    let (mut hit, mut dwell_ms, mut page) = (HitKind::Open, None, None);
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match &*k {
            "e" => hit = HitKind::parse(&v).unwrap_or(hit),
            "dwell_ms" => dwell_ms = v.parse::<u64>().ok().filter(|d| *d <= MAX_SAFE_INTEGER),
            "page" => {
                page = v
                    .parse::<u64>()
                    .ok()
                    .filter(|p| (1..=MAX_SAFE_INTEGER).contains(p))
            }
            _ => {}
        }
    }
    let mut m = inner.envelope("pixel.hit");
    m.str("asset_id", &claims.asset_id);
    m.str("hit", hit.as_str());
    if let Some(d) = dwell_ms {
        m.num("dwell_ms", d);
    }
    if let Some(p) = page {
        m.num("page", p);
    }
    if let Some(ua) = header_text(headers, header::USER_AGENT, MAX_UA_BYTES) {
        m.str("ua", &ua);
    }
    let client = client_ip(peer, forwarded_for(headers), &inner.trusted);
    m.str("ip", &anonymise(client).to_string());
    if let Hit::Invalid(e) = inner.hit("pixel", m, Some(&claims.rep_id)) {
        // Cannot happen with verified claims; say so loudly if it does.
        tracing::warn!("collector: pixel hit not valid as an event: {e}");
    }
}

fn gif() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/gif"),
            (header::CACHE_CONTROL, "no-cache, no-store, must-revalidate"),
            (header::PRAGMA, "no-cache"),
            (header::EXPIRES, "0"),
        ],
        Bytes::from_static(&GIF),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Tracked link

async fn link(State(inner): State<Arc<Inner>>, uri: Uri, headers: HeaderMap) -> Response {
    let token = uri.path().strip_prefix("/l/").unwrap_or("");
    let claims = match inner.keys.verify(token) {
        Ok(c) => c,
        Err(e) => {
            inner.bad_token("link", e.to_string(), &uri);
            return text(
                StatusCode::BAD_REQUEST,
                "This tracked link is not valid: its token failed verification.\n",
            );
        }
    };
    let target = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "u")
        .map(|(_, v)| v.into_owned());
    let Some(target) = target else {
        return text(
            StatusCode::BAD_REQUEST,
            "This tracked link has no target: `u=` (the URL to go to) is missing.\n",
        );
    };
    let landing = match landing(&target, &claims, &inner.allowed_domains) {
        Ok(u) => u,
        Err(msg) => return text(StatusCode::BAD_REQUEST, format!("{msg}\n")),
    };
    let Ok(location) = HeaderValue::from_str(landing.as_str()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "redirect target refused: not a valid Location\n",
        );
    };
    let mut m = inner.envelope("web.hit");
    m.str("url", landing.as_str());
    if let Some(r) = header_text(&headers, header::REFERER, MAX_REFERRER_BYTES) {
        m.str("referrer", &r);
    }
    if let Hit::Invalid(e) = inner.hit("link", m, Some(&claims.rep_id)) {
        return text(
            StatusCode::BAD_REQUEST,
            format!("redirect target refused: {e}\n"),
        );
    }
    // The visitor always lands, also when the hit could not be buffered (counted as dropped).
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Website beacon

async fn beacon(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: HttpBody) -> Response {
    let deadline = Instant::now() + inner.timeout;
    let max = inner.limits.max_body_bytes.min(MAX_SMALL_BODY);
    let bytes = match read_body(body, &headers, max, deadline).await {
        Ok(b) => b,
        Err(e) => return with_cors(e.response()),
    };
    let resp = match beacon_event(&inner, &bytes) {
        Ok(m) => match inner.hit("web", m, None) {
            Hit::Queued | Hit::ConsentRefused => StatusCode::NO_CONTENT.into_response(),
            Hit::Invalid(e) => bad_request(format!("web hit refused: {e}")),
            Hit::Full => unavailable("the collector's buffer is full"),
        },
        Err(msg) => bad_request(msg),
    };
    with_cors(resp)
}

/// The `web.hit` of a beacon body `{"url": ..., "referrer"?: ..., "visitor_id"?: ...}`
/// (other fields are ignored; `null` counts as absent).
fn beacon_event(inner: &Inner, body: &[u8]) -> Result<JsonObject, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("beacon body is not JSON: {e}"))?;
    let Value::Object(obj) = v else {
        return Err("beacon body must be a JSON object with `url`".into());
    };
    let url = match obj.get("url") {
        Some(Value::String(u)) => u.clone(),
        _ => return Err("beacon body needs `url` (a string)".into()),
    };
    let mut m = inner.envelope("web.hit");
    m.str("url", &url);
    for (field, max) in [
        ("referrer", MAX_REFERRER_BYTES),
        ("visitor_id", MAX_VISITOR_ID_BYTES),
    ] {
        match obj.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(Value::String(s)) => {
                m.str(field, clip(s, max));
            }
            Some(_) => return Err(format!("`{field}` must be a string")),
        }
    }
    Ok(m)
}

/// Browsers preflight a beacon or batch sent as `application/json` from another origin.
async fn preflight() -> Response {
    with_cors(StatusCode::NO_CONTENT.into_response())
}

fn with_cors(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type"),
    );
    resp
}

// ---------------------------------------------------------------------------------------------
// SDK batches

async fn events(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: HttpBody) -> Response {
    let deadline = Instant::now() + inner.timeout;
    let bytes = match read_body(body, &headers, inner.limits.max_body_bytes, deadline).await {
        Ok(b) => b,
        Err(e) => return with_cors(e.response()),
    };
    with_cors(batch_response(&inner, &bytes, deadline).await)
}

async fn batch_response(inner: &Inner, body: &[u8], deadline: Instant) -> Response {
    let items = match batch::split(body, &inner.limits) {
        Ok(items) => items,
        Err(e) => return batch_error(e),
    };
    let received_at = format_time(wall_clock_ms());
    let mut results = Vec::with_capacity(items.len());
    let mut out = Vec::new();
    let (mut accepted, mut rejected) = (0usize, 0usize);
    for item in &items {
        let reject = |reason: &str, error: String| json!({"index": item.index, "status": "rejected", "reason": reason, "error": error});
        let ev = match decode(&item.raw) {
            Ok(ev) => ev,
            Err(r) => {
                rejected += 1;
                metrics::counter!(COLLECT_BATCH_EVENTS, "outcome" => "rejected", "reason" => r.reason.as_str())
                    .increment(1);
                results.push(reject(r.reason.as_str(), r.error));
                continue;
            }
        };
        if !(inner.consent)(&ev.body, None) {
            rejected += 1;
            metrics::counter!(COLLECT_CONSENT_DROPPED, "endpoint" => "events").increment(1);
            metrics::counter!(COLLECT_BATCH_EVENTS, "outcome" => "rejected", "reason" => "consent")
                .increment(1);
            results.push(reject(
                "consent",
                format!(
                    "the rep has switched this data category off; the {} event is not kept",
                    ev.kind().as_str()
                ),
            ));
            continue;
        }
        let payload = stamp_received_at(&item.raw, ev.received_at.is_some(), &received_at);
        accepted += 1;
        results.push(
            json!({"index": item.index, "event_id": ev.event_id.as_str(), "status": "accepted"}),
        );
        out.push(Outgoing {
            subject: format!("touch.in.{}", ev.kind().as_str()),
            msg_id: ev.event_id.into_string(),
            payload,
        });
    }
    if !out.is_empty() {
        if inner.nats_lost() {
            return unavailable(
                "NATS is unreachable; nothing was accepted, send the batch again later",
            );
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, buffer::publish(&inner.js, out, "batch")).await {
            Ok(failed) if failed.is_empty() => {}
            Ok(failed) => {
                tracing::warn!(
                    failed = failed.len(),
                    "collector: JetStream did not store a batch; answered 503"
                );
                return unavailable(
                    "JetStream did not acknowledge every event; nothing was accepted, send the \
                     batch again later",
                );
            }
            Err(_) => {
                return unavailable(
                    "JetStream did not acknowledge the batch in time; nothing was accepted, send \
                     the batch again later",
                );
            }
        }
        metrics::counter!(COLLECT_BATCH_EVENTS, "outcome" => "accepted", "reason" => "none")
            .increment(accepted as u64);
    }
    json_response(
        StatusCode::OK,
        json!({"accepted": accepted, "rejected": rejected, "results": results}),
    )
}

/// An SDK event with `received_at` = the collector's clock. The field is put in front of the
/// event's own text, which stays byte for byte as sent; only when the device already sent a
/// `received_at` is the event re-serialised to replace it (the collector's clock is the one
/// that counts for skew correction, EVENTS.md §1).
fn stamp_received_at(raw: &[u8], has_received_at: bool, received_at: &str) -> Bytes {
    if has_received_at {
        if let Ok(mut m) = serde_json::from_slice::<Map<String, Value>>(raw) {
            m.insert("received_at".into(), Value::String(received_at.into()));
            return Bytes::from(Value::Object(m).to_string());
        }
    } else if let Some(open) = raw.iter().position(|&b| b == b'{') {
        // `decode` accepted `raw`: an object with at least the required members, so a comma
        // after the new member is right.
        let field = format!("\"received_at\":\"{received_at}\",");
        let mut out = Vec::with_capacity(raw.len() + field.len());
        out.extend_from_slice(&raw[..=open]);
        out.extend_from_slice(field.as_bytes());
        out.extend_from_slice(&raw[open + 1..]);
        return Bytes::from(out);
    }
    Bytes::copy_from_slice(raw)
}

fn batch_error(e: BatchError) -> Response {
    match e {
        BatchError::TooLarge { bytes, max } => json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": format!(
                "the batch is {bytes} bytes, more than the {max} allowed (collect.max_body_bytes); \
                 send smaller batches"
            )}),
        ),
        BatchError::TooManyEvents { count, max } => json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": format!(
                "the batch has {count} events, more than the {max} allowed \
                 (collect.max_batch_events); send smaller batches"
            )}),
        ),
        BatchError::Malformed(msg) => bad_request(format!("malformed batch: {msg}")),
        BatchError::Empty => bad_request("the batch holds no events".into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Minting

async fn assets(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: HttpBody) -> Response {
    if !inner.authorised(&headers) {
        let mut resp = json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": "send `Authorization: Bearer <secret of the first [collect] key>`"}),
        );
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"touchstream\""),
        );
        return resp;
    }
    let deadline = Instant::now() + inner.timeout;
    let max = inner.limits.max_body_bytes.min(MAX_SMALL_BODY);
    let bytes = match read_body(body, &headers, max, deadline).await {
        Ok(b) => b,
        Err(e) => return e.response(),
    };
    match mint_request(&inner, &bytes) {
        Ok(v) => json_response(StatusCode::OK, v),
        Err(msg) => bad_request(msg),
    }
}

/// `{"asset_id", "rep_id", "medium", "campaign"?, "target_url"?}` → token and URLs.
fn mint_request(inner: &Inner, body: &[u8]) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let Value::Object(obj) = v else {
        return Err("body must be a JSON object".into());
    };
    let text = |field: &str, required: bool| -> Result<Option<String>, String> {
        match obj.get(field) {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            None | Some(Value::Null) if !required => Ok(None),
            _ => Err(format!(
                "`{field}` must be a string{}",
                if required { " and is required" } else { "" }
            )),
        }
    };
    let claims = Claims {
        asset_id: text("asset_id", true)?.unwrap_or_default(),
        rep_id: text("rep_id", true)?.unwrap_or_default(),
        medium: text("medium", true)?.unwrap_or_default(),
        campaign: text("campaign", false)?,
    };
    let target = text("target_url", false)?;
    let minted = mint(
        &inner.keys,
        &inner.public_url,
        &inner.allowed_domains,
        &claims,
        target.as_deref(),
    )?;
    let mut out = Map::new();
    out.insert("asset_id".into(), Value::String(claims.asset_id));
    out.insert("token".into(), Value::String(minted.token));
    out.insert("pixel_url".into(), Value::String(minted.pixel_url));
    if let Some(link) = minted.link_url {
        out.insert("link_url".into(), Value::String(link));
    }
    Ok(Value::Object(out))
}

/// A minted asset: its token and the URLs to put in the document or message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    pub token: String,
    /// `<public_url>/px/<token>.gif`
    pub pixel_url: String,
    /// `<public_url>/l/<token>?u=<target, form-encoded>`, when a target was given.
    pub link_url: Option<String>,
}

/// Mints the token of `claims` with the first key and builds its pixel URL and, for
/// `target_url`, its tracked-link URL (the same as `POST /v1/assets`; for `touchstream
/// token`). The target must pass the same check as a click on the link will
/// (`allowed_domains` = `[collect] allowed_redirect_domains`).
pub fn mint(
    keys: &Keys,
    public_url: &str,
    allowed_domains: &[String],
    claims: &Claims,
    target_url: Option<&str>,
) -> Result<Minted, String> {
    let token = keys.mint(claims).map_err(|e| e.to_string())?;
    let base = public_url.trim_end_matches('/');
    let link_url = match target_url {
        Some(target) => {
            landing(target, claims, allowed_domains)?;
            let u: String = form_urlencoded::byte_serialize(target.as_bytes()).collect();
            Some(format!("{base}/l/{token}?u={u}"))
        }
        None => None,
    };
    Ok(Minted {
        pixel_url: format!("{base}/px/{token}.gif"),
        link_url,
        token,
    })
}

/// The landing URL of a tracked link: `target` checked against the allowed domains, with the
/// token's UTM parameters, and acceptable as a `web.hit` `url` (EVENTS.md §2).
pub fn landing(target: &str, claims: &Claims, allowed_domains: &[String]) -> Result<Url, String> {
    let url = check_target(target, allowed_domains)?;
    let url = with_utm(
        &url,
        &claims.medium,
        claims.campaign.as_deref(),
        &claims.asset_id,
    );
    let probe = json!({"event_id": "probe", "kind": "web.hit", "ts": 0, "url": url.as_str()});
    match decode(probe.to_string().as_bytes()) {
        Ok(_) => Ok(url),
        Err(r) => Err(format!("redirect target refused: {}", r.error)),
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Why a body could not be read.
enum BodyError {
    TooLarge(usize),
    Timeout,
    Broken(String),
}

impl BodyError {
    fn response(self) -> Response {
        match self {
            BodyError::TooLarge(max) => json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": format!(
                    "the request body is larger than the {max} bytes allowed \
                     (collect.max_body_bytes); send smaller batches"
                )}),
            ),
            BodyError::Timeout => json_response(
                StatusCode::REQUEST_TIMEOUT,
                json!({"error": "the request body did not arrive in time (collect.request_timeout_ms)"}),
            ),
            BodyError::Broken(e) => bad_request(format!("the request body could not be read: {e}")),
        }
    }
}

/// Reads at most `max` bytes of `body` before `deadline`: a larger body is refused as soon as
/// its `Content-Length` or its bytes say so, never buffered whole.
async fn read_body(
    body: HttpBody,
    headers: &HeaderMap,
    max: usize,
    deadline: Instant,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(BodyError::TooLarge(max));
    }
    let collected = tokio::time::timeout_at(deadline.into(), Limited::new(body, max).collect());
    match collected.await {
        Err(_) => Err(BodyError::Timeout),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(BodyError::TooLarge(max))
        }
        Ok(Err(e)) => Err(BodyError::Broken(e.to_string())),
    }
}

fn json_response(status: StatusCode, v: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn bad_request(msg: String) -> Response {
    json_response(StatusCode::BAD_REQUEST, json!({"error": msg}))
}

fn unavailable(msg: &str) -> Response {
    let mut resp = json_response(StatusCode::SERVICE_UNAVAILABLE, json!({"error": msg}));
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
    resp
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg.into(),
    )
        .into_response()
}

/// Every `X-Forwarded-For` line that is readable text.
fn forwarded_for(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
}

/// A header as text (invalid UTF-8 replaced), cut to `max` bytes; `None` when absent or empty.
fn header_text(headers: &HeaderMap, name: header::HeaderName, max: usize) -> Option<String> {
    let v = headers.get(name)?;
    let s = String::from_utf8_lossy(v.as_bytes());
    let s = clip(&s, max);
    (!s.is_empty()).then(|| s.to_string())
}

/// `s` cut to at most `max` bytes at a character boundary.
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A JSON object written straight into its bytes (the hit path makes one per request; the
/// decoder checks the result like any other event).
struct JsonObject(Vec<u8>);

impl JsonObject {
    fn new() -> JsonObject {
        let mut b = Vec::with_capacity(320);
        b.push(b'{');
        JsonObject(b)
    }

    fn key(&mut self, key: &str) {
        if self.0.len() > 1 {
            self.0.push(b',');
        }
        // Keys are this file's literals: plain ASCII, nothing to escape.
        self.0.push(b'"');
        self.0.extend_from_slice(key.as_bytes());
        self.0.extend_from_slice(b"\":");
    }

    fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        // Writing a &str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.0, value);
    }

    fn num(&mut self, key: &str, value: u64) {
        self.key(key);
        self.0.extend_from_slice(value.to_string().as_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.push(b'}');
        self.0
    }
}

/// Event ids of the events the collector makes: a random per-process prefix and a counter,
/// unique without coordination and cheap (no system call per hit).
struct IdGen {
    prefix: String,
    next: AtomicU64,
}

impl IdGen {
    fn new() -> IdGen {
        let mut seed = [0u8; 12];
        if SystemRandom::new().fill(&mut seed).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            seed[..8].copy_from_slice(&(nanos as u64).to_le_bytes());
            seed[8..].copy_from_slice(&std::process::id().to_le_bytes());
        }
        IdGen {
            prefix: format!(
                "c-{}-",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(seed)
            ),
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        format!(
            "{}{:x}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gif_is_a_1x1_transparent_gif89a() {
        assert_eq!(GIF.len(), 43);
        assert_eq!(&GIF[..6], b"GIF89a");
        assert_eq!(&GIF[6..10], &[1, 0, 1, 0]);
        assert_eq!(GIF[42], 0x3b);
    }

    #[test]
    fn clip_keeps_whole_characters() {
        assert_eq!(clip("héllo", 2), "h");
        assert_eq!(clip("héllo", 3), "hé");
        assert_eq!(clip("abc", 10), "abc");
    }

    #[test]
    fn ids_are_unique_and_short() {
        let g = IdGen::new();
        let a = g.next();
        let b = g.next();
        assert_ne!(a, b);
        assert!(a.len() < 40, "{a}");
        assert_ne!(IdGen::new().next(), a);
    }

    #[test]
    fn received_at_is_set_without_touching_the_event_text() {
        let at = "2026-11-02T09:00:00.000Z";
        let raw = br#" {"event_id":"e1","kind":"web.hit","ts":1,"url":"https://a.example/","attrs":{"n":1.50}}"#;
        let out = stamp_received_at(raw, false, at);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#" {"received_at":"2026-11-02T09:00:00.000Z","event_id":"e1","kind":"web.hit","ts":1,"url":"https://a.example/","attrs":{"n":1.50}}"#
        );
        let ev = decode(&out).unwrap();
        assert_eq!(ev.received_at, crate::event::parse_time(at));
        // A device's own received_at is replaced, once.
        let raw = br#"{"event_id":"e1","kind":"web.hit","ts":1,"received_at":5,"url":"https://a.example/"}"#;
        let ev = decode(&stamp_received_at(raw, true, at)).unwrap();
        assert_eq!(ev.received_at, crate::event::parse_time(at));
    }

    #[test]
    fn endpoints_are_a_bounded_set() {
        assert_eq!(endpoint_of("/px/abc.gif"), "pixel");
        assert_eq!(endpoint_of("/l/abc"), "link");
        assert_eq!(endpoint_of("/v1/events"), "events");
        assert_eq!(endpoint_of("/anything/else"), "other");
    }
}
