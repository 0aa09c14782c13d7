//! The WeCom (企业微信) group robot: `msgtype` `markdown` with `content` of at most 4096 bytes of
//! UTF-8 (a Chinese character is three), shortened at a character boundary with `…` when longer.
//! WeCom markdown cannot mention people by mobile, so when the receiver names people a short
//! `text` message with `mentioned_mobile_list` follows. The robot answers HTTP 200 with
//! `{"errcode": 0, "errmsg": "ok"}`; 45009 means too many messages (retried), 93000 an invalid
//! webhook key (permanent).

use serde_json::{Value, json};

use super::deliver::{Delivery, classify_robot};
use super::http::Reply;

/// WeCom's limit on markdown `content`, in bytes.
pub const MAX_MARKDOWN_BYTES: usize = 4096;
/// WeCom's limit on text `content`, in bytes.
pub const MAX_TEXT_BYTES: usize = 2048;

/// `errcode`: API frequency out of limit.
pub const ERR_FREQUENCY: i64 = 45_009;
/// `errcode`: invalid webhook URL (bad or removed key).
pub const ERR_INVALID_WEBHOOK: i64 = 93_000;

const ELLIPSIS: &str = "…";

/// `s` when it fits in `max` bytes, else its longest prefix ending at a character boundary
/// followed by `…`, together at most `max` bytes.
pub fn truncate_bytes(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = max.saturating_sub(ELLIPSIS.len());
    while cut > 0 && !s.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = String::with_capacity(cut + ELLIPSIS.len());
    out.push_str(&s[..cut]);
    if ELLIPSIS.len() <= max {
        out.push_str(ELLIPSIS);
    }
    out
}

/// The markdown message.
pub fn markdown_body(content: &str) -> Value {
    json!({
        "msgtype": "markdown",
        "markdown": { "content": truncate_bytes(content, MAX_MARKDOWN_BYTES) },
    })
}

/// The text message that mentions people by mobile.
pub fn mention_body(content: &str, mentioned_mobile_list: &[String]) -> Value {
    json!({
        "msgtype": "text",
        "text": {
            "content": truncate_bytes(content, MAX_TEXT_BYTES),
            "mentioned_mobile_list": mentioned_mobile_list,
        },
    })
}

/// Judges the robot's answer.
pub fn classify(reply: &Reply) -> Delivery {
    classify_robot(reply, "WeCom", ERR_FREQUENCY, |code| match code {
        ERR_INVALID_WEBHOOK => Some("rejected the webhook key"),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_characters_whole_within_4096_bytes() {
        // 4096 − 3 bytes of room = 1364 characters and 1 byte: the cut backs off to 4092.
        let text = "告".repeat(2000);
        assert_eq!(text.len(), 6000);
        let cut = truncate_bytes(&text, MAX_MARKDOWN_BYTES);
        assert!(cut.len() <= MAX_MARKDOWN_BYTES, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert_eq!(cut.chars().filter(|&c| c == '告').count(), 1364);
        assert_eq!(cut.len(), 1364 * 3 + 3);
        let body = markdown_body(&text);
        let content = body["markdown"]["content"].as_str().unwrap_or_default();
        assert_eq!(content, cut);
        assert_eq!(body["msgtype"], "markdown");
    }

    #[test]
    fn short_text_is_unchanged_and_exact_fit_is_not_cut() {
        assert_eq!(truncate_bytes("告警", 6), "告警");
        let exact = "告".repeat(1365) + "a";
        assert_eq!(exact.len(), 4096);
        assert_eq!(truncate_bytes(&exact, MAX_MARKDOWN_BYTES), exact);
        assert_eq!(truncate_bytes("告警", 5), "…");
    }

    #[test]
    fn mention_message_is_text_with_mobiles() {
        let b = mention_body("请关注", &["13800000000".to_string()]);
        assert_eq!(b["msgtype"], "text");
        assert_eq!(b["text"]["content"], "请关注");
        assert_eq!(b["text"]["mentioned_mobile_list"][0], "13800000000");
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
                r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#
            )),
            Delivery::Retry { .. }
        ));
        match classify(&Reply::for_test(
            200,
            r#"{"errcode":93000,"errmsg":"invalid webhook url"}"#,
        )) {
            Delivery::Permanent { why, response } => {
                assert!(why.contains("93000"), "{why}");
                assert!(response.contains("invalid webhook url"), "{response}");
            }
            other => panic!("expected permanent, got {other:?}"),
        }
        assert!(matches!(
            classify(&Reply::for_test(
                200,
                r#"{"errcode":40058,"errmsg":"content exceed max length"}"#
            )),
            Delivery::Permanent { .. }
        ));
        assert!(matches!(
            classify(&Reply::for_test(503, "")),
            Delivery::Retry { .. }
        ));
        assert!(matches!(
            classify(&Reply::for_test(429, "")),
            Delivery::Retry { .. }
        ));
    }
}
