//! `Keys::verify` on arbitrary input never panics and never accepts what `mint` did not make;
//! `mint` then `verify` on claims built from the input gives the claims back, and any one
//! changed byte of that token is refused.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use touchstream::collect::KeySpec;
use touchstream::collect::token::{Claims, Keys, MAX_TOKEN_LEN, TokenError};

fn spec(id: &str, secret: &str) -> KeySpec {
    KeySpec {
        id: id.into(),
        secret: Some(secret.into()),
        secret_env: None,
    }
}

/// Newest first, as after a rotation: `k2` signs, both verify.
static KEYS: LazyLock<Keys> = LazyLock::new(|| {
    Keys::new(&[
        spec("k2", "fuzz-secret-two-0123456789abcdefghij"),
        spec("k1", "fuzz-secret-one-0123456789abcdefghij"),
    ])
    .unwrap()
});

const MEDIUM_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_-";

fn claims(u: &mut Unstructured<'_>) -> Result<Claims> {
    let asset_id = u.arbitrary()?;
    let rep_id = u.arbitrary()?;
    // Mostly from the medium alphabet, so valid claims are common; sometimes anything.
    let medium = if u.ratio(7, 8)? {
        let bytes: Vec<u8> = u.arbitrary()?;
        bytes
            .iter()
            .map(|b| MEDIUM_ALPHABET[usize::from(*b) % MEDIUM_ALPHABET.len()] as char)
            .collect()
    } else {
        u.arbitrary()?
    };
    let campaign = u.arbitrary()?;
    Ok(Claims {
        asset_id,
        rep_id,
        medium,
        campaign,
    })
}

fuzz_target!(|data: &[u8]| {
    // 1. The whole input as a token.
    let token = String::from_utf8_lossy(data);
    if let Ok(c) = KEYS.verify(&token) {
        // Only a token this key set minted can verify, and it has exactly one spelling.
        panic!("accepted a token that was not minted here: {token:?} -> {c:?}");
    }

    // 2. Claims from the input: mint, verify, tamper.
    let mut u = Unstructured::new(data);
    let Ok(c) = claims(&mut u) else { return };
    match KEYS.mint(&c) {
        Ok(t) => {
            assert!(c.validate().is_ok());
            assert!(t.len() <= MAX_TOKEN_LEN, "{t}");
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'),
                "{t}"
            );
            assert_eq!(KEYS.verify(&t), Ok(c.clone()), "{t}");
            let (Ok(i), Ok(b)) = (u.arbitrary::<usize>(), u.arbitrary::<u8>()) else {
                return;
            };
            let mut tampered = t.clone().into_bytes();
            let i = i % tampered.len();
            if tampered[i] != b {
                tampered[i] = b;
                let tampered = String::from_utf8_lossy(&tampered);
                assert!(KEYS.verify(&tampered).is_err(), "{t} -> {tampered}");
            }
        }
        Err(TokenError::InvalidClaims(_)) => assert!(c.validate().is_err(), "{c:?}"),
        Err(TokenError::TooLong) => assert!(c.validate().is_ok(), "{c:?}"),
        Err(e) => panic!("mint failed with {e:?} for {c:?}"),
    }
});
