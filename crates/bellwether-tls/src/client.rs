//! How agents and the CLI verify the server.
//!
//! - No `--ca-file` and no `--pin`: the system's trusted roots (as found by
//!   `rustls-native-certs`: `SSL_CERT_FILE`, `SSL_CERT_DIR`, or the distribution's bundle).
//! - `--ca-file PEM`: only the certificates in that file are trusted, a private CA or the
//!   server's own self-signed certificate (which must then not be a CA certificate itself);
//!   the chain, the validity dates and the name in the URL are checked as usual.
//! - `--pin sha256:…` (repeatable): the SHA-256 of the server's whole certificate (DER), as
//!   `openssl x509 -noout -fingerprint -sha256` prints it, in hex (colons allowed) or base64.
//!   With a pin alone the server must present a certificate with one of the pinned
//!   fingerprints and prove it holds its key; chain, dates and name are not checked (the pin
//!   is the trust). With `--ca-file` too, both must hold.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::TlsError;

/// The SHA-256 fingerprint of a whole DER certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pin(pub [u8; 32]);

impl Pin {
    /// The pin of a DER certificate.
    pub fn of_der(der: &[u8]) -> Pin {
        Pin(Sha256::digest(der).into())
    }

    /// The pin of the first certificate of a PEM file.
    pub fn of_pem_file(path: &std::path::Path) -> Result<Pin, TlsError> {
        let certs = crate::server::read_certs("certificate", path)?;
        Ok(Pin::of_der(&certs[0]))
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Pin {
    type Err = TlsError;

    /// `sha256:` then 64 hex digits (colons between bytes allowed, any case) or 32 bytes in
    /// base64 (standard or URL-safe, padding optional).
    fn from_str(s: &str) -> Result<Pin, TlsError> {
        let bad = |reason: &str| TlsError::BadPin {
            value: s.to_owned(),
            reason: reason.to_owned(),
        };
        let body = s.strip_prefix("sha256:").ok_or_else(|| {
            bad("expected sha256:HEX or sha256:BASE64 (the SHA-256 of the server's DER certificate)")
        })?;
        let hexish: String = body.chars().filter(|c| *c != ':').collect();
        let bytes = if hexish.len() == 64 && hexish.chars().all(|c| c.is_ascii_hexdigit()) {
            hex::decode(&hexish).map_err(|e| bad(&e.to_string()))?
        } else {
            let trimmed = body.trim_end_matches('=');
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(trimmed)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed))
                .map_err(|_| bad("neither 64 hex digits nor base64"))?
        };
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|v: Vec<u8>| bad(&format!("a SHA-256 is 32 bytes, this is {}", v.len())))?;
        Ok(Pin(arr))
    }
}

/// What a client trusts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    pub ca_file: Option<PathBuf>,
    pub pins: Vec<Pin>,
}

impl ClientTls {
    /// Trust the system roots (the default).
    pub fn system() -> ClientTls {
        ClientTls::default()
    }

    /// Whether this changes anything from the default.
    pub fn is_default(&self) -> bool {
        self.ca_file.is_none() && self.pins.is_empty()
    }

    /// `--ca-file` and `--pin` values as given on a command line, checked.
    pub fn from_flags(ca_file: Option<PathBuf>, pins: &[String]) -> Result<ClientTls, TlsError> {
        let pins = pins
            .iter()
            .map(|p| p.parse())
            .collect::<Result<Vec<Pin>, _>>()?;
        Ok(ClientTls { ca_file, pins })
    }
}

/// A rustls client config for `tls`, on the ring provider, speaking HTTP/1.1.
pub fn client_config(tls: &ClientTls) -> Result<rustls::ClientConfig, TlsError> {
    let provider = crate::provider();
    let algorithms = provider.signature_verification_algorithms;
    let webpki = match (&tls.ca_file, tls.pins.is_empty()) {
        (Some(path), _) => {
            let mut roots = RootCertStore::empty();
            for cert in crate::server::read_certs("--ca-file", path)? {
                roots.add(cert).map_err(|e| TlsError::File {
                    what: "--ca-file",
                    path: path.clone(),
                    reason: format!("a certificate cannot be a trust anchor: {e}"),
                })?;
            }
            Some(roots)
        }
        (None, true) => Some(system_roots()?),
        (None, false) => None,
    };
    let webpki = match webpki {
        Some(roots) => Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| TlsError::Config(format!("cannot use the trusted roots: {e}")))?,
        ),
        None => None,
    };
    let verifier = Arc::new(Verifier {
        webpki,
        pins: tls.pins.clone(),
        algorithms,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::debug!(error = %e, "Could not load some of the system's trusted roots.");
    }
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(
            "No system trusted roots found; https servers can only be reached with --ca-file or --pin."
        );
    }
    Ok(roots)
}

/// The chain check (when there are roots) and then the pins (when there are any).
#[derive(Debug)]
struct Verifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    pins: Vec<Pin>,
    algorithms: WebPkiSupportedAlgorithms,
}

/// The server's certificate matches none of the pins.
#[derive(Debug)]
struct PinMismatch {
    got: Pin,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "its fingerprint {} matches no --pin", self.got)
    }
}

impl std::error::Error for PinMismatch {}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(v) = &self.webpki {
            v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        }
        if !self.pins.is_empty() {
            let got = Pin::of_der(end_entity);
            if !self.pins.contains(&got) {
                return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    rustls::OtherError(Arc::new(PinMismatch { got })),
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// When `err` (or anything in its chain) is the client refusing the server's certificate,
/// says why in words; `None` for every other error (refused connection, timeout, …).
pub fn certificate_error(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>().and_then(describe) {
            return Some(r);
        }
        // io::Error's source() skips the error it wraps (and io errors nest): look inside.
        cur = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

fn describe(e: &rustls::Error) -> Option<String> {
    let rustls::Error::InvalidCertificate(c) = e else {
        return None;
    };
    Some(match c {
        CertificateError::UnknownIssuer => {
            "it is not signed by a trusted CA (UnknownIssuer); pass the CA or the server's certificate with --ca-file, or pin it with --pin".into()
        }
        CertificateError::BadSignature => "its signature does not verify (BadSignature)".into(),
        CertificateError::Other(o) if o.to_string() == "CaUsedAsEndEntity" => {
            "it is a CA certificate (basicConstraints CA:TRUE) used as the server's own \
             (CaUsedAsEndEntity); a self-signed server certificate must say CA:FALSE to be its \
             own --ca-file, or trust it with --pin"
                .into()
        }
        CertificateError::Other(o) => o.to_string(),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_from_hex_with_or_without_colons_and_from_base64() {
        let p = Pin([0xab; 32]);
        let hex = "ab".repeat(32);
        assert_eq!(format!("sha256:{hex}").parse::<Pin>().unwrap(), p);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(format!("sha256:{colons}").parse::<Pin>().unwrap(), p);
        let b64 = base64::engine::general_purpose::STANDARD.encode([0xab; 32]);
        assert_eq!(format!("sha256:{b64}").parse::<Pin>().unwrap(), p);
        assert_eq!(p.to_string(), format!("sha256:{hex}"));
        assert_eq!(p.to_string().parse::<Pin>().unwrap(), p);
    }

    #[test]
    fn bad_pins_are_refused_with_the_reason() {
        let e = "ab".repeat(32).parse::<Pin>().unwrap_err().to_string();
        assert!(e.contains("expected sha256:HEX"), "{e}");
        let e = "sha256:abcd".parse::<Pin>().unwrap_err().to_string();
        assert!(e.contains("32 bytes, this is"), "{e}");
        let e = "sha256:!!".parse::<Pin>().unwrap_err().to_string();
        assert!(e.starts_with("--pin \"sha256:!!\""), "{e}");
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = client_config(&ClientTls {
            ca_file: Some(missing.clone()),
            pins: vec![],
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(&format!("cannot read --ca-file {}", missing.display())),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let e = client_config(&ClientTls {
            ca_file: Some(empty.clone()),
            pins: vec![],
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("holds no CERTIFICATE"), "{e}");
    }

    #[test]
    fn certificate_errors_are_found_through_io_errors() {
        let inner = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, inner));
        let why = certificate_error(&io).unwrap();
        assert!(why.contains("not signed by a trusted CA"), "{why}");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(certificate_error(&refused), None);
    }
}
