//! The shared store for several replicas: Redis, through a reconnecting
//! connection manager. Expiry is Redis's own; single-use takes are `GETDEL`;
//! compare-and-swap is one Lua script; no command scans keys on a request
//! path (`list` is for administration only).

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use super::{Namespace, Store, StoreError, StoreResult};

/// Commands that take longer than this fail, so a stalled Redis cannot
/// stall requests.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

const CAS_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[2] == 'del' then
    redis.call('DEL', KEYS[1])
  else
    redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  end
  return 1
end
return 0
";

pub(crate) struct RedisStore {
    connection: ConnectionManager,
    prefix: String,
    cas: Script,
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        StoreError::Backend(format!("redis: {e}"))
    }
}

/// The client for a `redis://` URL.
pub(crate) fn client(url: &str) -> StoreResult<redis::Client> {
    redis::Client::open(url)
        .map_err(|e| StoreError::Backend(format!("store.redis_url is not a Redis URL: {e}")))
}

impl RedisStore {
    /// Connects lazily: the proxy starts even while Redis is down and the
    /// connection manager keeps reconnecting.
    pub(crate) fn open(url: &str, prefix: &str) -> StoreResult<Self> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_max_delay(Duration::from_secs(2));
        let connection = ConnectionManager::new_lazy_with_config(client(url)?, config)?;
        Ok(RedisStore {
            connection,
            prefix: prefix.to_string(),
            cas: Script::new(CAS_SCRIPT),
        })
    }

    fn key(&self, ns: Namespace, key: &str) -> String {
        format!("{}{}:{key}", self.prefix, ns.as_str())
    }

    fn conn(&self) -> ConnectionManager {
        self.connection.clone()
    }
}

fn millis(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

#[async_trait]
impl Store for RedisStore {
    async fn put(&self, ns: Namespace, key: &str, value: &[u8], ttl: Duration) -> StoreResult<()> {
        let _: () = redis::cmd("SET")
            .arg(self.key(ns, key))
            .arg(value)
            .arg("PX")
            .arg(millis(ttl))
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn insert_new(
        &self,
        ns: Namespace,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> StoreResult<bool> {
        let set: Option<String> = redis::cmd("SET")
            .arg(self.key(ns, key))
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .query_async(&mut self.conn())
            .await?;
        Ok(set.is_some())
    }

    async fn get(&self, ns: Namespace, key: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.conn().get(self.key(ns, key)).await?)
    }

    async fn take(&self, ns: Namespace, key: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(redis::cmd("GETDEL")
            .arg(self.key(ns, key))
            .query_async(&mut self.conn())
            .await?)
    }

    async fn compare_and_swap(
        &self,
        ns: Namespace,
        key: &str,
        expected: &[u8],
        new: Option<&[u8]>,
        ttl: Duration,
    ) -> StoreResult<bool> {
        let mut invocation = self.cas.key(self.key(ns, key));
        invocation.arg(expected);
        match new {
            Some(value) => invocation.arg("set").arg(value).arg(millis(ttl)),
            None => invocation.arg("del").arg("").arg(0),
        };
        let swapped: i64 = invocation.invoke_async(&mut self.conn()).await?;
        Ok(swapped == 1)
    }

    async fn delete(&self, ns: Namespace, key: &str) -> StoreResult<bool> {
        let removed: i64 = self.conn().del(self.key(ns, key)).await?;
        Ok(removed > 0)
    }

    async fn list(&self, ns: Namespace) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let pattern = format!("{}{}:*", self.prefix, ns.as_str());
        let strip = format!("{}{}:", self.prefix, ns.as_str());
        let mut conn = self.conn();
        let mut cursor: u64 = 0;
        let mut keys: Vec<String> = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let values: Vec<Option<Vec<u8>>> =
                redis::cmd("MGET").arg(chunk).query_async(&mut conn).await?;
            for (key, value) in chunk.iter().zip(values) {
                if let Some(v) = value {
                    out.push((key.trim_start_matches(&strip).to_string(), v));
                }
            }
        }
        Ok(out)
    }

    async fn purge_expired(&self) -> StoreResult<u64> {
        // Redis expires keys itself.
        Ok(0)
    }

    async fn ping(&self) -> StoreResult<()> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn()).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::conformance;
    use super::*;
    use crate::store::SharedStore;

    /// Each test gets its own key prefix on the machine's Redis.
    fn open() -> RedisStore {
        let url = std::env::var("MCP_PROXY_TEST_REDIS")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let prefix = format!("mcp-oauth-proxy-test:{}:", crate::crypto::random_id());
        RedisStore::open(&url, &prefix).unwrap()
    }

    #[tokio::test]
    async fn put_get_delete() {
        conformance::put_get_delete(&open()).await;
    }

    #[tokio::test]
    async fn take_is_single_use() {
        conformance::take_is_single_use(&open()).await;
    }

    #[tokio::test]
    async fn expired_records_are_invisible() {
        conformance::expired_records_are_invisible(&open()).await;
    }

    #[tokio::test]
    async fn insert_new_and_cas() {
        conformance::insert_new_and_cas(&open()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_takes_have_one_winner() {
        conformance::racing_takes_have_one_winner(Arc::new(open()) as SharedStore).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_swaps_have_one_winner() {
        conformance::racing_swaps_have_one_winner(Arc::new(open()) as SharedStore).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn assertions_are_single_use() {
        conformance::assertions_are_single_use(Arc::new(open()) as SharedStore).await;
    }

    #[tokio::test]
    async fn list_returns_live_records() {
        conformance::list_returns_live_records(&open()).await;
    }
}
