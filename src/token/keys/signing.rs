//! Signing keys: a stored key parsed once into its signer, verifier and
//! public JWK, and new private keys generated for an algorithm. Private
//! keys never leave this file except as the stored record the key ring
//! seals; nothing here logs key material.

use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::RSA_PKCS1_SHA256;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaPublicKeyComponents,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Header};
use serde::Serialize;

use crate::store::KeyRecord;
use crate::token::{KeyError, SigningAlgorithm, b64url};

/// A public JSON Web Key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Jwk {
    /// Key type: RSA, EC or OKP.
    pub kty: &'static str,
    /// Key id.
    pub kid: String,
    /// Algorithm.
    pub alg: &'static str,
    /// Always "sig".
    #[serde(rename = "use")]
    pub use_: &'static str,
    /// RSA modulus.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA exponent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// Curve.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<&'static str>,
    /// X coordinate or Ed25519 public key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// Y coordinate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
}

/// A loaded signing key.
pub struct SigningKey {
    pub(super) record: KeyRecord,
    algorithm: Algorithm,
    signer: Signer,
    /// The encoded JOSE headers: `[JWT, access token (version 5)]`.
    headers: Arc<[String; 2]>,
    decoding: DecodingKey,
    jwk: Jwk,
}

/// A parsed private key.
#[derive(Clone)]
enum Signer {
    Ed25519(Arc<Ed25519KeyPair>),
    P256(Arc<EcdsaKeyPair>),
    Rsa(Arc<aws_lc_rs::rsa::KeyPair>),
}

impl Signer {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match self {
            Self::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            Self::P256(pair) => pair
                .sign(&SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Sign),
            Self::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(
                    &RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    message,
                    &mut signature,
                )
                .map_err(|_| KeyError::Sign)?;
                Ok(signature)
            }
        }
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.record.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// The key id.
    pub fn kid(&self) -> &str {
        &self.record.kid
    }

    /// The static key (never rotates; signs only CreateJwt tokens).
    pub fn is_static(&self) -> bool {
        self.record.is_static
    }

    /// The algorithm the key is pinned to.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The public key for verification.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }

    /// The public JWK.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// When the key starts (or started) signing, ms.
    pub fn signs_from_ms(&self) -> u64 {
        self.record.signs_from_ms
    }

    /// Signs `claims` as a compact JWS with this key. Access tokens carry the
    /// header field `version: "5"` that SuperTokens' SDKs check.
    pub fn sign<T: Serialize>(&self, claims: &T, access_token: bool) -> Result<String, KeyError> {
        let payload = serde_json::to_vec(claims).map_err(|_| KeyError::Sign)?;
        let header = &self.headers[usize::from(access_token)];
        let mut token = String::with_capacity(header.len() + payload.len() * 4 / 3 + 360);
        token.push_str(header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let signature = self.signer.sign(token.as_bytes())?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut token);
        Ok(token)
    }

    /// This key with a later `max_jwt_exp_ms`, reusing the parsed keys.
    pub(super) fn with_max_jwt_exp(&self, max_jwt_exp_ms: u64) -> Self {
        Self {
            record: KeyRecord {
                max_jwt_exp_ms,
                ..self.record.clone()
            },
            algorithm: self.algorithm,
            signer: self.signer.clone(),
            headers: self.headers.clone(),
            decoding: self.decoding.clone(),
            jwk: self.jwk.clone(),
        }
    }

    pub(super) fn load(record: KeyRecord) -> Result<Self, KeyError> {
        // In the ring, the private key is opened: PKCS#8.
        let pkcs8 = record.private_key.as_slice();
        let kid = record.kid.clone();
        let jwk = |kty, alg| Jwk {
            kty,
            kid: kid.clone(),
            alg,
            use_: "sig",
            n: None,
            e: None,
            crv: None,
            x: None,
            y: None,
        };
        let (algorithm, signer, decoding, jwk) = match record.alg.as_str() {
            "EdDSA" => {
                let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
                    .map_err(|_| KeyError::Crypto("is not Ed25519"))?;
                let public = pair.public_key().as_ref().to_vec();
                let jwk = Jwk {
                    crv: Some("Ed25519"),
                    x: Some(b64url(&public)),
                    ..jwk("OKP", "EdDSA")
                };
                (
                    Algorithm::EdDSA,
                    Signer::Ed25519(Arc::new(pair)),
                    DecodingKey::from_ed_der(&public),
                    jwk,
                )
            }
            "ES256" => {
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
                    .map_err(|_| KeyError::Crypto("is not P-256"))?;
                let point = pair.public_key().as_ref().to_vec();
                if point.len() != 65 || point[0] != 4 {
                    return Err(KeyError::Crypto("has an unexpected public point"));
                }
                let jwk = Jwk {
                    crv: Some("P-256"),
                    x: Some(b64url(&point[1..33])),
                    y: Some(b64url(&point[33..])),
                    ..jwk("EC", "ES256")
                };
                (
                    Algorithm::ES256,
                    Signer::P256(Arc::new(pair)),
                    DecodingKey::from_ec_der(&point),
                    jwk,
                )
            }
            "RS256" => {
                let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(pkcs8)
                    .map_err(|_| KeyError::Crypto("is not RSA"))?;
                let components = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
                let jwk = Jwk {
                    n: Some(b64url(&components.n)),
                    e: Some(b64url(&components.e)),
                    ..jwk("RSA", "RS256")
                };
                let decoding = DecodingKey::from_rsa_der(pair.public_key().as_ref());
                (Algorithm::RS256, Signer::Rsa(Arc::new(pair)), decoding, jwk)
            }
            _ => return Err(KeyError::Crypto("has an unsupported algorithm")),
        };
        let header = |access_token: bool| {
            let mut header = Header::new(algorithm);
            header.kid = Some(record.kid.clone());
            if access_token {
                header.extras.insert("version", "5");
            }
            // A header of strings always serialises.
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("headers serialise"))
        };
        Ok(Self {
            headers: Arc::new([header(false), header(true)]),
            record,
            algorithm,
            signer,
            decoding,
            jwk,
        })
    }
}

/// Generates a PKCS#8 private key for `alg`.
pub(super) fn generate_pkcs8(alg: SigningAlgorithm) -> Result<Vec<u8>, KeyError> {
    let rng = SystemRandom::new();
    match alg {
        SigningAlgorithm::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| KeyError::Crypto("generation failed")),
        SigningAlgorithm::ES256 => {
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map(|d| d.as_ref().to_vec())
                .map_err(|_| KeyError::Crypto("generation failed"))
        }
        SigningAlgorithm::RS256 => aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048)
            .and_then(|k| k.as_der())
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| KeyError::Crypto("generation failed")),
    }
}
