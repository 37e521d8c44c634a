//! ACL tokens of the embedded store: kept in memory and, with a data directory, in
//! `acl-tokens.json` beside the registry snapshot (written atomically on every change; the file
//! holds names, rules and secret hashes, never a secret).

use std::path::{Path, PathBuf};

use muster_core::acl::{TokenRecord, TokenStore, create_conflict};
use muster_core::{Error, Result};
use tokio::sync::Mutex;

use crate::persist::{io_error, write_file};

const FILE: &str = "acl-tokens.json";

/// The embedded store's [`TokenStore`].
#[derive(Debug, Default)]
pub struct LocalTokenStore {
    /// Where the tokens are written, if anywhere.
    dir: Option<PathBuf>,
    /// Generation and tokens.
    state: Mutex<(u64, Vec<TokenRecord>)>,
}

impl LocalTokenStore {
    /// Tokens kept for this process only.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Tokens kept in `dir` (read now if the file exists).
    pub async fn open(dir: &Path) -> Result<Self> {
        tokio::fs::create_dir_all(dir).await.map_err(|e| io_error("cannot create data directory", dir, e))?;
        let path = dir.join(FILE);
        let tokens = match tokio::fs::read(&path).await {
            Ok(bytes) => serde_json::from_slice::<Vec<TokenRecord>>(&bytes).map_err(|e| {
                Error::invalid("acl tokens", format!("{} cannot be read: {e}", path.display()))
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(io_error("cannot read", &path, error)),
        };
        for token in &tokens {
            token.validate()?;
        }
        Ok(Self { dir: Some(dir.to_owned()), state: Mutex::new((1, tokens)) })
    }

    /// Writes `tokens` to the file (if any); the caller changes memory only after it succeeded.
    async fn persist(&self, tokens: &[TokenRecord]) -> Result<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let bytes = serde_json::to_vec_pretty(tokens)
            .map_err(|e| Error::new(muster_core::ErrorKind::Internal, e.to_string()))?;
        write_file(dir, FILE, &bytes).await
    }
}

#[async_trait::async_trait]
impl TokenStore for LocalTokenStore {
    async fn load(&self) -> Result<(u64, Vec<TokenRecord>)> {
        Ok(self.state.lock().await.clone())
    }

    async fn generation(&self) -> Result<u64> {
        Ok(self.state.lock().await.0)
    }

    async fn create(&self, record: &TokenRecord, only_if_empty: bool) -> Result<()> {
        record.validate()?;
        let mut state = self.state.lock().await;
        if (only_if_empty && !state.1.is_empty()) || state.1.iter().any(|t| t.name == record.name) {
            return Err(create_conflict(&record.name, only_if_empty));
        }
        let mut tokens = state.1.clone();
        tokens.push(record.clone());
        self.persist(&tokens).await?;
        *state = (state.0 + 1, tokens);
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<bool> {
        let mut state = self.state.lock().await;
        let tokens: Vec<TokenRecord> = state.1.iter().filter(|t| t.name != name).cloned().collect();
        if tokens.len() == state.1.len() {
            return Ok(false);
        }
        self.persist(&tokens).await?;
        *state = (state.0 + 1, tokens);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_core::acl::{Access, Rule};

    fn record(name: &str) -> TokenRecord {
        TokenRecord {
            name: name.into(),
            secret_hash: "ab".repeat(32),
            rules: vec![Rule::everything(Access::Read)],
            created_ms: 1,
            description: None,
        }
    }

    #[tokio::test]
    async fn tokens_survive_a_reopen_and_names_are_unique() {
        let dir = std::env::temp_dir().join(format!("muster-tokens-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = LocalTokenStore::open(&dir).await.unwrap();
        store.create(&record("admin"), true).await.unwrap();
        assert!(store.create(&record("second"), true).await.unwrap_err().to_string().contains("bootstrap"));
        assert!(store.create(&record("admin"), false).await.is_err());
        store.create(&record("reader"), false).await.unwrap();
        let generation = store.generation().await.unwrap();
        assert!(store.delete("admin").await.unwrap());
        assert!(!store.delete("admin").await.unwrap());
        assert!(store.generation().await.unwrap() > generation);
        let reopened = LocalTokenStore::open(&dir).await.unwrap();
        let names: Vec<String> = reopened.load().await.unwrap().1.into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["reader"]);
        std::fs::write(dir.join(FILE), b"not json").unwrap();
        assert!(LocalTokenStore::open(&dir).await.is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
