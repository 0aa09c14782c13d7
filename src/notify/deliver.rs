//! Delivery: the requests of a message per receiver kind, one attempt ([`Sender::send`]), retries
//! with exponential backoff and full jitter honouring `Retry-After` ([`Sender::deliver`]), the
//! robots' rate limit as a sliding window ([`RateLimiter`]), and per-receiver workers that merge
//! alerts queued beyond that limit into digest messages, never dropping one ([`Dispatcher`]).
//!
//! Every alert submitted gets one [`Report`]: delivered, or failed with the reason and the
//! receiver's response (the caller dead-letters it as `delivery_failed`). A failed report comes
//! from a permanent answer (bad signature, invalid key, a 4xx) or from retries running out.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderMap, RETRY_AFTER};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use url::Url;

use super::http::{HttpClient, HttpError, Reply};
use super::template::Templates;
use super::{
    AlertView, DeliverySettings, Notifier, Receiver, ReceiverKind, TemplateForm, alertmanager,
    dingtalk, webhook, wecom,
};

/// The longest `Retry-After` honoured (a larger one is shortened to this).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
/// The robots' rate-limit window.
pub const ROBOT_WINDOW: Duration = Duration::from_secs(60);

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// Worth trying again: a network error, a timeout, 5xx, 429, a robot's rate-limit code.
    /// `after` is the receiver's `Retry-After`, if it gave one.
    Retry {
        after: Option<Duration>,
        why: String,
    },
    /// Trying again cannot help: `response` is what the receiver said (for the dead letter).
    Permanent {
        why: String,
        response: String,
    },
}

impl Delivery {
    /// The judgement of a non-robot answer by its HTTP status: 2xx delivered; 408, 429 and 5xx
    /// retried; anything else (4xx, an unfollowed redirect) permanent.
    pub fn from_http_status(reply: &Reply) -> Delivery {
        let status = reply.status;
        if status.is_success() {
            Delivery::Delivered
        } else if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            Delivery::Retry {
                after: retry_after(&reply.headers),
                why: reply.text(),
            }
        } else {
            Delivery::Permanent {
                why: format!("rejected with HTTP {}", status.as_u16()),
                response: reply.text(),
            }
        }
    }

    fn from_http_error(e: HttpError) -> Delivery {
        match e {
            HttpError::Timeout(_) | HttpError::Io(_) => Delivery::Retry {
                after: None,
                why: e.to_string(),
            },
            HttpError::BadUrl(_) | HttpError::TlsSetup(_) => Delivery::Permanent {
                why: e.to_string(),
                response: String::new(),
            },
        }
    }
}

/// A group robot's answer (WeCom, DingTalk): HTTP 200 with `errcode` 0 on success. Non-2xx is
/// judged by status; `rate_limit` is retried; other codes are permanent, `meaning` naming the
/// known ones.
pub(crate) fn classify_robot(
    reply: &Reply,
    service: &str,
    rate_limit: i64,
    meaning: impl Fn(i64) -> Option<&'static str>,
) -> Delivery {
    if !reply.status.is_success() {
        return Delivery::from_http_status(reply);
    }
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&reply.body).ok();
    let Some(code) = parsed
        .as_ref()
        .and_then(|v| v.get("errcode"))
        .and_then(serde_json::Value::as_i64)
    else {
        return Delivery::Permanent {
            why: format!("{service} answered without an errcode"),
            response: reply.text(),
        };
    };
    match code {
        0 => Delivery::Delivered,
        c if c == rate_limit => Delivery::Retry {
            after: retry_after(&reply.headers),
            why: format!("{service} rate limit (errcode {code}): {}", reply.text()),
        },
        _ => Delivery::Permanent {
            why: match meaning(code) {
                Some(m) => format!("{service} {m} (errcode {code})"),
                None => format!("{service} errcode {code}"),
            },
            response: reply.text(),
        },
    }
}

/// `Retry-After` as seconds or an HTTP date, capped at [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
        let ms = at.timestamp_millis().saturating_sub(crate::wall_clock_ms());
        Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// What happened to one alert at one receiver, in the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Delivered (alone or within a digest) after `attempts` tries of its last request.
    Delivered { attempts: u32 },
    /// Not delivered; dead-letter it as `delivery_failed` with [`Report::error`].
    Failed {
        why: String,
        /// The receiver's last answer (status and body), when there was one.
        response: Option<String>,
        attempts: u32,
    },
}

impl Report {
    pub fn is_delivered(&self) -> bool {
        matches!(self, Report::Delivered { .. })
    }

    /// Retries ran out on errors that may pass (network, 5xx, rate limits): the alert should be
    /// tried again later rather than dead-lettered.
    pub fn gave_up(&self) -> bool {
        matches!(self, Report::Failed { response: None, attempts, .. } if *attempts > 0)
    }

    /// The text of the dead letter's `error`.
    pub fn error(&self, receiver: &str) -> Option<String> {
        match self {
            Report::Delivered { .. } => None,
            Report::Failed {
                why,
                response,
                attempts,
            } => Some(match response.as_deref().filter(|r| !r.is_empty()) {
                Some(r) => format!(
                    "receiver {receiver}: {why} (after {attempts} attempt(s)); response: {r}"
                ),
                None => format!("receiver {receiver}: {why} (after {attempts} attempt(s))"),
            }),
        }
    }
}

/// How a request is signed at each attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signing {
    None,
    /// DingTalk: `timestamp` and `sign` query parameters, from the time of the attempt.
    DingTalk {
        secret: String,
    },
    /// `X-Touchstream-Signature` over the body.
    Hmac {
        secret: String,
    },
}

/// One HTTP request of a message (a WeCom message with mentions is two).
#[derive(Debug, Clone)]
pub struct Request {
    pub kind: ReceiverKind,
    pub url: Url,
    pub body: Bytes,
    pub signing: Signing,
}

/// Exponential backoff with full jitter: the wait before retry `n` (0-based) is uniform in
/// `[0, min(cap, base × 2ⁿ)]`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait for `retry` with `fraction` in [0, 1].
    pub fn delay(&self, retry: u32, fraction: f64) -> Duration {
        self.ceiling(retry).mul_f64(fraction.clamp(0.0, 1.0))
    }
}

/// A uniform fraction in [0, 1) from the process's random hasher keys (no RNG crate needed).
fn random_fraction() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(crate::wall_clock_ms() as u64);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// At most `limit` requests in any `window` (a sliding window of send times).
#[derive(Debug)]
pub struct RateLimiter {
    limit: usize,
    window: Duration,
    sent: VecDeque<Instant>,
}

impl RateLimiter {
    pub fn new(limit: usize, window: Duration) -> RateLimiter {
        RateLimiter {
            limit: limit.max(1),
            window,
            sent: VecDeque::new(),
        }
    }

    fn prune(&mut self, now: Instant) {
        while self
            .sent
            .front()
            .is_some_and(|&t| now.duration_since(t) >= self.window)
        {
            self.sent.pop_front();
        }
    }

    /// Requests that may be made now.
    pub fn free(&mut self) -> usize {
        self.prune(Instant::now());
        self.limit - self.sent.len()
    }

    /// Waits until `n` (at most the limit) requests may be made.
    pub async fn wait_for(&mut self, n: usize) {
        let n = n.clamp(1, self.limit);
        loop {
            self.prune(Instant::now());
            if self.limit - self.sent.len() >= n {
                return;
            }
            let oldest_needed = self.sent[self.sent.len() + n - self.limit - 1];
            tokio::time::sleep_until(oldest_needed + self.window).await;
        }
    }

    /// Waits for a slot and takes it.
    pub async fn acquire(&mut self) {
        self.wait_for(1).await;
        self.sent.push_back(Instant::now());
    }
}

/// Sends messages to receivers: builds requests, makes attempts, retries.
#[derive(Debug, Clone)]
pub struct Sender {
    notifier: Arc<Notifier>,
    client: HttpClient,
}

impl Sender {
    pub fn new(notifier: Arc<Notifier>) -> Sender {
        let client = HttpClient::new(notifier.config().delivery.request_timeout());
        Sender { notifier, client }
    }

    fn settings(&self) -> &DeliverySettings {
        &self.notifier.config().delivery
    }

    fn templates(&self) -> &Templates {
        self.notifier.templates()
    }

    /// The requests of one message carrying `alerts` (more than one alert to a robot: a digest).
    pub fn requests(
        &self,
        receiver: &Receiver,
        alerts: &[AlertView],
    ) -> Result<Vec<Request>, Delivery> {
        let parse = |s: &str| {
            Url::parse(s).map_err(|e| Delivery::Permanent {
                why: format!("receiver URL `{s}` is invalid: {e}"),
                response: String::new(),
            })
        };
        let json = |v: serde_json::Value| Bytes::from(v.to_string());
        let kind = receiver.kind();
        Ok(match receiver {
            Receiver::Alertmanager {
                url,
                firing_hold_hours,
                ..
            } => vec![Request {
                kind,
                url: alertmanager::endpoint(&parse(url)?),
                body: json(alertmanager::body(
                    alerts,
                    self.templates(),
                    *firing_hold_hours,
                    crate::wall_clock_ms(),
                )),
                signing: Signing::None,
            }],
            Receiver::Webhook {
                name,
                url,
                hmac_secret,
            } => vec![Request {
                kind,
                url: parse(url)?,
                body: json(webhook::body(
                    name,
                    &self.notifier.config().external_url,
                    alerts,
                    self.templates(),
                )),
                signing: match hmac_secret {
                    Some(secret) => Signing::Hmac {
                        secret: secret.clone(),
                    },
                    None => Signing::None,
                },
            }],
            Receiver::Wecom {
                webhook_url,
                mentioned_mobile_list,
                ..
            } => {
                let url = parse(webhook_url)?;
                let (title, text) = robot_message(self.templates(), kind, alerts);
                let mut out = vec![Request {
                    kind,
                    url: url.clone(),
                    body: json(wecom::markdown_body(&text)),
                    signing: Signing::None,
                }];
                if !mentioned_mobile_list.is_empty() {
                    out.push(Request {
                        kind,
                        url,
                        body: json(wecom::mention_body(
                            &format!("{title}，请相关同事关注"),
                            mentioned_mobile_list,
                        )),
                        signing: Signing::None,
                    });
                }
                out
            }
            Receiver::Dingtalk {
                webhook_url,
                secret,
                at_mobiles,
                ..
            } => {
                let (title, text) = robot_message(self.templates(), kind, alerts);
                vec![Request {
                    kind,
                    url: parse(webhook_url)?,
                    body: json(dingtalk::body(&title, &text, at_mobiles)),
                    signing: match secret {
                        Some(secret) => Signing::DingTalk {
                            secret: secret.clone(),
                        },
                        None => Signing::None,
                    },
                }]
            }
        })
    }

    /// One attempt of one request; signatures are computed now.
    pub async fn attempt(&self, request: &Request) -> Delivery {
        let mut headers = Vec::new();
        let url = match &request.signing {
            Signing::None => request.url.clone(),
            Signing::DingTalk { secret } => {
                dingtalk::signed_url(&request.url, secret, crate::wall_clock_ms())
            }
            Signing::Hmac { secret } => {
                headers.push((
                    webhook::SIGNATURE_HEADER,
                    webhook::signature(secret, &request.body),
                ));
                request.url.clone()
            }
        };
        match self
            .client
            .post_json(&url, &headers, request.body.clone())
            .await
        {
            Ok(reply) => match request.kind {
                ReceiverKind::Wecom => wecom::classify(&reply),
                ReceiverKind::Dingtalk => dingtalk::classify(&reply),
                ReceiverKind::Alertmanager | ReceiverKind::Webhook => {
                    Delivery::from_http_status(&reply)
                }
            },
            Err(e) => Delivery::from_http_error(e),
        }
    }

    /// One attempt of each request of the message, in order, stopping at the first that is not
    /// delivered.
    pub async fn send(&self, receiver: &Receiver, alerts: &[AlertView]) -> Delivery {
        let requests = match self.requests(receiver, alerts) {
            Ok(r) => r,
            Err(d) => return d,
        };
        for r in &requests {
            match self.attempt(r).await {
                Delivery::Delivered => {}
                other => return other,
            }
        }
        Delivery::Delivered
    }

    /// Delivers one message with retries. Each request is retried on its own (a delivered first
    /// request is not sent again); with a `limiter`, every attempt takes one of its slots.
    pub async fn deliver(
        &self,
        receiver: &Receiver,
        alerts: &[AlertView],
        mut limiter: Option<&mut RateLimiter>,
    ) -> Report {
        let requests = match self.requests(receiver, alerts) {
            Ok(r) => r,
            Err(Delivery::Permanent { why, response }) => {
                return Report::Failed {
                    why,
                    response: Some(response),
                    attempts: 0,
                };
            }
            Err(other) => {
                return Report::Failed {
                    why: format!("{other:?}"),
                    response: None,
                    attempts: 0,
                };
            }
        };
        let settings = self.settings();
        let backoff = Backoff {
            base: Duration::from_millis(settings.retry_base_ms),
            cap: Duration::from_millis(settings.retry_cap_ms),
        };
        let max_attempts = settings.max_attempts.max(1);
        let mut attempts = 0;
        for request in &requests {
            attempts = 0;
            loop {
                attempts += 1;
                if let Some(l) = limiter.as_deref_mut() {
                    l.acquire().await;
                }
                match self.attempt(request).await {
                    Delivery::Delivered => break,
                    Delivery::Permanent { why, response } => {
                        tracing::error!(
                            receiver = receiver.name(),
                            endpoint = %receiver.endpoint_for_logs(),
                            alerts = alerts.len(),
                            %why,
                            %response,
                            "delivery failed permanently"
                        );
                        return Report::Failed {
                            why,
                            response: Some(response),
                            attempts,
                        };
                    }
                    Delivery::Retry { after, why } => {
                        if attempts >= max_attempts {
                            tracing::error!(
                                receiver = receiver.name(),
                                alerts = alerts.len(),
                                attempts,
                                %why,
                                "delivery gave up"
                            );
                            return Report::Failed {
                                why: format!("gave up after {attempts} attempts; last: {why}"),
                                response: None,
                                attempts,
                            };
                        }
                        let jittered = backoff.delay(attempts - 1, random_fraction());
                        let wait = after.map_or(jittered, |a| a.max(jittered));
                        tracing::warn!(
                            receiver = receiver.name(),
                            attempt = attempts,
                            wait_ms = wait.as_millis() as u64,
                            %why,
                            "delivery will be retried"
                        );
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        tracing::info!(
            receiver = receiver.name(),
            alerts = alerts.len(),
            attempts,
            "delivered"
        );
        Report::Delivered { attempts }
    }
}

/// Title and markdown text of a robot message: one alert in full, or a digest of one line per
/// alert.
fn robot_message(
    templates: &Templates,
    kind: ReceiverKind,
    alerts: &[AlertView],
) -> (String, String) {
    match alerts {
        [one] => (
            Templates::title(one),
            templates.render(one, kind, TemplateForm::Full),
        ),
        many => {
            let lines: Vec<String> = many
                .iter()
                .map(|a| templates.render(a, kind, TemplateForm::Line))
                .collect();
            let title = Templates::digest_title(many.len());
            (title.clone(), digest_text(&title, &lines))
        }
    }
}

fn digest_text(title: &str, lines: &[String]) -> String {
    let mut text = format!("**{title}**");
    for line in lines {
        text.push('\n');
        text.push_str(line);
    }
    text
}

/// Bytes of a robot message's text as sent (DingTalk doubles line breaks' spaces and appends
/// mentions).
fn sent_text_bytes(receiver: &Receiver, text: &str) -> usize {
    match receiver {
        Receiver::Dingtalk { at_mobiles, .. } => {
            text.len()
                + 2 * text.matches('\n').count()
                + at_mobiles.iter().map(|m| m.len() + 2).sum::<usize>()
                + 4
        }
        _ => text.len(),
    }
}

fn max_text_bytes(receiver: &Receiver) -> usize {
    match receiver {
        Receiver::Dingtalk { .. } => dingtalk::MAX_TEXT_BYTES,
        _ => wecom::MAX_MARKDOWN_BYTES,
    }
}

/// How many of `lines` (at least one) fit in one digest for `receiver`.
fn digest_fit(receiver: &Receiver, lines: &[String]) -> usize {
    let max = max_text_bytes(receiver);
    let mut fit = 1;
    while fit < lines.len() {
        let title = Templates::digest_title(fit + 1);
        if sent_text_bytes(receiver, &digest_text(&title, &lines[..=fit])) > max {
            break;
        }
        fit += 1;
    }
    fit
}

/// Splits `n` queued alerts into messages for `free` message slots: each alone when they fit,
/// else digests packed greedily by size (`fit(start)` = how many from `start` fit in one), at
/// most `free` of them; alerts past the returned groups stay queued.
pub fn plan(
    n: usize,
    free: usize,
    mut fit: impl FnMut(usize) -> usize,
) -> Vec<std::ops::Range<usize>> {
    if n <= free {
        return (0..n).map(|i| i..i + 1).collect();
    }
    let mut groups = Vec::new();
    let mut start = 0;
    while start < n && groups.len() < free {
        let take = fit(start).clamp(1, n - start);
        groups.push(start..start + take);
        start += take;
    }
    groups
}

struct Job {
    alert: AlertView,
    done: oneshot::Sender<Report>,
}

/// Waits for one alert's [`Report`].
#[derive(Debug)]
pub struct Ticket(oneshot::Receiver<Report>);

impl Ticket {
    /// The report; `None` when the dispatcher stopped before deciding (do not ack the alert).
    pub async fn wait(self) -> Option<Report> {
        self.0.await.ok()
    }
}

/// Why an alert could not be submitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("no receiver named `{0}`")]
    UnknownReceiver(String),
    #[error("the worker of receiver `{0}` has stopped")]
    Stopped(String),
}

/// One worker task per receiver; alerts are submitted to a receiver by name.
#[derive(Debug)]
pub struct Dispatcher {
    queues: HashMap<String, mpsc::UnboundedSender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl Dispatcher {
    /// Starts a worker per receiver of `notifier` (on the current tokio runtime).
    pub fn start(notifier: Arc<Notifier>) -> Dispatcher {
        let sender = Sender::new(notifier.clone());
        let mut queues = HashMap::new();
        let mut workers = Vec::new();
        for receiver in &notifier.config().receivers {
            let (tx, rx) = mpsc::unbounded_channel();
            queues.insert(receiver.name().to_string(), tx);
            let worker = Worker {
                receiver: receiver.clone(),
                sender: sender.clone(),
                rx,
            };
            workers.push(tokio::spawn(worker.run()));
        }
        Dispatcher { queues, workers }
    }

    /// Queues `alert` for `receiver`; the ticket yields its report. The alert should already
    /// be [`Notifier::prepare`]d.
    pub fn submit(&self, receiver: &str, alert: AlertView) -> Result<Ticket, SubmitError> {
        let queue = self
            .queues
            .get(receiver)
            .ok_or_else(|| SubmitError::UnknownReceiver(receiver.to_string()))?;
        let (done, ticket) = oneshot::channel();
        queue
            .send(Job { alert, done })
            .map_err(|_| SubmitError::Stopped(receiver.to_string()))?;
        Ok(Ticket(ticket))
    }

    /// Stops taking alerts and waits until every queued one has its report.
    pub async fn shutdown(self) {
        drop(self.queues);
        for w in self.workers {
            let _ = w.await;
        }
    }
}

struct Worker {
    receiver: Receiver,
    sender: Sender,
    rx: mpsc::UnboundedReceiver<Job>,
}

impl Worker {
    async fn run(mut self) {
        let settings = self.sender.settings().clone();
        let robot = self.receiver.kind().is_robot();
        let mut limiter =
            RateLimiter::new(settings.robot_messages_per_minute as usize, ROBOT_WINDOW);
        // Requests per message: a WeCom message with mentions is two.
        let per_message = match &self.receiver {
            Receiver::Wecom {
                mentioned_mobile_list,
                ..
            } if !mentioned_mobile_list.is_empty() => 2,
            _ => 1,
        };
        let mut pending: VecDeque<Job> = VecDeque::new();
        loop {
            if pending.is_empty() {
                match self.rx.recv().await {
                    Some(job) => pending.push_back(job),
                    None => return,
                }
            }
            if robot {
                limiter.wait_for(per_message).await;
            }
            while let Ok(job) = self.rx.try_recv() {
                pending.push_back(job);
            }
            if robot {
                let free = (limiter.free() / per_message).max(1);
                let lines: Vec<String> = pending
                    .iter()
                    .map(|j| {
                        self.sender.templates().render(
                            &j.alert,
                            self.receiver.kind(),
                            TemplateForm::Line,
                        )
                    })
                    .collect();
                let groups = plan(pending.len(), free, |start| {
                    digest_fit(&self.receiver, &lines[start..])
                });
                for group in groups {
                    let batch: Vec<Job> = pending.drain(..group.len()).collect();
                    self.deliver(batch, Some(&mut limiter)).await;
                }
            } else {
                let take = pending.len().min(settings.max_alerts_per_request.max(1));
                let batch: Vec<Job> = pending.drain(..take).collect();
                match self.receiver.kind() {
                    ReceiverKind::Webhook => {
                        // One notification per rule, as Alertmanager groups by alertname.
                        let mut by_rule: Vec<(String, Vec<Job>)> = Vec::new();
                        for job in batch {
                            match by_rule.iter_mut().find(|(r, _)| *r == job.alert.rule) {
                                Some((_, jobs)) => jobs.push(job),
                                None => by_rule.push((job.alert.rule.clone(), vec![job])),
                            }
                        }
                        for (_, jobs) in by_rule {
                            self.deliver(jobs, None).await;
                        }
                    }
                    _ => self.deliver(batch, None).await,
                }
            }
        }
    }

    async fn deliver(&self, jobs: Vec<Job>, limiter: Option<&mut RateLimiter>) {
        let alerts: Vec<AlertView> = jobs.iter().map(|j| j.alert.clone()).collect();
        let report = self.sender.deliver(&self.receiver, &alerts, limiter).await;
        for job in jobs {
            // A dropped ticket means the caller no longer waits; nothing to do.
            let _ = job.done.send(report.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exhausted_retries_are_tried_again_later() {
        let failed = |response: Option<&str>, attempts| Report::Failed {
            why: "x".into(),
            response: response.map(str::to_string),
            attempts,
        };
        assert!(failed(None, 10).gave_up(), "retries ran out: try later");
        assert!(
            !failed(Some("errcode 93000"), 1).gave_up(),
            "refused: dead letter"
        );
        assert!(
            !failed(None, 0).gave_up(),
            "could not even build the request"
        );
        assert!(!Report::Delivered { attempts: 1 }.gave_up());
    }

    #[test]
    fn backoff_ceiling_doubles_up_to_the_cap() {
        let b = Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(60),
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(500));
        assert_eq!(b.ceiling(3), Duration::from_secs(4));
        assert_eq!(b.ceiling(7), Duration::from_secs(60));
        assert_eq!(b.ceiling(200), Duration::from_secs(60));
        assert_eq!(b.delay(3, 0.5), Duration::from_secs(2));
        assert_eq!(b.delay(3, 7.0), Duration::from_secs(4));
        let f = random_fraction();
        assert!((0.0..1.0).contains(&f), "{f}");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "7".parse().expect("header value"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(RETRY_AFTER, "86400".parse().expect("header value"));
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT"
                .parse()
                .expect("header value"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, "soon".parse().expect("header value"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn plan_sends_alone_when_slots_suffice_else_digests() {
        assert_eq!(plan(3, 20, |_| 10), vec![0..1, 1..2, 2..3]);
        // 25 queued, 20 slots: digests of 10, 10, 5.
        assert_eq!(plan(25, 20, |_| 10), vec![0..10, 10..20, 20..25]);
        // 10 queued, 2 slots, 3 fit in a digest: two digests now, 4 stay queued.
        assert_eq!(plan(10, 2, |_| 3), vec![0..3, 3..6]);
        // A fit of 0 (one line larger than a message) still moves on.
        assert_eq!(plan(3, 1, |_| 0), vec![0..1]);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_is_a_sliding_window() {
        let start = Instant::now();
        let mut l = RateLimiter::new(20, Duration::from_secs(60));
        for _ in 0..15 {
            l.acquire().await;
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
        for _ in 0..5 {
            l.acquire().await;
        }
        assert_eq!(l.free(), 0);
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        // The 21st waits for the first 15 to leave the window (virtual time).
        l.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_secs(60));
        assert_eq!(l.free(), 14);
        // Waiting for 16 free needs the 16th send (at 30 s) to leave too.
        l.wait_for(16).await;
        assert_eq!(start.elapsed(), Duration::from_secs(90));
    }
}
