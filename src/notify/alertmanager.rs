//! Alertmanager's v2 API: `POST {url}/api/v2/alerts` with a JSON array of `postableAlert`.
//! Labels: `alertname` (the rule), `alert_id` (the alert's identity, so that two quotes of one rep
//! stay two alerts), `rep`, `region`, `severity`. Annotations: `summary`, `description` (the
//! rendered template), `dashboard`. `startsAt` is `fired_at`; a resolved alert sets `endsAt` to
//! its resolution time. Grouping, silences and inhibition are Alertmanager's.

use serde_json::{Map, Value, json};
use url::Url;

use super::template::Templates;
use super::{AlertState, AlertView, ReceiverKind, annotations, labels};
use crate::event::{Millis, format_time, parse_time};

/// `{base}/api/v2/alerts` (a base with a path prefix keeps it).
pub fn endpoint(base: &Url) -> Url {
    let mut url = base.clone();
    let path = format!("{}/api/v2/alerts", base.path().trim_end_matches('/'));
    url.set_path(&path);
    url.set_query(None);
    url
}

/// The request body for `alerts`. `now_ms` and `firing_hold_hours` give firing alerts an
/// `endsAt` in the future when configured (see `Receiver::Alertmanager`).
pub fn body(
    alerts: &[AlertView],
    templates: &Templates,
    firing_hold_hours: Option<u64>,
    now_ms: Millis,
) -> Value {
    let items: Vec<Value> = alerts
        .iter()
        .map(|a| postable(a, templates, firing_hold_hours, now_ms))
        .collect();
    Value::Array(items)
}

fn postable(
    alert: &AlertView,
    templates: &Templates,
    firing_hold_hours: Option<u64>,
    now_ms: Millis,
) -> Value {
    let annotations = annotations(alert, templates, ReceiverKind::Alertmanager);
    let mut item = Map::new();
    item.insert("labels".into(), json!(labels(alert)));
    item.insert("annotations".into(), Value::Object(annotations));
    item.insert("startsAt".into(), alert.fired_at.clone().into());
    let ends_at = match alert.status {
        AlertState::Resolved => alert
            .resolved_at
            .as_deref()
            .and_then(parse_time)
            .map(|t| t.max(alert.fired_at_ms)),
        AlertState::Firing => firing_hold_hours.map(|h| {
            let hold = i64::try_from(h)
                .unwrap_or(i64::MAX / 2)
                .saturating_mul(3_600_000);
            now_ms.max(alert.fired_at_ms).saturating_add(hold)
        }),
    };
    if let Some(t) = ends_at {
        item.insert("endsAt".into(), format_time(t).into());
    }
    if let Some(url) = &alert.dashboard_url
        && Url::parse(url).is_ok()
    {
        item.insert("generatorURL".into(), url.clone().into());
    }
    Value::Object(item)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::NotifyConfig;
    use crate::notify::tests::{firing, resolved};

    #[test]
    fn endpoint_keeps_a_path_prefix() {
        let u = |s: &str| Url::parse(s).expect("valid url");
        assert_eq!(
            endpoint(&u("http://127.0.0.1:9093")).as_str(),
            "http://127.0.0.1:9093/api/v2/alerts"
        );
        assert_eq!(
            endpoint(&u("https://am.example.com/alertmanager/")).as_str(),
            "https://am.example.com/alertmanager/api/v2/alerts"
        );
    }

    #[test]
    fn postable_alerts_carry_labels_annotations_and_times() {
        let templates = Templates::new(&NotifyConfig::default()).expect("defaults compile");
        let mut f = firing();
        f.dashboard_url = Some("https://grafana.example.com/d/rep?var-rep=r1".into());
        let b = body(&[f, resolved()], &templates, None, 0);
        let first = &b[0];
        assert_eq!(
            first["labels"],
            json!({"alertname": "quote_hot_no_contract", "alert_id": "quote_hot_no_contract:q1",
                   "rep": "r1", "region": "east", "severity": "warning"})
        );
        assert_eq!(first["startsAt"], "2026-11-07T01:00:00.000Z");
        assert!(first.get("endsAt").is_none());
        assert_eq!(
            first["generatorURL"],
            "https://grafana.example.com/d/rep?var-rep=r1"
        );
        assert_eq!(
            first["annotations"]["dashboard"],
            "https://grafana.example.com/d/rep?var-rep=r1"
        );
        assert_eq!(
            first["annotations"]["summary"],
            "报价已被打开 3 次以上，5 天内未发合同"
        );
        let description = first["annotations"]["description"]
            .as_str()
            .unwrap_or_default();
        assert!(description.contains("康达大药房 12 号店"), "{description}");
        let second = &b[1];
        assert_eq!(second["endsAt"], "2026-11-07T01:01:00.000Z");
        assert!(second.get("generatorURL").is_none());

        let held = body(&[firing()], &templates, Some(24), 1_800_000_000_000);
        assert_eq!(
            held[0]["endsAt"],
            format_time(1_800_000_000_000 + 24 * 3_600_000)
        );
    }
}
