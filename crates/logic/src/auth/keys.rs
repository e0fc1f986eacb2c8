//! Verification keys of connect tokens and the signature algorithms they check.
//!
//! A key is parsed once, from the configured secret, a PEM public key or a JSON Web
//! Key, into what `ring` verifies with; a connect then only checks one signature. An
//! algorithm verifies only with a key of its own family: a token whose header says
//! `HS256` is never checked with an RSA public key taken as an HMAC secret (the
//! classic algorithm confusion), and `none` is not an algorithm here at all.

use ring::{hmac, signature};
use serde::Deserialize;
use spki::der::asn1::UintRef;
use spki::der::{Decode, Reader, SliceReader};
use spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// Least RSA modulus accepted, in bits (ring verifies nothing smaller either).
const MIN_RSA_BITS: usize = 2048;
/// Least HMAC secret accepted, in bytes (RFC 7518: at least the hash size).
pub const MIN_SECRET_BYTES: usize = 32;

/// A JWS signature algorithm herald verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Alg {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
}

/// The kind of key an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// A shared secret.
    Hmac,
    /// An RSA public key.
    Rsa,
    /// An ECDSA P-256 public key.
    P256,
    /// An ECDSA P-384 public key.
    P384,
}

impl Alg {
    /// Every algorithm, for error messages.
    pub const ALL: [Alg; 11] = [
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
    ];

    /// The algorithm a JWS header or the configuration names (case-sensitive, as
    /// in RFC 7518); `None` for `none` and anything unknown.
    pub fn parse(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The JWS name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
        }
    }

    /// The kind of key it verifies with.
    pub fn family(self) -> Family {
        match self {
            Alg::HS256 | Alg::HS384 | Alg::HS512 => Family::Hmac,
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512 => {
                Family::Rsa
            }
            Alg::ES256 => Family::P256,
            Alg::ES384 => Family::P384,
        }
    }

    fn rsa_params(self) -> Option<&'static signature::RsaParameters> {
        Some(match self {
            Alg::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Alg::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Alg::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Alg::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
            Alg::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
            Alg::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
            _ => return None,
        })
    }
}

/// A parsed verification key.
pub enum VerifyKey {
    /// One HMAC key per hash, all from the same secret.
    Hmac(Box<HmacKeys>),
    /// An RSA public key.
    Rsa(signature::RsaPublicKeyComponents<Vec<u8>>),
    /// An ECDSA public key: the uncompressed point.
    Ec {
        /// P-256 or P-384.
        family: Family,
        /// `04 || x || y`.
        point: Vec<u8>,
    },
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never prints the secret.
        write!(f, "VerifyKey({:?})", self.family())
    }
}

/// The HMAC keys of one secret (ring binds a key to its hash).
pub struct HmacKeys {
    sha256: hmac::Key,
    sha384: hmac::Key,
    sha512: hmac::Key,
}

/// Why a token's signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// The algorithm does not belong to the key's family.
    WrongFamily,
    /// The signature does not match.
    BadSignature,
}

impl VerifyKey {
    /// An HMAC key from a shared secret of at least [`MIN_SECRET_BYTES`].
    pub fn hmac(secret: &[u8]) -> Result<VerifyKey, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the secret is {} bytes; HMAC secrets need at least {MIN_SECRET_BYTES} \
                 (for example `openssl rand -base64 48`)",
                secret.len()
            ));
        }
        Ok(VerifyKey::Hmac(Box::new(HmacKeys {
            sha256: hmac::Key::new(hmac::HMAC_SHA256, secret),
            sha384: hmac::Key::new(hmac::HMAC_SHA384, secret),
            sha512: hmac::Key::new(hmac::HMAC_SHA512, secret),
        })))
    }

    /// A public key from the DER of a SubjectPublicKeyInfo (a PEM `PUBLIC KEY`).
    pub fn from_spki(der: &[u8]) -> Result<VerifyKey, String> {
        let spki = SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|e| format!("not a SubjectPublicKeyInfo: {e}"))?;
        let bits = spki.subject_public_key.raw_bytes();
        if spki.algorithm.oid == OID_RSA {
            let (n, e) = rsa_components(bits)?;
            return VerifyKey::rsa(n, e);
        }
        if spki.algorithm.oid == OID_EC {
            let curve = spki
                .algorithm
                .parameters_oid()
                .map_err(|e| format!("EC key without a named curve: {e}"))?;
            let family = match curve {
                c if c == OID_P256 => Family::P256,
                c if c == OID_P384 => Family::P384,
                c => return Err(format!("EC curve {c} is not supported (P-256, P-384 are)")),
            };
            return VerifyKey::ec(family, bits.to_vec());
        }
        Err(format!(
            "key algorithm {} is not supported (RSA and EC are)",
            spki.algorithm.oid
        ))
    }

    fn rsa(n: Vec<u8>, e: Vec<u8>) -> Result<VerifyKey, String> {
        let n = strip_zeros(n);
        let Some(first) = n.first() else {
            return Err("RSA key with an empty modulus".into());
        };
        let bits = n.len() * 8 - first.leading_zeros() as usize;
        if bits < MIN_RSA_BITS {
            return Err(format!(
                "RSA key of {bits} bits; at least {MIN_RSA_BITS} are needed"
            ));
        }
        Ok(VerifyKey::Rsa(signature::RsaPublicKeyComponents {
            n,
            e: strip_zeros(e),
        }))
    }

    fn ec(family: Family, point: Vec<u8>) -> Result<VerifyKey, String> {
        let want = match family {
            Family::P384 => 97,
            _ => 65,
        };
        if point.len() != want || point.first() != Some(&4) {
            return Err("EC public key is not an uncompressed point of its curve".into());
        }
        Ok(VerifyKey::Ec { family, point })
    }

    /// The family of algorithms this key verifies.
    pub fn family(&self) -> Family {
        match self {
            VerifyKey::Hmac(_) => Family::Hmac,
            VerifyKey::Rsa(_) => Family::Rsa,
            VerifyKey::Ec { family, .. } => *family,
        }
    }

    /// Checks `sig` over `message` with `alg`.
    pub fn verify(&self, alg: Alg, message: &[u8], sig: &[u8]) -> Result<(), VerifyError> {
        if alg.family() != self.family() {
            return Err(VerifyError::WrongFamily);
        }
        let ok = match self {
            VerifyKey::Hmac(keys) => {
                let key = match alg {
                    Alg::HS384 => &keys.sha384,
                    Alg::HS512 => &keys.sha512,
                    _ => &keys.sha256,
                };
                // Constant time.
                hmac::verify(key, message, sig).is_ok()
            }
            VerifyKey::Rsa(components) => match alg.rsa_params() {
                Some(params) => components.verify(params, message, sig).is_ok(),
                None => false,
            },
            VerifyKey::Ec { family, point } => {
                let algorithm: &dyn signature::VerificationAlgorithm = match family {
                    Family::P384 => &signature::ECDSA_P384_SHA384_FIXED,
                    _ => &signature::ECDSA_P256_SHA256_FIXED,
                };
                signature::UnparsedPublicKey::new(algorithm, point)
                    .verify(message, sig)
                    .is_ok()
            }
        };
        if ok {
            Ok(())
        } else {
            Err(VerifyError::BadSignature)
        }
    }
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    v.drain(..zeros);
    v
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
fn rsa_components(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    let parse = || -> spki::der::Result<(Vec<u8>, Vec<u8>)> {
        let mut reader = SliceReader::new(der)?;
        let pair = reader.sequence(|r| {
            let n = UintRef::decode(r)?;
            let e = UintRef::decode(r)?;
            Ok((n.as_bytes().to_vec(), e.as_bytes().to_vec()))
        })?;
        reader.finish(pair)
    };
    parse().map_err(|e| format!("malformed RSA public key: {e}"))
}

/// One entry of a JSON Web Key Set (RFC 7517), as far as verification needs it.
#[derive(Debug, Deserialize)]
pub struct Jwk {
    /// Key type: `RSA` or `EC` (others are skipped).
    pub kty: String,
    /// Key id; tokens name it in their header.
    #[serde(default)]
    pub kid: Option<String>,
    /// `sig` or `enc`; keys for encryption are skipped.
    #[serde(default, rename = "use")]
    pub use_: Option<String>,
    /// The one algorithm the key is for, if the set says so.
    #[serde(default)]
    pub alg: Option<String>,
    /// RSA modulus (base64url).
    #[serde(default)]
    pub n: Option<String>,
    /// RSA exponent (base64url).
    #[serde(default)]
    pub e: Option<String>,
    /// EC curve (`P-256`, `P-384`).
    #[serde(default)]
    pub crv: Option<String>,
    /// EC x coordinate (base64url).
    #[serde(default)]
    pub x: Option<String>,
    /// EC y coordinate (base64url).
    #[serde(default)]
    pub y: Option<String>,
}

/// A key of a key set, ready to verify.
#[derive(Debug)]
pub struct SetKey {
    /// Its `kid`, if any.
    pub kid: Option<String>,
    /// The one algorithm it may verify, if the set restricts it.
    pub alg: Option<Alg>,
    /// The key.
    pub key: VerifyKey,
}

impl Jwk {
    /// The key, or why it cannot be used.
    pub fn to_key(&self) -> Result<SetKey, String> {
        if self.use_.as_deref().is_some_and(|u| u != "sig") {
            return Err("not a signature key (use is not \"sig\")".into());
        }
        let alg = match &self.alg {
            None => None,
            Some(a) => {
                Some(Alg::parse(a).ok_or_else(|| format!("algorithm {a:?} is not supported"))?)
            }
        };
        let field = |v: &Option<String>, name: &str| -> Result<Vec<u8>, String> {
            let v = v
                .as_deref()
                .ok_or_else(|| format!("{} key without {name}", self.kty))?;
            URL_SAFE_NO_PAD
                .decode(v.trim_end_matches('='))
                .map_err(|_| format!("{name} is not base64url"))
        };
        let key = match self.kty.as_str() {
            "RSA" => VerifyKey::rsa(field(&self.n, "n")?, field(&self.e, "e")?)?,
            "EC" => {
                let family = match self.crv.as_deref() {
                    Some("P-256") => Family::P256,
                    Some("P-384") => Family::P384,
                    other => return Err(format!("EC curve {other:?} is not supported")),
                };
                let (x, y) = (field(&self.x, "x")?, field(&self.y, "y")?);
                let mut point = Vec::with_capacity(1 + x.len() + y.len());
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                VerifyKey::ec(family, point)?
            }
            other => return Err(format!("key type {other:?} is not supported")),
        };
        if let Some(a) = alg {
            if a.family() != key.family() {
                return Err(format!(
                    "algorithm {} does not fit a {} key",
                    a.name(),
                    self.kty
                ));
            }
        }
        Ok(SetKey {
            kid: self.kid.clone(),
            alg,
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_and_unknown_algorithms_do_not_parse() {
        assert_eq!(Alg::parse("none"), None);
        assert_eq!(Alg::parse("None"), None);
        assert_eq!(Alg::parse("hs256"), None);
        assert_eq!(Alg::parse("HS256"), Some(Alg::HS256));
    }

    #[test]
    fn short_secrets_are_refused() {
        let e = VerifyKey::hmac(b"too short").unwrap_err();
        assert!(e.contains("at least 32"), "{e}");
    }

    #[test]
    fn hmac_key_refuses_other_families() {
        let k = VerifyKey::hmac(&[7u8; 32]).unwrap();
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &[7u8; 32]), b"m");
        assert_eq!(k.verify(Alg::HS256, b"m", tag.as_ref()), Ok(()));
        assert_eq!(
            k.verify(Alg::HS384, b"m", tag.as_ref()),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            k.verify(Alg::RS256, b"m", tag.as_ref()),
            Err(VerifyError::WrongFamily)
        );
    }

    #[test]
    fn jwk_checks() {
        let j: Jwk =
            serde_json::from_str(r#"{"kty":"EC","crv":"P-521","x":"AA","y":"AA"}"#).unwrap();
        assert!(j.to_key().unwrap_err().contains("P-521"));
        let j: Jwk = serde_json::from_str(r#"{"kty":"oct","k":"AA"}"#).unwrap();
        assert!(j.to_key().unwrap_err().contains("oct"));
        let j: Jwk =
            serde_json::from_str(r#"{"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"}"#).unwrap();
        assert!(j.to_key().unwrap_err().contains("signature"));
        let j: Jwk = serde_json::from_str(r#"{"kty":"RSA","n":"AQAB","e":"AQAB"}"#).unwrap();
        assert!(j.to_key().unwrap_err().contains("bits"));
        for n in ["", "AA", "AAAA"] {
            let j: Jwk =
                serde_json::from_value(serde_json::json!({"kty": "RSA", "n": n, "e": "AQAB"}))
                    .unwrap();
            assert!(j.to_key().unwrap_err().contains("empty modulus"), "{n:?}");
        }
    }
}
