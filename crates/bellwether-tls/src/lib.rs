//! TLS for Bellwether's control path, on rustls with the `ring` provider (the one reqwest's
//! `rustls-tls` already brings, so the binary carries a single crypto provider).
//!
//! - [`server`]: the server's certificate chain and key from PEM files, and an acceptor that
//!   runs handshakes off the accept loop (a slow or silent client never stalls the others).
//! - [`client`]: how agents and the CLI verify the server: the system roots by default, a
//!   private CA or a self-signed server certificate from `--ca-file`, and pins
//!   (`--pin sha256:…` of the server's whole DER certificate).
//! - [`generate`]: a CA and a server certificate made with `rcgen`, for the sandbox and tests.
//!
//! Nothing here panics on input: a bad file is an error naming it.

#![forbid(unsafe_code)]

pub mod client;
pub mod generate;
pub mod server;

pub use client::{certificate_error, client_config, ClientTls, Pin};
pub use server::{server_config, server_config_for, TlsIncoming};

/// The crypto provider every config here is built with.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a TLS file or setting could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {reason}")]
    File {
        what: &'static str,
        path: std::path::PathBuf,
        reason: String,
    },
    #[error(
        "{what} {path} holds no {kind} (expected a PEM file with a `-----BEGIN {kind}-----` block)"
    )]
    Empty {
        what: &'static str,
        path: std::path::PathBuf,
        kind: &'static str,
    },
    #[error("{0}")]
    Config(String),
    #[error("--pin {value:?}: {reason}")]
    BadPin { value: String, reason: String },
    #[error("cannot generate the certificates: {0}")]
    Generate(String),
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A TLS echo of one line on loopback, with the given server files.
    async fn serve_once(dir: &std::path::Path, cert: &str, key: &str) -> std::net::SocketAddr {
        let (c, k) = (dir.join("s.pem"), dir.join("s.key"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        let config = server_config(&c, &k).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut incoming = TlsIncoming::new(listener, config).unwrap();
        let addr = incoming.local_addr();
        tokio::spawn(async move {
            while let Some((mut s, _)) = incoming.accept().await {
                let mut buf = [0u8; 4];
                if s.read_exact(&mut buf).await.is_ok() {
                    let _ = s.write_all(&buf).await;
                    let _ = s.shutdown().await;
                }
            }
        });
        addr
    }

    async fn talk(addr: std::net::SocketAddr, tls: &ClientTls) -> Result<(), String> {
        let config = client_config(tls).map_err(|e| e.to_string())?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut s = connector.connect(name, tcp).await.map_err(|e| {
            certificate_error(&e).unwrap_or_else(|| format!("not a certificate error: {e}"))
        })?;
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        Ok(())
    }

    fn ca_file(dir: &std::path::Path, name: &str, pem: &str) -> Option<std::path::PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        Some(p)
    }

    #[tokio::test]
    async fn clients_trust_the_right_ca_or_pin_and_refuse_others_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let set = generate::ca_and_server("test CA", &names).unwrap();
        let other = generate::ca_and_server("other CA", &names).unwrap();
        let addr = serve_once(dir.path(), &set.server_cert_pem, &set.server_key_pem).await;
        let pin = Pin::of_der(
            &rustls::pki_types::pem::PemObject::from_pem_slice(set.server_cert_pem.as_bytes())
                .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
                .unwrap(),
        );
        let right = ClientTls {
            ca_file: ca_file(dir.path(), "ca.pem", &set.ca_pem),
            pins: vec![],
        };
        talk(addr, &right).await.unwrap();
        let wrong = ClientTls {
            ca_file: ca_file(dir.path(), "other.pem", &other.ca_pem),
            pins: vec![],
        };
        let why = talk(addr, &wrong).await.unwrap_err();
        assert!(why.contains("not signed by a trusted CA"), "{why}");
        talk(
            addr,
            &ClientTls {
                ca_file: None,
                pins: vec![pin],
            },
        )
        .await
        .unwrap();
        let why = talk(
            addr,
            &ClientTls {
                ca_file: None,
                pins: vec![Pin([7; 32])],
            },
        )
        .await
        .unwrap_err();
        assert_eq!(why, format!("its fingerprint {pin} matches no --pin"));
        // Both given: both must hold.
        let why = talk(
            addr,
            &ClientTls {
                ca_file: wrong.ca_file.clone(),
                pins: vec![pin],
            },
        )
        .await
        .unwrap_err();
        assert!(why.contains("not signed by a trusted CA"), "{why}");
        talk(
            addr,
            &ClientTls {
                ca_file: right.ca_file.clone(),
                pins: vec![Pin([7; 32]), pin],
            },
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_client_that_never_handshakes_does_not_hold_up_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let set = generate::ca_and_server("test CA", &["127.0.0.1".to_string()]).unwrap();
        let addr = serve_once(dir.path(), &set.server_cert_pem, &set.server_key_pem).await;
        // Connected, silent, and kept open for the whole test.
        let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = ClientTls {
            ca_file: ca_file(dir.path(), "ca.pem", &set.ca_pem),
            pins: vec![],
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), talk(addr, &tls))
            .await
            .expect("the second client was served while the first said nothing")
            .unwrap();
    }

    #[tokio::test]
    async fn a_self_signed_server_certificate_is_its_own_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = generate::self_signed(&["127.0.0.1".to_string()]).unwrap();
        let addr = serve_once(dir.path(), &cert, &key).await;
        let tls = ClientTls {
            ca_file: ca_file(dir.path(), "self.pem", &cert),
            pins: vec![],
        };
        talk(addr, &tls).await.unwrap();
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["127.0.0.1".to_string()];
        let a = generate::ca_and_server("a", &names).unwrap();
        let b = generate::ca_and_server("b", &names).unwrap();
        let (c, k) = (dir.path().join("a.pem"), dir.path().join("b.key"));
        std::fs::write(&c, &a.server_cert_pem).unwrap();
        std::fs::write(&k, &b.server_key_pem).unwrap();
        let e = server_config(&c, &k).unwrap_err().to_string();
        assert!(e.contains("a.pem") && e.contains("b.key"), "{e}");
        let e = server_config(&k, &k).unwrap_err().to_string();
        assert!(
            e.contains("--tls-cert") && e.contains("holds no CERTIFICATE"),
            "{e}"
        );
        let e = server_config(&c, &c).unwrap_err().to_string();
        assert!(
            e.contains("--tls-key") && e.contains("holds no PRIVATE KEY"),
            "{e}"
        );
    }
}
