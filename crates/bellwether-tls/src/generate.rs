//! Certificates made on the spot with `rcgen`, for the sandbox and tests: a CA and a server
//! certificate it signed, or a self-signed server certificate. Keys are ECDSA P-256.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::{Pin, TlsError};

/// A CA certificate and a server certificate signed by it, as PEM text.
#[derive(Debug, Clone)]
pub struct CertSet {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

/// Where [`CertSet::write_to`] put the files.
#[derive(Debug, Clone)]
pub struct Written {
    /// `ca.pem`: what agents and the CLI pass as `--ca-file`.
    pub ca_file: PathBuf,
    /// `server.pem`: the server's `--tls-cert`.
    pub server_cert: PathBuf,
    /// `server.key`: the server's `--tls-key` (mode 0600).
    pub server_key: PathBuf,
    /// The server certificate's `--pin`.
    pub pin: Pin,
}

fn gen_err(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

fn validity(params: &mut CertificateParams, days: u64) {
    let now = SystemTime::now();
    // A day of slack before now, for clocks a little behind.
    params.not_before = (now - Duration::from_secs(86_400)).into();
    params.not_after = (now + Duration::from_secs(days * 86_400)).into();
}

fn server_params(names: &[String]) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(names.to_vec()).map_err(gen_err)?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("bellwether", |n| n.as_str()),
    );
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut params, 365);
    Ok(params)
}

/// A CA (valid ten years, named `cn`) and a server certificate for `names` (DNS names or IP
/// addresses; valid one year) signed by it. The CA's key is not kept.
pub fn ca_and_server(cn: &str, names: &[String]) -> Result<CertSet, TlsError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    ca_params.distinguished_name.push(DnType::CommonName, cn);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca_params, 3650);
    let ca_key = KeyPair::generate().map_err(gen_err)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(gen_err)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().map_err(gen_err)?;
    let server_cert = server_params(names)?
        .signed_by(&server_key, &issuer)
        .map_err(gen_err)?;
    Ok(CertSet {
        ca_pem: ca_cert.pem(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    })
}

/// A self-signed server certificate for `names` (not a CA certificate, so it can be its own
/// `--ca-file`) and its key, as PEM text.
pub fn self_signed(names: &[String]) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate().map_err(gen_err)?;
    let cert = server_params(names)?.self_signed(&key).map_err(gen_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl CertSet {
    /// Writes `ca.pem`, `server.pem` and `server.key` (0600) into `dir`, creating it.
    pub fn write_to(&self, dir: &Path) -> Result<Written, TlsError> {
        let io = |path: &Path, e: std::io::Error| TlsError::File {
            what: "file",
            path: path.to_owned(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let ca_file = dir.join("ca.pem");
        let server_cert = dir.join("server.pem");
        let server_key = dir.join("server.key");
        std::fs::write(&ca_file, &self.ca_pem).map_err(|e| io(&ca_file, e))?;
        std::fs::write(&server_cert, &self.server_cert_pem).map_err(|e| io(&server_cert, e))?;
        write_private(&server_key, &self.server_key_pem).map_err(|e| io(&server_key, e))?;
        let pin = Pin::of_pem_file(&server_cert)?;
        Ok(Written {
            ca_file,
            server_cert,
            server_key,
            pin,
        })
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let _ = std::fs::remove_file(path);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)?.write_all(text.as_bytes())
}
