//! SDK batch bodies (`POST /v1/events`): a JSON array of events or NDJSON, split into the raw
//! text of each event for `crate::event::decode`, within the limits of `[collect]`. Only the
//! shape of the whole body is judged here; each event is judged on its own by the server, so
//! one bad event costs only itself.

use std::borrow::Cow;

/// Bounds on one batch (`[collect] max_body_bytes`, `max_batch_events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_events: usize,
}

/// Why a whole batch is refused. All are the sender's fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("the body is {bytes} bytes, more than the {max} allowed")]
    TooLarge { bytes: usize, max: usize },
    #[error("the batch holds {count} events, more than the {max} allowed")]
    TooManyEvents { count: usize, max: usize },
    #[error("{0}")]
    Malformed(String),
    #[error("the batch holds no events")]
    Empty,
}

/// One event of a batch, not yet validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item<'a> {
    /// Position of the event in the batch, from 0: the array index, or for NDJSON the count of
    /// non-blank lines before it. The server answers with it.
    pub index: usize,
    /// The event's JSON text, without surrounding whitespace (borrowed from the body).
    pub raw: Cow<'a, [u8]>,
}

/// Splits a body into the raw bytes of each event (each later validated with
/// `crate::event::decode`). A body whose first non-whitespace byte is `[` is a JSON array;
/// anything else is NDJSON: one event per non-blank line, `\r\n` accepted, so a lone `{...}` is
/// a batch of one.
///
/// An element that is not an object, or an NDJSON line that is not JSON, still comes back as
/// its own item for the server to reject alone. The whole batch fails only when it is larger
/// than `max_body_bytes` (checked before parsing), holds more than `max_events` events, is an
/// array that does not parse (`Malformed`), or holds no events at all (`Empty`: an empty or
/// blank body, or `[]`).
pub fn split<'a>(body: &'a [u8], limits: &Limits) -> Result<Vec<Item<'a>>, BatchError> {
    if body.len() > limits.max_body_bytes {
        return Err(BatchError::TooLarge {
            bytes: body.len(),
            max: limits.max_body_bytes,
        });
    }
    let items = match body.iter().find(|b| !is_space(**b)) {
        None => return Err(BatchError::Empty),
        Some(b'[') => array(body, limits.max_events)?,
        Some(_) => ndjson(body, limits.max_events)?,
    };
    if items.is_empty() {
        return Err(BatchError::Empty);
    }
    Ok(items)
}

/// JSON insignificant whitespace (RFC 8259).
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s
        && is_space(*first)
    {
        s = rest;
    }
    while let [rest @ .., last] = s
        && is_space(*last)
    {
        s = rest;
    }
    s
}

/// Collects the pieces of a batch, keeping at most `max` but counting all of them, so the error
/// names the real size of the batch.
struct Collector<'a> {
    items: Vec<Item<'a>>,
    count: usize,
    max: usize,
}

impl<'a> Collector<'a> {
    fn new(max: usize) -> Self {
        Collector {
            items: Vec::new(),
            count: 0,
            max,
        }
    }

    fn push(&mut self, raw: &'a [u8]) {
        if self.count < self.max {
            self.items.push(Item {
                index: self.count,
                raw: Cow::Borrowed(raw),
            });
        }
        self.count += 1;
    }

    fn finish(self) -> Result<Vec<Item<'a>>, BatchError> {
        if self.count > self.max {
            return Err(BatchError::TooManyEvents {
                count: self.count,
                max: self.max,
            });
        }
        Ok(self.items)
    }
}

fn ndjson(body: &[u8], max: usize) -> Result<Vec<Item<'_>>, BatchError> {
    let mut c = Collector::new(max);
    for line in body.split(|&b| b == b'\n') {
        let line = trim(line);
        if !line.is_empty() {
            c.push(line);
        }
    }
    c.finish()
}

/// The elements of a JSON array. serde_json checks the whole body first (syntax, nesting depth,
/// nothing after the `]`), so the scan that finds the element boundaries may assume valid JSON:
/// it only tracks strings, escapes and nesting.
fn array(body: &[u8], max: usize) -> Result<Vec<Item<'_>>, BatchError> {
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map_err(|e| BatchError::Malformed(format!("the body is not a JSON array: {e}")))?;
    let open = body
        .iter()
        .position(|&b| b == b'[')
        .ok_or_else(|| BatchError::Malformed("no `[`".into()))?;

    let mut c = Collector::new(max);
    let mut depth = 0usize; // inside the top-level array, outside any element's brackets
    let mut in_string = false;
    let mut escaped = false;
    let mut start = open + 1;
    for (i, &b) in body.iter().enumerate().skip(open + 1) {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => depth += 1,
            b']' | b'}' if depth > 0 => depth -= 1,
            b',' if depth == 0 => {
                c.push(trim(&body[start..i]));
                start = i + 1;
            }
            b']' => {
                // The end of the top-level array: `[]` holds nothing, anything else its last
                // element.
                let last = trim(&body[start..i]);
                if !last.is_empty() {
                    c.push(last);
                }
                return c.finish();
            }
            _ => {}
        }
    }
    // serde_json accepted the body, so the array was closed.
    Err(BatchError::Malformed("the array is not closed".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_body_bytes: 1 << 20,
        max_events: 500,
    };

    fn raws(body: &str) -> Vec<String> {
        let items = split(body.as_bytes(), &LIMITS).unwrap();
        for (i, item) in items.iter().enumerate() {
            assert_eq!(item.index, i);
            assert!(matches!(item.raw, Cow::Borrowed(_)));
        }
        items
            .into_iter()
            .map(|i| String::from_utf8(i.raw.into_owned()).unwrap())
            .collect()
    }

    #[test]
    fn json_array() {
        assert_eq!(
            raws(r#"[{"a":1}, {"b":2} ,{"c":3}]"#),
            [r#"{"a":1}"#, r#"{"b":2}"#, r#"{"c":3}"#]
        );
        assert_eq!(
            raws(" \r\n\t[\n  {\"a\": 1},\n  {\"b\": 2}\n]\n "),
            [r#"{"a": 1}"#, r#"{"b": 2}"#]
        );
        assert_eq!(raws(r#"[{}]"#), ["{}"]);
    }

    #[test]
    fn brackets_commas_and_quotes_inside_elements_do_not_split() {
        let body = r#"[{"a":[1,[2,{"x":"]"}]],"s":"},{\"q\":[","t":"\\"},{"u":"\\\"]"},
            {"nested":{"deep":[[[]]],"e":{}}}, {"uni":"报价, [单]"}]"#;
        assert_eq!(
            raws(body),
            [
                r#"{"a":[1,[2,{"x":"]"}]],"s":"},{\"q\":[","t":"\\"}"#,
                r#"{"u":"\\\"]"}"#,
                r#"{"nested":{"deep":[[[]]],"e":{}}}"#,
                r#"{"uni":"报价, [单]"}"#,
            ]
        );
    }

    #[test]
    fn array_elements_that_are_not_objects_keep_their_place() {
        let body = r#"[{"ok":1}, 7, "s", null, [1,2], {"ok":2}, true, {}]"#;
        let items = split(body.as_bytes(), &LIMITS).unwrap();
        let got: Vec<(usize, &[u8])> = items.iter().map(|i| (i.index, &*i.raw)).collect();
        assert_eq!(
            got,
            [
                (0, &br#"{"ok":1}"#[..]),
                (1, b"7"),
                (2, br#""s""#),
                (3, b"null"),
                (4, b"[1,2]"),
                (5, br#"{"ok":2}"#),
                (6, b"true"),
                (7, b"{}"),
            ]
        );
    }

    #[test]
    fn ndjson_with_blank_lines_crlf_and_bad_lines() {
        let body = "{\"a\":1}\r\n\r\n   \n{\"b\":2}\nnot json\r\n\t{\"c\":[1,2]}  \n[1]\n{\"d\":\n";
        let items = split(body.as_bytes(), &LIMITS).unwrap();
        let got: Vec<(usize, &[u8])> = items.iter().map(|i| (i.index, &*i.raw)).collect();
        assert_eq!(
            got,
            [
                (0, &br#"{"a":1}"#[..]),
                (1, br#"{"b":2}"#),
                (2, b"not json"),
                (3, br#"{"c":[1,2]}"#),
                (4, b"[1]"),
                (5, br#"{"d":"#),
            ]
        );
        // No final newline, and a lone object: NDJSON of one line.
        assert_eq!(raws("{\"a\":1}\n{\"b\":2}"), [r#"{"a":1}"#, r#"{"b":2}"#]);
        assert_eq!(
            raws(r#"  {"event_id":"e1","kind":"web.hit"}  "#),
            [r#"{"event_id":"e1","kind":"web.hit"}"#]
        );
        assert_eq!(raws("42"), ["42"]);
    }

    #[test]
    fn empty_bodies() {
        for body in ["", " ", "\n\r\n\t ", "[]", " [ \n ] "] {
            assert_eq!(
                split(body.as_bytes(), &LIMITS),
                Err(BatchError::Empty),
                "{body:?}"
            );
        }
    }

    #[test]
    fn an_unparseable_array_fails_the_batch() {
        for body in [
            "[",
            "[{\"a\":1}",
            "[{\"a\":1},]",
            "[{\"a\":1}] trailing",
            "[{\"a\":1}]\n{\"b\":2}",
            "[{\"a\":\"unterminated}]",
            "[1 2]",
        ] {
            assert!(
                matches!(
                    split(body.as_bytes(), &LIMITS),
                    Err(BatchError::Malformed(_))
                ),
                "{body:?}: {:?}",
                split(body.as_bytes(), &LIMITS)
            );
        }
    }

    #[test]
    fn deep_nesting_is_one_item_and_no_stack_overflow() {
        // serde_json skips an IgnoredAny without recursion, and the scan is a loop: a deeply
        // nested element comes back whole, for the event decoder to refuse.
        let inner = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let deep = format!("[{inner},{{}}]");
        let items = split(deep.as_bytes(), &LIMITS).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(&*items[0].raw, inner.as_bytes());
        assert!(matches!(
            split(format!("[{inner}").as_bytes(), &LIMITS),
            Err(BatchError::Malformed(_))
        ));
    }

    #[test]
    fn body_size_at_and_over_the_limit() {
        let body = br#"[{"a":1},{"b":2}]"#;
        let at = Limits {
            max_body_bytes: body.len(),
            max_events: 10,
        };
        assert_eq!(split(body, &at).unwrap().len(), 2);
        let under = Limits {
            max_body_bytes: body.len() - 1,
            ..at
        };
        assert_eq!(
            split(body, &under),
            Err(BatchError::TooLarge {
                bytes: body.len(),
                max: body.len() - 1
            })
        );
        // Checked before parsing: an over-size body is TooLarge even when it is garbage.
        assert!(matches!(
            split(
                b"[[[[",
                &Limits {
                    max_body_bytes: 3,
                    max_events: 10
                }
            ),
            Err(BatchError::TooLarge { bytes: 4, max: 3 })
        ));
    }

    #[test]
    fn event_count_at_and_over_the_limit() {
        let limits = Limits {
            max_body_bytes: 1 << 20,
            max_events: 3,
        };
        let array = |n: usize| format!("[{}]", vec!["{}"; n].join(","));
        let lines = |n: usize| vec!["{}"; n].join("\n");
        assert_eq!(split(array(3).as_bytes(), &limits).unwrap().len(), 3);
        assert_eq!(split(lines(3).as_bytes(), &limits).unwrap().len(), 3);
        for body in [array(4), lines(4)] {
            assert_eq!(
                split(body.as_bytes(), &limits),
                Err(BatchError::TooManyEvents { count: 4, max: 3 })
            );
        }
        // Blank lines are not events.
        assert_eq!(split(b"{}\n\n{}\n \n{}\n\n", &limits).unwrap().len(), 3);
    }
}
