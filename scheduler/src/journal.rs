//! The scheduler's crash-safe journal: every `reboot` invocation, keyed by
//! (policy, device, occurrence), written and flushed to disk *before* the call.
//!
//! Stored in sled under `--state-dir` (default `.casement/scheduler`). A restarted scheduler reads
//! it back ([`Journal::entries`]) and feeds it to the rollout, which resolves the entries whose
//! outcome is unknown from the twins — so no device is rebooted twice in one occurrence and none
//! is forgotten. Pauses (failure budget exceeded) are journaled too, for the rollout and the
//! report.
//!
//! sled holds an exclusive lock on its directory, so `casement report` cannot open the journal
//! while `casement run` has it. The run loop therefore also writes a snapshot
//! ([`Journal::write_snapshot`], `journal.json` next to the database, replaced atomically) that
//! [`JournalView::load`] reads when the database is locked. The snapshot holds the whole
//! journal, so the loop writes it only when the journal changed, and during a busy window at
//! most once a [`SNAPSHOT_INTERVAL`](crate::run::SNAPSHOT_INTERVAL) (and whenever the loop
//! settles or stops): a report read while the scheduler runs is that much behind.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::rollout::{Entry, Window};

/// The default state directory, relative to the working directory.
pub const DEFAULT_STATE_DIR: &str = ".casement/scheduler";

/// The database's directory name inside the state directory.
const DB_DIR: &str = "journal";
/// The snapshot's file name inside the state directory.
const SNAPSHOT_FILE: &str = "journal.json";
/// The separator between key parts (never in a policy name, device id or timestamp).
const SEP: u8 = 0;

/// A journal failure, with the state directory or the record concerned.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The database could not be opened (or is locked by another scheduler).
    #[error("cannot open the journal in {path}: {source}")]
    Open {
        /// The database directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: sled::Error,
    },
    /// Another process (a running `casement run`) holds the journal.
    #[error(
        "the journal in {path} is in use by another process (is `casement run` running with the same --state-dir?)"
    )]
    Locked {
        /// The database directory.
        path: PathBuf,
    },
    /// A write or flush failed.
    #[error("cannot write the journal record for {what}: {source}")]
    Write {
        /// The record (`policy/device/occurrence` or `pause policy/occurrence`).
        what: String,
        /// Why.
        #[source]
        source: sled::Error,
    },
    /// A read failed.
    #[error("cannot read the journal: {0}")]
    Read(#[source] sled::Error),
    /// A stored record is not valid JSON for its type.
    #[error("journal record {key} is corrupt: {source}")]
    Corrupt {
        /// The key, printable.
        key: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The snapshot file could not be written or read.
    #[error("journal snapshot {path}: {source}")]
    Snapshot {
        /// The snapshot file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The snapshot file is not valid.
    #[error("journal snapshot {path} is corrupt: {source}")]
    SnapshotCorrupt {
        /// The snapshot file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// A journaled pause: an occurrence of a policy that exceeded its failure budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PauseRecord {
    /// The policy name.
    pub policy: String,
    /// The occurrence paused (window opens).
    pub occurrence: DateTime<Utc>,
    /// When that window closes.
    pub closes_at: DateTime<Utc>,
    /// Failures counted when it paused.
    pub failures: u32,
    /// Devices in the occurrence then.
    pub devices: u32,
    /// The budget, as written in the policy (`5` or `5%`).
    pub budget: String,
    /// When it paused.
    pub at: DateTime<Utc>,
}

impl PauseRecord {
    /// The paused window.
    pub fn window(&self) -> Window {
        Window {
            opens_at: self.occurrence,
            closes_at: self.closes_at,
            occurrence: self.occurrence,
        }
    }
}

/// Everything in a journal, as the snapshot file holds it and the report reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JournalView {
    /// When it was taken.
    pub taken_at: Option<DateTime<Utc>>,
    /// Invocation records.
    pub entries: Vec<Entry>,
    /// Pauses.
    pub pauses: Vec<PauseRecord>,
}

impl JournalView {
    /// Reads the journal in `state_dir` for a report: the database when it is free, else the
    /// snapshot the running scheduler keeps; empty when there is neither.
    pub fn load(state_dir: &Path) -> Result<Self, JournalError> {
        let db_path = state_dir.join(DB_DIR);
        if !db_path.exists() {
            return Ok(Self::default());
        }
        match Journal::open(state_dir) {
            Ok(journal) => journal.view(None),
            Err(JournalError::Locked { .. }) => Self::read_snapshot(state_dir),
            Err(e) => Err(e),
        }
    }

    /// Reads the snapshot file in `state_dir` (empty when there is none).
    pub fn read_snapshot(state_dir: &Path) -> Result<Self, JournalError> {
        let path = state_dir.join(SNAPSHOT_FILE);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(JournalError::Snapshot { path, source }),
        };
        serde_json::from_slice(&text)
            .map_err(|source| JournalError::SnapshotCorrupt { path, source })
    }

    /// The record for (policy, device, occurrence), if any.
    pub fn entry(&self, policy: &str, device: &str, occurrence: DateTime<Utc>) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.policy == policy && e.device == device && e.occurrence == occurrence)
    }

    /// Whether the occurrence of the policy was paused.
    pub fn paused(&self, policy: &str, occurrence: DateTime<Utc>) -> Option<&PauseRecord> {
        self.pauses
            .iter()
            .find(|p| p.policy == policy && p.occurrence == occurrence)
    }
}

/// The journal database.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
    db: sled::Db,
    entries: sled::Tree,
    pauses: sled::Tree,
    /// Bumped by every write: whether the snapshot is behind.
    generation: Arc<AtomicU64>,
}

fn occurrence_key(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Removes `keys` from `tree`; returns how many.
fn remove_all(
    tree: &sled::Tree,
    keys: impl Iterator<Item = Vec<u8>>,
) -> Result<usize, JournalError> {
    let mut removed = 0;
    for k in keys {
        tree.remove(&k).map_err(|source| JournalError::Write {
            what: printable(&k),
            source,
        })?;
        removed += 1;
    }
    Ok(removed)
}

/// Every record of `tree` (keys start with the policy name), optionally only `policy`'s.
fn read_all<T: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    policy: Option<&str>,
) -> Result<Vec<T>, JournalError> {
    let prefix = policy.map(|p| key(&[p, ""])).unwrap_or_default();
    tree.scan_prefix(prefix)
        .map(|item| {
            let (k, v) = item.map_err(JournalError::Read)?;
            serde_json::from_slice(&v).map_err(|source| JournalError::Corrupt {
                key: printable(&k),
                source,
            })
        })
        .collect()
}

fn key(parts: &[&str]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(SEP);
        }
        k.extend_from_slice(p.as_bytes());
    }
    k
}

fn printable(key: &[u8]) -> String {
    String::from_utf8_lossy(key).replace('\0', "/")
}

fn entry_key(e: &Entry) -> Vec<u8> {
    key(&[&e.policy, &e.device, &occurrence_key(e.occurrence)])
}

fn pause_key(p: &PauseRecord) -> Vec<u8> {
    key(&[&p.policy, &occurrence_key(p.occurrence)])
}

impl Journal {
    /// Opens (or creates) the journal in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        let path = state_dir.join(DB_DIR);
        let db = sled::Config::new().path(&path).open().map_err(|source| {
            let locked = matches!(&source, sled::Error::Io(e) if e.to_string().contains("could not acquire lock"));
            if locked {
                JournalError::Locked { path: path.clone() }
            } else {
                JournalError::Open {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        let open_tree = |name: &str| {
            db.open_tree(name).map_err(|source| JournalError::Open {
                path: path.clone(),
                source,
            })
        };
        let entries = open_tree("entries")?;
        let pauses = open_tree("pauses")?;
        Ok(Self {
            dir: state_dir.to_owned(),
            db,
            entries,
            pauses,
            generation: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Counts the writes to this journal (in this process): two equal readings mean nothing
    /// was recorded, paused or pruned in between.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes records and flushes them to disk; returns only once they are durable.
    pub async fn record_all(&self, entries: &[Entry]) -> Result<(), JournalError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let what = || {
            if entries.len() == 1 {
                printable(&entry_key(first))
            } else {
                format!(
                    "{} and {} more",
                    printable(&entry_key(first)),
                    entries.len() - 1
                )
            }
        };
        // One insert per record, not a `sled::Batch`: the first batch in a process switches on
        // sled's process-wide concurrency control, which waits for every other sled operation
        // in the process (a hub embedded in `casement demo` included). Records are independent;
        // the flush below makes them all durable before any call is made.
        for e in entries {
            let value = serde_json::to_vec(e).map_err(|source| JournalError::Corrupt {
                key: printable(&entry_key(e)),
                source,
            })?;
            self.entries
                .insert(entry_key(e), value)
                .map_err(|source| JournalError::Write {
                    what: what(),
                    source,
                })?;
        }
        self.changed();
        self.flush(what).await
    }

    /// Writes one record and flushes it.
    pub async fn record(&self, entry: &Entry) -> Result<(), JournalError> {
        self.record_all(std::slice::from_ref(entry)).await
    }

    /// Journals a pause and flushes it.
    pub async fn record_pause(&self, pause: &PauseRecord) -> Result<(), JournalError> {
        let k = pause_key(pause);
        let what = || format!("pause {}", printable(&k));
        let value = serde_json::to_vec(pause).map_err(|source| JournalError::Corrupt {
            key: what(),
            source,
        })?;
        self.pauses
            .insert(&k, value)
            .map_err(|source| JournalError::Write {
                what: what(),
                source,
            })?;
        self.changed();
        self.flush(what).await
    }

    /// Flushes to disk. Not sled's `flush_async`: in sled 0.34 it can deadlock when several
    /// flushes (of this or another database in the process) are polled at once
    /// (spacejam/sled#1308, #1241); a blocking flush on tokio's blocking pool cannot.
    async fn flush(&self, what: impl Fn() -> String) -> Result<(), JournalError> {
        let db = self.db.clone();
        let flushed = tokio::task::spawn_blocking(move || db.flush())
            .await
            .unwrap_or_else(|join| {
                Err(sled::Error::ReportableBug(format!(
                    "the flush task failed: {join}"
                )))
            });
        flushed.map(drop).map_err(|source| JournalError::Write {
            what: what(),
            source,
        })
    }

    /// The record for (policy, device, occurrence), if any.
    pub fn get(
        &self,
        policy: &str,
        device: &str,
        occurrence: DateTime<Utc>,
    ) -> Result<Option<Entry>, JournalError> {
        let k = key(&[policy, device, &occurrence_key(occurrence)]);
        let Some(v) = self.entries.get(&k).map_err(JournalError::Read)? else {
            return Ok(None);
        };
        serde_json::from_slice(&v)
            .map(Some)
            .map_err(|source| JournalError::Corrupt {
                key: printable(&k),
                source,
            })
    }

    /// Every invocation record, optionally only those of one policy.
    pub fn entries(&self, policy: Option<&str>) -> Result<Vec<Entry>, JournalError> {
        read_all(&self.entries, policy)
    }

    /// Every pause, optionally only those of one policy.
    pub fn pauses(&self, policy: Option<&str>) -> Result<Vec<PauseRecord>, JournalError> {
        read_all(&self.pauses, policy)
    }

    /// Everything in the journal (optionally only one policy), stamped `taken_at`.
    pub fn view(&self, taken_at: Option<DateTime<Utc>>) -> Result<JournalView, JournalError> {
        Ok(JournalView {
            taken_at,
            entries: self.entries(None)?,
            pauses: self.pauses(None)?,
        })
    }

    /// Removes records of windows that closed before `before`; returns how many.
    pub fn prune(&self, before: DateTime<Utc>) -> Result<usize, JournalError> {
        let entries = self
            .entries(None)?
            .into_iter()
            .filter(|e| e.closes_at < before)
            .map(|e| entry_key(&e));
        let removed = remove_all(&self.entries, entries)?;
        let pauses = self
            .pauses(None)?
            .into_iter()
            .filter(|p| p.closes_at < before)
            .map(|p| pause_key(&p));
        let removed = removed + remove_all(&self.pauses, pauses)?;
        if removed > 0 {
            self.changed();
        }
        Ok(removed)
    }

    /// Writes the snapshot `journal.json` for `casement report` (temp file, fsync, rename).
    pub fn write_snapshot(&self, taken_at: DateTime<Utc>) -> Result<(), JournalError> {
        let view = self.view(Some(taken_at))?;
        let path = self.dir.join(SNAPSHOT_FILE);
        let tmp = self.dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        let io = |source| JournalError::Snapshot {
            path: path.clone(),
            source,
        };
        let json = serde_json::to_vec(&view).map_err(|source| JournalError::SnapshotCorrupt {
            path: path.clone(),
            source,
        })?;
        let mut file = fs::File::create(&tmp).map_err(io)?;
        file.write_all(&json).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        fs::rename(&tmp, &path).map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::EntryState;
    use chrono::TimeZone;

    fn entry(policy: &str, device: &str, day: u32, state: EntryState) -> Entry {
        let occurrence = Utc.with_ymd_and_hms(2026, 3, day, 1, 0, 0).unwrap();
        Entry {
            policy: policy.into(),
            device: device.into(),
            occurrence,
            closes_at: occurrence + chrono::TimeDelta::hours(2),
            revision: "r1".into(),
            attempts: 1,
            failures: 0,
            invoked_at: Some(occurrence),
            accepted_at: None,
            state,
            updated_at: occurrence,
        }
    }

    #[tokio::test]
    async fn records_survive_a_reopen_keyed_by_policy_device_occurrence() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = Journal::open(dir.path()).unwrap();
            j.record(&entry("a", "d1", 1, EntryState::Invoking))
                .await
                .unwrap();
            j.record(&entry("a", "d1", 8, EntryState::Invoking))
                .await
                .unwrap();
            j.record(&entry("a-b", "d1", 1, EntryState::Invoking))
                .await
                .unwrap();
            // Same key: replaced.
            j.record(&entry("a", "d1", 1, EntryState::Completed))
                .await
                .unwrap();
        }
        let j = Journal::open(dir.path()).unwrap();
        let all = j.entries(None).unwrap();
        assert_eq!(all.len(), 3);
        let a = j.entries(Some("a")).unwrap();
        assert_eq!(a.len(), 2, "policy prefix does not match a-b");
        let got = j
            .get(
                "a",
                "d1",
                Utc.with_ymd_and_hms(2026, 3, 1, 1, 0, 0).unwrap(),
            )
            .unwrap()
            .unwrap();
        assert_eq!(got.state, EntryState::Completed);
    }

    #[tokio::test]
    async fn a_second_opener_is_told_the_journal_is_locked_and_the_report_reads_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.record(&entry("a", "d1", 1, EntryState::Accepted))
            .await
            .unwrap();
        let pause = PauseRecord {
            policy: "a".into(),
            occurrence: Utc.with_ymd_and_hms(2026, 3, 1, 1, 0, 0).unwrap(),
            closes_at: Utc.with_ymd_and_hms(2026, 3, 1, 3, 0, 0).unwrap(),
            failures: 3,
            devices: 10,
            budget: "2".into(),
            at: Utc.with_ymd_and_hms(2026, 3, 1, 1, 30, 0).unwrap(),
        };
        j.record_pause(&pause).await.unwrap();
        match Journal::open(dir.path()) {
            Err(JournalError::Locked { .. }) => {}
            other => panic!("expected Locked, got {other:?}"),
        }
        // Before any snapshot: the view is empty.
        assert_eq!(
            JournalView::load(dir.path()).unwrap(),
            JournalView::default()
        );
        j.write_snapshot(pause.at).unwrap();
        let view = JournalView::load(dir.path()).unwrap();
        assert_eq!(view.entries.len(), 1);
        assert_eq!(view.pauses, vec![pause.clone()]);
        assert!(view.paused("a", pause.occurrence).is_some());
        drop(j);
        // Free again: read directly.
        let view = JournalView::load(dir.path()).unwrap();
        assert_eq!(view.entries.len(), 1);
        assert_eq!(view.taken_at, None);
    }

    #[tokio::test]
    async fn prune_drops_old_windows_only() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.record_all(&[
            entry("a", "d1", 1, EntryState::Completed),
            entry("a", "d1", 8, EntryState::Completed),
        ])
        .await
        .unwrap();
        let removed = j
            .prune(Utc.with_ymd_and_hms(2026, 3, 5, 0, 0, 0).unwrap())
            .unwrap();
        assert_eq!(removed, 1);
        assert_eq!(j.entries(None).unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_flushes_complete() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..64 {
            let j = j.clone();
            tasks.spawn(async move {
                j.record(&entry("a", &format!("d{n}"), 1, EntryState::Invoking))
                    .await
            });
        }
        let all = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while let Some(r) = tasks.join_next().await {
                r.unwrap().unwrap();
            }
        })
        .await;
        assert!(all.is_ok(), "flushes hung");
        assert_eq!(j.entries(None).unwrap().len(), 64);
    }

    #[test]
    fn no_journal_means_an_empty_view() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            JournalView::load(dir.path()).unwrap(),
            JournalView::default()
        );
    }

    #[test]
    fn a_corrupt_snapshot_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(SNAPSHOT_FILE), b"{not json").unwrap();
        let err = JournalView::read_snapshot(dir.path()).unwrap_err();
        assert!(err.to_string().contains("journal.json"), "{err}");
    }
}
