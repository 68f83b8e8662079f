//! Validation errors that name the key path they concern.

use std::fmt;

/// One problem in a config file, located by its key path (`routes[1].policy.retry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path with `[i]` for array elements; empty for whole-file problems.
    pub path: String,
    /// What is wrong, phrased for the operator.
    pub message: String,
}

/// Every problem found in one config file, in file order where it is known.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

// === impl ConfigError ===

/// The message of a key the schema does not have.
pub const UNKNOWN_KEY: &str = "unknown key";
/// The start of the message of a top-level section the schema does not have.
pub const UNKNOWN_SECTION: &str = "unknown section";

impl ConfigError {
    /// Whether this is a key or section the schema does not have (the rest of the file still
    /// decoded around it).
    pub fn is_unknown_key(&self) -> bool {
        self.message == UNKNOWN_KEY || self.message.starts_with(UNKNOWN_SECTION)
    }

    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

// === impl ConfigErrors ===

impl ConfigErrors {
    /// Records a problem at `path`.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError::new(path, message));
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of problems recorded.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The recorded problems.
    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter()
    }

    /// `Ok(value)` when nothing was recorded, otherwise the errors.
    pub fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        Self(vec![error])
    }
}
