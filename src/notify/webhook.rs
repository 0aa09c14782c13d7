//! A generic webhook receiving Alertmanager's webhook body (version 4), so that anything that
//! takes Alertmanager notifications takes ours. With a secret, the body is signed:
//! `X-Touchstream-Signature: sha256=<lowercase hex HMAC-SHA256(secret, body)>`.

use serde_json::{Map, Value, json};

use super::template::Templates;
use super::{AlertState, AlertView, Labels, ReceiverKind, annotations, labels};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-touchstream-signature";

/// Alertmanager's "zero" time, its `endsAt` of a firing alert.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// `sha256=<hex>` of the body.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256=");
    for b in tag.as_ref() {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// Alertmanager's fingerprint of a label set: FNV-1a 64 over the labels sorted by name, each
/// name and value followed by the byte 0xff, as 16 hex digits.
pub fn fingerprint(labels: &Labels) -> String {
    const OFFSET: u64 = 14_695_981_039_346_656_037;
    const PRIME: u64 = 1_099_511_628_211;
    let mut h = OFFSET;
    let mut add = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
    };
    for (name, value) in labels {
        add(name.as_bytes());
        add(&[0xff]);
        add(value.as_bytes());
        add(&[0xff]);
    }
    format!("{h:016x}")
}

/// The notification for `alerts` (the dispatcher sends one per rule).
pub fn body(
    receiver: &str,
    external_url: &str,
    alerts: &[AlertView],
    templates: &Templates,
) -> Value {
    let items: Vec<(Labels, Map<String, Value>, &AlertView)> = alerts
        .iter()
        .map(|a| {
            (
                labels(a),
                annotations(a, templates, ReceiverKind::Webhook),
                a,
            )
        })
        .collect();
    let common_labels = common(items.iter().map(|(l, _, _)| {
        l.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<Map<_, _>>()
    }));
    let common_annotations = common(items.iter().map(|(_, a, _)| a.clone()));
    let mut group_labels = Map::new();
    if let Some(name) = common_labels.get("alertname") {
        group_labels.insert("alertname".into(), name.clone());
    }
    let group_key = format!(
        "{{}}:{{{}}}",
        group_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let status = if alerts.iter().any(|a| a.status == AlertState::Firing) {
        "firing"
    } else {
        "resolved"
    };
    let alerts_json: Vec<Value> = items
        .iter()
        .map(|(l, ann, a)| {
            json!({
                "status": a.status.as_str(),
                "labels": l,
                "annotations": ann,
                "startsAt": a.fired_at,
                "endsAt": a.resolved_at.as_deref().unwrap_or(ZERO_TIME),
                "generatorURL": a.dashboard_url.as_deref().unwrap_or(""),
                "fingerprint": fingerprint(l),
            })
        })
        .collect();
    json!({
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": common_labels,
        "commonAnnotations": common_annotations,
        "externalURL": external_url,
        "alerts": alerts_json,
    })
}

/// The pairs every map has, with equal values.
fn common(mut maps: impl Iterator<Item = Map<String, Value>>) -> Map<String, Value> {
    let Some(mut first) = maps.next() else {
        return Map::new();
    };
    for m in maps {
        first.retain(|k, v| m.get(k) == Some(v));
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::NotifyConfig;
    use crate::notify::tests::{firing, resolved};

    #[test]
    fn signature_is_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn fingerprint_matches_alertmanager() {
        // prometheus/common model: the empty label set fingerprints to the FNV-1a offset basis;
        // the order labels were added in does not matter, their values do.
        assert_eq!(fingerprint(&Labels::new()), "cbf29ce484222325");
        let mut a = Labels::new();
        a.insert("b".into(), "2".into());
        a.insert("a".into(), "1".into());
        let mut b = Labels::new();
        b.insert("a".into(), "1".into());
        b.insert("b".into(), "2".into());
        assert_eq!(fingerprint(&a), fingerprint(&b));
        let mut c = b.clone();
        c.insert("a".into(), "2".into());
        assert_ne!(fingerprint(&b), fingerprint(&c));
    }

    #[test]
    fn body_has_the_v4_shape() {
        let templates = Templates::new(&NotifyConfig::default()).expect("defaults compile");
        let mut other = firing();
        other.alert_id = "quote_hot_no_contract:q2".into();
        other.rep_id = "r2".into();
        let b = body(
            "hook",
            "http://touchstream.example",
            &[firing(), other, resolved()],
            &templates,
        );
        assert_eq!(b["version"], "4");
        assert_eq!(b["status"], "firing");
        assert_eq!(b["receiver"], "hook");
        assert_eq!(b["externalURL"], "http://touchstream.example");
        assert_eq!(
            b["groupLabels"],
            json!({"alertname": "quote_hot_no_contract"})
        );
        assert_eq!(b["groupKey"], "{}:{alertname=\"quote_hot_no_contract\"}");
        assert_eq!(
            b["commonLabels"],
            json!({"alertname": "quote_hot_no_contract", "region": "east", "severity": "warning"})
        );
        assert_eq!(
            b["commonAnnotations"]["summary"],
            "报价已被打开 3 次以上，5 天内未发合同"
        );
        let alerts = b["alerts"].as_array().cloned().unwrap_or_default();
        assert_eq!(alerts.len(), 3);
        assert_eq!(alerts[0]["endsAt"], ZERO_TIME);
        assert_eq!(alerts[2]["status"], "resolved");
        assert_eq!(alerts[2]["endsAt"], "2026-11-07T01:01:00.000Z");
        assert_eq!(alerts[0]["fingerprint"], alerts[2]["fingerprint"]);
        assert_ne!(alerts[0]["fingerprint"], alerts[1]["fingerprint"]);
    }
}
