//! The fast scan: fills `Raw` from the line every well-behaved publisher sends (one object,
//! known keys once each, strings without escapes, non-negative integers, `attrs` checked and
//! skipped) in one pass with no allocation. It declines everything else with `None`, and
//! serde_json then decides, so the accepted events and every error message are serde's; the
//! tests hold the two to the same `Raw` on every line both take.

use std::borrow::Cow;

use super::{Raw, Val};

/// `Raw` of `raw` when the line is plain; `None` sends it to serde_json.
#[cfg(test)]
pub(super) fn scan(raw: &[u8]) -> Option<Raw<'_>> {
    let mut r = Raw::empty();
    scan_into(raw, &mut r).map(|()| r)
}

/// Fills `r` (given empty) from `raw` when the line is plain; `None` sends it to serde_json,
/// and `r` is then to be dropped. `Raw` is about a kilobyte: filled in place, never moved.
pub(super) fn scan_into<'a>(raw: &'a [u8], r: &mut Raw<'a>) -> Option<()> {
    // One check up front lets every string below borrow without its own check (SIMD: several
    // times faster than `str::from_utf8` on ASCII lines).
    let text = simdutf8::basic::from_utf8(raw).ok()?;
    let b = raw;
    let i = ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    let end = object(b, i, |key, at| {
        let slot = r.slot(&b[key.0..key.1])?;
        if slot.is_some() {
            return None;
        }
        let (v, next) = value(text, b, at)?;
        *slot = Some(v);
        Some(next)
    })?;
    (ws(b, end) == b.len()).then_some(())
}

/// The index just after the object opening at `b[i] == '{'`: `member` gets each key's
/// `(start, end)` and where its value starts, and returns the index just after the value.
#[inline]
fn object(
    b: &[u8],
    i: usize,
    mut member: impl FnMut((usize, usize), usize) -> Option<usize>,
) -> Option<usize> {
    elements(b, i, b'}', |j| {
        let key = string(b, j)?;
        let colon = ws(b, key.1 + 1);
        if b.get(colon) != Some(&b':') {
            return None;
        }
        member(key, ws(b, colon + 1))
    })
}

/// The index just after the object or array opening at `b[i]` and closed by `close`: `element`
/// gets where each element starts and returns the index just after it; elements are separated
/// by commas, with none after the last.
#[inline]
fn elements(
    b: &[u8],
    i: usize,
    close: u8,
    mut element: impl FnMut(usize) -> Option<usize>,
) -> Option<usize> {
    let mut j = ws(b, i + 1);
    if b.get(j) == Some(&close) {
        return Some(j + 1);
    }
    loop {
        j = ws(b, element(j)?);
        match *b.get(j)? {
            b',' => j = ws(b, j + 1),
            c if c == close => return Some(j + 1),
            _ => return None,
        }
    }
}

/// The first index at or after `i` that is not JSON whitespace.
#[inline]
fn ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// The contents of the string opening at `i`, as `(start, end)` with `b[end] == '"'`; `None`
/// when there is no string there or it holds an escape or a control character.
#[inline]
fn string(b: &[u8], i: usize) -> Option<(usize, usize)> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let start = i + 1;
    let mut j = start;
    // Sixteen bytes at a time where SSE2 is (every x86_64): long values (user agents, URLs)
    // take a few steps.
    #[cfg(target_arch = "x86_64")]
    while let Some(chunk) = b.get(j..j + 16) {
        let hits = stops16(chunk.try_into().ok()?);
        if hits != 0 {
            j += hits.trailing_zeros() as usize;
            return (b[j] == b'"').then_some((start, j));
        }
        j += 16;
    }
    // Then eight bytes at a time: flag bytes that are `"`, `\` or below 0x20. Each bit trick
    // flags its lowest hit exactly (a borrow only runs upwards from a hit), so the lowest flag
    // of the three is a real one; flags above it are never read.
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    while let Some(chunk) = b.get(j..j + 8) {
        let w = u64::from_le_bytes(chunk.try_into().ok()?);
        let hits = zero_byte(w ^ (ONES * u64::from(b'"')))
            | zero_byte(w ^ (ONES * u64::from(b'\\')))
            | (w.wrapping_sub(ONES * 0x20) & !w & HIGHS);
        if hits != 0 {
            j += (hits.trailing_zeros() / 8) as usize;
            return (b[j] == b'"').then_some((start, j));
        }
        j += 8;
    }
    loop {
        match *b.get(j)? {
            b'"' => return Some((start, j)),
            b'\\' | 0..=0x1f => return None,
            _ => j += 1,
        }
    }
}

/// Bit `k` set when `chunk[k]` is a quote, a backslash or below 0x20.
#[cfg(target_arch = "x86_64")]
#[inline]
fn stops16(chunk: &[u8; 16]) -> u32 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of the x86_64 baseline, so these instructions always exist; the
    // unaligned load reads exactly the 16 bytes of `chunk`.
    unsafe {
        let v = _mm_loadu_si128(chunk.as_ptr().cast());
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        // Unsigned `v <= 0x1f`: the maximum with 0x1f is 0x1f exactly then.
        let low = _mm_set1_epi8(0x1f);
        let control = _mm_cmpeq_epi8(_mm_max_epu8(v, low), low);
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
    }
}

/// The value starting at `i` and the index just after it.
#[inline]
fn value<'a>(text: &'a str, b: &[u8], i: usize) -> Option<(Val<'a>, usize)> {
    match *b.get(i)? {
        b'"' => {
            let (start, end) = string(b, i)?;
            // `"` is ASCII, so both ends are char boundaries of the checked text.
            Some((Val::Str(Cow::Borrowed(&text[start..end])), end + 1))
        }
        b'0'..=b'9' => {
            let mut j = i;
            let mut n: u64 = 0;
            while let Some(&d @ b'0'..=b'9') = b.get(j) {
                n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
                j += 1;
            }
            // A leading zero, a fraction or an exponent: serde_json's to read.
            let leading_zero = b[i] == b'0' && j - i > 1;
            if leading_zero || matches!(b.get(j), Some(b'.' | b'e' | b'E')) {
                return None;
            }
            Some((Val::UInt(n), j))
        }
        b't' if b[i..].starts_with(b"true") => Some((Val::Bool(true), i + 4)),
        b'f' if b[i..].starts_with(b"false") => Some((Val::Bool(false), i + 5)),
        b'n' if b[i..].starts_with(b"null") => Some((Val::Null, i + 4)),
        // `attrs` (or a misplaced object or array): checked and skipped, not kept.
        b'{' => Some((Val::Object, skip(b, i, 0)?)),
        b'[' => Some((Val::Array, skip(b, i, 0)?)),
        // Negative numbers: serde_json's to read.
        _ => None,
    }
}

/// Nesting deeper than this is serde_json's to read (its own limit is 128).
const MAX_DEPTH: usize = 32;

/// The index just after the JSON value starting at `i`, checked and skipped, inside `attrs`.
/// Declines what serde_json might read differently or reject for other reasons than syntax:
/// escapes, numbers other than plain integers of at most 19 digits, deep nesting.
fn skip(b: &[u8], i: usize, depth: usize) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    match *b.get(i)? {
        b'"' => string(b, i).map(|(_, end)| end + 1),
        b'{' => object(b, i, |_, at| skip(b, at, depth + 1)),
        b'[' => elements(b, i, b']', |at| skip(b, at, depth + 1)),
        b't' if b[i..].starts_with(b"true") => Some(i + 4),
        b'f' if b[i..].starts_with(b"false") => Some(i + 5),
        b'n' if b[i..].starts_with(b"null") => Some(i + 4),
        b'-' | b'0'..=b'9' => {
            let digits_from = i + usize::from(b[i] == b'-');
            let digits = b
                .get(digits_from..)?
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            let end = digits_from + digits;
            let leading_zero = b.get(digits_from) == Some(&b'0') && digits > 1;
            let plain = (1..=19).contains(&digits)
                && !leading_zero
                && !matches!(b.get(end), Some(b'.' | b'e' | b'E'));
            plain.then_some(end)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde(line: &str) -> Option<Raw<'_>> {
        serde_json::from_str(line).ok()
    }

    /// The scan agrees with serde_json wherever it answers.
    fn agrees(line: &str) -> bool {
        match scan(line.as_bytes()) {
            Some(fast) => {
                assert_eq!(Some(&fast), serde(line).as_ref(), "{line}");
                true
            }
            None => false,
        }
    }

    #[test]
    fn takes_plain_lines_as_serde_reads_them() {
        for line in [
            r#"{"event_id":"e1","kind":"crm.action","ts":"2026-11-02T17:00:00+08:00","rep_id":"r1","customer_id":"c1","action":"quote_sent","asset_id":"Q1"}"#,
            r#" { "event_id" : "e2" , "kind":"pixel.hit", "ts":1793610000000,"asset_id":"Q1","hit":"open","page":0,"dwell_ms":1500 } "#,
            "{\"event_id\":\"e3\",\n\"kind\":\"wecom.presence\",\r\n\t\"ts\":0,\"external_userid\":\"张三\",\"status\":\"online\"}\n",
            r#"{"event_id":"e4","kind":"web.hit","ts":1,"url":"https://x.cn/p?a=1","referrer":null}"#,
            r#"{"event_id":"e5","kind":"crm.action","ts":1,"city":true,"amount":false}"#,
            r#"{"event_id":"e6","attrs":{"sdk":"touch-android/3.2.1","app":"crm-mobile"}}"#,
            r#"{"attrs":{ "a" : [1, -2, 0, true, false, null, "x", {}, [], {"b":{"c":[[]]}}] } }"#,
            r#"{"attrs":{},"event_id":"e7"}"#,
            r#"{"attrs":[]}"#,
            r#"{"attrs":{"dup":1,"dup":2}}"#,
            r#"{"attrs":{"n":1234567890123456789}}"#,
            r#"{}"#,
            r#"{"event_id":""}"#,
        ] {
            assert!(agrees(line), "the scan declined {line}");
        }
    }

    #[test]
    fn declines_what_it_does_not_read_itself() {
        for line in [
            // escapes, in values and keys
            r#"{"event_id":"e\"1","kind":"crm.action"}"#,
            r#"{"event_id":"e\u0031"}"#,
            r#"{"event\u005fid":"e1"}"#,
            // numbers that are not plain non-negative integers
            r#"{"ts":-1}"#,
            r#"{"ts":1.0}"#,
            r#"{"ts":1e3}"#,
            r#"{"ts":01}"#,
            r#"{"ts":18446744073709551616}"#,
            // nested values serde_json reads differently or may refuse for their value
            r#"{"attrs":{"x":1.5}}"#,
            r#"{"attrs":{"x":1e3}}"#,
            r#"{"attrs":{"x":1e400}}"#,
            r#"{"attrs":{"x":-0.0}}"#,
            r#"{"attrs":{"x":12345678901234567890}}"#,
            r#"{"attrs":{"x":"a\"b"}}"#,
            r#"{"attrs":{"x\u0031":1}}"#,
            // broken nested syntax
            r#"{"attrs":{"x":01}}"#,
            r#"{"attrs":{"x":-}}"#,
            r#"{"attrs":{"x":}}"#,
            r#"{"attrs":{"x":1,}}"#,
            r#"{"attrs":{"x" 1}}"#,
            r#"{"attrs":{x:1}}"#,
            r#"{"attrs":[1,]}"#,
            r#"{"attrs":[1 2]}"#,
            r#"{"attrs":{"x":[1}}"#,
            r#"{"attrs":{"x":tru}}"#,
            r#"{"attrs":{"x":1}"#,
            // unknown and repeated fields
            r#"{"colour":"red"}"#,
            r#"{"event_id":"a","event_id":"b"}"#,
            // broken syntax
            r#"{"event_id":"e1""#,
            r#"{"event_id":"e1",}"#,
            r#"{"event_id" "e1"}"#,
            r#"{"event_id":"e1"} x"#,
            r#"{"event_id":"e1"}}"#,
            r#"{"event_id":tru}"#,
            "{\"event_id\":\"a\tb\"}",
            r#"["event_id"]"#,
            "",
        ] {
            assert!(scan(line.as_bytes()).is_none(), "the scan took {line}");
        }
        // Invalid UTF-8 anywhere.
        assert!(scan(b"{\"event_id\":\"\xff\"}").is_none());
        // Nesting: `attrs` is level 0, a value in n arrays is at level n + 1; read up to
        // MAX_DEPTH levels, serde_json's beyond.
        let nested = |levels: usize| {
            format!(
                r#"{{"attrs":{{"x":{}1{}}}}}"#,
                "[".repeat(levels),
                "]".repeat(levels)
            )
        };
        assert!(agrees(&nested(MAX_DEPTH - 1)));
        assert!(scan(nested(MAX_DEPTH).as_bytes()).is_none());
    }

    /// Strings long enough for the eight-byte steps, with the stop byte at every offset.
    #[test]
    fn finds_the_end_and_refuses_escapes_at_every_offset() {
        for len in 0..40 {
            let body = "x".repeat(len);
            let plain = format!(r#"{{"ua":"{body}é"}}"#);
            assert!(agrees(&plain), "{plain}");
            for bad in ["\\n", "\\\"", "\t", "\u{1f}"] {
                let line = format!(r#"{{"ua":"{body}{bad}yz"}}"#);
                assert!(scan(line.as_bytes()).is_none(), "the scan took {line:?}");
            }
            // Unterminated.
            let open = format!(r#"{{"ua":"{body}"#);
            assert!(scan(open.as_bytes()).is_none());
        }
    }

    #[test]
    fn agrees_with_serde_on_every_fixture_and_generated_line() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events");
        let mut lines = Vec::new();
        for dir in ["valid", "invalid"] {
            for entry in std::fs::read_dir(root.join(dir)).expect("fixtures") {
                let bytes = std::fs::read(entry.expect("entry").path()).expect("fixture");
                match String::from_utf8(bytes) {
                    Ok(text) => lines.push(text),
                    Err(e) => assert!(scan(e.as_bytes()).is_none()),
                }
            }
        }
        let args = crate::r#gen::GenArgs {
            seed: 11,
            regions: 2,
            reps: 6,
            customers_per_rep: 4,
            days: 3,
            end: None,
            max_events: 3000,
            noise: 0.05,
        };
        let packed = crate::r#gen::generate_packed(&args).expect("generate");
        let generated: Vec<String> = packed
            .inputs()
            .iter()
            .map(|i| String::from_utf8_lossy(i.raw).into_owned())
            .collect();
        let taken = generated.iter().filter(|l| agrees(l)).count();
        // Lines with `attrs` (flat objects of strings, as the SDKs send) take it too.
        let with_attrs: Vec<&String> = generated
            .iter()
            .filter(|l| l.contains(r#""attrs":{"#) && serde(l).is_some())
            .collect();
        assert!(!with_attrs.is_empty());
        for line in with_attrs {
            assert!(agrees(line), "the scan declined {line}");
        }
        let fixtures_taken = lines.iter().filter(|l| agrees(l)).count();
        assert!(fixtures_taken > 0, "no fixture took the scan");
        // The point of the scan: the lines publishers send take it.
        assert!(
            taken * 10 >= generated.len() * 9,
            "the scan took only {taken} of {} generated lines",
            generated.len()
        );
    }
}
