//! Name rules for node ids, service names, versions and metadata keys.
//!
//! Every identifier that ends up in a store key, a URL or a DNS label is checked here, once, with a
//! message that says which rule was broken.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest node id accepted.
pub const MAX_NODE_ID_LEN: usize = 128;
/// Longest service name accepted.
pub const MAX_SERVICE_NAME_LEN: usize = 128;
/// Longest service version accepted.
pub const MAX_VERSION_LEN: usize = 64;

/// Checks `value` against a length limit and an allowed character set.
///
/// The first character must be an ASCII letter or digit so names never start with a separator.
fn check_name(field: &str, value: &str, max_len: usize, allowed: impl Fn(char) -> bool) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.len() > max_len {
        return Err(Error::invalid(field, format!("is {} bytes long, the limit is {max_len}", value.len())));
    }
    if let Some(bad) = value.chars().find(|c| !allowed(*c)) {
        return Err(Error::invalid(field, format!("character {bad:?} is not allowed in {value:?}")));
    }
    if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(Error::invalid(field, format!("{value:?} must start with a letter or digit")));
    }
    Ok(())
}

/// Validates a service name: 1–128 of `A-Z a-z 0-9 - _ . /`, starting with a letter or digit.
pub fn validate_service_name(name: &str) -> Result<()> {
    check_name("service name", name, MAX_SERVICE_NAME_LEN, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
    })
}

/// Validates a service version: 1–64 of `A-Z a-z 0-9 - _ . +`, starting with a letter or digit.
///
/// Versions are free-form strings (exact queries compare them byte for byte); semver queries only
/// match versions that also parse as semver.
pub fn validate_version(version: &str) -> Result<()> {
    check_name("service version", version, MAX_VERSION_LEN, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+')
    })
}

/// The unique id of a node: 1–128 of `A-Z a-z 0-9 - _ . :`, starting with a letter or digit.
///
/// Braces, spaces and slashes are refused because ids become parts of store keys and URLs.
///
/// Clones share one allocation (`Arc<str>`): a store keeps an id in several indexes at the cost of
/// one string.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String, example = "users-1"))]
///
/// Deserialization is the wire form ([`NodeId::from_wire`]): a reader shows the id another writer
/// stored; Muster's own writes go through [`NodeId::new`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct NodeId(std::sync::Arc<str>);

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::from_wire)
    }
}

impl NodeId {
    /// Validates and wraps a node id.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        check_name("node id", &id, MAX_NODE_ID_LEN, |c| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
        })?;
        Ok(Self(id.into()))
    }

    /// Keeps an id exactly as another writer stored it: a Titan or Netron peer may use any string
    /// (`worker@host-1`), and a reader must show it as it is.
    pub fn from_wire(id: impl Into<String>) -> Self {
        Self(id.into().into())
    }

    /// True when the id passes [`NodeId::new`]'s rules (what Muster accepts for its own writes).
    pub fn is_valid(&self) -> bool {
        Self::new(self.as_str()).is_ok()
    }

    /// Generates a fresh id of the form `<prefix>-<pid>-<ms>-<random>`, unique per call.
    ///
    /// `prefix` is cut to keep the id within limits and stripped of characters ids may not hold.
    pub fn generate(prefix: &str) -> Self {
        use rand::Rng;
        let clean: String = prefix
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .take(64)
            .collect();
        let clean =
            if clean.starts_with(|c: char| c.is_ascii_alphanumeric()) { clean } else { format!("n{clean}") };
        let suffix: u64 = rand::rng().random();
        let id = format!(
            "{clean}-{}-{}-{:012x}",
            std::process::id(),
            crate::time::now_ms(),
            suffix & 0xffff_ffff_ffff
        );
        Self(id.into())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeId {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        Self::new(value)
    }
}

impl TryFrom<&str> for NodeId {
    type Error = Error;
    fn try_from(value: &str) -> Result<Self> {
        Self::new(value)
    }
}

impl std::str::FromStr for NodeId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> Self {
        id.0.to_string()
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for NodeId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `text` matches the glob `pattern`, in which `*` stands for any run of characters (also
/// none) and everything else for itself: the literal pieces between `*`s appear in order, the first
/// at the start and the last at the end. Linear in the text's length times the pieces'.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let mut pieces = pattern.split('*');
    let first = pieces.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let pieces: Vec<&str> = pieces.collect();
    let Some((last, middle)) = pieces.split_last() else { return rest.is_empty() };
    for piece in middle {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_rules() {
        for good in ["n1", "titan-12345-1234567890123-a7b8c9", "a.b_c:d", &"x".repeat(128)] {
            assert!(NodeId::new(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("", "empty"),
            (&*"x".repeat(129), "limit is 128"),
            ("-lead", "must start"),
            ("has space", "' '"),
            ("{tag}", "'{'"),
            ("a/b", "'/'"),
            ("é", "'é'"),
        ] {
            let err = NodeId::new(bad).unwrap_err();
            assert!(err.is_invalid_input());
            assert!(err.to_string().contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn generated_ids_are_valid_and_unique() {
        let a = NodeId::generate("titan");
        let b = NodeId::generate("titan");
        assert_ne!(a, b);
        assert!(a.as_str().starts_with(&format!("titan-{}-", std::process::id())));
        assert!(NodeId::new(a.as_str()).is_ok());
        // A prefix with forbidden characters still yields a valid id.
        assert!(NodeId::new(NodeId::generate("{weird prefix}").as_str()).is_ok());
    }

    #[test]
    fn service_names_and_versions() {
        assert!(validate_service_name("userService").is_ok());
        assert!(validate_service_name("api/v1.users_x-y").is_ok());
        assert!(validate_service_name("a@1").unwrap_err().to_string().contains("'@'"));
        assert!(validate_service_name("").is_err());
        assert!(validate_service_name(&"s".repeat(129)).is_err());
        assert!(validate_version("1.0.0-rc.1+build.5").is_ok());
        assert!(validate_version("latest").is_ok());
        assert!(validate_version("1 0").is_err());
        assert!(validate_version("^1.0").is_err());
        assert!(validate_version(&"1".repeat(65)).is_err());
    }

    #[test]
    fn node_id_deserialization_keeps_the_wire_form() {
        assert!(serde_json::from_str::<NodeId>("\"ok-1\"").unwrap().is_valid());
        let wire = serde_json::from_str::<NodeId>("\"worker@host-1\"").unwrap();
        assert_eq!(wire.as_str(), "worker@host-1");
        assert!(!wire.is_valid());
        assert!("worker@host-1".parse::<NodeId>().is_err(), "parsing is Muster's own rule");
    }
}
