//! Output records of EVENTS.md §8 (alert, session, CDI, dead letter) and their JSON form.
//! Keys are written in a fixed order so that a replay is byte-for-byte repeatable.

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::event::{Millis, format_time};

/// Firing or resolved, as in Alertmanager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertStatus {
    Firing,
    Resolved,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub alert_id: String,
    pub rule: String,
    pub status: AlertStatus,
    pub rep_id: String,
    pub customer_id: String,
    pub region: String,
    pub asset_id: Option<String>,
    pub due_at: Millis,
    pub fired_at: Millis,
    /// Evidence object, keys in output order.
    pub evidence: Map<String, Value>,
}

impl Alert {
    pub fn to_json(&self) -> String {
        let mut m = Map::new();
        m.insert("alert_id".into(), json!(self.alert_id));
        m.insert("rule".into(), json!(self.rule));
        m.insert("status".into(), json!(self.status.as_str()));
        m.insert("rep_id".into(), json!(self.rep_id));
        m.insert("customer_id".into(), json!(self.customer_id));
        m.insert("region".into(), json!(self.region));
        if let Some(a) = &self.asset_id {
            m.insert("asset_id".into(), json!(a));
        }
        m.insert("due_at".into(), json!(format_time(self.due_at)));
        m.insert("fired_at".into(), json!(format_time(self.fired_at)));
        m.insert("evidence".into(), Value::Object(self.evidence.clone()));
        Value::Object(m).to_string()
    }

    /// `touch.alerts.<rule>`.
    pub fn subject(&self) -> String {
        format!("touch.alerts.{}", self.rule)
    }

    /// `Nats-Msg-Id`: the alert id when firing, `<alert_id>:resolved` when resolved, so that
    /// JetStream dedup keeps both records of one alert.
    pub fn msg_id(&self) -> String {
        match self.status {
            AlertStatus::Firing => self.alert_id.clone(),
            AlertStatus::Resolved => format!("{}:resolved", self.alert_id),
        }
    }
}

/// A session record. Ids up to 24 bytes are kept inline, as the directory keeps them, and the
/// channels as a set of bits: making one costs no allocation (a session closes every third or
/// fourth event; the strings are written only where the record is serialized).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub rep_id: compact_str::CompactString,
    pub customer_id: compact_str::CompactString,
    pub start: Millis,
    pub end: Millis,
    pub event_count: u64,
    /// The channels of its touches, as `operators::channel_bit`s; names by `channels()`.
    pub channel_set: u8,
    pub opens: u64,
    pub messages_in: u64,
    pub messages_out: u64,
}

impl Session {
    /// Channel names, distinct, sorted.
    pub fn channels(&self) -> Vec<&'static str> {
        crate::operators::channel_names(self.channel_set)
    }

    pub fn session_id(&self) -> String {
        format!("{}:{}:{}", self.rep_id, self.customer_id, self.start)
    }

    pub fn to_json(&self) -> String {
        let mut m = Map::new();
        m.insert("session_id".into(), json!(self.session_id()));
        m.insert("rep_id".into(), json!(self.rep_id));
        m.insert("customer_id".into(), json!(self.customer_id));
        m.insert("start".into(), json!(format_time(self.start)));
        m.insert("end".into(), json!(format_time(self.end)));
        m.insert("event_count".into(), json!(self.event_count));
        m.insert("channels".into(), json!(self.channels()));
        m.insert("opens".into(), json!(self.opens));
        m.insert("messages_in".into(), json!(self.messages_in));
        m.insert("messages_out".into(), json!(self.messages_out));
        Value::Object(m).to_string()
    }

    pub fn subject(&self) -> String {
        "touch.sessions".into()
    }

    pub fn msg_id(&self) -> String {
        self.session_id()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cdi {
    pub rep_id: String,
    pub customer_id: String,
    pub breadth: u32,
    pub depth: u32,
    pub density: u32,
    pub cdi: u32,
    pub band: &'static str,
    pub as_of: Millis,
}

impl Cdi {
    pub fn to_json(&self) -> String {
        let mut m = Map::new();
        m.insert("rep_id".into(), json!(self.rep_id));
        m.insert("customer_id".into(), json!(self.customer_id));
        m.insert("breadth".into(), json!(self.breadth));
        m.insert("depth".into(), json!(self.depth));
        m.insert("density".into(), json!(self.density));
        m.insert("cdi".into(), json!(self.cdi));
        m.insert("band".into(), json!(self.band));
        m.insert("as_of".into(), json!(format_time(self.as_of)));
        Value::Object(m).to_string()
    }
}

/// Why an input was dead-lettered (EVENTS.md §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeadReason {
    InvalidJson,
    SchemaViolation,
    Oversized,
    FutureTimestamp,
    UnresolvedIdentity,
    UnknownAsset,
    /// An alert a receiver refused for good (written by the notifier, never by the engine).
    DeliveryFailed,
    /// A pixel or link request whose asset token failed verification (written by the
    /// collector; `raw` is the request path).
    BadToken,
}

impl DeadReason {
    pub const ALL: [DeadReason; 8] = [
        DeadReason::InvalidJson,
        DeadReason::SchemaViolation,
        DeadReason::Oversized,
        DeadReason::FutureTimestamp,
        DeadReason::UnresolvedIdentity,
        DeadReason::UnknownAsset,
        DeadReason::DeliveryFailed,
        DeadReason::BadToken,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::InvalidJson => "invalid_json",
            DeadReason::SchemaViolation => "schema_violation",
            DeadReason::Oversized => "oversized",
            DeadReason::FutureTimestamp => "future_timestamp",
            DeadReason::UnresolvedIdentity => "unresolved_identity",
            DeadReason::UnknownAsset => "unknown_asset",
            DeadReason::DeliveryFailed => "delivery_failed",
            DeadReason::BadToken => "bad_token",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub reason: DeadReason,
    pub error: String,
    pub raw: Vec<u8>,
    pub at: Millis,
    /// When the input message reached the store (JetStream publish time), if known: it makes
    /// the dead letter's id stable across a redelivery after a crash.
    pub received_at: Option<Millis>,
}

impl DeadLetter {
    pub fn to_json(&self) -> String {
        let mut m = Map::new();
        m.insert("reason".into(), json!(self.reason.as_str()));
        m.insert("error".into(), json!(self.error));
        match std::str::from_utf8(&self.raw) {
            Ok(s) => {
                m.insert("raw".into(), json!(s));
            }
            Err(_) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(&self.raw);
                m.insert("raw".into(), json!(b64));
                m.insert("encoding".into(), json!("base64"));
            }
        }
        m.insert("at".into(), json!(format_time(self.at)));
        Value::Object(m).to_string()
    }

    /// `touch.dlq.<reason>`.
    pub fn subject(&self) -> String {
        format!("touch.dlq.{}", self.reason.as_str())
    }

    /// A stable id (reason, the input's arrival time, else `at`, and a hash of the bytes), so a
    /// republish of the same input after a restart is deduplicated by JetStream.
    pub fn msg_id(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        self.raw.hash(&mut h);
        let when = self.received_at.unwrap_or(self.at);
        format!("{}:{}:{:016x}", self.reason.as_str(), when, h.finish())
    }
}

/// What one step of the engine produced, in the order it was produced.
#[derive(Debug, Default)]
pub struct Outputs {
    pub alerts: Vec<Alert>,
    pub sessions: Vec<Session>,
    pub dead_letters: Vec<DeadLetter>,
    /// Stream sequences (`Input::stream_seq`) of inputs dropped because their rep switched the
    /// category off (a hit is dropped when it joins its asset, which can be batches after it
    /// arrived): a live run deletes them from the input stream, so they are not kept there either.
    pub refused: Vec<u64>,
}

impl Outputs {
    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty() && self.sessions.is_empty() && self.dead_letters.is_empty()
    }

    pub fn append(&mut self, other: Outputs) {
        self.alerts.extend(other.alerts);
        self.sessions.extend(other.sessions);
        self.dead_letters.extend(other.dead_letters);
    }
}
