//! Access control: what a token may do, and where tokens are kept.
//!
//! A token's [`Policy`] is a list of [`Rule`]s. A rule grants [`Access`] (`read`, `write`, or
//! `admin`) to the services whose names match its `services` pattern on the nodes whose ids match
//! its `nodes` pattern (`*` matches any run of characters; both default to `*`). `admin` grants
//! everything, token management included, whatever the patterns say.
//!
//! - Reading a service (instances, watch events) needs a `read` (or stronger) rule matching it.
//! - Reading a node needs a rule matching its id and at least one of its services.
//! - Writing a node (register, heartbeat, update, deregister) needs, for every service it provides
//!   before and after the write, a `write` rule matching both the node id and the service: the
//!   usual grant for one deployment is `{services = "billing", nodes = "billing-*", access = "write"}`.
//!
//! The registry never keeps a secret, only its SHA-256 ([`TokenRecord::secret_hash`]); stores keep
//! records through [`TokenStore`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Error, ErrorKind, Result};

/// What a rule grants; each level includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Discovery: list, find, watch.
    Read,
    /// Register, heartbeat, update and deregister matching nodes.
    Write,
    /// Everything, token management included.
    Admin,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        })
    }
}

/// A name pattern: literal characters and `*` (any run of characters, also none).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String, example = "billing-*"))]
#[serde(try_from = "String", into = "String")]
pub struct Pattern(String);

impl Pattern {
    /// Longest pattern accepted.
    pub const MAX_LEN: usize = 256;

    /// A validated pattern: 1-256 characters of names (letters, digits, `.`, `_`, `-`, `:`, `@`,
    /// `/`) and `*`.
    pub fn new(text: impl Into<String>) -> Result<Self> {
        let text = text.into();
        if text.is_empty() || text.len() > Self::MAX_LEN {
            return Err(Error::invalid("pattern", format!("must be 1 to {} characters", Self::MAX_LEN)));
        }
        if let Some(bad) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@' | '/' | '*')))
        {
            return Err(Error::invalid(
                "pattern",
                format!("{text:?} holds {bad:?}; use letters, digits, . _ - : @ / and * as a wildcard"),
            ));
        }
        Ok(Self(text))
    }

    /// The pattern matching everything.
    pub fn any() -> Self {
        Self("*".into())
    }

    /// Whether this is `*`.
    pub fn is_any(&self) -> bool {
        self.0 == "*"
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `text` matches (see [`crate::name::glob_matches`]).
    pub fn matches(&self, text: &str) -> bool {
        crate::name::glob_matches(&self.0, text)
    }
}

impl TryFrom<String> for Pattern {
    type Error = Error;
    fn try_from(text: String) -> Result<Self> {
        Self::new(text)
    }
}

impl From<Pattern> for String {
    fn from(pattern: Pattern) -> Self {
        pattern.0
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One grant of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Service names the rule covers (default `*`).
    #[serde(default = "Pattern::any")]
    pub services: Pattern,
    /// Node ids the rule covers (default `*`).
    #[serde(default = "Pattern::any")]
    pub nodes: Pattern,
    /// What it grants.
    pub access: Access,
}

impl Rule {
    /// `access` on every service and node.
    pub fn everything(access: Access) -> Self {
        Self { services: Pattern::any(), nodes: Pattern::any(), access }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on services {} of nodes {}", self.access, self.services, self.nodes)
    }
}

/// What the anonymous caller may do when access control is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultPolicy {
    /// Read and write everything (token management still needs an admin token).
    Allow,
    /// Read everything, write nothing.
    Read,
    /// Nothing.
    #[default]
    Deny,
}

impl std::str::FromStr for DefaultPolicy {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        match text {
            "allow" => Ok(Self::Allow),
            "read" => Ok(Self::Read),
            "deny" => Ok(Self::Deny),
            other => Err(Error::invalid("default policy", format!("{other:?} is not allow, read or deny"))),
        }
    }
}

impl DefaultPolicy {
    /// The rules anonymous callers get.
    pub fn rules(self) -> Vec<Rule> {
        match self {
            Self::Allow => vec![Rule::everything(Access::Write)],
            Self::Read => vec![Rule::everything(Access::Read)],
            Self::Deny => Vec::new(),
        }
    }
}

/// The rules of one caller, with the decisions the API needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    rules: Vec<Rule>,
    admin: bool,
}

impl Policy {
    /// A policy of `rules`.
    pub fn new(rules: Vec<Rule>) -> Self {
        let admin = rules.iter().any(|r| r.access == Access::Admin);
        Self { rules, admin }
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether it grants everything.
    pub fn is_admin(&self) -> bool {
        self.admin
    }

    /// Whether it may read anything at all (lists of services are filtered, not refused).
    pub fn may_read_some(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Whether it may read `service` (on some node).
    pub fn may_read_service(&self, service: &str) -> bool {
        self.admin || self.rules.iter().any(|r| r.services.matches(service))
    }

    /// Whether it may read the node `id` providing `services`.
    pub fn may_read_node<'a>(&self, id: &str, services: impl Iterator<Item = &'a str> + Clone) -> bool {
        if self.admin {
            return true;
        }
        let mut rules = self.rules.iter().filter(|r| r.nodes.matches(id));
        if services.clone().next().is_none() {
            return rules.any(|r| r.services.is_any());
        }
        rules.any(|r| services.clone().any(|s| r.services.matches(s)))
    }

    /// Whether it may write `service` on some node: the least a write naming that service needs.
    pub fn may_write_service(&self, service: &str) -> bool {
        self.admin || self.rules.iter().any(|r| r.access >= Access::Write && r.services.matches(service))
    }

    /// `Ok` when it may write the node `id` providing `services`; otherwise the permission
    /// missing, as a person reads it.
    pub fn check_write<'a>(
        &self,
        id: &str,
        services: impl IntoIterator<Item = &'a str>,
    ) -> std::result::Result<(), String> {
        if self.admin {
            return Ok(());
        }
        let mut rules =
            self.rules.iter().filter(|r| r.access >= Access::Write && r.nodes.matches(id)).peekable();
        if rules.peek().is_none() {
            return Err(format!("write on node `{id}`"));
        }
        for service in services {
            if !rules.clone().any(|r| r.services.matches(service)) {
                return Err(format!("write on service `{service}` for node `{id}`"));
            }
        }
        Ok(())
    }

    /// Whether the write rules matching node `id` exist and all cover every service: then the
    /// services a stored node provides need not be read to decide a write.
    pub fn writes_any_service_of(&self, id: &str) -> bool {
        let mut writers =
            self.rules.iter().filter(|r| r.access >= Access::Write && r.nodes.matches(id)).peekable();
        self.admin || (writers.peek().is_some() && writers.all(|r| r.services.is_any()))
    }
}

/// A token as kept by a store: its name, the SHA-256 of its secret, and its rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRecord {
    /// Unique name, shown in audit lines (`[A-Za-z0-9._-]`, 1-64 characters).
    pub name: String,
    /// Lower-case hex SHA-256 of the secret.
    pub secret_hash: String,
    /// What it grants.
    pub rules: Vec<Rule>,
    /// When it was created (Unix milliseconds).
    pub created_ms: u64,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Checks a token name: 1-64 letters, digits, `.`, `_` or `-`.
pub fn validate_token_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(Error::invalid(
            "token name",
            format!("{name:?} must be 1 to 64 letters, digits, dots, underscores or dashes"),
        ));
    }
    Ok(())
}

impl TokenRecord {
    /// Checks the name, the hash's form, and the description's length.
    pub fn validate(&self) -> Result<()> {
        validate_token_name(&self.name)?;
        if self.secret_hash.len() != 64 || !self.secret_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::invalid("secretHash", "must be 64 hex digits (a SHA-256)"));
        }
        if self.description.as_ref().is_some_and(|d| d.len() > 1024) {
            return Err(Error::invalid("description", "must be at most 1024 bytes"));
        }
        if self.rules.len() > 256 {
            return Err(Error::invalid("rules", "at most 256 rules"));
        }
        Ok(())
    }
}

/// Where tokens are kept: shared by every server on one Redis, or local to one embedded store.
#[async_trait::async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Every token, with the generation they were read at.
    async fn load(&self) -> Result<(u64, Vec<TokenRecord>)>;

    /// A number that changes whenever a token is created or deleted.
    async fn generation(&self) -> Result<u64>;

    /// Stores a new token. [`ErrorKind::Conflict`] when its name is taken, or — with
    /// `only_if_empty` (bootstrap) — when any token exists.
    async fn create(&self, record: &TokenRecord, only_if_empty: bool) -> Result<()>;

    /// Removes a token; `false` when there was none of that name.
    async fn delete(&self, name: &str) -> Result<bool>;
}

/// The conflict answered when a name is taken or bootstrap already happened.
pub fn create_conflict(name: &str, only_if_empty: bool) -> Error {
    if only_if_empty {
        Error::new(ErrorKind::Conflict, "ACL bootstrap already happened: tokens exist; use an admin token")
    } else {
        Error::new(ErrorKind::Conflict, format!("a token named `{name}` exists"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(services: &str, nodes: &str, access: Access) -> Rule {
        Rule { services: Pattern::new(services).unwrap(), nodes: Pattern::new(nodes).unwrap(), access }
    }

    #[test]
    fn patterns_match_globs() {
        let cases = [
            ("*", "", true),
            ("*", "anything", true),
            ("billing", "billing", true),
            ("billing", "billing2", false),
            ("billing-*", "billing-1", true),
            ("billing-*", "billing-", true),
            ("billing-*", "xbilling-1", false),
            ("*-eu", "api-eu", true),
            ("*-eu", "api-us", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "acb", false),
            ("ab*ba", "aba", false),
            ("a**", "a", true),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(Pattern::new(pattern).unwrap().matches(text), expected, "{pattern} ~ {text}");
        }
        assert!(Pattern::new("").is_err());
        assert!(Pattern::new("a b").is_err());
        assert!(Pattern::new("x".repeat(257)).is_err());
    }

    #[test]
    fn node_scoped_writers_write_only_their_nodes_and_services() {
        let policy = Policy::new(vec![rule("billing", "billing-*", Access::Write)]);
        assert!(policy.check_write("billing-1", ["billing"]).is_ok());
        assert!(policy.check_write("billing-1", []).is_ok());
        let err = policy.check_write("billing-1", ["billing", "auth"]).unwrap_err();
        assert!(err.contains("`auth`"), "{err}");
        assert!(policy.check_write("auth-1", ["billing"]).unwrap_err().contains("node `auth-1`"));
        assert!(policy.may_read_service("billing"));
        assert!(!policy.may_read_service("auth"));
        assert!(!policy.writes_any_service_of("billing-1"), "its services must be read");
        let any_service = Policy::new(vec![rule("*", "web-*", Access::Write)]);
        assert!(any_service.writes_any_service_of("web-1") && !any_service.writes_any_service_of("db-1"));
        assert!(policy.may_read_node("billing-1", ["billing"].into_iter()));
        assert!(!policy.may_read_node("billing-1", ["auth"].into_iter()));
        assert!(!policy.may_read_node("other", ["billing"].into_iter()));
        assert!(!policy.is_admin());
    }

    #[test]
    fn read_rules_never_write_and_admin_does_everything() {
        let reader = Policy::new(vec![Rule::everything(Access::Read)]);
        assert!(reader.check_write("n", ["s"]).is_err());
        assert!(reader.may_read_service("s") && reader.may_read_node("n", std::iter::empty()));
        let admin = Policy::new(vec![rule("nothing", "nothing", Access::Admin)]);
        assert!(admin.is_admin() && admin.check_write("n", ["s"]).is_ok() && admin.may_read_service("s"));
        let none = Policy::new(DefaultPolicy::Deny.rules());
        assert!(!none.may_read_some() && !none.may_read_service("s") && none.check_write("n", []).is_err());
    }

    #[test]
    fn records_and_rules_read_from_json() {
        let record: TokenRecord = serde_json::from_str(
            r#"{"name":"ci","secretHash":"00000000000000000000000000000000000000000000000000000000000000ff",
                "rules":[{"services":"web*","access":"write"}],"createdMs":1}"#,
        )
        .unwrap();
        record.validate().unwrap();
        assert!(record.rules[0].nodes.is_any());
        assert!(serde_json::from_str::<Rule>(r#"{"access":"root"}"#).is_err());
        assert!(serde_json::from_str::<Rule>(r#"{"services":"a b","access":"read"}"#).is_err());
        assert!(validate_token_name("bad name").is_err());
    }
}
