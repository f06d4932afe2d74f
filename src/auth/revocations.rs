//! Revocations across replicas over Redis pub/sub: each replica publishes
//! the revocations it makes and evicts what the others publish. While the
//! subscription is down the token cache is marked degraded (short trust)
//! until it is back.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::TokenCache;
use crate::grants::Grants;
use crate::session::Revocation;

/// The pub/sub channel of a deployment.
pub(crate) fn channel(prefix: &str) -> String {
    format!("{prefix}revocations")
}

/// Publishes one revocation to every replica (also used by the CLI).
pub(crate) async fn publish(
    connection: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    revocation: &Revocation,
) -> redis::RedisResult<()> {
    let message = serde_json::to_string(revocation).map_err(|e| {
        redis::RedisError::from((redis::ErrorKind::Client, "serialise", e.to_string()))
    })?;
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel(prefix))
        .arg(message)
        .query_async(connection)
        .await?;
    Ok(())
}

/// Starts the publisher and the subscriber.
pub(crate) fn spawn(client: redis::Client, prefix: &str, grants: &Grants, cache: Arc<TokenCache>) {
    cache.set_degraded(true);
    spawn_publisher(client.clone(), prefix.to_string(), grants);
    spawn_subscriber(client, channel(prefix), cache);
}

fn spawn_publisher(client: redis::Client, prefix: String, grants: &Grants) {
    let mut local = grants.subscribe_revocations();
    tokio::spawn(async move {
        let mut connection: Option<redis::aio::MultiplexedConnection> = None;
        loop {
            let revocation = match local.recv().await {
                Ok(r) => r,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "revocation publisher lagged");
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            // Two attempts: the second on a fresh connection.
            for _ in 0..2 {
                if connection.is_none() {
                    connection = client.get_multiplexed_async_connection().await.ok();
                }
                let Some(conn) = connection.as_mut() else {
                    break;
                };
                match publish(conn, &prefix, &revocation).await {
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not publish a revocation; retrying");
                        connection = None;
                    }
                }
            }
        }
    });
}

fn spawn_subscriber(client: redis::Client, channel: String, cache: Arc<TokenCache>) {
    let cache = Arc::downgrade(&cache);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            if cache.upgrade().is_none() {
                return;
            }
            match client.get_async_pubsub().await {
                Ok(mut pubsub) => {
                    if let Err(e) = pubsub.subscribe(&channel).await {
                        tracing::warn!(error = %e, "could not subscribe to revocations");
                    } else {
                        backoff = Duration::from_millis(200);
                        if let Some(c) = cache.upgrade() {
                            // Revocations published while we were deaf are
                            // lost: forget every cached session, then trust
                            // the feed again.
                            c.forget_all();
                            c.set_degraded(false);
                        }
                        let mut messages = pubsub.on_message();
                        while let Some(message) = messages.next().await {
                            let Some(c) = cache.upgrade() else { return };
                            let payload: String = message.get_payload().unwrap_or_default();
                            match serde_json::from_str::<Revocation>(&payload) {
                                Ok(revocation) => c.evict(revocation).await,
                                Err(e) => {
                                    tracing::warn!(error = %e, "ignoring a malformed revocation message")
                                }
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "revocation feed unreachable"),
            }
            if let Some(c) = cache.upgrade() {
                c.set_degraded(true);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    });
}
