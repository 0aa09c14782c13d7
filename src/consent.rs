//! Consent switches (PIPL, the brief's "privacy switch"): each rep may switch data categories
//! off. An event in a category its rep switched off is dropped at every door (the collector and
//! the pipeline's own NATS source), counted, and never kept. The pipeline file's `[consent]`
//! gives the defaults and per-rep settings; the JetStream key-value bucket (default
//! `touchstream_consent`, key = rep_id, value `{"off": ["chat", ...]}`) overrides them live.

use std::collections::HashMap;

use serde::Deserialize;

use crate::directory::{IdKind, pair_ids};
use crate::event::{Action, Body};

/// A data category a rep can switch off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// WeCom chat messages (`wecom.message`).
    Chat,
    /// Calls (`crm.action` `call`).
    Calls,
    /// Visits, with their city (`crm.action` `visit`).
    Visits,
    /// Opens and clicks of the rep's sent documents and links (`pixel.hit`, attributed `web.hit`).
    Tracking,
    /// Contract steps: `contract_sent`, `deal_won`, `deal_lost`, DingTalk approvals.
    Contracts,
    /// Every other sales-app action (leads, sends, emails, messages, meetings).
    Sales,
}

impl Category {
    pub const ALL: [Category; 6] = [
        Category::Chat,
        Category::Calls,
        Category::Visits,
        Category::Tracking,
        Category::Contracts,
        Category::Sales,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Chat => "chat",
            Category::Calls => "calls",
            Category::Visits => "visits",
            Category::Tracking => "tracking",
            Category::Contracts => "contracts",
            Category::Sales => "sales",
        }
    }

    pub fn parse(s: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The category of a `crm.action`.
    pub fn of_action(action: Action) -> Category {
        match action {
            Action::Call => Category::Calls,
            Action::Visit => Category::Visits,
            Action::ContractSent | Action::DealWon | Action::DealLost => Category::Contracts,
            _ => Category::Sales,
        }
    }

    pub fn bit(self) -> Mask {
        1 << self as u8
    }
}

/// The category of an event, or None for data that is not about a rep's activity
/// (`wecom.presence` is the customer's status; a web hit without `utm_content` joins no rep).
pub fn category_of(body: &Body) -> Option<Category> {
    Some(match body {
        Body::WecomMessage(_) => Category::Chat,
        Body::PixelHit(_) => Category::Tracking,
        Body::WebHit(h) => {
            h.utm_content.as_ref()?;
            Category::Tracking
        }
        Body::DingtalkApproval(_) => Category::Contracts,
        Body::WecomPresence(_) => return None,
        Body::CrmAction(a) => Category::of_action(a.action),
    })
}

/// Categories switched off, as bits.
pub type Mask = u8;

fn mask_of(categories: &[Category]) -> Mask {
    categories.iter().fold(0, |m, c| m | c.bit())
}

/// One rep's settings in the pipeline file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RepConsent {
    pub rep_id: String,
    /// Categories this rep switched off (replaces `default_off` for the rep).
    pub off: Vec<Category>,
}

/// `[consent]` of the pipeline file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConsentConfig {
    /// Key-value bucket with live per-rep settings (they override the file).
    #[serde(default = "default_bucket")]
    pub bucket: String,
    /// Categories off for every rep without a setting of its own.
    #[serde(default)]
    pub default_off: Vec<Category>,
    #[serde(default)]
    pub reps: Vec<RepConsent>,
}

fn default_bucket() -> String {
    "touchstream_consent".into()
}

impl Default for ConsentConfig {
    fn default() -> Self {
        ConsentConfig {
            bucket: default_bucket(),
            default_off: Vec::new(),
            reps: Vec::new(),
        }
    }
}

/// A live value of the bucket: `{"off": ["chat", "calls"]}`.
pub fn parse_value(bytes: &[u8]) -> Result<Mask, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Value {
        off: Vec<Category>,
    }
    serde_json::from_slice::<Value>(bytes)
        .map(|v| mask_of(&v.off))
        .map_err(|e| {
            format!(
                "expected {{\"off\": [categories]}} with categories among {}: {e}",
                Category::ALL.map(Category::as_str).join(", ")
            )
        })
}

/// The consent in force: the file's settings with the bucket's live overrides on top.
#[derive(Debug, Clone, Default)]
pub struct Consent {
    default_off: Mask,
    file: HashMap<String, Mask>,
    live: HashMap<String, Mask>,
}

impl Consent {
    pub fn new(cfg: &ConsentConfig) -> Consent {
        Consent {
            default_off: mask_of(&cfg.default_off),
            file: cfg
                .reps
                .iter()
                .map(|r| (r.rep_id.clone(), mask_of(&r.off)))
                .collect(),
            live: HashMap::new(),
        }
    }

    /// Categories switched off for a rep.
    pub fn off(&self, rep_id: &str) -> Mask {
        self.live
            .get(rep_id)
            .or_else(|| self.file.get(rep_id))
            .copied()
            .unwrap_or(self.default_off)
    }

    pub fn allows(&self, rep_id: &str, category: Category) -> bool {
        self.off(rep_id) & category.bit() == 0
    }

    /// A live setting from the bucket; None (key deleted) returns the rep to the file's.
    pub fn set_live(&mut self, rep_id: &str, off: Option<Mask>) {
        match off {
            Some(m) => {
                self.live.insert(rep_id.to_string(), m);
            }
            None => {
                self.live.remove(rep_id);
            }
        }
    }

    /// Whether every category is on for every rep (the doors can skip the lookup).
    pub fn allows_everything(&self) -> bool {
        self.default_off == 0
            && self.file.values().all(|m| *m == 0)
            && self.live.values().all(|m| *m == 0)
    }
}

/// The collector's door: true when `body` may be kept. The rep is the token's (pixel and link
/// hits) or the event's own (`rep_id`, or the WeCom/DingTalk id through the directory); an
/// event whose rep cannot be told here passes, and the pipeline's door checks it later.
pub fn door(
    consent: std::sync::Arc<std::sync::RwLock<Consent>>,
    dir: std::sync::Arc<crate::directory::Directory>,
) -> impl Fn(&Body, Option<&str>) -> bool + Send + Sync + 'static {
    move |body, token_rep| {
        let Some(category) = category_of(body) else {
            return true;
        };
        let from_body = || -> Option<&str> {
            match pair_ids(body).0? {
                (IdKind::Id, id) => Some(id),
                (kind, id) => dir.rep_by(kind, id).map(|r| dir.rep_id(r)),
            }
        };
        let Some(rep) = token_rep.or_else(from_body) else {
            return true;
        };
        consent.read().map_or(true, |c| c.allows(rep, category))
    }
}

/// Every current value of the bucket (bad values are logged and skipped).
pub async fn load_all(
    kv: &async_nats::jetstream::kv::Store,
) -> anyhow::Result<Vec<(String, Mask)>> {
    use futures::TryStreamExt as _;
    let keys: Vec<String> = kv.keys().await?.try_collect().await?;
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        if let Some(bytes) = kv.get(&key).await? {
            match parse_value(&bytes) {
                Ok(m) => out.push((key, m)),
                Err(e) => tracing::warn!(rep = %key, "ignoring consent value: {e}"),
            }
        }
    }
    Ok(out)
}

/// Watches the bucket and sends `(rep_id, mask)` updates (None: key deleted) until the
/// receiver is gone. Starts with every current value. A bad value is logged and ignored.
pub async fn watch(
    kv: async_nats::jetstream::kv::Store,
    tx: tokio::sync::mpsc::UnboundedSender<(String, Option<Mask>)>,
) -> anyhow::Result<()> {
    use async_nats::jetstream::kv::Operation;
    use futures::StreamExt as _;
    let mut updates = kv.watch_all_from_revision(1).await?;
    loop {
        // Nobody listens any more (the pipeline stopped, its connection is closing): done,
        // rather than an error from the watcher when the connection goes.
        let entry = tokio::select! {
            () = tx.closed() => break,
            entry = updates.next() => match entry {
                Some(entry) => entry?,
                None => break,
            },
        };
        let update = match entry.operation {
            Operation::Put => match parse_value(&entry.value) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(rep = %entry.key, "ignoring consent value: {e}");
                    continue;
                }
            },
            Operation::Delete | Operation::Purge => None,
        };
        if tx.send((entry.key, update)).is_err() {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_settings_then_live_overrides() {
        let cfg = ConsentConfig {
            default_off: vec![Category::Visits],
            reps: vec![RepConsent {
                rep_id: "r2".into(),
                off: vec![Category::Chat, Category::Calls],
            }],
            ..ConsentConfig::default()
        };
        let mut c = Consent::new(&cfg);
        assert!(!c.allows("r1", Category::Visits), "default_off applies");
        assert!(c.allows("r1", Category::Chat));
        assert!(
            c.allows("r2", Category::Visits),
            "a rep's own list replaces the default"
        );
        assert!(!c.allows("r2", Category::Chat));
        assert!(!c.allows("r2", Category::Calls));
        c.set_live(
            "r2",
            Some(parse_value(br#"{"off": ["tracking"]}"#).expect("valid")),
        );
        assert!(
            c.allows("r2", Category::Chat),
            "the live value replaces the file's"
        );
        assert!(!c.allows("r2", Category::Tracking));
        c.set_live("r2", None);
        assert!(
            !c.allows("r2", Category::Chat),
            "deleting the key returns to the file"
        );
        assert!(!c.allows_everything());
    }

    #[test]
    fn bad_values_say_what_is_expected() {
        let e = parse_value(br#"{"off": ["gps"]}"#).expect_err("unknown category");
        assert!(e.contains("chat, calls, visits"), "{e}");
        assert!(parse_value(b"[]").is_err());
        assert_eq!(parse_value(br#"{"off": []}"#), Ok(0));
    }
}
