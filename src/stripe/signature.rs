//! Checking the `Stripe-Signature` header of a webhook request: HMAC-SHA256
//! of `"{t}.{raw body}"` with the endpoint's secret, compared in constant
//! time against every `v1` signature in the header, and `t` within the
//! tolerance of now (both ways). Nothing of the body is parsed before this
//! passes.
//!
//! Why not `async-stripe-webhook`'s `Webhook::construct_event`: it checks
//! the same HMAC (and accepts several `v1`), but its tolerance is fixed at
//! 300 s and it only verifies while also parsing the whole event into its
//! generated types, so an event whose shape its pinned API version does not
//! know would fail as if forged, and Stripe would retry it for days. Here
//! verification stands alone and the tolerance is a parameter; the unit
//! tests check this code against that crate's signer and verifier.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Stripe's recommended tolerance between the signed timestamp and now.
pub const TOLERANCE: Duration = Duration::from_secs(300);

/// Why a signature was refused. Never carries the secret or the signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is missing")]
    Missing,
    #[error("the Stripe-Signature header has no valid timestamp or no v1 signature")]
    Malformed,
    #[error("no v1 signature matches the payload")]
    Mismatch,
    #[error("the signature's timestamp is outside the tolerance")]
    Stale,
}

/// Checks `header` (`t=…,v1=…[,v1=…][,v0=…]`) for `payload` at `now_secs`.
pub fn verify(
    header: Option<&str>,
    payload: &[u8],
    secret: &str,
    now_secs: i64,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => signatures.extend(crate::hex::decode(value)),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| SignatureError::Mismatch)?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    // `verify_slice` compares in constant time.
    let matches = signatures
        .iter()
        .any(|candidate| mac.clone().verify_slice(candidate).is_ok());
    if !matches {
        return Err(SignatureError::Mismatch);
    }
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if now_secs.abs_diff(timestamp) > tolerance.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    Ok(())
}

/// The header Stripe would send for `payload` signed at `timestamp`.
pub fn sign(payload: &[u8], secret: &str, timestamp: i64) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this arm cannot be reached.
        Err(_) => return format!("t={timestamp}"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

#[cfg(test)]
mod tests {
    use stripe_webhook::Webhook;

    use super::*;

    const SECRET: &str = "whsec_test_secret";
    const NOW: i64 = 1_700_000_000;

    fn event() -> String {
        serde_json::json!({
            "id": "evt_1", "object": "event", "api_version": "2024-06-20",
            "created": NOW, "livemode": false, "pending_webhooks": 1,
            "type": "account.external_account.created",
            "data": {"object": {"object": "bank_account", "id": "ba_1", "country": "us",
                "currency": "usd", "last4": "6789", "status": "verified"}},
        })
        .to_string()
    }

    fn check(header: &str, payload: &str) -> Result<(), SignatureError> {
        verify(Some(header), payload.as_bytes(), SECRET, NOW, TOLERANCE)
    }

    #[test]
    fn agrees_with_async_stripe_both_ways() {
        let payload = event();
        let theirs = Webhook::generate_test_header(&payload, SECRET, Some(NOW));
        assert_eq!(check(&theirs, &payload), Ok(()));
        let ours = sign(payload.as_bytes(), SECRET, NOW);
        assert_eq!(ours, theirs);
        assert!(Webhook::construct_event_with_timestamp(&payload, &ours, SECRET, NOW).is_ok());
    }

    #[test]
    fn refuses_forged_altered_stale_and_unsigned() {
        let payload = event();
        let good = sign(payload.as_bytes(), SECRET, NOW);
        let wrong_secret = sign(payload.as_bytes(), "whsec_other", NOW);
        assert_eq!(
            check(&wrong_secret, &payload),
            Err(SignatureError::Mismatch)
        );
        let altered = payload.replace("ba_1", "ba_2");
        assert_eq!(check(&good, &altered), Err(SignatureError::Mismatch));
        let old = sign(payload.as_bytes(), SECRET, NOW - 600);
        assert_eq!(check(&old, &payload), Err(SignatureError::Stale));
        let future = sign(payload.as_bytes(), SECRET, NOW + 600);
        assert_eq!(check(&future, &payload), Err(SignatureError::Stale));
        let edge = sign(payload.as_bytes(), SECRET, NOW - 300);
        assert_eq!(check(&edge, &payload), Ok(()));
        // A signed timestamp swapped for a fresh one no longer matches.
        let replayed = old.replacen(&format!("t={}", NOW - 600), &format!("t={NOW}"), 1);
        assert_eq!(check(&replayed, &payload), Err(SignatureError::Mismatch));
        let missing = verify(None, payload.as_bytes(), SECRET, NOW, TOLERANCE);
        assert_eq!(missing, Err(SignatureError::Missing));
        for malformed in ["", "t=abc,v1=00", "v1=00ff", &format!("t={NOW}"), "garbage"] {
            assert_eq!(
                check(malformed, &payload),
                Err(SignatureError::Malformed),
                "{malformed}"
            );
        }
        let not_hex = format!("t={NOW},v1=zz");
        assert_eq!(check(&not_hex, &payload), Err(SignatureError::Malformed));
    }

    #[test]
    fn accepts_any_matching_v1_among_several() {
        let payload = event();
        let good = sign(payload.as_bytes(), SECRET, NOW);
        let digest = good.split_once(",v1=").map(|(_, d)| d).unwrap_or_default();
        let rolled = format!("t={NOW},v1={},v1={digest},v0=ffff", "ab".repeat(32));
        assert_eq!(check(&rolled, &payload), Ok(()));
        let upper = format!("t={NOW},v1={}", digest.to_uppercase());
        assert_eq!(check(&upper, &payload), Ok(()));
    }
}
