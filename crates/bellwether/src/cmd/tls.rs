//! The TLS flags shared by every command that talks to a server (`--ca-file`, `--pin`) and
//! the server's listening rule (plain HTTP on loopback only, unless `--insecure-listen`).

use std::net::ToSocketAddrs as _;
use std::path::PathBuf;

use bellwether_tls::ClientTls;

use super::UsageError;

/// How a client verifies an https server.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// Trust only the certificates in this PEM file for an https server: a private CA, or
    /// the server's own self-signed certificate. Without it (and without --pin), the
    /// system's trusted roots.
    #[arg(long, value_name = "PEM", env = "BELLWETHER_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// Trust a server whose certificate has this SHA-256 fingerprint: sha256:HEX (colons
    /// allowed, as `openssl x509 -noout -fingerprint -sha256` prints it) or sha256:BASE64,
    /// of the whole DER certificate. Repeat (or separate with commas) to accept several while
    /// rotating. With --ca-file, both must hold.
    #[arg(
        long = "pin",
        value_name = "sha256:FINGERPRINT",
        env = "BELLWETHER_PIN",
        value_delimiter = ',',
        global = true
    )]
    pub pins: Vec<String>,
}

impl ClientTlsArgs {
    /// The checked settings; a bad pin is a usage error (exit 2).
    pub fn tls(&self) -> Result<ClientTls, UsageError> {
        ClientTls::from_flags(self.ca_file.clone(), &self.pins)
            .map_err(|e| UsageError(e.to_string()))
    }
}

/// Refuses plain HTTP on any address `listen` resolves to that is not loopback, unless
/// `insecure` (an operator who put a TLS-terminating proxy in front, say) allows it.
pub fn check_plain_listen(listen: &str, insecure: bool) -> Result<(), UsageError> {
    if insecure {
        return Ok(());
    }
    // An address that does not resolve is left to bind, which says so.
    let Ok(addrs) = listen.to_socket_addrs() else {
        return Ok(());
    };
    for a in addrs {
        if !a.ip().to_canonical().is_loopback() {
            return Err(UsageError(format!(
                "--listen {listen}: refusing to serve plain HTTP on {}, which is not a loopback \
                 address: tokens would cross the network unencrypted. Give --tls-cert and \
                 --tls-key to serve HTTPS (docs/security.md, \"TLS\"), listen on 127.0.0.1, or \
                 pass --insecure-listen if a TLS proxy in front or a trusted network protects it",
                a.ip()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_only_for_loopback_unless_insecure() {
        for ok in [
            "127.0.0.1:0",
            "127.1.2.3:80",
            "[::1]:7878",
            "localhost:7878",
        ] {
            check_plain_listen(ok, false).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for refused in ["0.0.0.0:7878", "[::]:0", "192.0.2.1:80"] {
            let e = check_plain_listen(refused, false).unwrap_err().0;
            assert!(
                e.starts_with(&format!("--listen {refused}: refusing")),
                "{e}"
            );
            assert!(e.contains("--insecure-listen"), "{e}");
            check_plain_listen(refused, true).unwrap();
        }
    }
}
