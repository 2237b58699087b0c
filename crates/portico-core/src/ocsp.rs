//! OCSP (RFC 6960) for stapling fetched responses: the request for a certificate, and
//! the checks a response must pass before it is stapled — it answers for this
//! certificate, is signed by its issuer (or by a responder the issuer delegated to),
//! and is current. DER through yasna (already in the build through rcgen), signatures
//! through ring, certificates through x509-parser: no OCSP crate in the tree covers the
//! responder's side of it without a second DER stack.

use std::path::Path;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::x509::SubjectPublicKeyInfo;
use yasna::models::ObjectIdentifier;
use yasna::Tag;

use crate::tls::TlsError;

const SHA1: &[u64] = &[1, 3, 14, 3, 2, 26];
const BASIC_RESPONSE: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 1, 1];
const AD_OCSP: &str = "1.3.6.1.5.5.7.48.1";
/// A response whose thisUpdate lies this far ahead of our clock is still taken.
const CLOCK_SKEW_S: i64 = 300;

/// What to ask a responder for one certificate, and how to check its answer.
#[derive(Debug, Clone)]
pub struct OcspRequest {
    /// The responder named in the certificate (`http://…`).
    pub url: String,
    /// The DER OCSPRequest to POST.
    pub der: Vec<u8>,
    /// The leaf certificate's DER (the staple is attached to it).
    pub leaf: Vec<u8>,
    issuer: Vec<u8>,
    cert_id: CertId,
}

#[derive(Debug, Clone, PartialEq)]
struct CertId {
    name_hash: Vec<u8>,
    key_hash: Vec<u8>,
    serial: Vec<u8>,
}

/// What a verified response says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcspStatus {
    pub status: CertStatus,
    /// Unix seconds.
    pub this_update: i64,
    pub next_update: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStatus {
    Good,
    Revoked,
    Unknown,
}

/// The request for the leaf of the PEM chain `cert`: its responder from the
/// certificate's Authority Information Access, its issuer the next certificate in the
/// file. Errors say what the file lacks.
pub fn ocsp_request_for(cert: &Path) -> Result<OcspRequest, TlsError> {
    let bad = |reason: String| TlsError::Cert {
        path: cert.into(),
        reason,
    };
    let chain = crate::tls::pem_certs(cert)?;
    let (leaf_der, issuer_der) =
        match chain.as_slice() {
            [leaf, issuer, ..] => (leaf.to_vec(), issuer.to_vec()),
            _ => return Err(bad(
                "ocsp = \"fetch\" needs the issuer's certificate after the server's in this file"
                    .into(),
            )),
        };
    let leaf = parse_cert(&leaf_der).map_err(|e| bad(format!("the certificate: {e}")))?;
    let issuer = parse_cert(&issuer_der).map_err(|e| bad(format!("the issuer: {e}")))?;
    if leaf.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(bad(
            "the second certificate is not the first one's issuer (ocsp = \"fetch\" needs it)"
                .into(),
        ));
    }
    let url = responder_url(&leaf).ok_or_else(|| {
        bad(
            "the certificate names no OCSP responder (authorityInfoAccess OCSP URI); \
             give ocsp a response file instead"
                .into(),
        )
    })?;
    let cert_id = CertId {
        name_hash: sha1(issuer.subject().as_raw()),
        key_hash: sha1(&issuer.public_key().subject_public_key.data),
        serial: strip_zeros(leaf.raw_serial().to_vec()),
    };
    let der = yasna::construct_der(|w| {
        // OCSPRequest { tbsRequest { requestList { Request { reqCert } } } }
        w.write_sequence(|w| {
            w.next().write_sequence(|w| {
                w.next().write_sequence(|w| {
                    w.next().write_sequence(|w| {
                        write_cert_id(w.next(), &cert_id);
                    });
                });
            });
        });
    });
    Ok(OcspRequest {
        url,
        der,
        leaf: leaf_der,
        issuer: issuer_der,
        cert_id,
    })
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| e.to_string())
}

fn responder_url(cert: &X509Certificate<'_>) -> Option<String> {
    cert.iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityInfoAccess(aia) => Some(aia),
            _ => None,
        })?
        .accessdescs
        .iter()
        .filter(|d| d.access_method.to_id_string() == AD_OCSP)
        .find_map(|d| match d.access_location {
            GeneralName::URI(u) if u.starts_with("http://") => Some(u.to_string()),
            _ => None,
        })
}

fn sha1(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, data)
        .as_ref()
        .to_vec()
}

fn write_cert_id(w: yasna::DERWriter<'_>, id: &CertId) {
    w.write_sequence(|w| {
        w.next().write_sequence(|w| {
            w.next().write_oid(&ObjectIdentifier::from_slice(SHA1));
            w.next().write_null();
        });
        w.next().write_bytes(&id.name_hash);
        w.next().write_bytes(&id.key_hash);
        w.next().write_bigint_bytes(&id.serial, true);
    });
}

/// Why a response is not stapled.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OcspError {
    #[error("the response does not parse: {0}")]
    Malformed(String),
    #[error("the responder answered status {0} (not successful)")]
    Unsuccessful(i64),
    #[error("the response does not answer for this certificate")]
    OtherCertificate,
    #[error("the response's signature does not verify against the issuer or a responder it delegated to")]
    Signature,
    #[error("the response is not current (thisUpdate {this_update}, nextUpdate {next_update:?}, now {now})")]
    NotCurrent {
        this_update: i64,
        next_update: Option<i64>,
        now: i64,
    },
}

struct Basic {
    tbs: Vec<u8>,
    sig_alg: String,
    signature: Vec<u8>,
    certs: Vec<Vec<u8>>,
    responses: Vec<(CertId, CertStatus, i64, Option<i64>)>,
}

impl OcspRequest {
    /// Checks `der` (the responder's answer) at Unix time `now`: what it says, once it
    /// is known to be for this certificate, signed and current.
    pub fn check(&self, der: &[u8], now: i64) -> Result<OcspStatus, OcspError> {
        let basic = parse_response(der)?;
        let (_, status, this_update, next_update) = basic
            .responses
            .iter()
            .find(|(id, ..)| *id == self.cert_id)
            .cloned()
            .ok_or(OcspError::OtherCertificate)?;
        self.verify_signer(&basic)?;
        if this_update > now + CLOCK_SKEW_S || next_update.is_some_and(|n| n <= now) {
            return Err(OcspError::NotCurrent {
                this_update,
                next_update,
                now,
            });
        }
        Ok(OcspStatus {
            status,
            this_update,
            next_update,
        })
    }

    /// Signed by the issuer, or by a certificate in the response that the issuer
    /// signed for OCSP signing (RFC 6960 §4.2.2.2).
    fn verify_signer(&self, basic: &Basic) -> Result<(), OcspError> {
        let issuer = parse_cert(&self.issuer).map_err(OcspError::Malformed)?;
        let issuer_key = issuer.public_key();
        if verify(&basic.sig_alg, issuer_key, &basic.tbs, &basic.signature) {
            return Ok(());
        }
        for der in &basic.certs {
            let Ok(responder) = parse_cert(der) else {
                continue;
            };
            let delegated = responder
                .extended_key_usage()
                .ok()
                .flatten()
                .is_some_and(|e| e.value.ocsp_signing);
            let issued = responder.issuer().as_raw() == issuer.subject().as_raw()
                && verify(
                    &responder.signature_algorithm.algorithm.to_id_string(),
                    issuer_key,
                    responder.tbs_certificate.as_ref(),
                    &responder.signature_value.data,
                );
            if delegated
                && issued
                && verify(
                    &basic.sig_alg,
                    responder.public_key(),
                    &basic.tbs,
                    &basic.signature,
                )
            {
                return Ok(());
            }
        }
        Err(OcspError::Signature)
    }
}

/// Verifies `sig` over `msg` by `key` under the X.509 signature algorithm `alg`.
fn verify(alg: &str, key: &SubjectPublicKeyInfo<'_>, msg: &[u8], sig: &[u8]) -> bool {
    use ring::signature as s;
    let curve = key
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    let p384 = curve.as_deref() == Some("1.3.132.0.34");
    let algorithm: &dyn s::VerificationAlgorithm = match alg {
        "1.2.840.113549.1.1.5" => &s::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
        "1.2.840.113549.1.1.11" => &s::RSA_PKCS1_2048_8192_SHA256,
        "1.2.840.113549.1.1.12" => &s::RSA_PKCS1_2048_8192_SHA384,
        "1.2.840.113549.1.1.13" => &s::RSA_PKCS1_2048_8192_SHA512,
        "1.2.840.10045.4.3.2" if p384 => &s::ECDSA_P384_SHA256_ASN1,
        "1.2.840.10045.4.3.2" => &s::ECDSA_P256_SHA256_ASN1,
        "1.2.840.10045.4.3.3" if p384 => &s::ECDSA_P384_SHA384_ASN1,
        "1.2.840.10045.4.3.3" => &s::ECDSA_P256_SHA384_ASN1,
        "1.3.101.112" => &s::ED25519,
        _ => return false,
    };
    s::UnparsedPublicKey::new(algorithm, &key.subject_public_key.data)
        .verify(msg, sig)
        .is_ok()
}

fn oid_string(oid: &ObjectIdentifier) -> String {
    oid.components()
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

fn parse_response(der: &[u8]) -> Result<Basic, OcspError> {
    let malformed = |e: yasna::ASN1Error| OcspError::Malformed(e.to_string());
    // OCSPResponse { responseStatus, [0] EXPLICIT ResponseBytes { responseType, response } }
    let (status, bytes) = yasna::parse_der(der, |r| {
        r.read_sequence(|r| {
            let status = r.next().read_enum()?;
            let bytes = r.read_optional(|r| {
                r.read_tagged(Tag::context(0), |r| {
                    r.read_sequence(|r| {
                        let kind = r.next().read_oid()?;
                        let body = r.next().read_bytes()?;
                        Ok((kind, body))
                    })
                })
            })?;
            Ok((status, bytes))
        })
    })
    .map_err(malformed)?;
    if status != 0 {
        return Err(OcspError::Unsuccessful(status));
    }
    let (kind, body) = bytes.ok_or_else(|| OcspError::Malformed("no responseBytes".into()))?;
    if kind.components().as_slice() != BASIC_RESPONSE {
        return Err(OcspError::Malformed(format!(
            "response type {} is not id-pkix-ocsp-basic",
            oid_string(&kind)
        )));
    }
    // BasicOCSPResponse { tbsResponseData, signatureAlgorithm, signature, [0] certs }
    let (tbs, sig_alg, signature, certs) = yasna::parse_der(&body, |r| {
        r.read_sequence(|r| {
            let tbs = r.next().read_der()?;
            let alg = r.next().read_sequence(|r| {
                let oid = r.next().read_oid()?;
                r.read_optional(|r| r.read_der())?;
                Ok(oid)
            })?;
            let (sig, _) = r.next().read_bitvec_bytes()?;
            let certs = r
                .read_optional(|r| {
                    r.read_tagged(Tag::context(0), |r| r.collect_sequence_of(|r| r.read_der()))
                })?
                .unwrap_or_default();
            Ok((tbs, alg, sig, certs))
        })
    })
    .map_err(malformed)?;
    // ResponseData { [0] version, responderID, producedAt, responses, [1] extensions }
    let responses = yasna::parse_der(&tbs, |r| {
        r.read_sequence(|r| {
            r.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_i64()))?;
            r.next().read_der()?; // responderID
            r.next().read_generalized_time()?; // producedAt
            let responses = r.next().collect_sequence_of(read_single_response)?;
            r.read_optional(|r| r.read_der())?;
            Ok(responses)
        })
    })
    .map_err(malformed)?;
    Ok(Basic {
        tbs,
        sig_alg: oid_string(&sig_alg),
        signature,
        certs,
        responses,
    })
}

fn read_single_response(
    r: yasna::BERReader<'_, '_>,
) -> yasna::ASN1Result<(CertId, CertStatus, i64, Option<i64>)> {
    r.read_sequence(|r| {
        let id = r.next().read_sequence(|r| {
            let alg = r.next().read_sequence(|r| {
                let oid = r.next().read_oid()?;
                r.read_optional(|r| r.read_der())?;
                Ok(oid)
            })?;
            let name_hash = r.next().read_bytes()?;
            let key_hash = r.next().read_bytes()?;
            let (serial, _) = r.next().read_bigint_bytes()?;
            Ok((alg, name_hash, key_hash, serial))
        })?;
        // certStatus: good [0] IMPLICIT NULL, revoked [1] IMPLICIT RevokedInfo, unknown [2]
        let status = match r.next().read_der()?.first() {
            Some(0x80) => CertStatus::Good,
            Some(0xa1) => CertStatus::Revoked,
            _ => CertStatus::Unknown,
        };
        let this_update = r
            .next()
            .read_generalized_time()?
            .datetime()
            .unix_timestamp();
        let next_update = r.read_optional(|r| {
            r.read_tagged(Tag::context(0), |r| {
                Ok(r.read_generalized_time()?.datetime().unix_timestamp())
            })
        })?;
        r.read_optional(|r| r.read_der())?; // singleExtensions
        let (alg, name_hash, key_hash, serial) = id;
        // only SHA-1 CertIDs are asked for; another hash cannot match ours
        let id = if alg.components().as_slice() == SHA1 {
            CertId {
                name_hash,
                key_hash,
                serial: strip_zeros(serial),
            }
        } else {
            CertId {
                name_hash: Vec::new(),
                key_hash: Vec::new(),
                serial: Vec::new(),
            }
        };
        Ok((id, status, this_update, next_update))
    })
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let n = v.iter().take_while(|b| **b == 0).count();
    v.drain(..n);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_answers_are_errors_not_panics() {
        assert!(matches!(
            parse_response(b"<html>busy</html>"),
            Err(OcspError::Malformed(_))
        ));
        // OCSPResponse { responseStatus = tryLater (3) }
        assert_eq!(
            parse_response(&[0x30, 0x03, 0x0a, 0x01, 0x03]).err(),
            Some(OcspError::Unsuccessful(3))
        );
        // successful, but no responseBytes
        assert!(matches!(
            parse_response(&[0x30, 0x03, 0x0a, 0x01, 0x00]),
            Err(OcspError::Malformed(_))
        ));
        // every truncation of a well-formed prefix fails cleanly
        let der = [
            0x30, 0x10, 0x0a, 0x01, 0x00, 0xa0, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x2b, 0x06, 0x01,
            0x04, 0x02, 0x30, 0x00,
        ];
        for n in 0..der.len() {
            assert!(parse_response(&der[..n]).is_err());
        }
        assert!(parse_response(&der).is_err(), "not id-pkix-ocsp-basic");
    }

    #[test]
    fn serials_compare_without_leading_zeros() {
        assert_eq!(strip_zeros(vec![0, 0x80, 1]), vec![0x80, 1]);
        assert_eq!(strip_zeros(vec![5]), vec![5]);
    }
}
