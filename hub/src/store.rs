//! Persistence: a sled database under `--data-dir`, or a temporary one for `--in-memory`.
//!
//! Three trees, every value JSON so a human can inspect them with any sled tool:
//! - `devices`: device id → the device record (identity, keys and twin
//!   together, so one write changes both atomically);
//! - `sessions`: device id → the MQTT subscriptions of a `CleanSession=0` session;
//! - `meta`: hub-wide facts (the shared access policies and their keys).
//!
//! Registry and twin writes are flushed to disk before the hub answers, so an acknowledged
//! write survives `kill -9`; session changes ride on sled's periodic flush.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened.
    #[error(
        "cannot open the hub database in {path}: {source} (is another `casement hub` using this --data-dir?)"
    )]
    Open {
        /// The database directory.
        path: PathBuf,
        /// What sled said.
        #[source]
        source: sled::Error,
    },
    /// A read, write or flush failed.
    #[error("hub database {op} failed for {key:?}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The key involved.
        key: String,
        /// What sled said.
        #[source]
        source: sled::Error,
    },
    /// A stored value is not valid JSON for its type (a corrupted or foreign database).
    #[error("hub database value for {key:?} in tree {tree} is corrupt: {source}")]
    Corrupt {
        /// The tree.
        tree: &'static str,
        /// The key.
        key: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

/// Where the database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// A directory on disk; created when missing.
    Dir(PathBuf),
    /// A temporary database, deleted when the hub stops.
    InMemory,
}

const DEVICES: &str = "devices";
const SESSIONS: &str = "sessions";
const META: &str = "meta";

/// The hub's sled database.
#[derive(Debug)]
pub(crate) struct Store {
    db: sled::Db,
    devices: sled::Tree,
    sessions: sled::Tree,
    meta: sled::Tree,
    flusher: GroupFlush,
}

/// Group commit for [`Store::flush`]: one blocking `sled::Db::flush` at a time on the blocking
/// pool, and a caller whose write an already finished flush covered returns without flushing.
///
/// sled 0.34's `flush_async` from many tasks at once starves its own I/O threads (every
/// `sled-io-*` thread parked in `make_stable`, spacejam/sled#1308): with a few hundred devices
/// writing twins, every write hung. Here concurrent writers share one flush instead.
#[derive(Debug, Default)]
struct GroupFlush {
    /// Serialises flushes.
    lock: tokio::sync::Mutex<()>,
    /// Flush requests so far; a writer takes a ticket after its write.
    requested: AtomicU64,
    /// The highest ticket a finished flush covers.
    completed: AtomicU64,
}

impl Store {
    /// Opens (or creates) the database.
    pub(crate) fn open(storage: &Storage) -> Result<Self, StoreError> {
        let (config, path) = match storage {
            Storage::Dir(dir) => {
                let path = dir.join("db");
                (sled::Config::new().path(&path), path)
            }
            Storage::InMemory => (
                sled::Config::new().temporary(true),
                PathBuf::from("(temporary)"),
            ),
        };
        let db = open_with_lock_retry(&config).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        let open_tree = |name: &'static str| {
            db.open_tree(name).map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })
        };
        Ok(Self {
            devices: open_tree(DEVICES)?,
            sessions: open_tree(SESSIONS)?,
            meta: open_tree(META)?,
            db,
            flusher: GroupFlush::default(),
        })
    }

    /// Every stored device record, in key order.
    pub(crate) fn load_devices<T: DeserializeOwned>(&self) -> Result<Vec<T>, StoreError> {
        load_all(&self.devices, DEVICES)
    }

    /// Writes a device record (not yet flushed).
    pub(crate) fn put_device<T: Serialize>(&self, id: &str, value: &T) -> Result<(), StoreError> {
        put(&self.devices, id, value)
    }

    /// Removes a device record and its session.
    pub(crate) fn remove_device(&self, id: &str) -> Result<(), StoreError> {
        for tree in [&self.devices, &self.sessions] {
            tree.remove(id.as_bytes())
                .map_err(|source| StoreError::Io {
                    op: "remove",
                    key: id.to_owned(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Every stored session, keyed by device id.
    pub(crate) fn load_sessions<T: DeserializeOwned>(
        &self,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.sessions.iter() {
            let (key, value) = entry.map_err(|source| StoreError::Io {
                op: "scan",
                key: SESSIONS.to_owned(),
                source,
            })?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let value = serde_json::from_slice(&value).map_err(|source| StoreError::Corrupt {
                tree: SESSIONS,
                key: key.clone(),
                source,
            })?;
            out.push((key, value));
        }
        Ok(out)
    }

    /// Writes or (with `None`) removes a device's persisted session.
    pub(crate) fn put_session<T: Serialize>(
        &self,
        id: &str,
        value: Option<&T>,
    ) -> Result<(), StoreError> {
        match value {
            Some(value) => put(&self.sessions, id, value),
            None => self
                .sessions
                .remove(id.as_bytes())
                .map(|_| ())
                .map_err(|source| StoreError::Io {
                    op: "remove",
                    key: id.to_owned(),
                    source,
                }),
        }
    }

    /// Reads a hub-wide value.
    pub(crate) fn get_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let raw = self
            .meta
            .get(key.as_bytes())
            .map_err(|source| StoreError::Io {
                op: "read",
                key: key.to_owned(),
                source,
            })?;
        raw.map(|raw| {
            serde_json::from_slice(&raw).map_err(|source| StoreError::Corrupt {
                tree: META,
                key: key.to_owned(),
                source,
            })
        })
        .transpose()
    }

    /// Writes a hub-wide value (not yet flushed).
    pub(crate) fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        put(&self.meta, key, value)
    }

    /// Flushes everything written so far to disk.
    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        let flusher = &self.flusher;
        // Every write this caller made happened before its ticket.
        let ticket = flusher.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let _turn = flusher.lock.lock().await;
        if flusher.completed.load(Ordering::SeqCst) >= ticket {
            return Ok(()); // a flush that started after our write has finished
        }
        // This flush covers every ticket taken before it starts.
        let covers = flusher.requested.load(Ordering::SeqCst);
        let db = self.db.clone();
        let flushed = tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|join| StoreError::Io {
                op: "flush",
                key: String::new(),
                source: sled::Error::Io(std::io::Error::other(join.to_string())),
            })?;
        flushed.map_err(|source| StoreError::Io {
            op: "flush",
            key: String::new(),
            source,
        })?;
        flusher.completed.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }

    /// Flushes synchronously.
    #[cfg(test)]
    pub(crate) fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|source| StoreError::Io {
                op: "flush",
                key: String::new(),
                source,
            })
    }
}

fn put<T: Serialize>(tree: &sled::Tree, key: &str, value: &T) -> Result<(), StoreError> {
    // Serializing our own record types cannot fail (string keys, no non-finite floats reach
    // here because twin values come from parsed JSON); map it anyway rather than panic.
    let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Corrupt {
        tree: "(write)",
        key: key.to_owned(),
        source,
    })?;
    tree.insert(key.as_bytes(), bytes)
        .map(|_| ())
        .map_err(|source| StoreError::Io {
            op: "write",
            key: key.to_owned(),
            source,
        })
}

fn load_all<T: DeserializeOwned>(
    tree: &sled::Tree,
    name: &'static str,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for entry in tree.iter() {
        let (key, value) = entry.map_err(|source| StoreError::Io {
            op: "scan",
            key: name.to_owned(),
            source,
        })?;
        out.push(
            serde_json::from_slice(&value).map_err(|source| StoreError::Corrupt {
                tree: name,
                key: String::from_utf8_lossy(&key).into_owned(),
                source,
            })?,
        );
    }
    Ok(out)
}

/// How long [`Store::open`] waits for another holder of the database's file lock to let go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens the database, waiting up to [`LOCK_WAIT`] for its file lock: sled's background
/// threads release a dropped database's lock a moment after the drop, so a hub restarted at once
/// on the same data dir (and every test that reopens one) would otherwise fail at random.
/// Another running hub still fails, after the wait.
fn open_with_lock_retry(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hundreds of writers flushing at once all finish, and every write is durable: the
    /// group commit never lets a caller return before a flush that covers its write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_flushes_all_finish_and_persist_every_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::Dir(dir.path().to_owned());
        let store = std::sync::Arc::new(Store::open(&storage).expect("open"));
        let mut writers = tokio::task::JoinSet::new();
        for i in 0..600 {
            let store = store.clone();
            writers.spawn(async move {
                store
                    .put_device(&format!("d{i}"), &serde_json::json!({ "n": i }))
                    .expect("put");
                store.flush().await.expect("flush");
            });
        }
        // A bound for a hang (the sled flush_async starvation this replaces), not a timing assert.
        tokio::time::timeout(std::time::Duration::from_secs(120), async {
            while let Some(done) = writers.join_next().await {
                done.expect("writer");
            }
        })
        .await
        .expect("every flush finishes");
        let flushes = store.flusher.completed.load(Ordering::SeqCst);
        assert_eq!(flushes, 600, "the last flush covers every ticket");
        drop(store);
        let reopened = Store::open(&storage).expect("reopen");
        let devices: Vec<serde_json::Value> = reopened.load_devices().expect("load");
        assert_eq!(devices.len(), 600);
    }

    #[test]
    fn values_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::Dir(dir.path().to_owned());
        {
            let store = Store::open(&storage).expect("open");
            store
                .put_device("d1", &serde_json::json!({"id": "d1"}))
                .expect("put");
            store
                .put_meta("policies", &vec!["a".to_owned()])
                .expect("meta");
            store.put_session("d1", Some(&vec![1, 2])).expect("session");
            store.flush_blocking().expect("flush");
        }
        let store = Store::open(&storage).expect("reopen");
        let devices: Vec<serde_json::Value> = store.load_devices().expect("load");
        assert_eq!(devices, vec![serde_json::json!({"id": "d1"})]);
        let policies: Option<Vec<String>> = store.get_meta("policies").expect("meta");
        assert_eq!(policies, Some(vec!["a".to_owned()]));
        let sessions: Vec<(String, Vec<u8>)> = store.load_sessions().expect("sessions");
        assert_eq!(sessions, vec![("d1".to_owned(), vec![1, 2])]);
        store.remove_device("d1").expect("remove");
        assert!(
            store
                .load_devices::<serde_json::Value>()
                .expect("load")
                .is_empty()
        );
        assert!(
            store
                .load_sessions::<Vec<u8>>()
                .expect("sessions")
                .is_empty()
        );
    }

    #[test]
    fn a_second_open_of_the_same_dir_fails_with_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::Dir(dir.path().to_owned());
        let _first = Store::open(&storage).expect("open");
        let err = Store::open(&storage).expect_err("locked");
        assert!(err.to_string().contains("another `casement hub`"), "{err}");
    }

    #[test]
    fn corrupt_values_are_reported_not_panicked() {
        let store = Store::open(&Storage::InMemory).expect("open");
        store
            .meta
            .insert("policies", &b"{not json"[..])
            .expect("raw");
        let err = store
            .get_meta::<Vec<String>>("policies")
            .expect_err("corrupt");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }
}
