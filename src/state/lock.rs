//! One writer per state directory: an exclusive OS lock on a lock file in it, held for the
//! life of the process. The OS releases it when the process dies, SIGKILL included, so a
//! stale lock can never block a restart.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::StateError;

pub const LOCK_FILE: &str = "casestream.lock";

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    /// Takes the lock of `dir` (creating the directory if needed), or fails at once with
    /// [`StateError::Locked`] when another process holds it.
    pub fn acquire(dir: &Path) -> Result<Self, StateError> {
        super::ensure_dir(dir)?;
        let path = dir.join(LOCK_FILE);
        let io_error = |source| StateError::Lock {
            dir: dir.display().to_string(),
            lock: path.display().to_string(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StateError::Locked {
                    dir: dir.display().to_string(),
                    lock: path.display().to_string(),
                    holder: pid_in(&mut file)
                        .map_or_else(String::new, |pid| format!(" (pid {pid})")),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_error(e)),
        }
        // Name the holder for the next one who finds it locked.
        let written = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()));
        written.map_err(io_error)?;
        Ok(Self { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a process holds `dir`'s lock: `Some` with its pid (`?` when the lock file does
    /// not name it). Asks with a shared lock on a read-only handle, so it writes nothing (a
    /// state mounted read-only works) and never keeps a starting forwarder out for long.
    pub fn holder(dir: &Path) -> Option<String> {
        let mut file = File::open(dir.join(LOCK_FILE)).ok()?;
        match file.try_lock_shared() {
            Err(TryLockError::WouldBlock) => Some(pid_in(&mut file).unwrap_or_else(|| "?".into())),
            Ok(()) | Err(TryLockError::Error(_)) => None,
        }
    }
}

/// The pid the lock file names, if any.
fn pid_in(file: &mut File) -> Option<String> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    let pid = text.trim();
    (!pid.is_empty()).then(|| pid.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path()).unwrap();
        let err = StateLock::acquire(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StateError::Locked { .. }), "{text}");
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(text.contains("another casestream process"), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(first);
        StateLock::acquire(dir.path()).unwrap();
    }
}
