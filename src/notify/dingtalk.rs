//! The DingTalk (钉钉) custom robot: `msgtype` `markdown` with `at`; when the robot has a secret,
//! every request is signed with a timestamp taken at that request:
//! `sign = urlencode(base64(HmacSHA256(key = secret, msg = timestamp + "\n" + secret)))`,
//! passed as `&timestamp=<ms>&sign=<sign>` on the webhook URL. The robot answers HTTP 200 with
//! `{"errcode": 0, "errmsg": "ok"}`; other codes are failures (130101: sending too fast).

use base64::Engine as _;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use url::Url;

use super::deliver::{Delivery, classify_robot};
use super::http::Reply;
use super::wecom::truncate_bytes;

/// DingTalk's limit on a message's text, in bytes.
pub const MAX_TEXT_BYTES: usize = 20_000;
/// Longest title shown in the notification.
const MAX_TITLE_BYTES: usize = 128;

/// `errcode` of "sending too fast" (the robot's 20 messages a minute).
pub const ERR_TOO_FAST: i64 = 130_101;
/// `errcode` of a failed security check: bad signature, keyword or IP allow-list.
pub const ERR_SECURITY: i64 = 310_000;

/// `base64(HmacSHA256(key = secret, msg = timestamp + "\n" + secret))`, before URL encoding.
pub fn sign(secret: &str, timestamp_ms: i64) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let message = format!("{timestamp_ms}\n{secret}");
    let tag = ring::hmac::sign(&key, message.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

/// The webhook URL with `timestamp` and the URL-encoded `sign` appended.
pub fn signed_url(webhook: &Url, secret: &str, timestamp_ms: i64) -> Url {
    let sign = sign(secret, timestamp_ms);
    let encoded = utf8_percent_encode(&sign, NON_ALPHANUMERIC);
    let mut url = webhook.clone();
    let query = match webhook.query() {
        Some(q) if !q.is_empty() => format!("{q}&timestamp={timestamp_ms}&sign={encoded}"),
        _ => format!("timestamp={timestamp_ms}&sign={encoded}"),
    };
    url.set_query(Some(&query));
    url
}

/// The request body: markdown with `at`. DingTalk only notifies a mobile that also appears as
/// `@mobile` in the text, so those are appended; markdown needs two trailing spaces (or a blank
/// line) for a line break, so single newlines become hard breaks.
pub fn body(title: &str, text: &str, at_mobiles: &[String]) -> Value {
    let mut text = text.replace("\r\n", "\n").replace('\n', "  \n");
    let mentions: String = at_mobiles.iter().map(|m| format!(" @{m}")).collect();
    let room = MAX_TEXT_BYTES.saturating_sub(mentions.len() + 4);
    text = truncate_bytes(&text, room);
    if !mentions.is_empty() {
        text.push_str("\n\n");
        text.push_str(mentions.trim_start());
    }
    json!({
        "msgtype": "markdown",
        "markdown": { "title": truncate_bytes(title, MAX_TITLE_BYTES), "text": text },
        "at": { "atMobiles": at_mobiles, "isAtAll": false },
    })
}

/// Judges the robot's answer.
pub fn classify(reply: &Reply) -> Delivery {
    classify_robot(reply, "DingTalk", ERR_TOO_FAST, |code| match code {
        ERR_SECURITY => Some("security check failed: signature, keyword or IP allow-list"),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_known_vector() {
        assert_eq!(
            sign("secret", 1_700_000_000_000),
            "OuzzJR5+xZ4/EYwqtNt6sMYZQMTa/HEGvc9miJe7XzY="
        );
    }

    #[test]
    fn signed_url_appends_timestamp_and_encoded_sign() {
        let base =
            Url::parse("https://oapi.dingtalk.com/robot/send?access_token=abc").expect("valid url");
        let url = signed_url(&base, "secret", 1_700_000_000_000);
        assert_eq!(
            url.as_str(),
            "https://oapi.dingtalk.com/robot/send?access_token=abc&timestamp=1700000000000\
             &sign=OuzzJR5%2BxZ4%2FEYwqtNt6sMYZQMTa%2FHEGvc9miJe7XzY%3D"
        );
        let sign: Vec<_> = url.query_pairs().filter(|(k, _)| k == "sign").collect();
        assert_eq!(sign[0].1, "OuzzJR5+xZ4/EYwqtNt6sMYZQMTa/HEGvc9miJe7XzY=");
    }

    #[test]
    fn body_is_markdown_with_at() {
        let b = body("【告警】t", "a\nb", &["13800000000".to_string()]);
        assert_eq!(b["msgtype"], "markdown");
        assert_eq!(b["markdown"]["title"], "【告警】t");
        assert_eq!(b["markdown"]["text"], "a  \nb\n\n@13800000000");
        assert_eq!(b["at"]["atMobiles"][0], "13800000000");
        assert_eq!(b["at"]["isAtAll"], false);
        let long = "钉".repeat(10_000);
        let b = body("t", &long, &[]);
        let text = b["markdown"]["text"].as_str().unwrap_or_default();
        assert!(
            text.len() <= MAX_TEXT_BYTES && text.ends_with('…'),
            "{}",
            text.len()
        );
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(
            classify(&Reply::for_test(200, r#"{"errcode":0,"errmsg":"ok"}"#)),
            Delivery::Delivered
        );
        assert!(matches!(
            classify(&Reply::for_test(
                200,
                r#"{"errcode":130101,"errmsg":"send too fast"}"#
            )),
            Delivery::Retry { .. }
        ));
        match classify(&Reply::for_test(
            200,
            r#"{"errcode":310000,"errmsg":"sign not match"}"#,
        )) {
            Delivery::Permanent { why, response } => {
                assert!(why.contains("310000"), "{why}");
                assert!(response.contains("sign not match"), "{response}");
            }
            other => panic!("expected permanent, got {other:?}"),
        }
        match classify(&Reply::for_test(
            200,
            r#"{"errcode":300001,"errmsg":"token is not exist"}"#,
        )) {
            Delivery::Permanent { response, .. } => {
                assert!(response.contains("token is not exist"), "{response}")
            }
            other => panic!("expected permanent, got {other:?}"),
        }
        assert!(matches!(
            classify(&Reply::for_test(200, "<html>")),
            Delivery::Permanent { .. }
        ));
        assert!(matches!(
            classify(&Reply::for_test(502, "")),
            Delivery::Retry { .. }
        ));
        assert!(matches!(
            classify(&Reply::for_test(404, "")),
            Delivery::Permanent { .. }
        ));
    }
}
