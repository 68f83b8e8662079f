//! Reading the files rafael is configured by (the config file, the tokens file): regular
//! files only, of at most [`MAX_CONFIG_BYTES`], so a path to `/dev/zero`, a FIFO or a runaway
//! file cannot hang `rafael config check`, `rafael run` or a reload, nor grow their memory
//! without limit.
//!
//! The checks are made on the path before it is opened (a FIFO would block the open itself),
//! again on the file opened (the path may have been swapped in between), and the read goes
//! through `take(limit + 1)`, so a file that grows while it is read is still bounded.

use std::{
    fs::{File, Metadata, OpenOptions},
    io::Read,
    path::Path,
};

/// Largest config or tokens file read: 4 MiB. The example config is 3 KiB; a generated one
/// with thousands of routes stays far below this.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Why a config file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file system refused.
    // The I/O error is in the message, so it is not also a `source` (printed twice by `{:#}`).
    #[error("cannot read {path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// What the file system said.
        error: std::io::Error,
    },
    /// A directory, FIFO, socket or device.
    #[error("{path}: not a regular file ({kind}); a config file must be one")]
    NotRegular {
        /// The file.
        path: String,
        /// What it is instead.
        kind: &'static str,
    },
    /// Larger than [`MAX_CONFIG_BYTES`].
    #[error("{path}: larger than {mib} MiB, the limit for a config file", mib = MAX_CONFIG_BYTES >> 20)]
    TooLarge {
        /// The file.
        path: String,
    },
    /// Not UTF-8 text.
    #[error("{path}: not UTF-8 text")]
    NotText {
        /// The file.
        path: String,
    },
}

/// Reads the regular file at `path`, of at most [`MAX_CONFIG_BYTES`], as UTF-8 text.
pub fn read(path: &Path) -> Result<String, ConfigFileError> {
    let name = || path.display().to_string();
    let io = |error| ConfigFileError::Io {
        path: name(),
        error,
    };
    check(&std::fs::metadata(path).map_err(io)?, path)?;
    let file = open(path).map_err(io)?;
    check(&file.metadata().map_err(io)?, path)?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigFileError::TooLarge { path: name() });
    }
    String::from_utf8(bytes).map_err(|_| ConfigFileError::NotText { path: name() })
}

/// Opens without blocking: should a FIFO be swapped in after the check, the open returns at
/// once and the check of the opened file refuses it.
#[cfg(unix)]
fn open(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).open(path)
}

fn check(metadata: &Metadata, path: &Path) -> Result<(), ConfigFileError> {
    if !metadata.is_file() {
        return Err(ConfigFileError::NotRegular {
            path: path.display().to_string(),
            kind: kind_of(metadata),
        });
    }
    if metadata.len() > MAX_CONFIG_BYTES {
        return Err(ConfigFileError::TooLarge {
            path: path.display().to_string(),
        });
    }
    Ok(())
}

#[cfg(unix)]
fn kind_of(metadata: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kind = metadata.file_type();
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else {
        "not a file"
    }
}

#[cfg(not(unix))]
fn kind_of(metadata: &Metadata) -> &'static str {
    if metadata.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_up_to_the_limit_are_read_and_nothing_else_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rafael.toml");
        std::fs::write(&path, "[admin]\n").unwrap();
        assert_eq!(read(&path).unwrap(), "[admin]\n");

        let exact = dir.path().join("exact.toml");
        std::fs::write(&exact, vec![b'#'; MAX_CONFIG_BYTES as usize]).unwrap();
        assert_eq!(read(&exact).unwrap().len() as u64, MAX_CONFIG_BYTES);
        std::fs::write(&exact, vec![b'#'; MAX_CONFIG_BYTES as usize + 1]).unwrap();
        let error = read(&exact).unwrap_err().to_string();
        assert!(error.contains("larger than 4 MiB"), "{error}");

        let error = read(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("not a regular file (a directory)"),
            "{error}"
        );
        let error = read(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(
            error.contains("/dev/zero: not a regular file (a character device)"),
            "{error}"
        );
        let error = read(&dir.path().join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("cannot read "), "{error}");

        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        let error = read(&path).unwrap_err().to_string();
        assert!(error.contains("not UTF-8"), "{error}");
    }
}
