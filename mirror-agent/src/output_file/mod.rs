//! How the agent opens the files it writes captured traffic to (`--record`, `--diff-log`,
//! `--write-pcap`): they hold credentials in clear, and the agent runs as root.
//!
//! Owns one rule set, so every output behaves the same:
//! - a path that does not exist is created with mode 0600 (`O_CREAT | O_EXCL`, so nothing can
//!   be slipped in between the check and the create);
//! - a symlink is never followed (`O_NOFOLLOW`): it could point anywhere root can write;
//! - an existing regular file is refused unless the operator asked to overwrite it
//!   (`--overwrite`); it is then truncated but keeps its owner and mode: the agent never changes
//!   the mode of a file it did not create (a warning says when others can read it);
//! - a FIFO or a character device (a pipe to another program, `/dev/null`) is written as is,
//!   neither truncated nor chmod'ed.
//!
//! Depends on nothing else in the crate.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Why an output file was not opened. One line each, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum OutputFileError {
    #[error("{path}: exists; give --overwrite to replace it")]
    Exists { path: String },
    #[error("{path}: is a symlink; the agent does not follow symlinks for its output files")]
    Symlink { path: String },
    #[error("{path}: is a directory")]
    Directory { path: String },
    #[error("{path}: not a regular file, FIFO or character device")]
    Unsupported { path: String },
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

/// Opens `path` for writing by the rules above; `overwrite` allows replacing an existing
/// regular file.
pub fn create(path: &Path, overwrite: bool) -> Result<File, OutputFileError> {
    let name = || path.display().to_string();
    let io_err = |source| OutputFileError::Io {
        path: name(),
        source,
    };
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => return Ok(f),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(e)),
    }
    // It exists: look at what it is without following a symlink, then open that very thing
    // (O_NOFOLLOW again: a symlink swapped in after the check fails the open).
    let meta = std::fs::symlink_metadata(path).map_err(io_err)?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err(OutputFileError::Symlink { path: name() });
    }
    if kind.is_dir() {
        return Err(OutputFileError::Directory { path: name() });
    }
    if kind.is_file() && !overwrite {
        return Err(OutputFileError::Exists { path: name() });
    }
    if !(kind.is_file() || kind.is_fifo() || kind.is_char_device()) {
        return Err(OutputFileError::Unsupported { path: name() });
    }
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => OutputFileError::Symlink { path: name() },
            _ => io_err(e),
        })?;
    // The file opened must be the one checked (not swapped for another kind in between).
    let opened = file.metadata().map_err(io_err)?;
    if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
        return Err(io_err(io::Error::other("replaced while being opened")));
    }
    if opened.file_type().is_file() {
        file.set_len(0).map_err(io_err)?;
        if opened.mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", opened.mode() & 0o777),
                "overwriting a file others can read; it will hold captured requests"
            );
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests;
