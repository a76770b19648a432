//! The validity window of a JWT bearer token (`iat`, `exp`), read without verifying it.
//!
//! Only for metrics and the "not rotated" warning: the API server is the one that
//! verifies tokens. A token that is not a JWT simply has no window.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};

/// `iat` and `exp` claims, Unix seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenTimes {
    pub issued: Option<i64>,
    pub expiry: Option<i64>,
}

impl TokenTimes {
    /// Past 90% of its lifetime (or within two minutes of expiry when the issue time is
    /// unknown): the kubelet should have replaced it at 80%.
    pub fn stale(&self, now: i64) -> bool {
        let Some(exp) = self.expiry else { return false };
        let remaining = exp - now;
        match self.issued {
            Some(iat) if exp > iat => remaining * 10 < exp - iat,
            _ => remaining < 120,
        }
    }
}

/// Reads the claims from a compact JWS (`header.payload.signature`).
pub(super) fn times(token: &[u8]) -> TokenTimes {
    let mut parts = token.split(|b| *b == b'.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return TokenTimes::default();
    };
    // JWS segments are base64url without padding (RFC 7515 §2); a padded one is
    // tolerated, as it harms nothing here.
    const JWS: GeneralPurpose = GeneralPurpose::new(
        &alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let Ok(json) = JWS.decode(payload) else {
        return TokenTimes::default();
    };
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(&json) else {
        return TokenTimes::default();
    };
    let num = |k: &str| claims.get(k).and_then(serde_json::Value::as_i64);
    TokenTimes {
        issued: num("iat"),
        expiry: num("exp"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_claims_of_a_service_account_token() {
        // {"iat":1000,"exp":4600,"sub":"system:serviceaccount:d:x"} without padding.
        let token = b"eyJhbGciOiJSUzI1NiJ9.eyJpYXQiOjEwMDAsImV4cCI6NDYwMCwic3ViIjoic3lzdGVtOnNlcnZpY2VhY2NvdW50OmQ6eCJ9.c2ln";
        let t = times(token);
        assert_eq!(
            t,
            TokenTimes {
                issued: Some(1000),
                expiry: Some(4600)
            }
        );
        assert!(!t.stale(1000 + 3600 * 8 / 10));
        assert!(t.stale(4600 - 300));
        assert_eq!(times(b"not-a-jwt"), TokenTimes::default());
        assert_eq!(times(b"a.%%%.c"), TokenTimes::default());
        let no_iat = TokenTimes {
            issued: None,
            expiry: Some(500),
        };
        assert!(no_iat.stale(400) && !no_iat.stale(300));
    }
}
