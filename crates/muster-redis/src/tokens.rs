//! ACL tokens in Redis, shared by every server on it: one hash `P:acl` with a field `t:<name>` per
//! token (its [`TokenRecord`] as JSON: name, rules, secret hash — never a secret) and a field
//! `generation` bumped by every change, which servers poll to reload. One key, so it works in
//! Cluster too (in the prefix's slot).

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
    key: String,
    create: Script,
    delete: Script,
}

impl RedisTokenStore {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        let key = format!("{}:acl", inner.keys.prefix);
        Self { inner, key, create: Script::new(CREATE), delete: Script::new(DELETE) }
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
