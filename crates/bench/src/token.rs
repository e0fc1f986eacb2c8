//! HS256 JSON Web Tokens for the load generator's clients in herald's `jwt` auth
//! mode: one token per connect, naming the client's member id (`sub`) and its key
//! (so key pushes still find it), valid for an hour.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;

/// A compact JWS over `header` and `payload` (JSON bytes), signed with HMAC-SHA256.
pub fn hs256(secret: &[u8], header: &[u8], payload: &[u8]) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// The token of client `mid`: `sub` = the mid (as a string), `key` = `bench-<mid>`,
/// `exp` = `now_unix` + 1 h.
pub fn client_token(secret: &[u8], mid: u64, now_unix: u64) -> String {
    let claims = serde_json::json!({
        "sub": mid.to_string(),
        "key": format!("bench-{mid}"),
        "exp": now_unix + 3600,
    });
    hs256(
        secret,
        br#"{"alg":"HS256","typ":"JWT"}"#,
        claims.to_string().as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7515, appendix A.1: the HS256 example, byte for byte.
    #[test]
    fn matches_the_rfc_7515_example() {
        let key = URL_SAFE_NO_PAD
            .decode("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
            .unwrap();
        let header = b"{\"typ\":\"JWT\",\r\n \"alg\":\"HS256\"}";
        let payload =
            b"{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}";
        assert_eq!(
            hs256(&key, header, payload),
            "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9\
             .eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ\
             .dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        );
    }

    #[test]
    fn client_tokens_carry_the_mid_key_and_expiry() {
        let t = client_token(b"0123456789abcdef0123456789abcdef", 42, 1_000);
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            claims,
            serde_json::json!({"sub": "42", "key": "bench-42", "exp": 4_600})
        );
        // The signature covers the first two parts with the secret.
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"0123456789abcdef0123456789abcdef");
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        hmac::verify(&key, format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig).unwrap();
    }
}
