//! ACL tokens in Redis, shared by every server on it: one hash `muster:acl:P` with a field
//! `t:<name>` per token (its [`TokenRecord`] as JSON: name, rules, secret hash — never a secret)
//! and a field `generation` bumped by every change, which servers poll to reload. One key, so it
//! works in Cluster too.
//!
//! The hash lies outside the prefix `P` on purpose: embedded agents need `P:*` and nothing else,
//! so a Redis user limited to the agents' keys (`~P:*`) cannot write a token and make itself an
//! admin of every server. Servers' users add `~muster:acl:*`.

use std::sync::Arc;

use muster_core::acl::{TokenRecord, TokenStore, create_conflict};
use muster_core::{Error, ErrorKind, Result};
use redis::Script;

use crate::Inner;

/// Creates a token unless its name is taken (or, for bootstrap, unless any token exists).
/// KEYS[1] = the hash; ARGV = field, JSON, only-if-empty flag. Returns 1, or 0 on conflict.
const CREATE: &str = r"
local hash, field, json, only_if_empty = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
if redis.call('HEXISTS', hash, field) == 1 then return 0 end
if only_if_empty == '1' then
  for _, name in ipairs(redis.call('HKEYS', hash)) do
    if string.sub(name, 1, 2) == 't:' then return 0 end
  end
end
redis.call('HSET', hash, field, json)
redis.call('HINCRBY', hash, 'generation', 1)
return 1
";

/// Deletes a token. KEYS[1] = the hash; ARGV[1] = field. Returns 1 when it existed.
const DELETE: &str = r"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'generation', 1)
return 1
";

/// The [`TokenStore`] of a [`crate::RedisRegistry`] (see [`crate::RedisRegistry::token_store`]).
pub struct RedisTokenStore {
    inner: Arc<Inner>,
    /// `muster:acl:P`.
    key: String,
    /// `P:acl`, where tokens were kept before: never read (agents' users may write it), only
    /// reported when it exists and the store is empty.
    former_key: String,
    /// The former key was looked for already.
    former_checked: std::sync::atomic::AtomicBool,
    create: Script,
    delete: Script,
}

/// The token hash of the key prefix `prefix` (as written, hash tag included).
pub(crate) fn token_key(prefix: &str) -> String {
    format!("muster:acl:{prefix}")
}

impl RedisTokenStore {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        let key = token_key(&inner.keys.prefix);
        let former_key = format!("{}:acl", inner.keys.prefix);
        Self {
            inner,
            key,
            former_key,
            former_checked: std::sync::atomic::AtomicBool::new(false),
            create: Script::new(CREATE),
            delete: Script::new(DELETE),
        }
    }

    /// The hash the tokens live in.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Says once, when the store is empty, that tokens under the former key are not read.
    async fn report_former_key(&self) {
        if self.former_checked.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let exists: Result<bool> = self.inner.pool.query(redis::cmd("EXISTS").arg(&self.former_key)).await;
        if exists.unwrap_or(false) {
            tracing::warn!(
                former = %self.former_key, key = %self.key,
                "ACL tokens under the former key are not read (agents' Redis users may write it); \
                 check them and move them with RENAME if they are yours"
            );
        }
    }

    async fn script(&self, script: &Script, args: &[&str]) -> Result<i64> {
        self.inner
            .pool
            .run(|mut conn| {
                let mut invocation = script.prepare_invoke();
                invocation.key(&self.key);
                for arg in args {
                    invocation.arg(*arg);
                }
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await
    }
}

#[async_trait::async_trait]
impl TokenStore for RedisTokenStore {
    async fn load(&self) -> Result<(u64, Vec<TokenRecord>)> {
        let fields: Vec<(String, String)> =
            self.inner.pool.query(redis::cmd("HGETALL").arg(&self.key)).await?;
        let mut generation = 0;
        let mut tokens = Vec::new();
        for (field, value) in fields {
            if field == "generation" {
                generation = value.parse().unwrap_or(0);
            } else if field.starts_with("t:") {
                // A record another writer damaged is skipped and reported, never trusted.
                match serde_json::from_str::<TokenRecord>(&value) {
                    Ok(record) if record.validate().is_ok() => tokens.push(record),
                    _ => tracing::warn!(key = %self.key, %field, "skipping an unreadable ACL token record"),
                }
            }
        }
        if tokens.is_empty() {
            self.report_former_key().await;
        }
        Ok((generation, tokens))
    }

    async fn generation(&self) -> Result<u64> {
        let value: Option<u64> =
            self.inner.pool.query(redis::cmd("HGET").arg(&self.key).arg("generation")).await?;
        Ok(value.unwrap_or(0))
    }

    async fn create(&self, record: &TokenRecord, only_if_empty: bool) -> Result<()> {
        record.validate()?;
        let json =
            serde_json::to_string(record).map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
        let field = format!("t:{}", record.name);
        let created =
            self.script(&self.create, &[&field, &json, if only_if_empty { "1" } else { "0" }]).await?;
        if created == 1 { Ok(()) } else { Err(create_conflict(&record.name, only_if_empty)) }
    }

    async fn delete(&self, name: &str) -> Result<bool> {
        Ok(self.script(&self.delete, &[&format!("t:{name}")]).await? == 1)
    }
}
