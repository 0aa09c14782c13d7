//! Asset tokens: the part of a pixel or tracked-link URL that says which sent asset (and rep,
//! medium, campaign) a hit belongs to. They are authenticated with HMAC-SHA256 under the keys of
//! `[collect] keys`, so nobody without a key can make one up or alter one; the server
//! (`super::server`) verifies them on every hit, and `POST /v1/assets` / `touchstream token`
//! mint them.
//!
//! Wire format, version 1 (pinned by the `known_answer` test; change it only on purpose, with a
//! new version byte, because every token already sent out in a document must keep verifying):
//!
//! ```text
//! payload = 0x01 ‖ field(key_id) ‖ field(asset_id) ‖ field(rep_id) ‖ field(medium) ‖ field(campaign)
//! field(x) = len(x) as one byte ‖ x          (campaign absent = a zero length)
//! token   = base64url(payload) "." base64url(HMAC-SHA256(key, "touchstream-token-v1" ‖ payload))
//! ```
//!
//! base64url without padding, so a token is made of `[A-Za-z0-9_-]` and one `.` and can stand
//! in a URL path as it is. The MAC covers a fixed domain label before the payload, so a tag
//! computed with the same secret for anything else (a webhook signature, say) is never a valid
//! token tag.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

use super::KeySpec;

/// Longest token accepted, in bytes; longer input is refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 512;

/// The only payload version so far.
const VERSION: u8 = 1;
/// Domain label prepended to the payload under the MAC.
const DOMAIN: &[u8] = b"touchstream-token-v1";
/// Bytes of an HMAC-SHA256 tag.
const TAG_LEN: usize = 32;
/// Shortest secret a key may have (as `CollectConfig::check` demands of inline secrets).
const MIN_SECRET_BYTES: usize = 32;

/// Longest asset and rep id (EVENTS.md ids are 1 to 128).
pub const MAX_ID_BYTES: usize = 128;
/// Longest medium (`utm_medium`, the asset kind).
pub const MAX_MEDIUM_BYTES: usize = 32;
/// Longest campaign (`utm_campaign`).
pub const MAX_CAMPAIGN_BYTES: usize = 128;

/// What a token says about the asset it tracks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The sent asset (EVENTS.md `asset_id`): 1 to 128 bytes, no control characters.
    pub asset_id: String,
    /// The rep who sent it: 1 to 128 bytes, no control characters.
    pub rep_id: String,
    /// The asset kind for `utm_medium`, such as `quote`, `proposal`, `case`, `contract`:
    /// `[a-z0-9_-]{1,32}`.
    pub medium: String,
    /// `utm_campaign`, if any: 1 to 128 bytes, no control characters (absent: `None`, not "").
    pub campaign: Option<String>,
}

/// Why a token was refused or could not be minted. Every variant but `InvalidClaims` on `mint`
/// is the presenter's fault (a bad, stale or forged URL); none is an internal error.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token signed with unknown key `{0}`")]
    UnknownKey(String),
    #[error("token signature does not match")]
    BadSignature,
    #[error("token longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    #[error("invalid token claims: {0}")]
    InvalidClaims(String),
}

impl Claims {
    /// Checks every field against the bounds documented on it.
    pub fn validate(&self) -> Result<(), TokenError> {
        text_field("asset_id", &self.asset_id, MAX_ID_BYTES)?;
        text_field("rep_id", &self.rep_id, MAX_ID_BYTES)?;
        let medium_ok = !self.medium.is_empty()
            && self.medium.len() <= MAX_MEDIUM_BYTES
            && self
                .medium
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !medium_ok {
            return Err(TokenError::InvalidClaims(format!(
                "medium `{}` must match [a-z0-9_-]{{1,{MAX_MEDIUM_BYTES}}}",
                self.medium.escape_debug()
            )));
        }
        if let Some(c) = &self.campaign {
            text_field("campaign", c, MAX_CAMPAIGN_BYTES)?;
        }
        Ok(())
    }
}

fn text_field(name: &str, value: &str, max: usize) -> Result<(), TokenError> {
    if value.is_empty() || value.len() > max {
        return Err(TokenError::InvalidClaims(format!(
            "{name} must be 1 to {max} bytes long, not {}",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(TokenError::InvalidClaims(format!(
            "{name} `{}` contains a control character",
            value.escape_debug()
        )));
    }
    Ok(())
}

/// The token keys, newest first: the first signs, all verify.
pub struct Keys {
    keys: Vec<(String, hmac::Key)>,
}

impl std::fmt::Debug for Keys {
    // Ids only: the secrets stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field(
                "ids",
                &self.keys.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A key id as tokens carry it: 1 to 16 of `[A-Za-z0-9_-]`.
pub fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 16
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Keys {
    /// Loads the keys of `[collect] keys` (reading `secret_env` variables now). Fails on no
    /// keys, a bad or repeated id, or a secret shorter than 32 bytes.
    pub fn new(specs: &[KeySpec]) -> Result<Keys, String> {
        if specs.is_empty() {
            return Err("at least one token key is needed".into());
        }
        let mut keys: Vec<(String, hmac::Key)> = Vec::with_capacity(specs.len());
        for spec in specs {
            if !valid_key_id(&spec.id) {
                return Err(format!(
                    "key id `{}` must match [A-Za-z0-9_-]{{1,16}}",
                    spec.id
                ));
            }
            if keys.iter().any(|(id, _)| *id == spec.id) {
                return Err(format!("key id `{}` is used twice", spec.id));
            }
            let secret = spec.secret_bytes()?;
            if secret.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "key `{}`: the secret must be at least {MIN_SECRET_BYTES} bytes, got {}",
                    spec.id,
                    secret.len()
                ));
            }
            keys.push((spec.id.clone(), hmac::Key::new(hmac::HMAC_SHA256, &secret)));
        }
        Ok(Keys { keys })
    }

    /// A token for `claims`, signed with the first key. `InvalidClaims` when a field is out of
    /// bounds, `TooLong` when the fields together would exceed `MAX_TOKEN_LEN`.
    pub fn mint(&self, claims: &Claims) -> Result<String, TokenError> {
        claims.validate()?;
        let (key_id, key) = &self.keys[0];
        let mut payload = Vec::with_capacity(
            6 + key_id.len()
                + claims.asset_id.len()
                + claims.rep_id.len()
                + claims.medium.len()
                + claims.campaign.as_ref().map_or(0, String::len),
        );
        payload.push(VERSION);
        for field in [
            key_id.as_str(),
            &claims.asset_id,
            &claims.rep_id,
            &claims.medium,
            claims.campaign.as_deref().unwrap_or(""),
        ] {
            // Every field is at most 128 bytes (validated above, key ids at most 16).
            payload.push(field.len() as u8);
            payload.extend_from_slice(field.as_bytes());
        }
        let tag = hmac::sign(key, &signed(&payload));
        let mut token = URL_SAFE_NO_PAD.encode(&payload);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut token);
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        Ok(token)
    }

    /// The claims of a token minted with one of these keys. Checks, in order: length, shape,
    /// base64, version, key id, MAC (constant time), then the fields; nothing in the payload
    /// past the key id is read before the MAC has matched.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let (payload_b64, tag_b64) = token
            .split_once('.')
            .ok_or_else(|| TokenError::Malformed("no `.` between payload and tag".into()))?;
        // The decoder refuses padding, stray characters (including a second `.`) and
        // non-canonical final symbols, so each token has exactly one spelling.
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|e| TokenError::Malformed(format!("payload: {e}")))?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag_b64)
            .map_err(|e| TokenError::Malformed(format!("tag: {e}")))?;
        if tag.len() != TAG_LEN {
            return Err(TokenError::Malformed(format!(
                "tag is {} bytes, not {TAG_LEN}",
                tag.len()
            )));
        }

        let mut r = Reader(&payload);
        let version = r.byte()?;
        if version != VERSION {
            return Err(TokenError::Malformed(format!(
                "unsupported version {version}"
            )));
        }
        let key_id = r.field()?;
        let key = self
            .keys
            .iter()
            .find(|(id, _)| id.as_bytes() == key_id)
            .map(|(_, key)| key)
            // The id is the presenter's text: escaped, so it cannot forge a log line.
            .ok_or_else(|| {
                TokenError::UnknownKey(String::from_utf8_lossy(key_id).escape_debug().to_string())
            })?;
        // Constant-time comparison inside ring.
        hmac::verify(key, &signed(&payload), &tag).map_err(|_| TokenError::BadSignature)?;

        let asset_id = r.text()?;
        let rep_id = r.text()?;
        let medium = r.text()?;
        let campaign = r.text()?;
        if !r.0.is_empty() {
            return Err(TokenError::Malformed(format!(
                "{} bytes after the last field",
                r.0.len()
            )));
        }
        let claims = Claims {
            asset_id,
            rep_id,
            medium,
            campaign: (!campaign.is_empty()).then_some(campaign),
        };
        claims.validate()?;
        Ok(claims)
    }
}

/// The bytes under the MAC.
fn signed(payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + payload.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(payload);
    m
}

/// Reads the payload front to back.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, TokenError> {
        let (&b, rest) = self
            .0
            .split_first()
            .ok_or_else(|| TokenError::Malformed("payload ends early".into()))?;
        self.0 = rest;
        Ok(b)
    }

    fn field(&mut self) -> Result<&'a [u8], TokenError> {
        let len = usize::from(self.byte()?);
        if self.0.len() < len {
            return Err(TokenError::Malformed("payload ends early".into()));
        }
        let (field, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(field)
    }

    fn text(&mut self) -> Result<String, TokenError> {
        let field = self.field()?;
        String::from_utf8(field.to_vec())
            .map_err(|_| TokenError::Malformed("a field is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_1: &str = "k1-secret-0123456789abcdef-0123456789";
    const SECRET_2: &str = "k2-secret-0123456789abcdef-0123456789";

    fn spec(id: &str, secret: &str) -> KeySpec {
        KeySpec {
            id: id.into(),
            secret: Some(secret.into()),
            secret_env: None,
        }
    }

    fn keys(specs: &[(&str, &str)]) -> Keys {
        let specs: Vec<KeySpec> = specs.iter().map(|(id, s)| spec(id, s)).collect();
        Keys::new(&specs).unwrap()
    }

    fn claims() -> Claims {
        Claims {
            asset_id: "Q-2026-0042".into(),
            rep_id: "r0117".into(),
            medium: "quote".into(),
            campaign: Some("spring_tender".into()),
        }
    }

    /// Key ids are 1 to 16 of `[A-Za-z0-9_-]` (README, `[collect] keys`), for the keys and for
    /// the pipeline file's check alike.
    #[test]
    fn key_ids_follow_the_documented_rule() {
        for good in ["k1", "K_2-b", "0123456789abcdef"] {
            assert!(valid_key_id(good), "{good}");
            assert!(Keys::new(&[spec(good, SECRET_1)]).is_ok(), "{good}");
        }
        for bad in ["", "0123456789abcdefg", "k.1", "k 1", "ключ", "k1\n"] {
            assert!(!valid_key_id(bad), "{bad:?}");
            let e = Keys::new(&[spec(bad, SECRET_1)]).err().unwrap_or_default();
            assert!(e.contains("must match [A-Za-z0-9_-]{1,16}"), "{bad:?}: {e}");
            let cfg = crate::collect::CollectConfig {
                keys: vec![spec(bad, SECRET_1)],
                ..Default::default()
            };
            assert!(
                cfg.check().iter().any(|(at, _)| at == "collect.keys[0].id"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn round_trip_with_and_without_campaign() {
        let k = keys(&[("k1", SECRET_1)]);
        let c = claims();
        let token = k.mint(&c).unwrap();
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'),
            "{token}"
        );
        assert_eq!(token.matches('.').count(), 1);
        assert_eq!(k.verify(&token), Ok(c.clone()));

        let bare = Claims {
            campaign: None,
            ..c
        };
        assert_eq!(k.verify(&k.mint(&bare).unwrap()), Ok(bare));

        let unicode = Claims {
            asset_id: "报价-7".into(),
            rep_id: "销售 01".into(),
            medium: "contract".into(),
            campaign: Some("春季 招标/2026?&=".into()),
        };
        assert_eq!(k.verify(&k.mint(&unicode).unwrap()), Ok(unicode));
    }

    /// Pins wire format v1 (see the module doc): if this fails, the format changed, and every
    /// token already sent out would stop verifying. Change it only deliberately, with a new
    /// version byte. The value was computed once from this implementation.
    #[test]
    fn known_answer() {
        let k = keys(&[("k1", "0123456789abcdef0123456789abcdef")]);
        let c = Claims {
            asset_id: "Q1".into(),
            rep_id: "r1".into(),
            medium: "quote".into(),
            campaign: Some("spring".into()),
        };
        let pinned = "AQJrMQJRMQJyMQVxdW90ZQZzcHJpbmc.FhznimaL3kcSWvXOd6o_uKx5PQSLo0-xypHvOQ6r0_0";
        assert_eq!(k.mint(&c).unwrap(), pinned);
        assert_eq!(k.verify(pinned), Ok(c));
    }

    #[test]
    fn rotation() {
        let old = keys(&[("k1", SECRET_1)]);
        let t1 = old.mint(&claims()).unwrap();

        let rotated = keys(&[("k2", SECRET_2), ("k1", SECRET_1)]);
        assert_eq!(rotated.verify(&t1), Ok(claims()));
        let t2 = rotated.mint(&claims()).unwrap();
        assert_ne!(t1, t2);
        assert_eq!(rotated.verify(&t2), Ok(claims()));
        assert_eq!(
            old.verify(&t2),
            Err(TokenError::UnknownKey("k2".into())),
            "k2 tokens name their key"
        );

        let retired = keys(&[("k2", SECRET_2)]);
        assert_eq!(retired.verify(&t2), Ok(claims()));
        assert_eq!(
            retired.verify(&t1),
            Err(TokenError::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn tampering_any_character_is_rejected() {
        const ALPHABET: &[u8] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
        let k = keys(&[("k1", SECRET_1)]);
        let token = k.mint(&claims()).unwrap();
        let mut tried = 0;
        for i in 0..token.len() {
            for &b in ALPHABET {
                let mut t = token.clone().into_bytes();
                if t[i] == b {
                    continue;
                }
                t[i] = b;
                let t = String::from_utf8(t).unwrap();
                assert!(
                    k.verify(&t).is_err(),
                    "position {i} set to {}: {t}",
                    b as char
                );
                tried += 1;
            }
        }
        assert_eq!(tried, token.len() * (ALPHABET.len() - 1));

        // Every bit of the decoded payload and tag, re-encoded canonically.
        let (p, t) = token.split_once('.').unwrap();
        let (p, t) = (
            URL_SAFE_NO_PAD.decode(p).unwrap(),
            URL_SAFE_NO_PAD.decode(t).unwrap(),
        );
        for part in 0..2 {
            let len = if part == 0 { p.len() } else { t.len() };
            for bit in 0..len * 8 {
                let (mut p, mut t) = (p.clone(), t.clone());
                let v = if part == 0 { &mut p } else { &mut t };
                v[bit / 8] ^= 1 << (bit % 8);
                let forged = format!(
                    "{}.{}",
                    URL_SAFE_NO_PAD.encode(&p),
                    URL_SAFE_NO_PAD.encode(&t)
                );
                let e = k.verify(&forged).unwrap_err();
                // The key id and version are read before the MAC; everything else fails it.
                if part == 1 || bit >= 8 * 4 {
                    assert_eq!(e, TokenError::BadSignature, "part {part} bit {bit}");
                }
            }
        }
    }

    #[test]
    fn truncated_and_extended_tokens_are_rejected() {
        let k = keys(&[("k1", SECRET_1)]);
        let token = k.mint(&claims()).unwrap();
        for n in 0..token.len() {
            assert!(k.verify(&token[..n]).is_err(), "prefix of {n}");
        }
        for suffix in ["A", "AA", ".", ".A", "=", "==", " ", "\n", ".gif"] {
            let t = format!("{token}{suffix}");
            assert!(
                matches!(k.verify(&t), Err(TokenError::Malformed(_))),
                "{t}: {:?}",
                k.verify(&t)
            );
        }
        assert!(matches!(
            k.verify(&format!(" {token}")),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn other_secret_under_the_same_key_id_is_bad_signature() {
        let real = keys(&[("k1", SECRET_1)]);
        let impostor = keys(&[("k1", SECRET_2)]);
        let forged = impostor.mint(&claims()).unwrap();
        assert_eq!(real.verify(&forged), Err(TokenError::BadSignature));
    }

    #[test]
    fn hand_made_tokens_fail() {
        let k = keys(&[("k1", SECRET_1)]);
        let mut payload = vec![VERSION];
        for f in ["k1", "Q-2026-0042", "r0117", "quote", ""] {
            payload.push(f.len() as u8);
            payload.extend_from_slice(f.as_bytes());
        }
        let p = URL_SAFE_NO_PAD.encode(&payload);
        // A well-formed payload with a zero tag, a tag over the payload without the key, and the
        // tag of a real token for other claims.
        let zero = format!("{p}.{}", URL_SAFE_NO_PAD.encode([0u8; TAG_LEN]));
        assert_eq!(k.verify(&zero), Err(TokenError::BadSignature));
        let unkeyed = ring::digest::digest(&ring::digest::SHA256, &signed(&payload));
        let unkeyed = format!("{p}.{}", URL_SAFE_NO_PAD.encode(unkeyed.as_ref()));
        assert_eq!(k.verify(&unkeyed), Err(TokenError::BadSignature));
        let real = k.mint(&claims()).unwrap();
        let spliced = format!("{p}.{}", real.split_once('.').unwrap().1);
        assert_eq!(k.verify(&spliced), Err(TokenError::BadSignature));
        // An empty key id, and an unknown version.
        let mut no_id = payload.clone();
        no_id.splice(1..4, [0]);
        let no_id = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&no_id),
            URL_SAFE_NO_PAD.encode([0u8; TAG_LEN])
        );
        assert_eq!(k.verify(&no_id), Err(TokenError::UnknownKey(String::new())));
        payload[0] = 2;
        let v2 = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode([0u8; TAG_LEN])
        );
        assert!(matches!(k.verify(&v2), Err(TokenError::Malformed(m)) if m.contains("version")));
        // Shapes.
        for bad in ["", ".", "abc", "a.b.c", "AQ==.AA", "!!!.AAAA", "AQ.AAAA"] {
            assert!(
                matches!(k.verify(bad), Err(TokenError::Malformed(_))),
                "{bad}: {:?}",
                k.verify(bad)
            );
        }
    }

    #[test]
    fn an_unknown_key_id_is_reported_escaped() {
        let k = keys(&[("k1", SECRET_1)]);
        let payload = [VERSION, 3, b'k', b'\n', 0xff];
        let t = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode([0u8; TAG_LEN])
        );
        assert_eq!(
            k.verify(&t),
            Err(TokenError::UnknownKey("k\\n\u{fffd}".into()))
        );
    }

    #[test]
    fn garbage_after_the_last_field_is_rejected_even_when_signed() {
        // Only a key holder could produce this; verify still refuses the extra bytes.
        let k = keys(&[("k1", SECRET_1)]);
        let token = k.mint(&claims()).unwrap();
        let mut payload = URL_SAFE_NO_PAD
            .decode(token.split_once('.').unwrap().0)
            .unwrap();
        payload.push(0);
        let tag = hmac::sign(&k.keys[0].1, &signed(&payload));
        let t = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        );
        assert!(matches!(k.verify(&t), Err(TokenError::Malformed(m)) if m.contains("after")));
    }

    #[test]
    fn oversize() {
        let k = keys(&[("k1", SECRET_1)]);
        let long = "A".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(k.verify(&long), Err(TokenError::TooLong));
        assert_eq!(
            k.verify(&format!("{}.{}", "A".repeat(600), "A".repeat(43))),
            Err(TokenError::TooLong)
        );
        // At the limit the length check passes and decoding decides.
        let at = "A".repeat(MAX_TOKEN_LEN);
        assert!(matches!(k.verify(&at), Err(TokenError::Malformed(_))));

        // Claims each in bounds but too long together.
        let big = Claims {
            asset_id: "a".repeat(MAX_ID_BYTES),
            rep_id: "r".repeat(MAX_ID_BYTES),
            medium: "m".repeat(MAX_MEDIUM_BYTES),
            campaign: Some("c".repeat(MAX_CAMPAIGN_BYTES)),
        };
        assert_eq!(k.mint(&big), Err(TokenError::TooLong));
        // Both ids at their longest still fit.
        let ids = Claims {
            campaign: None,
            ..big
        };
        let t = k.mint(&ids).unwrap();
        assert!(t.len() <= MAX_TOKEN_LEN);
        assert_eq!(k.verify(&t), Ok(ids));
    }

    #[test]
    fn invalid_claims_are_not_minted() {
        let k = keys(&[("k1", SECRET_1)]);
        let bad = [
            Claims {
                asset_id: String::new(),
                ..claims()
            },
            Claims {
                asset_id: "a".repeat(MAX_ID_BYTES + 1),
                ..claims()
            },
            Claims {
                rep_id: String::new(),
                ..claims()
            },
            Claims {
                rep_id: "r\n1".into(),
                ..claims()
            },
            Claims {
                medium: "Quote".into(),
                ..claims()
            },
            Claims {
                medium: String::new(),
                ..claims()
            },
            Claims {
                medium: "m".repeat(MAX_MEDIUM_BYTES + 1),
                ..claims()
            },
            Claims {
                campaign: Some(String::new()),
                ..claims()
            },
            Claims {
                campaign: Some("c".repeat(MAX_CAMPAIGN_BYTES + 1)),
                ..claims()
            },
        ];
        for c in bad {
            assert!(
                matches!(k.mint(&c), Err(TokenError::InvalidClaims(_))),
                "{c:?}"
            );
        }
    }

    #[test]
    fn key_set_checks() {
        assert!(Keys::new(&[]).is_err());
        assert!(Keys::new(&[spec("k1", "short")]).is_err());
        assert!(Keys::new(&[spec("", SECRET_1)]).is_err());
        assert!(Keys::new(&[spec("k.1", SECRET_1)]).is_err());
        assert!(Keys::new(&[spec(&"k".repeat(17), SECRET_1)]).is_err());
        assert!(Keys::new(&[spec("k1", SECRET_1), spec("k1", SECRET_2)]).is_err());
        let neither = KeySpec {
            id: "k1".into(),
            secret: None,
            secret_env: None,
        };
        assert!(Keys::new(&[neither]).is_err());
        let k = Keys::new(&[spec(&"k".repeat(16), SECRET_1)]).unwrap();
        assert_eq!(k.verify(&k.mint(&claims()).unwrap()), Ok(claims()));
        let shown = format!("{k:?}");
        assert!(!shown.contains(SECRET_1), "{shown}");
    }
}
