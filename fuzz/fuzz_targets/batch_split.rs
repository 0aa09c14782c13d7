//! `split` on arbitrary bodies never panics; items are trimmed, in-order slices of the body,
//! at most `max_events` of them; an array's items are exactly the elements serde_json sees.
#![no_main]

use libfuzzer_sys::fuzz_target;
use touchstream::collect::batch::{BatchError, Item, Limits, split};

const ROOMY: Limits = Limits {
    max_body_bytes: 1 << 20,
    max_events: usize::MAX,
};
const TIGHT_EVENTS: usize = 8;

fn check_items(body: &[u8], items: &[Item<'_>]) {
    let range = body.as_ptr_range();
    let mut end_of_last = range.start;
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item.index, i);
        let raw = &*item.raw;
        assert!(!raw.is_empty());
        let r = raw.as_ptr_range();
        // A slice of the body, after the previous item.
        assert!(
            range.start <= r.start && r.end <= range.end,
            "item {i} is not in the body"
        );
        assert!(r.start >= end_of_last, "item {i} overlaps the one before");
        end_of_last = r.end;
        let space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        assert!(
            !space(&raw[0]) && !space(&raw[raw.len() - 1]),
            "item {i} is not trimmed"
        );
    }
}

fuzz_target!(|body: &[u8]| {
    let roomy = split(body, &ROOMY);
    let is_array = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        == Some(&b'[');
    match &roomy {
        Ok(items) => {
            assert!(!items.is_empty());
            check_items(body, items);
            if is_array {
                // Each item is one element: the same values serde_json finds in the array
                // (when it can build them: serde_json::Value stops at 128 levels).
                if let Ok(values) = serde_json::from_slice::<Vec<serde_json::Value>>(body) {
                    assert_eq!(values.len(), items.len());
                    for (v, item) in values.iter().zip(items) {
                        let got: serde_json::Value = serde_json::from_slice(&item.raw).unwrap();
                        assert_eq!(&got, v);
                    }
                } else {
                    for item in items {
                        serde_json::from_slice::<serde::de::IgnoredAny>(&item.raw).unwrap();
                    }
                }
            } else {
                assert!(items.iter().all(|i| !i.raw.contains(&b'\n')));
            }
        }
        Err(BatchError::Empty) => {}
        Err(BatchError::Malformed(_)) => {
            assert!(is_array);
            assert!(serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err());
        }
        Err(e) => panic!("unexpected {e:?} with roomy limits"),
    }

    // A tight event limit gives the same items or TooManyEvents with the true count.
    let tight = Limits {
        max_body_bytes: ROOMY.max_body_bytes,
        max_events: TIGHT_EVENTS,
    };
    match (&roomy, split(body, &tight)) {
        (Ok(all), Err(BatchError::TooManyEvents { count, max })) => {
            assert_eq!((count, max), (all.len(), TIGHT_EVENTS));
            assert!(all.len() > TIGHT_EVENTS);
        }
        (Ok(all), Ok(some)) => {
            assert!(all.len() <= TIGHT_EVENTS);
            assert_eq!(all, &some);
        }
        (Err(a), Err(b)) => assert_eq!(a, &b),
        (a, b) => panic!("roomy {a:?}, tight {b:?}"),
    }

    // One byte under the body's size is refused before parsing.
    if !body.is_empty() {
        let small = Limits {
            max_body_bytes: body.len() - 1,
            max_events: 1,
        };
        assert_eq!(
            split(body, &small),
            Err(BatchError::TooLarge {
                bytes: body.len(),
                max: body.len() - 1
            })
        );
    }
});
