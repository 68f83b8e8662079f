//! Admin API authentication (DESIGN §5): bearer tokens from `[admin].tokens_file`, each with a
//! name and a role, stored as SHA-256 hashes of the secret.
//!
//! A presented token is hashed and compared with every stored hash in constant time (all of
//! them, whatever matches), so neither the comparison nor the position of a match leaks through
//! timing. Without a tokens file (allowed only on a loopback bind) every caller is `admin` and
//! audited as `local`.

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use ring::{
    digest::{SHA256, digest},
    rand::{SecureRandom, SystemRandom},
};
use serde::{Deserialize, Serialize};

use rafael_proxy::headers::constant_time_eq;

use crate::config_file::{self, ConfigFileError};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read everything (GET).
    Viewer,
    /// Read, and run experiments and evolution rounds.
    Operator,
    /// Read, and approve or reject proposals.
    Approver,
    /// Everything.
    Admin,
}

/// What an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// GET endpoints.
    Read,
    /// Experiments and evolution runs.
    Operate,
    /// Approving and rejecting proposals.
    Approve,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (the audit actor), or `local`.
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// How callers are authenticated.
#[derive(Debug)]
pub enum Auth {
    /// No tokens file: loopback callers only, all `admin`.
    Local,
    /// Bearer tokens from a file, read again whenever its content changes (so a removed token
    /// stops working at once, without a restart). The file is small and the admin API quiet:
    /// reading it per call is cheaper than any doubt about a missed change.
    Tokens {
        /// The tokens file.
        path: PathBuf,
        /// The file's text and the tokens parsed from it.
        cache: Mutex<(String, Vec<Token>)>,
    },
}

/// One token of the tokens file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Token {
    /// Its name, used as the audit actor.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Hex SHA-256 of the secret.
    pub sha256: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<Token>,
}

/// Why the tokens file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// It cannot be read (or is not a regular file of bounded size).
    #[error("tokens file: {0}")]
    Read(ConfigFileError),
    /// It cannot be written.
    // The I/O error is in the message, so it is not also a `source` (printed twice by `{:#}`).
    #[error("tokens file {path}: {error}")]
    Write {
        /// The file.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// Its content is wrong.
    #[error("tokens file {path}: {detail}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, with the entry's position.
        detail: String,
    },
}

// === impl Role ===

impl Role {
    /// True when this role may do what `permission` covers.
    pub fn may(self, permission: Permission) -> bool {
        matches!(
            (self, permission),
            (Role::Admin, _)
                | (_, Permission::Read)
                | (Role::Operator, Permission::Operate)
                | (Role::Approver, Permission::Approve)
        )
    }
}

// === impl Auth ===

impl Auth {
    /// Loads the tokens file, or [`Auth::Local`] without one.
    pub fn load(tokens_file: Option<&Path>) -> Result<Self, TokensError> {
        match tokens_file {
            None => Ok(Self::Local),
            Some(path) => {
                let text = read_text(path)?;
                let file = parse_tokens(path, &text)?;
                Ok(Self::Tokens {
                    path: path.to_owned(),
                    cache: Mutex::new((text, file.tokens)),
                })
            }
        }
    }

    /// The caller an `Authorization` header value identifies, or `None` (answered 401).
    pub fn authenticate(&self, authorization: Option<&str>) -> Option<Caller> {
        let (path, cache) = match self {
            Self::Local => {
                return Some(Caller {
                    name: "local".to_owned(),
                    role: Role::Admin,
                });
            }
            Self::Tokens { path, cache } => (path, cache),
        };
        let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
        match read_text(path) {
            Ok(text) if text != cache.0 => match parse_tokens(path, &text) {
                Ok(file) => *cache = (text, file.tokens),
                // A broken edit keeps the tokens read last, and says so.
                Err(e) => tracing::error!("keeping the tokens read before: {e}"),
            },
            Ok(_) => {}
            Err(e) => tracing::error!("keeping the tokens read before: {e}"),
        }
        let tokens = &cache.1;
        let secret = bearer_secret(authorization?)?;
        let presented = hash_hex(secret);
        let mut found = None;
        for token in tokens {
            // Every stored hash is compared, to the end, whatever matched before.
            if constant_time_eq(presented.as_bytes(), token.sha256.as_bytes()) {
                found = Some(token);
            }
        }
        found.map(|token| Caller {
            name: token.name.clone(),
            role: token.role,
        })
    }
}

/// Appends a new token named `name` with `role` to the tokens file at `path` (created if
/// missing) and returns its secret, which is not stored anywhere.
pub fn add_token(path: &Path, name: &str, role: Role) -> Result<String, TokensError> {
    let mut file = if path.exists() {
        read_tokens(path)?
    } else {
        TokensFile::default()
    };
    if file.tokens.iter().any(|t| t.name == name) {
        return Err(invalid(
            path,
            format!("a token named {name:?} exists already"),
        ));
    }
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| invalid(path, "the system random number generator failed".to_owned()))?;
    let secret = format!("rfl_{}", hex(&bytes));
    file.tokens.push(Token {
        name: name.to_owned(),
        role,
        sha256: hash_hex(&secret),
    });
    let text = toml::to_string(&file).map_err(|e| invalid(path, e.to_string()))?;
    std::fs::write(path, text).map_err(|error| TokensError::Write {
        path: path.display().to_string(),
        error,
    })?;
    Ok(secret)
}

/// The secret of an `Authorization: Bearer SECRET` value. The scheme is case-insensitive
/// (RFC 9110 §11.1), so `bearer` and `BEARER` work as `Bearer` does.
fn bearer_secret(authorization: &str) -> Option<&str> {
    let (scheme, secret) = authorization.split_once(' ')?;
    let secret = secret.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !secret.is_empty()).then_some(secret)
}

fn read_text(path: &Path) -> Result<String, TokensError> {
    config_file::read(path).map_err(TokensError::Read)
}

fn read_tokens(path: &Path) -> Result<TokensFile, TokensError> {
    parse_tokens(path, &read_text(path)?)
}

fn parse_tokens(path: &Path, text: &str) -> Result<TokensFile, TokensError> {
    let file: TokensFile = toml::from_str(text).map_err(|e| invalid(path, e.to_string()))?;
    for (i, token) in file.tokens.iter().enumerate() {
        let hash = &token.sha256;
        if hash.len() != 64
            || !hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid(
                path,
                format!("tokens[{i}].sha256: must be 64 lower-case hex digits"),
            ));
        }
        if file.tokens[..i].iter().any(|t| t.name == token.name) {
            return Err(invalid(
                path,
                format!("tokens[{i}].name: duplicate name {:?}", token.name),
            ));
        }
    }
    Ok(file)
}

fn invalid(path: &Path, detail: String) -> TokensError {
    TokensError::Invalid {
        path: path.display().to_string(),
        detail,
    }
}

/// Lower-case hex SHA-256 of `secret`.
pub fn hash_hex(secret: &str) -> String {
    hex(digest(&SHA256, secret.as_bytes()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_may_what_design_section_5_says() {
        use Permission::*;
        let table = [
            (Role::Viewer, [true, false, false]),
            (Role::Operator, [true, true, false]),
            (Role::Approver, [true, false, true]),
            (Role::Admin, [true, true, true]),
        ];
        for (role, expected) in table {
            let got = [Read, Operate, Approve].map(|p| role.may(p));
            assert_eq!(got, expected, "{role:?}");
        }
    }

    #[test]
    fn added_tokens_authenticate_by_their_secret_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let ops = add_token(&path, "ci-operator", Role::Operator).unwrap();
        let view = add_token(&path, "dashboard", Role::Viewer).unwrap();
        assert!(add_token(&path, "dashboard", Role::Admin).is_err());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(&ops) && !text.contains(&view),
            "secrets are not stored"
        );

        let auth = Auth::load(Some(&path)).unwrap();
        let caller = auth.authenticate(Some(&format!("Bearer {ops}"))).unwrap();
        assert_eq!(
            caller,
            Caller {
                name: "ci-operator".into(),
                role: Role::Operator
            }
        );
        assert_eq!(
            auth.authenticate(Some(&format!("Bearer {view}")))
                .unwrap()
                .role,
            Role::Viewer
        );
        assert_eq!(auth.authenticate(Some("Bearer rfl_wrong")), None);
        assert_eq!(
            auth.authenticate(Some(&ops)),
            None,
            "the scheme is required"
        );
        assert_eq!(auth.authenticate(None), None);
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_required() {
        for value in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER  s3cret ",
            "bEaReR s3cret",
        ] {
            assert_eq!(bearer_secret(value), Some("s3cret"), "{value:?}");
        }
        for value in [
            "s3cret",
            "Basic s3cret",
            "Bearers3cret",
            "Bearer ",
            "Bearer",
        ] {
            assert_eq!(bearer_secret(value), None, "{value:?}");
        }
    }

    #[test]
    fn a_token_removed_from_the_file_stops_working_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let leaked = add_token(&path, "leaked", Role::Admin).unwrap();
        let auth = Auth::load(Some(&path)).unwrap();
        assert!(
            auth.authenticate(Some(&format!("Bearer {leaked}")))
                .is_some()
        );
        // Replace the file with one that lacks the leaked token (as an editor would).
        let fresh = dir.path().join("fresh.toml");
        let kept = add_token(&fresh, "kept", Role::Viewer).unwrap();
        std::fs::rename(&fresh, &path).unwrap();
        assert_eq!(auth.authenticate(Some(&format!("Bearer {leaked}"))), None);
        assert!(auth.authenticate(Some(&format!("Bearer {kept}"))).is_some());
    }

    #[test]
    fn a_malformed_tokens_file_names_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(
            &path,
            "[[tokens]]\nname = \"a\"\nrole = \"viewer\"\nsha256 = \"xyz\"\n",
        )
        .unwrap();
        let error = Auth::load(Some(&path)).unwrap_err().to_string();
        assert!(error.contains("tokens[0].sha256"), "{error}");
    }
}
