//! Input events as EVENTS.md §1–2 define them: typed kinds, the strict decoder that validates
//! every line (the Rust twin of `schemas/`), and the RFC 3339 / epoch-millisecond time forms.
//! Everything downstream (engine, operators) sees only `Event`; rejections become dead letters.

/// Epoch milliseconds, UTC.
pub type Millis = i64;

/// A decoded string field: ids and short values (nearly all at most 24 bytes) are kept inline,
/// so decoding an event allocates only for long values such as URLs and user agents.
pub type Text = compact_str::CompactString;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    CrmAction,
    PixelHit,
    WebHit,
    WecomPresence,
    WecomMessage,
    DingtalkApproval,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Wechat,
    Phone,
    Email,
    Visit,
    Platform,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    LeadAssigned,
    QuoteSent,
    ProposalSent,
    CaseSent,
    ContractSent,
    Call,
    Visit,
    Email,
    Message,
    Meeting,
    DealWon,
    DealLost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HitKind {
    Open,
    Ping,
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Presence {
    Online,
    Offline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    In,
    Out,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApprovalType {
    Start,
    Finish,
    Terminate,
    Delete,
    /// Any other `type` value: accepted and ignored (EVENTS.md §2).
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApprovalResult {
    Agree,
    Refuse,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CrmAction {
    pub rep_id: Text,
    pub customer_id: Text,
    pub action: Action,
    pub channel: Option<Channel>,
    pub asset_id: Option<Text>,
    pub city: Option<Text>,
    pub amount: Option<f64>,
    pub duration_s: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PixelHit {
    pub asset_id: Text,
    pub hit: HitKind,
    pub dwell_ms: Option<u64>,
    pub page: Option<u64>,
    pub ua: Option<Text>,
    pub ip: Option<Text>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WebHit {
    pub url: Text,
    pub referrer: Option<Text>,
    pub visitor_id: Option<Text>,
    /// `utm_content` parsed from the URL query, if any.
    pub utm_content: Option<Text>,
    /// The URL's path, e.g. `/products/x`.
    pub path: Text,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WecomPresence {
    pub external_userid: Text,
    pub status: Presence,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WecomMessage {
    pub wecom_userid: Text,
    pub external_userid: Text,
    pub direction: Direction,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DingtalkApproval {
    pub process_instance_id: Text,
    pub process_code: Text,
    pub kind: ApprovalType,
    pub result: Option<ApprovalResult>,
    pub staff_id: Text,
    pub customer_id: Option<Text>,
    pub title: Option<Text>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    CrmAction(CrmAction),
    PixelHit(PixelHit),
    WebHit(WebHit),
    WecomPresence(WecomPresence),
    WecomMessage(WecomMessage),
    DingtalkApproval(DingtalkApproval),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_id: Text,
    pub ts: Millis,
    pub sent_at: Option<Millis>,
    pub received_at: Option<Millis>,
    pub body: Body,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    InvalidJson,
    SchemaViolation,
    Oversized,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub error: String,
}

/// Largest accepted event line, in bytes; larger lines are rejected as `oversized`.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

mod decode;

pub use decode::{MAX_EPOCH_MILLIS, decode, format_time, parse_time};

impl Kind {
    /// Every input kind, in enum order.
    pub const ALL: [Kind; 6] = [
        Kind::CrmAction,
        Kind::PixelHit,
        Kind::WebHit,
        Kind::WecomPresence,
        Kind::WecomMessage,
        Kind::DingtalkApproval,
    ];

    /// The `kind` value of the contract, e.g. `"crm.action"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::CrmAction => "crm.action",
            Kind::PixelHit => "pixel.hit",
            Kind::WebHit => "web.hit",
            Kind::WecomPresence => "wecom.presence",
            Kind::WecomMessage => "wecom.message",
            Kind::DingtalkApproval => "dingtalk.approval",
        }
    }

    /// The kind named `s` (exact, case-sensitive, as on the wire).
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl Channel {
    /// The five channels, in enum order (`index()` is the position here).
    pub const ALL: [Channel; 5] = [
        Channel::Wechat,
        Channel::Phone,
        Channel::Email,
        Channel::Visit,
        Channel::Platform,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Wechat => "wechat",
            Channel::Phone => "phone",
            Channel::Email => "email",
            Channel::Visit => "visit",
            Channel::Platform => "platform",
        }
    }

    /// Position in `Channel::ALL` (0..5), for per-channel arrays and bitsets.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl Action {
    /// Every `crm.action` action, in enum order.
    pub const ALL: [Action; 12] = [
        Action::LeadAssigned,
        Action::QuoteSent,
        Action::ProposalSent,
        Action::CaseSent,
        Action::ContractSent,
        Action::Call,
        Action::Visit,
        Action::Email,
        Action::Message,
        Action::Meeting,
        Action::DealWon,
        Action::DealLost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::LeadAssigned => "lead_assigned",
            Action::QuoteSent => "quote_sent",
            Action::ProposalSent => "proposal_sent",
            Action::CaseSent => "case_sent",
            Action::ContractSent => "contract_sent",
            Action::Call => "call",
            Action::Visit => "visit",
            Action::Email => "email",
            Action::Message => "message",
            Action::Meeting => "meeting",
            Action::DealWon => "deal_won",
            Action::DealLost => "deal_lost",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// The four `*_sent` actions: they send one tracked copy of a document and carry `asset_id`.
    pub fn is_asset_send(self) -> bool {
        matches!(
            self,
            Action::QuoteSent | Action::ProposalSent | Action::CaseSent | Action::ContractSent
        )
    }

    /// Whether the contract requires `channel` (every action but `lead_assigned`, `deal_won`,
    /// `deal_lost`).
    pub fn requires_channel(self) -> bool {
        !matches!(
            self,
            Action::LeadAssigned | Action::DealWon | Action::DealLost
        )
    }
}

impl HitKind {
    pub const ALL: [HitKind; 3] = [HitKind::Open, HitKind::Ping, HitKind::Close];

    pub fn as_str(self) -> &'static str {
        match self {
            HitKind::Open => "open",
            HitKind::Ping => "ping",
            HitKind::Close => "close",
        }
    }

    pub fn parse(s: &str) -> Option<HitKind> {
        HitKind::ALL.into_iter().find(|h| h.as_str() == s)
    }
}

impl Presence {
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Online => "online",
            Presence::Offline => "offline",
        }
    }

    pub fn parse(s: &str) -> Option<Presence> {
        match s {
            "online" => Some(Presence::Online),
            "offline" => Some(Presence::Offline),
            _ => None,
        }
    }
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }

    pub fn parse(s: &str) -> Option<Direction> {
        match s {
            "in" => Some(Direction::In),
            "out" => Some(Direction::Out),
            _ => None,
        }
    }
}

impl ApprovalType {
    /// The wire name; `Other` (any unlisted value, which is not kept) reads `"other"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalType::Start => "start",
            ApprovalType::Finish => "finish",
            ApprovalType::Terminate => "terminate",
            ApprovalType::Delete => "delete",
            ApprovalType::Other => "other",
        }
    }

    /// Total: every string is a type, unlisted ones are `Other` (EVENTS.md §2).
    pub fn parse(s: &str) -> ApprovalType {
        match s {
            "start" => ApprovalType::Start,
            "finish" => ApprovalType::Finish,
            "terminate" => ApprovalType::Terminate,
            "delete" => ApprovalType::Delete,
            _ => ApprovalType::Other,
        }
    }
}

impl ApprovalResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalResult::Agree => "agree",
            ApprovalResult::Refuse => "refuse",
        }
    }

    pub fn parse(s: &str) -> Option<ApprovalResult> {
        match s {
            "agree" => Some(ApprovalResult::Agree),
            "refuse" => Some(ApprovalResult::Refuse),
            _ => None,
        }
    }
}

impl Body {
    pub fn kind(&self) -> Kind {
        match self {
            Body::CrmAction(_) => Kind::CrmAction,
            Body::PixelHit(_) => Kind::PixelHit,
            Body::WebHit(_) => Kind::WebHit,
            Body::WecomPresence(_) => Kind::WecomPresence,
            Body::WecomMessage(_) => Kind::WecomMessage,
            Body::DingtalkApproval(_) => Kind::DingtalkApproval,
        }
    }
}

impl Event {
    pub fn kind(&self) -> Kind {
        self.body.kind()
    }

    /// Clock-skew corrected event time (EVENTS.md §1): `received_at - (sent_at - ts)` when both
    /// `sent_at` and `received_at` are known, else `ts`. Saturating, so a hand-built event with
    /// absurd times cannot overflow; decoded times are far inside the range.
    pub fn effective_time(&self) -> Millis {
        match (self.sent_at, self.received_at) {
            (Some(sent_at), Some(received_at)) => {
                received_at.saturating_sub(sent_at.saturating_sub(self.ts))
            }
            _ => self.ts,
        }
    }
}

impl RejectReason {
    /// The dead-letter `reason` value.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::SchemaViolation => "schema_violation",
            RejectReason::Oversized => "oversized",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.error)
    }
}

impl std::error::Error for Rejection {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_wire_names_of_events_md() {
        let kinds: Vec<_> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "crm.action",
                "pixel.hit",
                "web.hit",
                "wecom.presence",
                "wecom.message",
                "dingtalk.approval"
            ]
        );
        let channels: Vec<_> = Channel::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(channels, ["wechat", "phone", "email", "visit", "platform"]);
        for (i, c) in Channel::ALL.into_iter().enumerate() {
            assert_eq!(c.index(), i);
            assert_eq!(Channel::parse(c.as_str()), Some(c));
        }
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(Kind::parse("Crm.Action"), None);
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()), Some(a));
        }
        assert_eq!(Action::QuoteSent.as_str(), "quote_sent");
        assert_eq!(Action::DealLost.as_str(), "deal_lost");
        assert_eq!(RejectReason::InvalidJson.as_str(), "invalid_json");
        assert_eq!(RejectReason::SchemaViolation.as_str(), "schema_violation");
        assert_eq!(RejectReason::Oversized.as_str(), "oversized");
        assert_eq!(ApprovalType::parse("redirect"), ApprovalType::Other);
        assert_eq!(ApprovalType::parse("finish"), ApprovalType::Finish);
    }

    #[test]
    fn asset_sends_and_channel_requirements_follow_section_2() {
        let sends: Vec<_> = Action::ALL
            .into_iter()
            .filter(|a| a.is_asset_send())
            .map(Action::as_str)
            .collect();
        assert_eq!(
            sends,
            ["quote_sent", "proposal_sent", "case_sent", "contract_sent"]
        );
        let without_channel: Vec<_> = Action::ALL
            .into_iter()
            .filter(|a| !a.requires_channel())
            .map(Action::as_str)
            .collect();
        assert_eq!(without_channel, ["lead_assigned", "deal_won", "deal_lost"]);
    }

    fn presence(ts: Millis, sent_at: Option<Millis>, received_at: Option<Millis>) -> Event {
        Event {
            event_id: "e".into(),
            ts,
            sent_at,
            received_at,
            body: Body::WecomPresence(WecomPresence {
                external_userid: "x".into(),
                status: Presence::Online,
            }),
        }
    }

    #[test]
    fn effective_time_is_received_minus_device_delay() {
        // received_at - (sent_at - ts) = 5_000 - (2_000 - 1_000)
        assert_eq!(
            presence(1_000, Some(2_000), Some(5_000)).effective_time(),
            4_000
        );
        assert_eq!(presence(1_000, Some(2_000), None).effective_time(), 1_000);
        assert_eq!(presence(1_000, None, Some(5_000)).effective_time(), 1_000);
        assert_eq!(presence(1_000, None, None).kind(), Kind::WecomPresence);
    }

    #[test]
    fn rejection_displays_reason_then_error() {
        let r = Rejection {
            reason: RejectReason::SchemaViolation,
            error: "crm.action: field `channel` is required for action `quote_sent`".into(),
        };
        assert_eq!(
            r.to_string(),
            "schema_violation: crm.action: field `channel` is required for action `quote_sent`"
        );
    }
}
