//! The client side of SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, so the proxy
//! can authenticate the server sessions it opens when it re-homes a client. Pure: the caller
//! brings the nonce and moves the messages.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Why a SCRAM exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("server-first-message is malformed: {0}")]
    ServerFirst(&'static str),
    #[error("server nonce does not extend ours")]
    Nonce,
    #[error("server signature does not match: the server does not know the password")]
    Signature,
    #[error("server-final-message is malformed")]
    ServerFinal,
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("hmac takes any key length"));
    m.update(data);
    m.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one output block, which is what SCRAM's `Hi` is.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &block);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

/// One exchange, from the client's first message to the check of the server's signature.
#[derive(Debug, Clone)]
pub struct ScramClient {
    password: String,
    client_first_bare: String,
    nonce: String,
    server_signature: Option<[u8; 32]>,
}

impl ScramClient {
    /// `nonce` should be random printable ASCII without commas.
    pub fn new(password: &str, nonce: &str) -> ScramClient {
        ScramClient {
            password: password.to_string(),
            // PostgreSQL takes the user from the startup packet and ignores `n=`.
            client_first_bare: format!("n=,r={nonce}"),
            nonce: nonce.to_string(),
            server_signature: None,
        }
    }

    /// The client-first-message (no channel binding).
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Answers the server-first-message with the client-final-message.
    pub fn client_final(&mut self, server_first: &str) -> Result<String, ScramError> {
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for part in server_first.split(',') {
            if let Some(v) = part.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = part.strip_prefix("s=") {
                salt = Some(
                    B64.decode(v)
                        .map_err(|_| ScramError::ServerFirst("salt is not base64"))?,
                );
            } else if let Some(v) = part.strip_prefix("i=") {
                iterations = Some(
                    v.parse::<u32>()
                        .map_err(|_| ScramError::ServerFirst("iteration count"))?,
                );
            }
        }
        let nonce = nonce.ok_or(ScramError::ServerFirst("no nonce"))?;
        let salt = salt.ok_or(ScramError::ServerFirst("no salt"))?;
        let iterations = iterations
            .filter(|&i| (1..=10_000_000).contains(&i))
            .ok_or(ScramError::ServerFirst("iteration count"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() <= self.nonce.len() {
            return Err(ScramError::Nonce);
        }
        let salted = hi(self.password.as_bytes(), &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac(&salted, b"Server Key");
        self.server_signature = Some(hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final-message.
    pub fn verify(&self, server_final: &str) -> Result<(), ScramError> {
        let v = server_final
            .strip_prefix("v=")
            .ok_or(ScramError::ServerFinal)?;
        let got = B64
            .decode(v.trim_end_matches('\0'))
            .map_err(|_| ScramError::ServerFinal)?;
        match self.server_signature {
            Some(s) if s.as_slice() == got.as_slice() => Ok(()),
            _ => Err(ScramError::Signature),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SCRAM-SHA-256 example of RFC 7677, section 3.
    #[test]
    fn rfc7677_example() {
        let mut c = ScramClient::new("pencil", "rOprNGfwEbeRWgbNEkqO");
        c.client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO".into();
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let fin = c.client_final(server_first).unwrap();
        assert_eq!(fin, "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        c.verify("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        assert_eq!(c.verify("v=AAAA"), Err(ScramError::Signature));
    }

    #[test]
    fn refuses_a_foreign_nonce_and_garbage() {
        let mut c = ScramClient::new("pw", "abc");
        assert_eq!(
            c.client_final("r=xyz123,s=AAAA,i=10"),
            Err(ScramError::Nonce)
        );
        assert!(c.client_final("garbage").is_err());
        assert!(c.client_final("r=abcd,s=!!,i=1").is_err());
    }
}
