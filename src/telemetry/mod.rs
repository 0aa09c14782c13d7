//! Every metric touchstream exports is named here, once (Vector's instrumentation spec style):
//! `touchstream_<noun>_<unit>[_total]`, bounded labels only (kind, reason, cause, rule, status,
//! outcome, stream) and never a customer id. `exporter` serves them on `/metrics`.

pub mod exporter;
pub mod health;

use crate::engine::output::AlertStatus;

/// Starts each rule's alert series at zero, so that the first alerts of a rule are an increase
/// that `rate()` sees; a series that first appears with its final value (all of a run's
/// alerts fired between two scrapes) would read as no alerts at all.
pub fn zero_rule_series<'a>(rules: impl IntoIterator<Item = &'a str>) {
    for rule in rules {
        // Taking the handle registers the series; the exporter renders it with no samples.
        let _ = metrics::histogram!(ALERT_LATENCY_SECONDS, "rule" => rule.to_owned());
        for status in [AlertStatus::Firing, AlertStatus::Resolved] {
            metrics::counter!(ALERTS, "rule" => rule.to_owned(), "status" => status.as_str())
                .increment(0);
        }
    }
}

/// Input events accepted by the decoder, label `kind`.
pub const EVENTS_IN: &str = "touchstream_events_in_total";
/// Dead letters written, label `reason`.
pub const DEAD_LETTERS: &str = "touchstream_dead_letters_total";
/// Events dropped because their `event_id` was seen before.
pub const DUPLICATES: &str = "touchstream_duplicate_events_total";
/// Events whose effective time was behind the watermark on arrival, label `kind`.
pub const LATE_EVENTS: &str = "touchstream_late_events_total";
/// Opens excluded from the counted opens, label `cause` (prefetch, proxy, reload, before_send).
pub const EXCLUDED_OPENS: &str = "touchstream_excluded_opens_total";
/// Counted opens.
pub const COUNTED_OPENS: &str = "touchstream_counted_opens_total";
/// Web hits without `utm_content` (campaign metrics only, no pair).
pub const UNATTRIBUTED_WEB_HITS: &str = "touchstream_unattributed_web_hits_total";
/// Events that name no pair and are otherwise ignored, label `cause`.
pub const IGNORED_EVENTS: &str = "touchstream_ignored_events_total";
/// Alerts published, labels `rule`, `status`.
pub const ALERTS: &str = "touchstream_alerts_total";
/// Sessions emitted.
pub const SESSIONS: &str = "touchstream_sessions_total";
/// Current watermark, epoch seconds.
pub const WATERMARK_SECONDS: &str = "touchstream_watermark_seconds";
/// Wall clock minus watermark, seconds (live runs).
pub const WATERMARK_LAG_SECONDS: &str = "touchstream_watermark_lag_seconds";
/// Time to process one micro-batch, seconds (histogram).
pub const BATCH_DURATION_SECONDS: &str = "touchstream_batch_duration_seconds";
/// Events per micro-batch (histogram).
pub const BATCH_EVENTS: &str = "touchstream_batch_events";
/// Wall-clock delay from an alert's `due_at` to its publish, seconds (histogram).
pub const ALERT_LATENCY_SECONDS: &str = "touchstream_alert_latency_seconds";
/// Keyed state held by the operators, label `state` (assets, pending_hits, pairs, sessions, timers, dedup).
pub const STATE_ENTRIES: &str = "touchstream_state_entries";
/// Input messages acknowledged to JetStream.
pub const ACKED: &str = "touchstream_input_acked_total";
/// Input messages the durable consumer has not delivered yet or not had acked (consumer lag).
pub const CONSUMER_PENDING: &str = "touchstream_consumer_pending_messages";
/// Publishes to JetStream that failed and were retried, label `stream`.
pub const PUBLISH_RETRIES: &str = "touchstream_publish_retries_total";
/// Alert deliveries, labels `receiver` and `outcome` (`delivered`, `failed`, `deferred`,
/// `already_delivered`).
pub const NOTIFICATIONS: &str = "touchstream_notifications_total";
/// Alerts whose region routes to no receiver, label `region`.
pub const UNROUTED_ALERTS: &str = "touchstream_unrouted_alerts_total";
/// Seconds from an alert's `fired_at` to its delivery, label `receiver`.
pub const NOTIFY_LATENCY_SECONDS: &str = "touchstream_notify_latency_seconds";

// Process health (issue 4): per-rep figures over the trailing `[health] window_days`, set
// from one snapshot of the engine's state every `[health] publish_interval_seconds`. Labels:
// `rep` and `region` (never a customer id); README "Business metrics" defines each figure.

/// Mean CDI over the rep's active customers (pairs with an event in the CDI window).
pub const REP_CDI_MEAN: &str = "touchstream_rep_cdi_mean";
/// The rep's active customers in each CDI band, label `band` (`high`, `mid`, `low`).
pub const REP_CUSTOMERS: &str = "touchstream_rep_customers";
/// Assets the rep sent in the window.
pub const REP_ASSETS_SENT: &str = "touchstream_rep_assets_sent";
/// Of those, assets with at least one counted open.
pub const REP_ASSETS_OPENED: &str = "touchstream_rep_assets_opened";
/// `assets_opened / assets_sent` (absent while nothing was sent).
pub const REP_OPEN_RATE: &str = "touchstream_rep_open_rate";
/// Customers the rep messaged on WeCom in the window.
pub const REP_CUSTOMERS_MESSAGED: &str = "touchstream_rep_customers_messaged";
/// Of those, customers who answered within `reply_within_hours` of a rep message.
pub const REP_CUSTOMERS_REPLIED: &str = "touchstream_rep_customers_replied";
/// `customers_replied / customers_messaged`.
pub const REP_REPLY_RATE: &str = "touchstream_rep_reply_rate";
/// Customers with at least one interaction session in the window.
pub const REP_CUSTOMERS_TOUCHED: &str = "touchstream_rep_customers_touched";
/// Of those, customers with two or more sessions.
pub const REP_CUSTOMERS_RETOUCHED: &str = "touchstream_rep_customers_retouched";
/// `customers_retouched / customers_touched`.
pub const REP_SECOND_TOUCH_RATE: &str = "touchstream_rep_second_touch_rate";
/// Leads assigned in the window whose follow-up is decided (touched, or 72 h passed).
pub const REP_LEADS_DUE: &str = "touchstream_rep_leads_due";
/// Of those, leads the rep touched within `followup_within_hours`.
pub const REP_LEADS_FOLLOWED_UP: &str = "touchstream_rep_leads_followed_up";
/// `leads_followed_up / leads_due`.
pub const REP_FOLLOWUP_RATE: &str = "touchstream_rep_followup_72h_rate";
/// Health status of one rate, label `metric` (`open_rate`, `reply_rate`, `second_touch_rate`):
/// 0 green, 1 yellow, 2 red, by the thresholds of `[health.<metric>]`.
pub const REP_HEALTH: &str = "touchstream_rep_health";
/// Alerts fired, labels `rep`, `region`, `rule`.
pub const REP_ALERTS: &str = "touchstream_rep_alerts_total";
/// Seconds from `lead_assigned` to the rep's first touch of that customer, label `region`
/// (histogram, observed when the touch is applied).
pub const FIRST_RESPONSE_SECONDS: &str = "touchstream_first_response_seconds";
/// Events dropped at the pipeline's NATS door because their rep switched the category off,
/// label `category` (never stored: dropped before any state).
pub const CONSENT_DROPPED: &str = "touchstream_consent_dropped_total";
/// Per-customer CDI records published to `touch.cdi`.
pub const CDI_PUBLISHED: &str = "touchstream_cdi_published_total";

// The collector (src/collect): bounded labels only, never a token, asset, rep or address.

/// Requests answered, labels `endpoint` (`pixel`, `link`, `web`, `events`, `assets`,
/// `healthz`, `other`) and `status` (the HTTP status code).
pub const COLLECT_REQUESTS: &str = "touchstream_collect_requests_total";
/// Seconds from sending a chunk of events to JetStream to its last ack (histogram), label
/// `mode`: `batch` (an SDK batch, the request waits) or `buffer` (the hit buffer's publisher).
pub const COLLECT_PUBLISH_SECONDS: &str = "touchstream_collect_publish_seconds";
/// Events buffered and not yet stored by JetStream, label `buffer` (`hits`, `dead_letters`).
pub const COLLECT_BUFFER_DEPTH: &str = "touchstream_collect_buffer_depth";
/// Events dropped instead of buffered, labels `buffer` and `reason` (`full`; `shutdown` when
/// NATS stayed away through the drain at shutdown; `closed`).
pub const COLLECT_DROPPED: &str = "touchstream_collect_dropped_total";
/// Pixel and link requests whose token failed verification, label `endpoint`.
pub const COLLECT_BAD_TOKENS: &str = "touchstream_collect_bad_tokens_total";
/// Events dropped because their rep switched the category off, label `endpoint`.
pub const COLLECT_CONSENT_DROPPED: &str = "touchstream_collect_consent_dropped_total";
/// SDK batch events by `outcome` (`accepted`, `rejected`) and `reason` (`none` when accepted;
/// `invalid_json`, `schema_violation`, `oversized`, `consent`).
pub const COLLECT_BATCH_EVENTS: &str = "touchstream_collect_batch_events_total";

/// Histogram buckets (seconds) for the collector's publish latency.
pub const COLLECT_PUBLISH_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Histogram buckets (seconds) for first-response time: minutes to a week.
pub const FIRST_RESPONSE_BUCKETS: &[f64] = &[
    300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0, 172800.0, 259200.0, 604800.0,
];
/// Histogram buckets (seconds) for batch duration.
pub const BATCH_DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Histogram buckets (seconds) for alert latency: seconds in practice, two hours at worst.
pub const ALERT_LATENCY_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
];
/// Histogram buckets for events per batch.
pub const BATCH_EVENTS_BUCKETS: &[f64] =
    &[1.0, 10.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0];

#[cfg(test)]
mod tests {
    /// Before any alert, /metrics already shows each rule's latency histogram and alert
    /// counters at zero (Prometheus text format, as scraped).
    #[test]
    fn rule_series_start_at_zero() {
        let recorder = super::exporter::recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            super::zero_rule_series(["quote_hot_no_contract", "ghost_followup"]);
        });
        let text = handle.render();
        for rule in ["quote_hot_no_contract", "ghost_followup"] {
            for line in [
                format!("touchstream_alert_latency_seconds_count{{rule=\"{rule}\"}} 0"),
                format!(
                    "touchstream_alert_latency_seconds_bucket{{rule=\"{rule}\",le=\"+Inf\"}} 0"
                ),
                format!("touchstream_alerts_total{{rule=\"{rule}\",status=\"firing\"}} 0"),
                format!("touchstream_alerts_total{{rule=\"{rule}\",status=\"resolved\"}} 0"),
            ] {
                assert!(
                    text.lines().any(|l| l == line),
                    "{line} missing from:\n{text}"
                );
            }
        }
    }
}
