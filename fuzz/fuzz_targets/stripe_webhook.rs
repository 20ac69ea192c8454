//! A Stripe webhook delivery: the `Stripe-Signature` header (the input's
//! first line) checked against the payload (the rest), then the payload
//! signed properly so it always reaches the event parser and the fields the
//! webhook handler reads (session, charge, metadata, amounts, account id).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokun::stripe::event::{Event, Handling, cents_to_nanos};
use tokun::stripe::signature::{self, SignatureError, TOLERANCE};
use tokun_storage::AccountId;

const SECRET: &str = "whsec_fuzz";
const NOW: i64 = 1_767_225_600;

fuzz_target!(|data: &[u8]| {
    let (header, payload) = match data.iter().position(|b| *b == b'\n') {
        Some(end) => (&data[..end], &data[end + 1..]),
        None => (&data[..0], data),
    };
    // An HTTP header value that is not UTF-8 reaches `verify` as missing.
    let header = std::str::from_utf8(header).ok();
    let _ = signature::verify(header, payload, SECRET, NOW, TOLERANCE);

    // A proper signature is accepted exactly when its timestamp is within
    // the tolerance, whatever the payload.
    let skew = i64::try_from(header.map_or(0, str::len) % 700).unwrap_or(0) - 350;
    let signed = signature::sign(payload, SECRET, NOW + skew);
    let verdict = signature::verify(Some(&signed), payload, SECRET, NOW, TOLERANCE);
    let expected = if skew.unsigned_abs() <= TOLERANCE.as_secs() {
        Ok(())
    } else {
        Err(SignatureError::Stale)
    };
    assert_eq!(verdict, expected, "a signature tokun made itself");
    let _ = signature::verify(Some(&signed), payload, SECRET, NOW, Duration::MAX);

    let Ok(event) = serde_json::from_slice::<Event>(payload) else {
        return;
    };
    match event.handling() {
        Handling::Refunded => {
            if let Ok(charge) = event.charge() {
                let _ = cents_to_nanos(charge.amount_refunded);
                let _ = charge.payment_intent.as_ref().map(|p| p.id().len());
            }
        }
        Handling::Completed
        | Handling::AsyncSucceeded
        | Handling::AsyncFailed
        | Handling::Expired => {
            if let Ok(session) = event.session() {
                let _ = session.amount_total.and_then(cents_to_nanos);
                let _ = session.payment_intent.as_ref().map(|p| p.id().len());
                let claimed = session
                    .client_reference_id
                    .as_deref()
                    .or_else(|| session.metadata("tokun_account"));
                if let Some(text) = claimed {
                    let _ = text.parse::<AccountId>();
                }
            }
        }
        Handling::Ignored => {}
    }
});
