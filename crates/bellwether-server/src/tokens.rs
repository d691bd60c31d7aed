//! Making sure the fleet-wide tokens exist: given by the operator (flag or environment), kept
//! from an earlier start, or generated and written to `<data-dir>/<kind>.token` (mode 0600).
//! Only hashes go into the store.

use std::io::Write;
use std::path::{Path, PathBuf};

use bellwether_store::{Store, TokenKind};
use rand::RngCore;

use crate::{now_ms, ServerConfig, ServerError};

/// Where a fleet-wide token came from on this start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// Given on the command line or in the environment.
    Given,
    /// Generated on this start.
    Generated,
    /// Kept from an earlier start.
    Kept,
}

/// What the operator should be told about one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenNotice {
    /// `operator` or `enrol`.
    pub kind: &'static str,
    pub source: TokenSource,
    /// The file that holds the plain token, when there is one.
    pub file: Option<PathBuf>,
}

impl std::fmt::Display for TokenNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match self.source {
            TokenSource::Given => "as given",
            TokenSource::Generated => "generated",
            TokenSource::Kept => "kept from an earlier start",
        };
        match &self.file {
            Some(p) => write!(f, "{} token ({how}) is in {}", self.kind, p.display()),
            None => write!(
                f,
                "{} token ({how}) has no file; pass --{}-token to set a new one",
                self.kind, self.kind
            ),
        }
    }
}

/// A fresh random token: 32 bytes from the OS, in hex.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Writes `token` to `path` atomically (temporary file, then rename), readable by the owner
/// only.
fn write_token_file(path: &Path, token: &str) -> Result<(), ServerError> {
    let err = |source| ServerError::TokenFile {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("token.tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(err)?;
    f.write_all(format!("{token}\n").as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)
}

pub(crate) async fn bootstrap(
    store: &Store,
    config: &ServerConfig,
) -> Result<Vec<TokenNotice>, ServerError> {
    let mut notices = Vec::new();
    for (kind, given) in [
        (TokenKind::Operator, config.operator_token.as_deref()),
        (TokenKind::Enrol, config.enrol_token.as_deref()),
    ] {
        let name = kind.as_str();
        let file = config
            .data_dir
            .as_ref()
            .map(|d| d.join(format!("{name}.token")));
        let notice = match given {
            Some(token) => {
                let current = store.authenticate(token).await?;
                if let Some(other) = current.as_ref().map(|g| g.kind).filter(|k| *k != kind) {
                    return Err(ServerError::TokenOfOtherKind {
                        kind: name,
                        other: other.as_str(),
                    });
                }
                if current.map(|g| g.kind) != Some(kind) {
                    store
                        .set_fleet_token(
                            kind,
                            token,
                            &format!("{name} token given at start"),
                            now_ms(),
                        )
                        .await?;
                }
                if let Some(path) = &file {
                    let on_disk = std::fs::read_to_string(path).ok();
                    if on_disk.as_deref().map(str::trim) != Some(token) {
                        write_token_file(path, token)?;
                    }
                }
                TokenNotice {
                    kind: name,
                    source: TokenSource::Given,
                    file,
                }
            }
            None if !store.has_token(kind).await? => {
                let Some(path) = file else {
                    return Err(ServerError::NoTokenDestination { kind: name });
                };
                let token = generate_token();
                write_token_file(&path, &token)?;
                store
                    .set_fleet_token(
                        kind,
                        &token,
                        &format!("{name} token generated at first start"),
                        now_ms(),
                    )
                    .await?;
                tracing::info!(kind = name, file = %path.display(), "Generated a token.");
                TokenNotice {
                    kind: name,
                    source: TokenSource::Generated,
                    file: Some(path),
                }
            }
            None => {
                let file = file.filter(|p| p.exists());
                TokenNotice {
                    kind: name,
                    source: TokenSource::Kept,
                    file,
                }
            }
        };
        notices.push(notice);
    }
    Ok(notices)
}
