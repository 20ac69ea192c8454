//! Lowercase hex, both ways: session ids, passkey credential ids in forms,
//! and Stripe's signatures.

use std::fmt::Write as _;

/// `bytes` as lowercase hex digits.
pub fn encode(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// Lowercase or uppercase hex to bytes; `None` for anything else.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_is_not_hex() {
        assert_eq!(encode(b"\x00\xff\x10"), "00ff10");
        assert_eq!(decode("00FF10"), Some(b"\x00\xff\x10".to_vec()));
        assert_eq!(decode(&encode(b"tokun")), Some(b"tokun".to_vec()));
        for bad in ["abc", "zz", "0g", "+1", "é1"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }
}
