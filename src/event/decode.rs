//! The strict decoder: one raw line becomes an `Event` or a `Rejection` that names what is wrong
//! (EVENTS.md §1–2). One serde_json pass into a flat struct of borrowed fields, then per-kind
//! checks that mirror `schemas/*.json`; times and URLs follow the schemas' `pattern`s exactly.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

mod fast;

use super::{
    Action, ApprovalResult, ApprovalType, Body, Channel, CrmAction, DingtalkApproval, Direction,
    Event, HitKind, Kind, MAX_EVENT_BYTES, Millis, PixelHit, Presence, RejectReason, Rejection,
    Text, WebHit, WecomMessage, WecomPresence,
};

/// Largest integer epoch-millisecond time accepted: 9999-12-31T23:59:59.999Z, the last instant
/// a 4-digit RFC 3339 year can name. Integer times must be in `0..=MAX_EPOCH_MILLIS` (negative
/// integers are rejected: no publisher of this pipeline has pre-1970 events, and a negative
/// number is a clock or arithmetic bug). `schemas/` says the same with `minimum`/`maximum`.
pub const MAX_EPOCH_MILLIS: Millis = 253_402_300_799_999;

/// Largest value of the integer fields (`dwell_ms`, `page`, `duration_s`): 2^53 - 1, the
/// largest integer every JSON implementation (JavaScript SDKs included) holds exactly. The
/// schemas carry the same `maximum`, so a float-spelled integer like `1e30` (an integer for
/// JSON Schema 2020-12) is rejected by both instead of overflowing here.
const MAX_SAFE_INTEGER: u64 = 9_007_199_254_740_991;

/// 0000-01-01T00:00:00.000Z, the first instant `format_time` can spell in RFC 3339.
const MIN_FORMATTABLE: Millis = -62_167_219_200_000;

const MS_PER_DAY: i64 = 86_400_000;

// ---------------------------------------------------------------------------------------------
// One JSON value, as much as validation needs. Strings borrow from the input unless escaped;
// arrays and objects (only valid inside `attrs`) are skipped without allocating.

#[cfg_attr(test, derive(Debug, PartialEq))]
enum Val<'a> {
    Str(Cow<'a, str>),
    /// A non-negative JSON integer.
    UInt(u64),
    /// A negative JSON integer.
    NegInt(i64),
    /// A number written with a fraction or exponent (`1.0` is still an integer for JSON Schema).
    Float(f64),
    Bool(bool),
    Null,
    Array,
    Object,
}

impl Val<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Val::Str(_) => "a string",
            Val::UInt(_) | Val::NegInt(_) => "an integer",
            Val::Float(x) if is_integral(*x) => "an integer",
            Val::Float(_) => "a number with a fraction",
            Val::Bool(_) => "a boolean",
            Val::Null => "null",
            Val::Array => "an array",
            Val::Object => "an object",
        }
    }

    /// Short rendering of the value for error messages (strings truncated, quoted).
    fn show(&self) -> String {
        match self {
            Val::Str(s) => show_str(s),
            Val::UInt(n) => n.to_string(),
            Val::NegInt(n) => n.to_string(),
            Val::Float(x) => x.to_string(),
            Val::Bool(b) => b.to_string(),
            Val::Null => "null".to_owned(),
            Val::Array => "an array".to_owned(),
            Val::Object => "an object".to_owned(),
        }
    }
}

fn is_integral(x: f64) -> bool {
    x.is_finite() && x.fract() == 0.0
}

/// A value quoted for a message; long values are cut so a dead letter stays readable.
fn show_str(s: &str) -> String {
    const MAX_CHARS: usize = 64;
    match s.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{:?}…", &s[..cut]),
        None => format!("{s:?}"),
    }
}

struct ValVisitor;

impl<'de> Visitor<'de> for ValVisitor {
    type Value = Val<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Val<'de>, E> {
        Ok(Val::UInt(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Val<'de>, E> {
        Ok(match u64::try_from(v) {
            Ok(u) => Val::UInt(u),
            Err(_) => Val::NegInt(v),
        })
    }
    fn visit_f64<E>(self, v: f64) -> Result<Val<'de>, E> {
        Ok(Val::Float(v))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Val<'de>, E> {
        Ok(Val::Bool(v))
    }
    fn visit_unit<E>(self) -> Result<Val<'de>, E> {
        Ok(Val::Null)
    }
    fn visit_none<E>(self) -> Result<Val<'de>, E> {
        Ok(Val::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Val<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Val::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Val<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Val::Object)
    }
}

impl<'de> Deserialize<'de> for Val<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValVisitor)
    }
}

/// A present field is `Some` even when its value is `null` (serde's `Option` would turn `null`
/// into "absent", and the schemas reject `null` where a string is required).
#[inline]
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Val<'de>>, D::Error> {
    Val::deserialize(d).map(Some)
}

// ---------------------------------------------------------------------------------------------
// The flat wire struct: every field any kind may carry. Which of them a kind allows is checked
// after the pass, with one bit per field.

macro_rules! raw_event {
    ($($field:ident = $name:literal),* $(,)?) => {
        #[derive(Deserialize)]
        #[cfg_attr(test, derive(Debug, PartialEq))]
        #[serde(deny_unknown_fields)]
        struct Raw<'a> {
            $(
                #[serde(rename = $name, default, borrow, deserialize_with = "present")]
                $field: Option<Val<'a>>,
            )*
        }

        /// Wire names of `Raw`'s fields; bit `i` of a mask stands for `FIELD_NAMES[i]`.
        const FIELD_NAMES: &[&str] = &[$($name),*];

        impl<'a> Raw<'a> {
            /// No field present.
            fn empty() -> Self {
                Raw { $($field: None),* }
            }

            /// The slot of the field spelled `name` on the wire (unescaped), if there is one.
            #[inline]
            fn slot(&mut self, name: &[u8]) -> Option<&mut Option<Val<'a>>> {
                let i = field_index(name)?;
                let mut k = 0;
                $(
                    if i == k {
                        return Some(&mut self.$field);
                    }
                    k += 1;
                )*
                let _ = k;
                None
            }

            /// Bitmask of the fields present on the wire.
            fn presence(&self) -> u64 {
                let mut bits = 0u64;
                let mut bit = 1u64;
                $(
                    if self.$field.is_some() {
                        bits |= bit;
                    }
                    bit <<= 1;
                )*
                let _ = bit;
                bits
            }
        }
    };
}

raw_event! {
    event_id = "event_id",
    kind = "kind",
    ts = "ts",
    sent_at = "sent_at",
    received_at = "received_at",
    attrs = "attrs",
    rep_id = "rep_id",
    customer_id = "customer_id",
    action = "action",
    channel = "channel",
    asset_id = "asset_id",
    city = "city",
    amount = "amount",
    duration_s = "duration_s",
    hit = "hit",
    dwell_ms = "dwell_ms",
    page = "page",
    ua = "ua",
    ip = "ip",
    url = "url",
    referrer = "referrer",
    visitor_id = "visitor_id",
    external_userid = "external_userid",
    status = "status",
    wecom_userid = "wecom_userid",
    direction = "direction",
    process_instance_id = "process_instance_id",
    process_code = "process_code",
    approval_type = "type",
    result = "result",
    staff_id = "staff_id",
    title = "title",
}

/// Slot in `FIELD_TABLE` of a name of `len` bytes that starts with `first` and ends with
/// `last`: no two field names share one (checked when `FIELD_TABLE` is built).
const fn field_hash(len: usize, first: u8, last: u8) -> usize {
    (len + 3 * first as usize + 38 * last as usize) % FIELD_TABLE_SIZE
}

const FIELD_TABLE_SIZE: usize = 128;

/// `FIELD_NAMES` index by `field_hash` (`u8::MAX`: no field), built at compile time; two names
/// with one hash fail the build.
const FIELD_TABLE: [u8; FIELD_TABLE_SIZE] = {
    let mut table = [u8::MAX; FIELD_TABLE_SIZE];
    let mut i = 0;
    while i < FIELD_NAMES.len() {
        let name = FIELD_NAMES[i].as_bytes();
        let h = field_hash(name.len(), name[0], name[name.len() - 1]);
        assert!(
            table[h] == u8::MAX,
            "two field names share a hash: change field_hash"
        );
        table[h] = i as u8;
        i += 1;
    }
    table
};

/// The `FIELD_NAMES` index of the field spelled `name`: one table read and one comparison,
/// where a chain of comparisons would try the names one by one.
#[inline]
fn field_index(name: &[u8]) -> Option<usize> {
    let (&first, &last) = (name.first()?, name.last()?);
    let i = usize::from(FIELD_TABLE[field_hash(name.len(), first, last)]);
    (FIELD_NAMES.get(i)?.as_bytes() == name).then_some(i)
}

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Mask of the named fields; a name `Raw` lacks fails the build (const evaluation panics).
const fn mask(names: &[&str]) -> u64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < names.len() {
        let mut j = 0;
        let mut found = false;
        while j < FIELD_NAMES.len() {
            if same(names[i], FIELD_NAMES[j]) {
                m |= 1 << j;
                found = true;
            }
            j += 1;
        }
        assert!(found, "field name missing from Raw");
        i += 1;
    }
    m
}

const ENVELOPE: u64 = mask(&["event_id", "kind", "ts", "sent_at", "received_at", "attrs"]);

/// Fields each kind may carry besides the envelope (EVENTS.md §2), indexed by `Kind as usize`
/// (the order of `Kind::ALL`). Evaluated at compile time.
const KIND_FIELDS: [u64; 6] = [
    mask(&[
        "rep_id",
        "customer_id",
        "action",
        "channel",
        "asset_id",
        "city",
        "amount",
        "duration_s",
    ]),
    mask(&["asset_id", "hit", "dwell_ms", "page", "ua", "ip"]),
    mask(&["url", "referrer", "visitor_id"]),
    mask(&["external_userid", "status"]),
    mask(&["wecom_userid", "external_userid", "direction"]),
    mask(&[
        "process_instance_id",
        "process_code",
        "type",
        "result",
        "staff_id",
        "customer_id",
        "title",
    ]),
];

// ---------------------------------------------------------------------------------------------
// Field checks. `Check` carries the message prefix: the kind once known, `event` before.

struct Check {
    prefix: &'static str,
}

type Checked<T> = Result<T, Rejection>;

fn violation(error: String) -> Rejection {
    Rejection {
        reason: RejectReason::SchemaViolation,
        error,
    }
}

fn invalid_json(error: String) -> Rejection {
    Rejection {
        reason: RejectReason::InvalidJson,
        error,
    }
}

fn backticked(names: impl IntoIterator<Item = &'static str>) -> String {
    names
        .into_iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Check {
    fn fail(&self, msg: fmt::Arguments<'_>) -> Rejection {
        violation(format!("{}: {}", self.prefix, msg))
    }

    fn required<'a>(&self, name: &str, v: Option<Val<'a>>) -> Checked<Val<'a>> {
        v.ok_or_else(|| self.fail(format_args!("field `{name}` is required")))
    }

    fn string<'a>(&self, name: &str, v: Val<'a>) -> Checked<Cow<'a, str>> {
        match v {
            Val::Str(s) => Ok(s),
            other => Err(self.fail(format_args!(
                "field `{name}` must be a string, not {}",
                other.type_name()
            ))),
        }
    }

    fn req_string(&self, name: &str, v: Option<Val<'_>>) -> Checked<Text> {
        let v = self.required(name, v)?;
        Ok(Text::from(self.string(name, v)?))
    }

    fn opt_string(&self, name: &str, v: Option<Val<'_>>) -> Checked<Option<Text>> {
        v.map(|v| self.string(name, v).map(Text::from)).transpose()
    }

    fn enumerated<T>(
        &self,
        name: &str,
        v: Val<'_>,
        parse: fn(&str) -> Option<T>,
        names: impl IntoIterator<Item = &'static str>,
    ) -> Checked<T> {
        let s = self.string(name, v)?;
        parse(&s).ok_or_else(|| {
            self.fail(format_args!(
                "field `{name}` must be one of {}, not {}",
                backticked(names),
                show_str(&s)
            ))
        })
    }

    fn integer(&self, name: &str, v: Val<'_>, min: u64) -> Checked<u64> {
        let n = match &v {
            Val::UInt(n) => Some(*n),
            // Exact: an integral f64 up to 2^53 converts without rounding.
            Val::Float(x) if is_integral(*x) && *x >= 0.0 && *x <= MAX_SAFE_INTEGER as f64 => {
                Some(*x as u64)
            }
            // Integers out of range: negative, or float-spelled beyond 2^53.
            Val::NegInt(_) => None,
            Val::Float(x) if is_integral(*x) => None,
            other => {
                return Err(self.fail(format_args!(
                    "field `{name}` must be an integer, not {}",
                    other.type_name()
                )));
            }
        };
        match n {
            Some(n) if (min..=MAX_SAFE_INTEGER).contains(&n) => Ok(n),
            _ => Err(self.fail(format_args!(
                "field `{name}` must be an integer from {min} to {MAX_SAFE_INTEGER}, not {}",
                v.show()
            ))),
        }
    }

    fn opt_integer(&self, name: &str, v: Option<Val<'_>>, min: u64) -> Checked<Option<u64>> {
        v.map(|v| self.integer(name, v, min)).transpose()
    }

    fn opt_non_negative(&self, name: &str, v: Option<Val<'_>>) -> Checked<Option<f64>> {
        let Some(v) = v else { return Ok(None) };
        match v {
            // `as` is the intended u64 -> f64 rounding for amounts beyond 2^53.
            Val::UInt(n) => Ok(Some(n as f64)),
            Val::Float(x) if x >= 0.0 => Ok(Some(x)),
            Val::NegInt(_) | Val::Float(_) => Err(self.fail(format_args!(
                "field `{name}` must be a number >= 0, not {}",
                v.show()
            ))),
            other => Err(self.fail(format_args!(
                "field `{name}` must be a number, not {}",
                other.type_name()
            ))),
        }
    }

    fn time(&self, name: &str, v: Val<'_>) -> Checked<Millis> {
        let ms = match &v {
            Val::Str(s) => {
                return parse_time(s).ok_or_else(|| {
                    self.fail(format_args!(
                        "field `{name}` must be an RFC 3339 time with an offset \
                         (e.g. \"2026-11-02T17:00:00.000+08:00\" or \"2026-11-02T09:00:00Z\") \
                         or integer epoch milliseconds, not {}",
                        show_str(s)
                    ))
                });
            }
            Val::UInt(n) => i64::try_from(*n).ok(),
            Val::Float(x) if is_integral(*x) && *x >= 0.0 && *x <= MAX_EPOCH_MILLIS as f64 => {
                Some(*x as i64)
            }
            Val::NegInt(_) | Val::Float(_) => None,
            other => {
                return Err(self.fail(format_args!(
                    "field `{name}` must be an RFC 3339 string or integer epoch milliseconds, \
                     not {}",
                    other.type_name()
                )));
            }
        };
        match ms {
            Some(ms) if (0..=MAX_EPOCH_MILLIS).contains(&ms) => Ok(ms),
            _ => Err(self.fail(format_args!(
                "field `{name}` as epoch milliseconds must be an integer from 0 to \
                 {MAX_EPOCH_MILLIS} (9999-12-31T23:59:59.999Z), not {}",
                v.show()
            ))),
        }
    }

    fn opt_time(&self, name: &str, v: Option<Val<'_>>) -> Checked<Option<Millis>> {
        v.map(|v| self.time(name, v)).transpose()
    }
}

// ---------------------------------------------------------------------------------------------
// decode

/// Decodes and validates one input event (EVENTS.md §1–2).
///
/// `Oversized` when `raw` is longer than `MAX_EVENT_BYTES`; `InvalidJson` when it is not
/// well-formed JSON (syntax error, trailing data); `SchemaViolation` for anything
/// else the contract forbids, with a message that names the kind and the field.
///
/// Where EVENTS.md leaves room, decoder and `schemas/` both read it so:
/// - integer fields and epoch times follow JSON Schema 2020-12: `5.0` is the integer 5;
///   `dwell_ms`, `page`, `duration_s` are at most 2^53 - 1; epoch times are
///   `0..=MAX_EPOCH_MILLIS` (no negative integers);
/// - `null` is not "absent": an optional field given as `null` is a type error;
/// - `dingtalk.approval` requires `type` (any string; unlisted values become `Other`);
/// - `asset_id` and `channel` are allowed (optional) on actions that do not require them;
/// - `url` follows the grammar of `is_http_url` below.
///
/// A field that appears twice is a `SchemaViolation` here; JSON Schema cannot see it (JSON
/// parsers keep one copy), the one place the two forms differ.
pub fn decode(raw: &[u8]) -> Result<Event, Rejection> {
    if raw.len() > MAX_EVENT_BYTES {
        return Err(Rejection {
            reason: RejectReason::Oversized,
            error: format!(
                "event is {} bytes, more than the {MAX_EVENT_BYTES} allowed",
                raw.len()
            ),
        });
    }
    // serde's derived struct would also take a JSON array (fields by position): refuse it here.
    // Well-formed JSON of another type breaks the schema (`type: object`); anything else is
    // not JSON at all.
    let first = raw
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(match serde_json::from_slice::<IgnoredAny>(raw) {
            Ok(_) => violation(format!(
                "event: must be a JSON object, not {}",
                match first {
                    Some(b'[') => "an array",
                    Some(b'"') => "a string",
                    Some(b't' | b'f') => "a boolean",
                    Some(b'n') => "null",
                    _ => "a number",
                }
            )),
            Err(e) => invalid_json(e.to_string()),
        });
    }
    // The fast scan takes the common line; anything it declines goes through serde_json,
    // which also writes every error message.
    let mut r = Raw::empty();
    if fast::scan_into(raw, &mut r).is_none() {
        r = serde_json::from_slice(raw).map_err(|e| serde_rejection(raw, &e))?;
    }

    let check = Check { prefix: "event" };
    let kind_val = check.required("kind", r.kind.take())?;
    let kind = check.enumerated("kind", kind_val, Kind::parse, Kind::ALL.map(Kind::as_str))?;
    let check = Check {
        prefix: kind.as_str(),
    };

    let extra = r.presence() & !(ENVELOPE | KIND_FIELDS[kind as usize]);
    if extra != 0 {
        let name = FIELD_NAMES[extra.trailing_zeros() as usize];
        return Err(check.fail(format_args!(
            "field `{name}` is not allowed for this kind (extra data goes inside `attrs`)"
        )));
    }

    let event_id = check.req_string("event_id", r.event_id.take())?;
    // Byte length bounds the char count from above, so most ids skip the count.
    if event_id.is_empty() || (event_id.len() > 128 && event_id.chars().count() > 128) {
        return Err(check.fail(format_args!(
            "field `event_id` must be 1 to 128 characters long, not {}",
            event_id.chars().count()
        )));
    }
    let ts = check.time("ts", check.required("ts", r.ts.take())?)?;
    let sent_at = check.opt_time("sent_at", r.sent_at.take())?;
    let received_at = check.opt_time("received_at", r.received_at.take())?;
    if let Some(attrs) = r.attrs.take()
        && !matches!(attrs, Val::Object)
    {
        return Err(check.fail(format_args!(
            "field `attrs` must be an object, not {}",
            attrs.type_name()
        )));
    }

    let body = match kind {
        Kind::CrmAction => Body::CrmAction(crm_action(&check, &mut r)?),
        Kind::PixelHit => Body::PixelHit(PixelHit {
            asset_id: check.req_string("asset_id", r.asset_id.take())?,
            hit: {
                let v = check.required("hit", r.hit.take())?;
                check.enumerated("hit", v, HitKind::parse, HitKind::ALL.map(HitKind::as_str))?
            },
            dwell_ms: check.opt_integer("dwell_ms", r.dwell_ms.take(), 0)?,
            page: check.opt_integer("page", r.page.take(), 1)?,
            ua: check.opt_string("ua", r.ua.take())?,
            ip: check.opt_string("ip", r.ip.take())?,
        }),
        Kind::WebHit => Body::WebHit(web_hit(&check, &mut r)?),
        Kind::WecomPresence => Body::WecomPresence(WecomPresence {
            external_userid: check.req_string("external_userid", r.external_userid.take())?,
            status: {
                let v = check.required("status", r.status.take())?;
                check.enumerated("status", v, Presence::parse, ["online", "offline"])?
            },
        }),
        Kind::WecomMessage => Body::WecomMessage(WecomMessage {
            wecom_userid: check.req_string("wecom_userid", r.wecom_userid.take())?,
            external_userid: check.req_string("external_userid", r.external_userid.take())?,
            direction: {
                let v = check.required("direction", r.direction.take())?;
                check.enumerated("direction", v, Direction::parse, ["in", "out"])?
            },
        }),
        Kind::DingtalkApproval => Body::DingtalkApproval(dingtalk_approval(&check, &mut r)?),
    };

    Ok(Event {
        event_id,
        ts,
        sent_at,
        received_at,
        body,
    })
}

fn crm_action(check: &Check, r: &mut Raw<'_>) -> Checked<CrmAction> {
    let rep_id = check.req_string("rep_id", r.rep_id.take())?;
    let customer_id = check.req_string("customer_id", r.customer_id.take())?;
    let action = check.required("action", r.action.take())?;
    let action = check.enumerated(
        "action",
        action,
        Action::parse,
        Action::ALL.map(Action::as_str),
    )?;
    let channel = r
        .channel
        .take()
        .map(|v| {
            check.enumerated(
                "channel",
                v,
                Channel::parse,
                Channel::ALL.map(Channel::as_str),
            )
        })
        .transpose()?;
    if channel.is_none() && action.requires_channel() {
        return Err(check.fail(format_args!(
            "field `channel` is required for action `{}`",
            action.as_str()
        )));
    }
    let asset_id = check.opt_string("asset_id", r.asset_id.take())?;
    if asset_id.is_none() && action.is_asset_send() {
        return Err(check.fail(format_args!(
            "field `asset_id` is required for action `{}`",
            action.as_str()
        )));
    }
    Ok(CrmAction {
        rep_id,
        customer_id,
        action,
        channel,
        asset_id,
        city: check.opt_string("city", r.city.take())?,
        amount: check.opt_non_negative("amount", r.amount.take())?,
        duration_s: check.opt_integer("duration_s", r.duration_s.take(), 0)?,
    })
}

fn web_hit(check: &Check, r: &mut Raw<'_>) -> Checked<WebHit> {
    let url = check.required("url", r.url.take())?;
    let url = check.string("url", url)?;
    let parts = if !is_http_url(&url) {
        None
    } else if let Some((path, query)) = plain_path_query(&url) {
        Some((Text::from(path), query.and_then(utm_content)))
    } else {
        url::Url::parse(&url)
            .ok()
            .map(|u| (Text::from(u.path()), u.query().and_then(utm_content)))
    };
    let Some((path, utm_content)) = parts else {
        return Err(check.fail(format_args!(
            "field `url` must be an absolute http(s) URL with a host name or IPv4 address \
             (e.g. \"https://example.com/products/x?utm_content=Q1\"), not {}",
            show_str(&url)
        )));
    };
    Ok(WebHit {
        path,
        utm_content,
        url: url.into(),
        referrer: check.opt_string("referrer", r.referrer.take())?,
        visitor_id: check.opt_string("visitor_id", r.visitor_id.take())?,
    })
}

/// Path and query of a URL that `is_http_url` accepted, read straight from its text when
/// everything after the host and port is a character the `url` crate keeps as it is: no dot
/// (dot segments are resolved), no `%` (escaped dots are too), no fragment, nothing it
/// percent-encodes. `None` leaves the URL to `Url::parse`, which costs about a microsecond.
fn plain_path_query(url: &str) -> Option<(&str, Option<&str>)> {
    // `http://` or `https://`, in any case: `is_http_url` checked it.
    let host_at = if url.as_bytes().get(4) == Some(&b':') {
        7
    } else {
        8
    };
    let rest_at = url
        .bytes()
        .skip(host_at)
        .position(|c| matches!(c, b'/' | b'?' | b'#'))
        .map_or(url.len(), |p| host_at + p);
    let rest = url.get(rest_at..)?;
    let plain = rest
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"-_~/?&=+,;:@!$*()".contains(&c));
    if !plain {
        return None;
    }
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    Some((if path.is_empty() { "/" } else { path }, query))
}

/// The first `utm_content` parameter of a query, form-decoded like `Url::query_pairs`; an empty
/// one attributes nothing (EVENTS.md §2). Only pairs whose raw key could decode to
/// `utm_content` are decoded, which saves most of the work on long campaign queries.
fn utm_content(query: &str) -> Option<Text> {
    const KEY: &str = "utm_content";
    for pair in query.split('&') {
        let raw_key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if raw_key != KEY && !(raw_key.contains(['%', '+']) && raw_key.len() >= KEY.len()) {
            continue;
        }
        if let Some((key, value)) = url::form_urlencoded::parse(pair.as_bytes()).next()
            && key == KEY
        {
            return (!value.is_empty()).then(|| Text::from(value));
        }
    }
    None
}

fn dingtalk_approval(check: &Check, r: &mut Raw<'_>) -> Checked<DingtalkApproval> {
    let process_instance_id =
        check.req_string("process_instance_id", r.process_instance_id.take())?;
    let process_code = check.req_string("process_code", r.process_code.take())?;
    let type_val = check.required("type", r.approval_type.take())?;
    let type_name = check.string("type", type_val)?;
    let kind = ApprovalType::parse(&type_name);
    let result = match r.result.take() {
        None => None,
        Some(v) => {
            let result =
                check.enumerated("result", v, ApprovalResult::parse, ["agree", "refuse"])?;
            if kind != ApprovalType::Finish {
                return Err(check.fail(format_args!(
                    "field `result` is only allowed with `type` `finish`, not {}",
                    show_str(&type_name)
                )));
            }
            Some(result)
        }
    };
    Ok(DingtalkApproval {
        process_instance_id,
        process_code,
        kind,
        result,
        staff_id: check.req_string("staff_id", r.staff_id.take())?,
        customer_id: check.opt_string("customer_id", r.customer_id.take())?,
        title: check.opt_string("title", r.title.take())?,
    })
}

/// Sorts a serde_json failure into `InvalidJson` or `SchemaViolation`. serde stops at the first
/// data error (unknown or repeated field), so the rest of the line is re-checked for syntax
/// before the error is blamed on the schema.
fn serde_rejection(raw: &[u8], e: &serde_json::Error) -> Rejection {
    if e.classify() != serde_json::error::Category::Data {
        return invalid_json(e.to_string());
    }
    if let Err(syntax) = serde_json::from_slice::<IgnoredAny>(raw) {
        return invalid_json(syntax.to_string());
    }
    let msg = e.to_string();
    // serde_json appends " at line L column C"; the field name says more to a publisher.
    let msg = msg.rfind(" at line ").map_or(msg.as_str(), |at| &msg[..at]);
    let field = |prefix: &str| {
        msg.strip_prefix(prefix)
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name.to_owned())
    };
    if let Some(name) = field("unknown field `") {
        violation(format!(
            "event: unknown field `{name}` (only the fields of EVENTS.md are allowed; extra \
             data goes inside `attrs`)"
        ))
    } else if let Some(name) = field("duplicate field `") {
        violation(format!("event: field `{name}` appears more than once"))
    } else {
        violation(format!("event: {msg}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Times

/// Parses an RFC 3339 date-time with an offset (`Z` or `±hh:mm`, any offset, fraction optional,
/// `T`/`Z` in either case, leap second `:60` allowed) to epoch milliseconds (fractions below a
/// millisecond are truncated). Exactly the strings the schemas' time `pattern` accepts; a space
/// instead of `T`, a missing offset, or an impossible date are rejected.
///
/// Integer epoch milliseconds are a JSON number, not a string, and are handled by `decode`;
/// this function rejects digit strings.
pub fn parse_time(s: &str) -> Option<Millis> {
    // One pass that checks the grammar (the schemas' time `pattern`, see
    // `schemas/crm.action.json`, `$defs`) while it reads the numbers; chrono alone is more
    // lenient (a space for `T`, U+2212 as minus sign). The fixed part is checked as a whole,
    // without a branch per character.
    let b = s.as_bytes();
    let head: &[u8; 19] = b.get(..19)?.try_into().ok()?;
    let d = head.map(|c| c.wrapping_sub(b'0'));
    const DIGITS: [usize; 14] = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18];
    let mut bad = DIGITS.iter().fold(false, |bad, &i| bad | (d[i] > 9));
    // `T` or `t`: no other byte is `t` once the 0x20 bit is set.
    bad |= head[4] != b'-'
        || head[7] != b'-'
        || head[10] | 0x20 != b't'
        || head[13] != b':'
        || head[16] != b':';
    if bad {
        return None;
    }
    let two = |i: usize| i64::from(d[i]) * 10 + i64::from(d[i + 1]);
    let (year, month, day) = (two(0) * 100 + two(2), two(5), two(8));
    let (hour, minute, second) = (two(11), two(14), two(17));
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    // A leap second (:60) is one second past :59, as chrono reads it.
    if day < 1 || day > month_days || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let digit = |i: usize| {
        let c = b.get(i)?.wrapping_sub(b'0');
        (c < 10).then_some(i64::from(c))
    };
    let (mut i, mut ms, mut scale) = (19, 0, 100);
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while let Some(c) = digit(i) {
            ms += c * scale;
            scale /= 10;
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset = match *b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let two = |i: usize| Some(digit(i)? * 10 + digit(i + 1)?);
            let (oh, om) = (two(i + 1)?, two(i + 4)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3_600 + om * 60;
            if sign == b'-' { -o } else { o }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second;
    Some((secs - offset) * 1_000 + ms)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the inverse of `civil_from_days`).
#[inline]
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats epoch milliseconds as RFC 3339 UTC with exactly three fraction digits and `Z`, e.g.
/// `2026-11-02T09:00:00.000Z` (the output form of EVENTS.md §8). Values outside the years
/// 0000–9999 (never produced by `decode`) are clamped to that range, so the output always
/// matches the output schemas.
pub fn format_time(ms: Millis) -> String {
    let ms = ms.clamp(MIN_FORMATTABLE, MAX_EPOCH_MILLIS);
    let (year, month, day) = civil_from_days(ms.div_euclid(MS_PER_DAY));
    let of_day = ms.rem_euclid(MS_PER_DAY);
    let mut out = String::with_capacity(24);
    push_digits(&mut out, year, 4);
    out.push('-');
    push_digits(&mut out, month, 2);
    out.push('-');
    push_digits(&mut out, day, 2);
    out.push('T');
    push_digits(&mut out, of_day / 3_600_000, 2);
    out.push(':');
    push_digits(&mut out, of_day / 60_000 % 60, 2);
    out.push(':');
    push_digits(&mut out, of_day / 1000 % 60, 2);
    out.push('.');
    push_digits(&mut out, of_day % 1000, 3);
    out.push('Z');
    out
}

/// `value` (0 ≤ value < 10^width) as exactly `width` decimal digits.
fn push_digits(out: &mut String, value: i64, width: u32) {
    let mut div = 10i64.pow(width - 1);
    while div > 0 {
        let digit = (value / div % 10) as u8;
        out.push(char::from(b'0' + digit));
        div /= 10;
    }
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`), avoiding chrono's general formatter on the output path.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

// ---------------------------------------------------------------------------------------------
// URLs

/// The same grammar as the schemas' `url` `pattern` (see `schemas/web.hit.json`): `http` or
/// `https` (any case), `//`, a DNS name whose last label starts with a letter or a dotted-quad
/// IPv4 address, an optional port 0–65535, then path, query and fragment without spaces,
/// control characters or backslashes. No user info, no IPv6 literals, no `xn--` labels. Every
/// string it accepts parses with the `url` crate, so schema and decoder agree.
fn is_http_url(s: &str) -> bool {
    let b = s.as_bytes();
    let scheme_len = if b.len() >= 7 && b[..7].eq_ignore_ascii_case(b"http://") {
        7
    } else if b.len() >= 8 && b[..8].eq_ignore_ascii_case(b"https://") {
        8
    } else {
        return false;
    };
    let rest = &b[scheme_len..];
    let host_end = rest
        .iter()
        .position(|c| matches!(c, b':' | b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    if !is_host(&rest[..host_end]) {
        return false;
    }
    let mut rest = &rest[host_end..];
    if let Some(after_colon) = rest.strip_prefix(b":") {
        let port_end = after_colon
            .iter()
            .position(|c| !c.is_ascii_digit())
            .unwrap_or(after_colon.len());
        if !is_port(&after_colon[..port_end]) {
            return false;
        }
        rest = &after_colon[port_end..];
    }
    // Path up to `?`/`#`, query up to `#`, fragment to the end: one pass, no spaces, control
    // characters or backslashes anywhere, and no second `#`.
    if !matches!(rest.first(), None | Some(b'/' | b'?' | b'#')) {
        return false;
    }
    let mut in_fragment = false;
    for &c in rest {
        if c <= b' ' || c == 0x7f || c == b'\\' {
            return false;
        }
        if c == b'#' {
            if in_fragment {
                return false;
            }
            in_fragment = true;
        }
    }
    true
}

fn is_host(h: &[u8]) -> bool {
    let Some(last) = h.rsplit(|c| *c == b'.').next() else {
        return false;
    };
    if last.first().is_some_and(u8::is_ascii_alphabetic) {
        h.split(|c| *c == b'.').all(is_dns_label)
    } else {
        h.split(|c| *c == b'.').count() == 4 && h.split(|c| *c == b'.').all(is_ipv4_octet)
    }
}

fn is_dns_label(l: &[u8]) -> bool {
    let (Some(first), Some(last)) = (l.first(), l.last()) else {
        return false;
    };
    first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && l.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        // `xn--` labels are punycode, which the `url` crate may refuse to decode.
        && !(l.len() >= 4 && l[..4].eq_ignore_ascii_case(b"xn--"))
}

fn is_ipv4_octet(o: &[u8]) -> bool {
    is_decimal(o, 3) && decimal(o) <= 255
}

fn is_port(p: &[u8]) -> bool {
    is_decimal(p, 5) && decimal(p) <= 65_535
}

/// 1..=`max_digits` ASCII digits without a leading zero (`0` itself is fine).
fn is_decimal(d: &[u8], max_digits: usize) -> bool {
    !d.is_empty()
        && d.len() <= max_digits
        && d.iter().all(u8::is_ascii_digit)
        && (d.len() == 1 || d[0] != b'0')
}

fn decimal(d: &[u8]) -> u32 {
    d.iter()
        .fold(0, |n, c| n * 10 + u32::from(c.wrapping_sub(b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wherever the plain reading answers, it gives what `Url::parse` gives.
    #[test]
    fn plain_urls_read_as_the_url_crate_reads_them() {
        use rand::{RngExt as _, SeedableRng as _};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let pieces = [
            "a",
            "Z",
            "0",
            "-",
            "_",
            "~",
            "/",
            "?",
            "&",
            "=",
            "+",
            ",",
            ";",
            ":",
            "@",
            "!",
            "$",
            "*",
            "(",
            ")",
            ".",
            "..",
            "%2e",
            "%41",
            "%",
            "#",
            "'",
            "\"",
            "<",
            ">",
            "`",
            "{",
            "}",
            "|",
            "^",
            "[",
            "]",
            "é",
            "utm_content=",
            "/./",
            "/../",
            "//",
        ];
        let (mut plain, mut checked) = (0, 0);
        for _ in 0..50_000 {
            let scheme = ["http://", "https://", "HTTPS://", "hTtP://"][rng.random_range(0..4)];
            let host = [
                "example.com",
                "x.cn:8080",
                "10.0.0.1",
                "www.example-pharma.cn",
            ][rng.random_range(0..4)];
            let tail: String = (0..rng.random_range(0..12))
                .map(|_| pieces[rng.random_range(0..pieces.len())])
                .collect();
            let url = format!("{scheme}{host}{tail}");
            if !is_http_url(&url) {
                continue;
            }
            checked += 1;
            let parsed = url::Url::parse(&url).expect("is_http_url implies a parse");
            if let Some((path, query)) = plain_path_query(&url) {
                plain += 1;
                assert_eq!((path, query), (parsed.path(), parsed.query()), "{url}");
            }
        }
        // Both ways were taken many times.
        assert!(
            plain > 2_000 && checked - plain > 2_000,
            "{plain} of {checked}"
        );
        assert_eq!(
            plain_path_query("https://www.example-pharma.cn/?utm_source=wecom&utm_content=Q1"),
            Some(("/", Some("utm_source=wecom&utm_content=Q1")))
        );
        assert_eq!(plain_path_query("https://x.cn/products/a.html"), None);
    }

    #[test]
    fn field_index_finds_every_field_and_nothing_else() {
        for (i, name) in FIELD_NAMES.iter().enumerate() {
            assert_eq!(field_index(name.as_bytes()), Some(i), "{name}");
        }
        // Same length, first and last byte as a field (same hash), and near misses.
        for other in [
            "rap_id",
            "evento_id",
            "event_i",
            "event_idd",
            "Kind",
            "",
            "t",
            "url ",
            "é",
        ] {
            assert_eq!(field_index(other.as_bytes()), None, "{other}");
        }
    }

    fn ok(line: &str) -> Event {
        match decode(line.as_bytes()) {
            Ok(e) => e,
            Err(r) => panic!("expected {line} to decode, got {r}"),
        }
    }

    fn rejected(line: &str) -> Rejection {
        match decode(line.as_bytes()) {
            Ok(e) => panic!("expected {line} to be rejected, got {e:?}"),
            Err(r) => r,
        }
    }

    fn violation_mentions(line: &str, needle: &str) {
        let r = rejected(line);
        assert_eq!(r.reason, RejectReason::SchemaViolation, "{line}: {r}");
        assert!(
            r.error.contains(needle),
            "{line}: `{}` lacks `{needle}`",
            r.error
        );
    }

    // 2026-11-02T09:00:00Z, the example time of EVENTS.md §8.
    const T0: Millis = 1_793_610_000_000;

    #[test]
    fn decodes_quote_sent_with_every_field() {
        let e = ok(
            r#"{"event_id":"e1","kind":"crm.action","ts":"2026-11-02T17:00:00+08:00",
            "rep_id":"r1","customer_id":"c1","action":"quote_sent","channel":"wechat",
            "asset_id":"Q1","city":"Hangzhou","amount":12.5,"duration_s":30,"attrs":{"x":[1,{"y":null}]}}"#,
        );
        assert_eq!(e.event_id, "e1");
        assert_eq!(e.ts, T0);
        assert_eq!(e.sent_at, None);
        assert_eq!(e.kind(), Kind::CrmAction);
        assert_eq!(
            e.body,
            Body::CrmAction(CrmAction {
                rep_id: "r1".into(),
                customer_id: "c1".into(),
                action: Action::QuoteSent,
                channel: Some(Channel::Wechat),
                asset_id: Some("Q1".into()),
                city: Some("Hangzhou".into()),
                amount: Some(12.5),
                duration_s: Some(30),
            })
        );
    }

    #[test]
    fn decodes_every_kind() {
        let e = ok(
            r#"{"event_id":"p","kind":"pixel.hit","ts":1793610000000,"asset_id":"Q1",
            "hit":"close","dwell_ms":61000,"page":2,"ua":"Mozilla/5.0","ip":"10.0.0.0"}"#,
        );
        assert_eq!(
            e.body,
            Body::PixelHit(PixelHit {
                asset_id: "Q1".into(),
                hit: HitKind::Close,
                dwell_ms: Some(61_000),
                page: Some(2),
                ua: Some("Mozilla/5.0".into()),
                ip: Some("10.0.0.0".into()),
            })
        );
        let e = ok(
            r#"{"event_id":"s","kind":"wecom.presence","ts":0,"external_userid":"wm1","status":"online"}"#,
        );
        assert_eq!(
            e.body,
            Body::WecomPresence(WecomPresence {
                external_userid: "wm1".into(),
                status: Presence::Online
            })
        );
        let e = ok(
            r#"{"event_id":"m","kind":"wecom.message","ts":0,"wecom_userid":"zhang","external_userid":"wm1","direction":"in"}"#,
        );
        assert_eq!(
            e.body,
            Body::WecomMessage(WecomMessage {
                wecom_userid: "zhang".into(),
                external_userid: "wm1".into(),
                direction: Direction::In
            })
        );
        let e = ok(
            r#"{"event_id":"d","kind":"dingtalk.approval","ts":0,"process_instance_id":"pi",
            "process_code":"PROC-1","type":"finish","result":"refuse","staff_id":"st","customer_id":"c1","title":"t"}"#,
        );
        assert_eq!(
            e.body,
            Body::DingtalkApproval(DingtalkApproval {
                process_instance_id: "pi".into(),
                process_code: "PROC-1".into(),
                kind: ApprovalType::Finish,
                result: Some(ApprovalResult::Refuse),
                staff_id: "st".into(),
                customer_id: Some("c1".into()),
                title: Some("t".into()),
            })
        );
        let e = ok(
            r#"{"event_id":"d2","kind":"dingtalk.approval","ts":0,"process_instance_id":"pi",
            "process_code":"PROC-1","type":"redirect","staff_id":"st"}"#,
        );
        assert!(matches!(e.body, Body::DingtalkApproval(ref d) if d.kind == ApprovalType::Other));
    }

    #[test]
    fn web_hit_takes_utm_content_and_path_from_the_url() {
        let e = ok(r#"{"event_id":"w","kind":"web.hit","ts":0,
            "url":"https://www.example.com/products/x%20y?utm_source=wx&utm_content=Q%2D1+a#top",
            "referrer":"https://t.co/","visitor_id":"v1"}"#);
        let Body::WebHit(w) = e.body else {
            panic!("not a web hit")
        };
        assert_eq!(w.utm_content.as_deref(), Some("Q-1 a"));
        assert_eq!(w.path, "/products/x%20y");
        assert_eq!(w.referrer.as_deref(), Some("https://t.co/"));
        assert_eq!(w.visitor_id.as_deref(), Some("v1"));

        let e = ok(
            r#"{"event_id":"w","kind":"web.hit","ts":0,"url":"http://1.2.3.4:8080?utm_content="}"#,
        );
        let Body::WebHit(w) = e.body else {
            panic!("not a web hit")
        };
        assert_eq!(w.utm_content, None, "empty utm_content attributes nothing");
        assert_eq!(w.path, "/");
    }

    #[test]
    fn utm_content_reads_like_query_pairs() {
        for (query, expected) in [
            ("utm_content=Q1", Some("Q1")),
            ("a=1&utm_content=Q%201&utm_content=Q2", Some("Q 1")),
            ("utm%5Fcontent=Q3", Some("Q3")),
            ("utm_content+=Q4&utm_content=Q5", Some("Q5")),
            ("utm_content=a+b%2Bc", Some("a b+c")),
            ("utm_content=&utm_content=Q6", None),
            ("utm_content", None),
            ("&&utm_contents=Q7", None),
            ("", None),
        ] {
            assert_eq!(utm_content(query).as_deref(), expected, "{query}");
            // The reference: the `url` crate's own pair decoding.
            let reference = url::form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "utm_content")
                .and_then(|(_, v)| (!v.is_empty()).then(|| v.into_owned()));
            assert_eq!(reference.as_deref(), expected, "{query}");
        }
    }

    #[test]
    fn effective_time_corrects_device_skew() {
        // Device clock 10 min fast: sent_at - ts = 60 s of queueing, received 2 s after a real send.
        let e = ok(
            r#"{"event_id":"e","kind":"wecom.presence","external_userid":"x","status":"offline",
            "ts":"2026-11-02T09:10:00Z","sent_at":"2026-11-02T09:11:00Z","received_at":"2026-11-02T09:01:02Z"}"#,
        );
        assert_eq!(e.effective_time(), T0 + 2_000);
        let e = ok(
            r#"{"event_id":"e","kind":"wecom.presence","external_userid":"x","status":"offline",
            "ts":"2026-11-02T09:10:00Z","sent_at":"2026-11-02T09:11:00Z"}"#,
        );
        assert_eq!(
            e.effective_time(),
            T0 + 600_000,
            "no received_at: effective = ts"
        );
    }

    #[test]
    fn size_and_syntax_rejections() {
        let mut big = br#"{"event_id":"e","kind":"wecom.presence","ts":0,"external_userid":"x","status":"online","attrs":{"pad":""#.to_vec();
        big.resize(MAX_EVENT_BYTES + 1 - 3, b'a');
        big.extend_from_slice(br#""}}"#);
        assert_eq!(big.len(), MAX_EVENT_BYTES + 1);
        assert_eq!(
            decode(&big).map_err(|r| r.reason),
            Err(RejectReason::Oversized)
        );
        // Exactly at the limit it is fine.
        let mut at_limit = big.clone();
        at_limit.remove(200);
        assert!(decode(&at_limit).is_ok());

        // Well-formed JSON that is not an object breaks the schema, it is not bad JSON.
        for (other, type_name) in [
            ("[1,2]", "an array"),
            (" \"x\"", "a string"),
            ("null", "null"),
            ("true", "a boolean"),
            ("-1.5", "a number"),
        ] {
            let r = rejected(other);
            assert_eq!(r.reason, RejectReason::SchemaViolation, "{other:?}: {r}");
            assert_eq!(
                r.error,
                format!("event: must be a JSON object, not {type_name}")
            );
        }
        for bad in [
            "",
            "{",
            "not json",
            "[1,2",
            "nul",
            r#"{"event_id":"e"} x"#,
            r#"{"event_id":"e"}{}"#,
            r#"{"bogus":1, oops}"#,
        ] {
            let r = rejected(bad);
            assert_eq!(r.reason, RejectReason::InvalidJson, "{bad:?}: {r}");
        }
        let r = decode(b"{\"event_id\":\"\xff\"}").map_err(|r| r.reason);
        assert_eq!(r, Err(RejectReason::InvalidJson), "invalid UTF-8");
    }

    #[test]
    fn schema_violations_name_the_field() {
        let base = r#""event_id":"e","ts":0,"rep_id":"r","customer_id":"c""#;
        violation_mentions(
            &format!(r#"{{{base},"kind":"crm.action","action":"quote_sent","asset_id":"Q"}}"#),
            "crm.action: field `channel` is required for action `quote_sent`",
        );
        violation_mentions(
            &format!(
                r#"{{{base},"kind":"crm.action","action":"proposal_sent","channel":"email"}}"#
            ),
            "crm.action: field `asset_id` is required for action `proposal_sent`",
        );
        violation_mentions(
            &format!(r#"{{{base},"kind":"crm.action","action":"quote_send","channel":"email"}}"#),
            "field `action` must be one of",
        );
        violation_mentions(
            &format!(
                r#"{{{base},"kind":"crm.action","action":"call","channel":"email","bogus":1}}"#
            ),
            "unknown field `bogus`",
        );
        violation_mentions(
            &format!(
                r#"{{{base},"kind":"crm.action","action":"call","channel":"email","hit":"open"}}"#
            ),
            "crm.action: field `hit` is not allowed",
        );
        violation_mentions(
            &format!(
                r#"{{{base},"kind":"crm.action","action":"call","channel":"email","city":null}}"#
            ),
            "field `city` must be a string, not null",
        );
        violation_mentions(
            &format!(r#"{{{base},"kind":"crm.action","action":"deal_won","amount":-1}}"#),
            "field `amount` must be a number >= 0",
        );
        violation_mentions(
            &format!(
                r#"{{{base},"kind":"crm.action","action":"call","channel":"phone","duration_s":1.5}}"#
            ),
            "field `duration_s` must be an integer",
        );
        violation_mentions(
            &format!(
                r#"{{{base},"kind":"crm.action","action":"call","channel":"phone","rep_id":"x"}}"#
            ),
            "field `rep_id` appears more than once",
        );
        violation_mentions(
            r#"{"event_id":"e","ts":0}"#,
            "event: field `kind` is required",
        );
        violation_mentions(
            r#"{"event_id":"e","ts":0,"kind":"crm.Action"}"#,
            "field `kind` must be one of `crm.action`",
        );
        let presence = r#""kind":"wecom.presence","external_userid":"x","status":"online""#;
        violation_mentions(
            &format!(r#"{{{presence},"ts":0}}"#),
            "field `event_id` is required",
        );
        violation_mentions(
            &format!(r#"{{{presence},"ts":0,"event_id":""}}"#),
            "field `event_id` must be 1 to 128 characters",
        );
        violation_mentions(
            &format!(r#"{{{presence},"ts":0,"event_id":"{}"}}"#, "é".repeat(129)),
            "field `event_id` must be 1 to 128 characters long, not 129",
        );
        violation_mentions(
            &format!(r#"{{{presence},"ts":-1,"event_id":"e"}}"#),
            "field `ts` as epoch milliseconds must be an integer from 0",
        );
        violation_mentions(
            &format!(r#"{{{presence},"ts":"2026-11-02T09:00:00","event_id":"e"}}"#),
            "field `ts` must be an RFC 3339 time",
        );
        violation_mentions(
            &format!(r#"{{{presence},"ts":0,"sent_at":true,"event_id":"e"}}"#),
            "field `sent_at` must be an RFC 3339 string or integer epoch milliseconds, not a boolean",
        );
        violation_mentions(
            &format!(r#"{{{presence},"ts":0,"attrs":[],"event_id":"e"}}"#),
            "field `attrs` must be an object, not an array",
        );
        violation_mentions(
            r#"{"event_id":"d","kind":"dingtalk.approval","ts":0,"process_instance_id":"pi",
               "process_code":"P","type":"start","result":"agree","staff_id":"s"}"#,
            "field `result` is only allowed with `type` `finish`",
        );
        violation_mentions(
            r#"{"event_id":"p","kind":"pixel.hit","ts":0,"asset_id":"Q","hit":"open","page":0}"#,
            "field `page` must be an integer from 1",
        );
        violation_mentions(
            r#"{"event_id":"w","kind":"web.hit","ts":0,"url":"/products/x"}"#,
            "field `url` must be an absolute http(s) URL",
        );
    }

    #[test]
    fn integers_may_be_spelled_as_integral_floats() {
        // JSON Schema 2020-12 counts 1.0 as an integer; the decoder must agree with the schema.
        let e = ok(
            r#"{"event_id":"p","kind":"pixel.hit","ts":1.79361e12,"asset_id":"Q","hit":"open","page":1.0,"dwell_ms":-0}"#,
        );
        assert_eq!(e.ts, T0);
        let Body::PixelHit(p) = e.body else {
            panic!("not a pixel hit")
        };
        assert_eq!((p.page, p.dwell_ms), (Some(1), Some(0)));
        violation_mentions(
            r#"{"event_id":"p","kind":"pixel.hit","ts":0,"asset_id":"Q","hit":"open","dwell_ms":9007199254740992}"#,
            "field `dwell_ms` must be an integer from 0 to 9007199254740991",
        );
        violation_mentions(
            r#"{"event_id":"p","kind":"pixel.hit","ts":253402300800000,"asset_id":"Q","hit":"open"}"#,
            "field `ts` as epoch milliseconds",
        );
        assert_eq!(
            ok(r#"{"event_id":"p","kind":"pixel.hit","ts":253402300799999,"asset_id":"Q","hit":"open"}"#).ts,
            MAX_EPOCH_MILLIS
        );
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        let e = ok(
            r#"{"event_id":"e\u00e9\"","kind":"wecom.presence","ts":0,"external_userid":"a\/b","status":"online"}"#,
        );
        assert_eq!(e.event_id, "eé\"");
        assert!(matches!(e.body, Body::WecomPresence(ref p) if p.external_userid == "a/b"));
    }

    #[test]
    fn parse_time_accepts_rfc3339_with_any_offset() {
        assert_eq!(parse_time("2026-11-02T09:00:00Z"), Some(T0));
        assert_eq!(parse_time("2026-11-02T09:00:00.000Z"), Some(T0));
        assert_eq!(parse_time("2026-11-02t09:00:00z"), Some(T0));
        assert_eq!(parse_time("2026-11-02T17:00:00+08:00"), Some(T0));
        assert_eq!(parse_time("2026-11-01T23:30:00-09:30"), Some(T0));
        assert_eq!(parse_time("2026-11-02T09:00:00-00:00"), Some(T0));
        assert_eq!(parse_time("2026-11-02T09:00:00.1239999Z"), Some(T0 + 123));
        assert_eq!(
            parse_time("2024-02-29T12:34:56.789Z"),
            Some(1_709_210_096_789)
        );
        assert_eq!(parse_time("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        // A leap second reads as the first millisecond after it.
        assert_eq!(parse_time("2016-12-31T23:59:60Z"), Some(1_483_228_800_000));
        assert_eq!(
            parse_time("9999-12-31T23:59:59.999Z"),
            Some(MAX_EPOCH_MILLIS)
        );
    }

    #[test]
    fn parse_time_rejects_what_the_pattern_rejects() {
        for bad in [
            "",
            "2026-11-02",
            "2026-11-02T09:00:00",
            "2026-11-02 09:00:00Z",
            "2026-11-02T09:00Z",
            "2026-11-02T09:00:00.Z",
            "2026-11-02T09:00:00+8:00",
            "2026-11-02T09:00:00+0800",
            "2026-11-02T09:00:00+24:00",
            "2026-11-02T09:00:00\u{2212}08:00",
            "2026-11-02T24:00:00Z",
            "2026-11-02T09:60:00Z",
            "2026-11-02T09:00:61Z",
            "2026-13-02T09:00:00Z",
            "2026-00-02T09:00:00Z",
            "2026-11-31T09:00:00Z",
            "2026-02-29T09:00:00Z",
            "1900-02-29T09:00:00Z",
            "2026-11-02T09:00:00ZZ",
            " 2026-11-02T09:00:00Z",
            "1793610000000",
            "+2026-11-02T09:00:00Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad:?}");
        }
    }

    /// The hand-written reading agrees with chrono's RFC 3339 parser on every accepted string.
    #[test]
    fn parse_time_agrees_with_chrono() {
        use rand::{RngExt as _, SeedableRng as _};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut checked = 0;
        for _ in 0..200_000 {
            let year = rng.random_range(0..=9999);
            let month = rng.random_range(1..=12);
            let day = rng.random_range(1..=31);
            let (h, m, sec) = (
                rng.random_range(0..=23),
                rng.random_range(0..=59),
                rng.random_range(0..=60),
            );
            let frac = match rng.random_range(0..4) {
                0 => String::new(),
                _ => {
                    let n = rng.random_range(1..=12);
                    let digits: String = (0..n)
                        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
                        .collect();
                    format!(".{digits}")
                }
            };
            let zone = match rng.random_range(0..3) {
                0 => "Z".to_owned(),
                1 => format!(
                    "+{:02}:{:02}",
                    rng.random_range(0..=23),
                    rng.random_range(0..=59)
                ),
                _ => format!(
                    "-{:02}:{:02}",
                    rng.random_range(0..=23),
                    rng.random_range(0..=59)
                ),
            };
            let s = format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{sec:02}{frac}{zone}");
            let ours = parse_time(&s);
            let chrono = chrono::DateTime::parse_from_rfc3339(&s)
                .ok()
                .map(|t| t.timestamp_millis());
            if ours.is_some() {
                assert_eq!(ours, chrono, "{s}");
                checked += 1;
            }
        }
        assert!(checked > 150_000, "only {checked} strings were valid dates");
    }

    #[test]
    fn format_time_is_utc_with_millis() {
        assert_eq!(format_time(T0), "2026-11-02T09:00:00.000Z");
        assert_eq!(format_time(T0 + 61_007), "2026-11-02T09:01:01.007Z");
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_time(MAX_EPOCH_MILLIS), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_time(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_time(i64::MIN), "0000-01-01T00:00:00.000Z");
        // Round trip against the independent parser, across leap years and centuries.
        let mut ms = MIN_FORMATTABLE;
        while ms <= MAX_EPOCH_MILLIS {
            assert_eq!(parse_time(&format_time(ms)), Some(ms), "{ms}");
            ms += 3_999_999_937;
        }
    }

    #[test]
    fn url_grammar() {
        for good in [
            "http://a",
            "HTTPS://Example.COM",
            "https://www.example.com/",
            "https://example.com:0/x",
            "https://example.com:65535/x",
            "http://1.2.3.4/",
            "http://255.255.255.255:80",
            "https://a-b.c1.example/p/a:b@c?q=1?2&x=%20#frag?x",
            "https://example.com?utm_content=Q1",
            "https://example.com#x",
            "https://9gag.com/产品",
            "https://x.com/a/b/../c",
        ] {
            assert!(is_http_url(good), "{good}");
            assert!(url::Url::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "example.com",
            "ftp://example.com",
            "http:/example.com",
            "http://",
            "http:///x",
            "http://user@example.com/",
            "http://example.com:/",
            "http://example.com:65536/",
            "http://example.com:080/",
            "http://example.com:8x",
            "http://-a.com/",
            "http://a-.com/",
            "http://a..com/",
            "http://a.com./",
            "http://a.1com/",
            "http://a.123/",
            "http://1.2.3.256/",
            "http://01.2.3.4/",
            "http://1.2.3/",
            "http://[::1]/",
            "http://xn--abc.com/",
            "http://a_b.com/",
            "http://example.com/a b",
            "http://example.com/a\\b",
            "http://example.com/a\tb",
            "http://example.com/#a#b",
            "http://exämple.com/",
        ] {
            assert!(!is_http_url(bad), "{bad}");
        }
    }
}
