//! The embedded store: one SQLite file in WAL mode.
//!
//! Writes go through one connection (SQLite serialises writers anyway);
//! reads use their own connection so they never queue behind a commit's
//! fsync. Every statement runs on the blocking pool.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::{Namespace, Store, StoreError, StoreResult};
use crate::now_unix;

/// The embedded backend: one SQLite file, which the proxy and the
/// administration commands can open at the same time (every commit is
/// synced before it returns).
pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    ns TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_expiry ON records (expires_at);
";

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> StoreResult<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Backend(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let writer = Connection::open(path)?;
        // WAL lets readers run beside the writer; FULL makes every commit
        // durable, so a token handed out survives a crash or kill -9.
        writer.pragma_update(None, "journal_mode", "WAL")?;
        writer.pragma_update(None, "synchronous", "FULL")?;
        writer.busy_timeout(Duration::from_secs(5))?;
        writer.execute_batch(SCHEMA)?;
        let reader = Connection::open(path)?;
        reader.busy_timeout(Duration::from_secs(5))?;
        Ok(SqliteStore {
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    async fn with<T, F>(conn: &Arc<Mutex<Connection>>, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Backend("store connection lock poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }
}

fn expiry(ttl: Duration) -> i64 {
    now_unix().saturating_add(ttl.as_secs().min(i64::MAX as u64 / 2) as i64)
}

#[async_trait]
impl Store for SqliteStore {
    async fn put(&self, ns: Namespace, key: &str, value: &[u8], ttl: Duration) -> StoreResult<()> {
        let (key, value) = (key.to_owned(), value.to_vec());
        Self::with(&self.writer, move |c| {
            c.execute(
                "INSERT INTO records (ns, key, value, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                params![ns.as_str(), key, value, expiry(ttl)],
            )?;
            Ok(())
        })
        .await
    }

    async fn insert_new(
        &self,
        ns: Namespace,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> StoreResult<bool> {
        let (key, value) = (key.to_owned(), value.to_vec());
        Self::with(&self.writer, move |c| {
            // An expired record with the same key counts as absent.
            let changed = c.execute(
                "INSERT INTO records (ns, key, value, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at
                 WHERE records.expires_at <= ?5",
                params![ns.as_str(), key, value, expiry(ttl), now_unix()],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn get(&self, ns: Namespace, key: &str) -> StoreResult<Option<Vec<u8>>> {
        let key = key.to_owned();
        Self::with(&self.reader, move |c| {
            Ok(c.prepare_cached(
                "SELECT value FROM records WHERE ns = ?1 AND key = ?2 AND expires_at > ?3",
            )?
            .query_row(params![ns.as_str(), key, now_unix()], |r| r.get(0))
            .optional()?)
        })
        .await
    }

    async fn take(&self, ns: Namespace, key: &str) -> StoreResult<Option<Vec<u8>>> {
        let key = key.to_owned();
        Self::with(&self.writer, move |c| {
            // One statement: the delete and the read are a single atomic step.
            let value: Option<Vec<u8>> = c
                .prepare_cached(
                    "DELETE FROM records WHERE ns = ?1 AND key = ?2 RETURNING value, expires_at",
                )?
                .query_row(params![ns.as_str(), key], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
                })
                .optional()?
                .filter(|(_, expires_at)| *expires_at > now_unix())
                .map(|(v, _)| v);
            Ok(value)
        })
        .await
    }

    async fn compare_and_swap(
        &self,
        ns: Namespace,
        key: &str,
        expected: &[u8],
        new: Option<&[u8]>,
        ttl: Duration,
    ) -> StoreResult<bool> {
        let (key, expected, new) = (key.to_owned(), expected.to_vec(), new.map(<[u8]>::to_vec));
        Self::with(&self.writer, move |c| {
            let now = now_unix();
            let changed = match new {
                Some(new) => c.execute(
                    "UPDATE records SET value = ?1, expires_at = ?2
                     WHERE ns = ?3 AND key = ?4 AND value = ?5 AND expires_at > ?6",
                    params![new, expiry(ttl), ns.as_str(), key, expected, now],
                )?,
                None => c.execute(
                    "DELETE FROM records WHERE ns = ?1 AND key = ?2 AND value = ?3 AND expires_at > ?4",
                    params![ns.as_str(), key, expected, now],
                )?,
            };
            Ok(changed == 1)
        })
        .await
    }

    async fn delete(&self, ns: Namespace, key: &str) -> StoreResult<bool> {
        let key = key.to_owned();
        Self::with(&self.writer, move |c| {
            let expires_at: Option<i64> = c
                .prepare_cached(
                    "DELETE FROM records WHERE ns = ?1 AND key = ?2 RETURNING expires_at",
                )?
                .query_row(params![ns.as_str(), key], |r| r.get(0))
                .optional()?;
            Ok(expires_at.is_some_and(|e| e > now_unix()))
        })
        .await
    }

    async fn list(&self, ns: Namespace) -> StoreResult<Vec<(String, Vec<u8>)>> {
        Self::with(&self.reader, move |c| {
            let mut stmt =
                c.prepare("SELECT key, value FROM records WHERE ns = ?1 AND expires_at > ?2")?;
            let rows = stmt
                .query_map(params![ns.as_str(), now_unix()], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn purge_expired(&self) -> StoreResult<u64> {
        Self::with(&self.writer, move |c| {
            Ok(c.execute(
                "DELETE FROM records WHERE expires_at <= ?1",
                params![now_unix()],
            )? as u64)
        })
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
        Self::with(&self.reader, |c| {
            c.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::conformance;
    use super::*;
    use crate::store::SharedStore;

    fn open_temp() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn put_get_delete() {
        let (_d, s) = open_temp();
        conformance::put_get_delete(&s).await;
    }

    #[tokio::test]
    async fn take_is_single_use() {
        let (_d, s) = open_temp();
        conformance::take_is_single_use(&s).await;
    }

    #[tokio::test]
    async fn expired_records_are_invisible() {
        let (_d, s) = open_temp();
        conformance::expired_records_are_invisible(&s).await;
    }

    #[tokio::test]
    async fn insert_new_and_cas() {
        let (_d, s) = open_temp();
        conformance::insert_new_and_cas(&s).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_takes_have_one_winner() {
        let (_d, s) = open_temp();
        conformance::racing_takes_have_one_winner(Arc::new(s) as SharedStore).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_swaps_have_one_winner() {
        let (_d, s) = open_temp();
        conformance::racing_swaps_have_one_winner(Arc::new(s) as SharedStore).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn assertions_are_single_use() {
        let (_d, s) = open_temp();
        conformance::assertions_are_single_use(Arc::new(s) as SharedStore).await;
    }

    #[tokio::test]
    async fn list_returns_live_records() {
        let (_d, s) = open_temp();
        conformance::list_returns_live_records(&s).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_handles_on_one_file_race_to_one_winner() {
        // Two processes share a file the way two handles do here.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.db");
        let a: SharedStore = Arc::new(SqliteStore::open(&path).unwrap());
        let b: SharedStore = Arc::new(SqliteStore::open(&path).unwrap());
        a.put(Namespace::Code, "x", b"v", Duration::from_secs(60))
            .await
            .unwrap();
        let (ra, rb) = tokio::join!(a.take(Namespace::Code, "x"), b.take(Namespace::Code, "x"));
        assert_eq!(ra.unwrap().is_some() as u8 + rb.unwrap().is_some() as u8, 1);
    }

    #[tokio::test]
    async fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("durable.db");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.put(Namespace::AccessToken, "h", b"rec", Duration::from_secs(60))
                .await
                .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(
            s.get(Namespace::AccessToken, "h").await.unwrap().as_deref(),
            Some(&b"rec"[..])
        );
    }
}
