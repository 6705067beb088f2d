//! One agent per data directory.
//!
//! Two agents on one buffer would hand out the same seqs (an overlapping
//! restart: the old agent still draining within `shutdown_grace` when the
//! new one starts; or an operator's second instance). The agent takes an
//! exclusive `flock(2)` on the data directory itself before it opens the
//! buffer and holds it until the buffer is closed; a second agent exits
//! with a message naming the holder's pid (from `aeris-edge.pid`, written
//! when the directory is writable), and systemd starts it again once the
//! first is gone. The kernel releases the lock when the process dies,
//! SIGKILL included, so nothing stale ever blocks a start; and locking the
//! directory needs no write access, so a card remounted read-only still
//! gets its one agent.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

/// Names the holder's pid, for the refusal message only.
pub const PID_FILE: &str = "aeris-edge.pid";

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another aeris-edge ({holder}) is using the data directory {dir}; \
         this one exits rather than share its buffer"
    )]
    Held { dir: PathBuf, holder: String },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held while the agent uses the data directory; dropping it unlocks.
#[derive(Debug)]
pub struct DataDirLock {
    _dir: File,
}

impl DataDirLock {
    /// Locks `dir` (which must exist) for this process, or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, LockError> {
        let io = |source| LockError::Io {
            path: dir.to_owned(),
            source,
        };
        let handle = File::open(dir).map_err(io)?;
        let pid_file = dir.join(PID_FILE);
        match handle.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = match std::fs::read_to_string(&pid_file) {
                    Ok(pid) if !pid.trim().is_empty() => format!("pid {}", pid.trim()),
                    _ => "pid unknown".to_owned(),
                };
                return Err(LockError::Held {
                    dir: dir.to_owned(),
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        // Best effort: a read-only directory keeps the old pid, which only
        // makes a refusal message less precise.
        let _ = std::fs::write(&pid_file, format!("{}\n", std::process::id()));
        Ok(DataDirLock { _dir: handle })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        match DataDirLock::acquire(dir.path()) {
            Err(LockError::Held { holder, .. }) => {
                assert_eq!(holder, format!("pid {}", std::process::id()))
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
