//! The agent's durable state: one small JSON file under `--state-dir`, written atomically.
//!
//! A device that is about to reboot may lose power at any instant, so there is no embedded
//! database here: every write goes to a temporary file that is fsynced, renamed over the old
//! file, and followed by an fsync of the directory. A reader therefore sees either the old
//! state or the new one, never a torn mix.
//!
//! The state records what must survive a reboot: the last valid policy (so a rejected policy
//! after a restart still falls back to it), the occurrences the device has rebooted for (so a
//! duplicate request is answered "already done", also across restarts) and the reboot in
//! progress (so the agent recognises, after the restart, that the reboot completed).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The file name of the state inside the state directory.
pub const STATE_FILE: &str = "state.json";
/// The temporary file a new state is written to before it is renamed over [`STATE_FILE`].
const TEMP_FILE: &str = "state.json.tmp";
/// The format version written into every state file.
pub const STATE_FORMAT: u32 = 1;
/// How many reboot records are kept; older ones are dropped (windows that long ago are over).
pub const MAX_REBOOT_RECORDS: usize = 64;
/// State files larger than this are refused rather than read into memory.
const MAX_STATE_BYTES: u64 = 1024 * 1024;

/// Everything the agent keeps across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentState {
    /// The format version ([`STATE_FORMAT`]).
    pub format: u32,
    /// The last valid desired `maintenance` the agent applied, as it arrived in the twin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<serde_json::Value>,
    /// Reboots the device performed, oldest first, at most [`MAX_REBOOT_RECORDS`].
    #[serde(default)]
    pub reboots: Vec<RebootRecord>,
    /// The reboot that was about to happen when the state was last written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_progress: Option<InProgressReboot>,
}

impl Default for AgentState {
    fn default() -> Self {
        Self {
            format: STATE_FORMAT,
            policy: None,
            reboots: Vec::new(),
            in_progress: None,
        }
    }
}

impl AgentState {
    /// Whether the device already rebooted for the window that opened at `occurrence`.
    pub fn rebooted_for(&self, occurrence: DateTime<Utc>) -> bool {
        self.reboots
            .iter()
            .any(|record| record.occurrence == Some(occurrence))
    }

    /// Records a reboot, dropping the oldest records beyond [`MAX_REBOOT_RECORDS`].
    pub fn record_reboot(&mut self, record: RebootRecord) {
        self.reboots.push(record);
        if self.reboots.len() > MAX_REBOOT_RECORDS {
            let excess = self.reboots.len() - MAX_REBOOT_RECORDS;
            self.reboots.drain(..excess);
        }
    }
}

/// A reboot the device performed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RebootRecord {
    /// The window occurrence (opening instant) the reboot was for; `None` for a forced reboot
    /// outside any window.
    pub occurrence: Option<DateTime<Utc>>,
    /// The policy that was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// When the reboot started (`iothubDM.reboot.lastReboot`).
    pub started_at: DateTime<Utc>,
    /// When the agent came back and saw the reboot completed.
    pub completed_at: DateTime<Utc>,
    /// Whether the reboot was forced past the window check.
    #[serde(default)]
    pub forced: bool,
}

/// A reboot that was persisted before the reboot command ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InProgressReboot {
    /// The window occurrence the reboot is for; `None` for a forced reboot outside any window.
    pub occurrence: Option<DateTime<Utc>>,
    /// The policy name the request was for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The policy revision the request was for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// When the reboot started (reported as `lastReboot`).
    pub started_at: DateTime<Utc>,
    /// Whether the reboot was forced past the window check.
    #[serde(default)]
    pub forced: bool,
    /// Why it was forced (audited in the reported properties).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The kernel boot id when the reboot was persisted; a different id after the restart proves
    /// the machine really rebooted. `None` where the platform has no boot id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

/// Errors reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state directory could not be created.
    #[error("cannot create the state directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The state file could not be read.
    #[error("cannot read the state file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The state file is not valid JSON of the expected shape.
    #[error(
        "the state file {path} is corrupt ({source}); move it away to start with an empty state \
         (the device then forgets which windows it already rebooted in)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The state file is larger than any state this agent writes.
    #[error("the state file {path} is {size} bytes, larger than the {max} bytes an agent writes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The state file was written by a newer agent.
    #[error("the state file {path} has format {found}; this agent understands format {expected}")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// The format found.
        found: u32,
        /// The format this agent writes.
        expected: u32,
    },
    /// Writing the new state failed at one of its steps.
    #[error("cannot write the state file {path} ({step}): {source}")]
    Write {
        /// The file being written.
        path: PathBuf,
        /// Which step failed (create, write, fsync, rename, fsync directory).
        step: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Reads and atomically writes [`AgentState`] in one directory.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// A store in `dir`, creating the directory when it does not exist.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StateError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| StateError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// The directory the state lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of the state file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Reads the state; a missing file is the empty state of a first start.
    pub fn load(&self) -> Result<AgentState, StateError> {
        let path = self.path();
        let size = match fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(AgentState::default()),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        if size > MAX_STATE_BYTES {
            return Err(StateError::TooLarge {
                path,
                size,
                max: MAX_STATE_BYTES,
            });
        }
        let bytes = fs::read(&path).map_err(|source| StateError::Read {
            path: path.clone(),
            source,
        })?;
        let state: AgentState =
            serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                path: path.clone(),
                source,
            })?;
        if state.format != STATE_FORMAT {
            return Err(StateError::UnknownFormat {
                path,
                found: state.format,
                expected: STATE_FORMAT,
            });
        }
        Ok(state)
    }

    /// Writes `state` atomically: temp file, fsync, rename, fsync of the directory.
    pub fn save(&self, state: &AgentState) -> Result<(), StateError> {
        let path = self.path();
        let temp = self.dir.join(TEMP_FILE);
        let fail = |step: &'static str| {
            let path = path.clone();
            move |source: io::Error| StateError::Write { path, step, source }
        };
        let mut bytes = serde_json::to_vec_pretty(state).map_err(|err| StateError::Write {
            path: path.clone(),
            step: "serialize",
            source: io::Error::other(err),
        })?;
        bytes.push(b'\n');
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(fail("create the temporary file"))?;
        file.write_all(&bytes)
            .map_err(fail("write the temporary file"))?;
        file.sync_all().map_err(fail("fsync the temporary file"))?;
        drop(file);
        fs::rename(&temp, &path).map_err(fail("rename over the state file"))?;
        sync_dir(&self.dir).map_err(fail("fsync the state directory"))?;
        Ok(())
    }
}

/// Fsyncs a directory so a rename inside it is durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Directories cannot be opened for fsync on this platform; the rename is as durable as it gets.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 29, hour, 0, 0).unwrap()
    }

    fn record(hour: u32) -> RebootRecord {
        RebootRecord {
            occurrence: Some(at(hour)),
            policy: Some("weekly".into()),
            started_at: at(hour),
            completed_at: at(hour),
            forced: false,
        }
    }

    #[test]
    fn missing_file_is_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path().join("nested/state")).unwrap();
        assert_eq!(store.load().unwrap(), AgentState::default());
    }

    #[test]
    fn save_then_load_round_trips_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut state = AgentState {
            policy: Some(serde_json::json!({"policy": "weekly", "revision": "abc"})),
            ..AgentState::default()
        };
        state.record_reboot(record(1));
        state.in_progress = Some(InProgressReboot {
            occurrence: Some(at(2)),
            policy: Some("weekly".into()),
            revision: Some("abc".into()),
            started_at: at(2),
            forced: true,
            reason: Some("hotfix".into()),
            boot_id: Some("boot-1".into()),
        });
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
        assert!(!dir.path().join(TEMP_FILE).exists());

        // A second save replaces the first completely.
        let empty = AgentState::default();
        store.save(&empty).unwrap();
        assert_eq!(store.load().unwrap(), empty);
    }

    #[test]
    fn a_stale_temp_file_from_a_crash_is_ignored_and_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut state = AgentState::default();
        state.record_reboot(record(1));
        store.save(&state).unwrap();
        // Power lost halfway through the next write: a torn temp file, the old state intact.
        fs::write(dir.path().join(TEMP_FILE), b"{\"format\":1,\"reb").unwrap();
        assert_eq!(store.load().unwrap(), state);
        store.save(&AgentState::default()).unwrap();
        assert_eq!(store.load().unwrap(), AgentState::default());
    }

    #[test]
    fn corrupt_and_foreign_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        fs::write(store.path(), b"not json").unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(STATE_FILE), "{err}");

        fs::write(store.path(), br#"{"format": 99}"#).unwrap();
        let err = store.load().unwrap_err();
        assert!(
            matches!(err, StateError::UnknownFormat { found: 99, .. }),
            "{err}"
        );
    }

    #[test]
    fn reboot_records_are_bounded_and_queryable() {
        let mut state = AgentState::default();
        for i in 0..(MAX_REBOOT_RECORDS + 5) {
            let mut r = record(0);
            r.occurrence = Some(at(0) + chrono::Duration::days(i as i64));
            state.record_reboot(r);
        }
        assert_eq!(state.reboots.len(), MAX_REBOOT_RECORDS);
        assert!(!state.rebooted_for(at(0)));
        assert!(state.rebooted_for(at(0) + chrono::Duration::days(MAX_REBOOT_RECORDS as i64)));
    }
}
