//! Services a node provides, and queries that find them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::name::{validate_service_name, validate_version};

/// Most metadata entries on one service or node.
pub const MAX_METADATA_ENTRIES: usize = 64;
/// Longest metadata key.
pub const MAX_METADATA_KEY_LEN: usize = 128;
/// Longest metadata value, in characters.
pub const MAX_METADATA_VALUE_LEN: usize = 1024;
/// Most services one node may provide.
pub const MAX_SERVICES_PER_NODE: usize = 256;

/// Free-form string labels (zone, protocol, ...). Sorted so equal maps serialize equally.
pub type Metadata = BTreeMap<String, String>;

/// Validates a metadata map: at most 64 entries, keys 1–128 of `A-Z a-z 0-9 - _ . /`, values at most
/// 1024 characters.
pub fn validate_metadata(metadata: &Metadata) -> Result<()> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(Error::invalid(
            "metadata",
            format!("{} entries, the limit is {MAX_METADATA_ENTRIES}", metadata.len()),
        ));
    }
    for (key, value) in metadata {
        if key.is_empty()
            || key.len() > MAX_METADATA_KEY_LEN
            || !key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
        {
            return Err(Error::invalid(
                "metadata",
                format!(
                    "key {key:?} must be 1-{MAX_METADATA_KEY_LEN} of letters, digits, '-', '_', '.', '/'"
                ),
            ));
        }
        let length = value.chars().count();
        if length > MAX_METADATA_VALUE_LEN {
            return Err(Error::invalid(
                "metadata",
                format!(
                    "value of {key:?} is {length} characters long, the limit is {MAX_METADATA_VALUE_LEN}"
                ),
            ));
        }
    }
    Ok(())
}

/// One service provided by a node: a name, an optional version, optional metadata and weight.
///
/// Serializes as the Titan JSON `{"name":..,"version":..}`; `version` is left out when absent and
/// the additive fields (`metadata`, `weight`) when empty, so Titan readers see what they expect.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Service name, e.g. `user-service`.
    pub name: String,
    /// Version string, e.g. `1.0.0`. A service without a version never matches a versioned query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Labels for filtering (zone, protocol, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: Metadata,
    /// Relative weight for weighted load balancing; absent means the balancer's default.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::schema::optional_whole"
    )]
    pub weight: Option<u32>,
}

impl ServiceInfo {
    /// A validated service with an optional version.
    pub fn new(name: impl Into<String>, version: Option<&str>) -> Result<Self> {
        let service = Self {
            name: name.into(),
            version: version.map(str::to_owned),
            metadata: Metadata::new(),
            weight: None,
        };
        service.validate()?;
        Ok(service)
    }

    /// A validated service with a version.
    pub fn versioned(name: impl Into<String>, version: &str) -> Result<Self> {
        Self::new(name, Some(version))
    }

    /// Parses `name@version` or a bare `name` (the form RPC peers expose services under).
    pub fn parse(text: &str) -> Result<Self> {
        match text.split_once('@') {
            Some((name, version)) => Self::new(name, Some(version)),
            None => Self::new(text, None),
        }
    }

    /// Adds metadata (validated).
    pub fn with_metadata(mut self, metadata: Metadata) -> Result<Self> {
        validate_metadata(&metadata)?;
        self.metadata = metadata;
        Ok(self)
    }

    /// Sets the weight.
    #[must_use]
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = Some(weight);
        self
    }

    /// Checks name, version and metadata rules.
    pub fn validate(&self) -> Result<()> {
        validate_service_name(&self.name)?;
        if let Some(version) = &self.version {
            validate_version(version)?;
        }
        validate_metadata(&self.metadata)
    }

    /// True when this service has the same name and version as `other` (metadata ignored).
    pub fn same_identity(&self, other: &ServiceInfo) -> bool {
        self.name == other.name && self.version == other.version
    }
}

impl fmt::Display for ServiceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(v) => write!(f, "{}@{v}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A service list written as `a@1,b` (for logs and tables), formatted when displayed.
pub struct ServiceList<'a>(pub &'a [ServiceInfo]);

impl fmt::Display for ServiceList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, service) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{service}")?;
        }
        Ok(())
    }
}

/// Validates a node's service list: each service valid, at most 256 entries as sent.
pub fn validate_services(services: &[ServiceInfo]) -> Result<()> {
    if services.len() > MAX_SERVICES_PER_NODE {
        return Err(Error::invalid(
            "services",
            format!("{} services, the limit per node is {MAX_SERVICES_PER_NODE}", services.len()),
        ));
    }
    services.iter().try_for_each(ServiceInfo::validate)
}

/// The list with each entry once, in first-seen order: an entry listed twice says nothing more.
/// (One name and version may still appear with different weights or metadata.)
pub fn dedup_services(services: Vec<ServiceInfo>) -> Vec<ServiceInfo> {
    let mut kept: Vec<ServiceInfo> = Vec::with_capacity(services.len());
    for service in services {
        if !kept.contains(&service) {
            kept.push(service);
        }
    }
    kept
}

/// How a query constrains the version of a service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum VersionQuery {
    /// Any version, or none.
    #[default]
    Any,
    /// Byte-for-byte equality (the Titan semantics). Unversioned services never match.
    Exact(String),
    /// A semver requirement such as `^1.2` or `>=1.0, <2`. Only versions that parse as semver
    /// match; unversioned services never do.
    Semver(semver::VersionReq),
}

impl VersionQuery {
    /// An exact version (validated like a registered version).
    pub fn exact(version: &str) -> Result<Self> {
        validate_version(version)?;
        Ok(Self::Exact(version.to_owned()))
    }

    /// A semver requirement, e.g. `^1.2` or `>=1.0, <2`.
    pub fn semver(requirement: &str) -> Result<Self> {
        semver::VersionReq::parse(requirement)
            .map(Self::Semver)
            .map_err(|e| Error::invalid("version requirement", format!("{requirement:?}: {e}")))
    }

    /// True when a service with `version` satisfies this query.
    pub fn matches(&self, version: Option<&str>) -> bool {
        match (self, version) {
            (Self::Any, _) => true,
            (Self::Exact(want), Some(have)) => want == have,
            (Self::Semver(req), Some(have)) => semver::Version::parse(have).is_ok_and(|v| req.matches(&v)),
            (_, None) => false,
        }
    }
}

impl fmt::Display for VersionQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Exact(v) => f.write_str(v),
            Self::Semver(req) => write!(f, "{req}"),
        }
    }
}

/// A find-by-service query: a service name and a version constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceQuery {
    /// The service name to look for.
    name: String,
    /// The version constraint.
    version: VersionQuery,
}

impl ServiceQuery {
    /// Any version of `name`.
    pub fn new(name: &str) -> Result<Self> {
        validate_service_name(name)?;
        Ok(Self { name: name.to_owned(), version: VersionQuery::Any })
    }

    /// The Titan form: `version` absent means any, present means exact equality.
    pub fn titan(name: &str, version: Option<&str>) -> Result<Self> {
        let query = Self::new(name)?;
        match version {
            None => Ok(query),
            Some(v) => Ok(query.with_version(VersionQuery::exact(v)?)),
        }
    }

    /// Parses `name`, `name@1.2.3` (exact) or `name@^1.2` / `name@>=1, <2` (semver requirement).
    ///
    /// A version part that starts with one of `^ ~ = > < *` is a semver requirement; anything else
    /// is an exact version. Use [`VersionQuery::semver`] to make the choice explicit.
    pub fn parse(text: &str) -> Result<Self> {
        let Some((name, version)) = text.split_once('@') else {
            return Self::new(text);
        };
        let query = Self::new(name)?;
        let version = if version.starts_with(['^', '~', '=', '>', '<', '*']) {
            VersionQuery::semver(version)?
        } else {
            VersionQuery::exact(version)?
        };
        Ok(query.with_version(version))
    }

    /// Replaces the version constraint.
    #[must_use]
    pub fn with_version(mut self, version: VersionQuery) -> Self {
        self.version = version;
        self
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version constraint.
    pub fn version(&self) -> &VersionQuery {
        &self.version
    }

    /// True when `service` satisfies this query.
    pub fn matches(&self, service: &ServiceInfo) -> bool {
        service.name == self.name && self.version.matches(service.version.as_deref())
    }

    /// True when any of `services` satisfies this query.
    pub fn matches_any(&self, services: &[ServiceInfo]) -> bool {
        services.iter().any(|s| self.matches(s))
    }
}

impl fmt::Display for ServiceQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            VersionQuery::Any => f.write_str(&self.name),
            v => write!(f, "{}@{v}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, version: Option<&str>) -> ServiceInfo {
        ServiceInfo::new(name, version).unwrap()
    }

    #[test]
    fn titan_json_shape() {
        let json = serde_json::to_string(&[svc("a", Some("1.0.0")), svc("b", None)]).unwrap();
        assert_eq!(json, r#"[{"name":"a","version":"1.0.0"},{"name":"b"}]"#);
        let back: Vec<ServiceInfo> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, vec![svc("a", Some("1.0.0")), svc("b", None)]);
        let extra =
            svc("c", None).with_metadata([("zone".into(), "eu".into())].into()).unwrap().with_weight(5);
        assert_eq!(
            serde_json::to_string(&extra).unwrap(),
            r#"{"name":"c","metadata":{"zone":"eu"},"weight":5}"#
        );
    }

    #[test]
    fn parse_name_at_version() {
        assert_eq!(ServiceInfo::parse("calculator@1.0.0").unwrap(), svc("calculator", Some("1.0.0")));
        assert_eq!(ServiceInfo::parse("calculator").unwrap(), svc("calculator", None));
        assert!(ServiceInfo::parse("calculator@").unwrap_err().is_invalid_input());
        assert!(ServiceInfo::parse("@1.0").unwrap_err().is_invalid_input());
        assert!(ServiceInfo::parse("a@1@2").is_err());
    }

    #[test]
    fn exact_queries_follow_titan() {
        let q = ServiceQuery::titan("user", Some("1.0.0")).unwrap();
        assert!(q.matches(&svc("user", Some("1.0.0"))));
        assert!(!q.matches(&svc("user", Some("1.0.1"))));
        assert!(!q.matches(&svc("user", None)), "unversioned never matches a versioned query");
        assert!(!q.matches(&svc("other", Some("1.0.0"))));
        let any = ServiceQuery::titan("user", None).unwrap();
        assert!(any.matches(&svc("user", None)) && any.matches(&svc("user", Some("9"))));
    }

    #[test]
    fn semver_queries() {
        let q = ServiceQuery::parse("user@^1.2").unwrap();
        assert!(matches!(q.version(), VersionQuery::Semver(_)));
        assert!(q.matches(&svc("user", Some("1.2.0"))));
        assert!(q.matches(&svc("user", Some("1.9.3"))));
        assert!(!q.matches(&svc("user", Some("2.0.0"))));
        assert!(!q.matches(&svc("user", Some("1.1.9"))));
        assert!(!q.matches(&svc("user", Some("latest"))), "non-semver versions never match");
        assert!(!q.matches(&svc("user", None)));
        let range =
            ServiceQuery::new("user").unwrap().with_version(VersionQuery::semver(">=1.0, <2").unwrap());
        assert!(range.matches(&svc("user", Some("1.5.0"))) && !range.matches(&svc("user", Some("2.0.0"))));
        assert!(VersionQuery::semver("not a req").unwrap_err().is_invalid_input());
        let exact = ServiceQuery::parse("user@1.2").unwrap();
        assert_eq!(exact.version(), &VersionQuery::Exact("1.2".into()));
        assert!(!exact.matches(&svc("user", Some("1.2.0"))));
    }

    #[test]
    fn service_list_rules() {
        assert!(validate_services(&[svc("a", Some("1")), svc("a", Some("2")), svc("a", None)]).is_ok());
        let mut weighted = svc("a", Some("1"));
        weighted.weight = Some(2);
        let listed = vec![svc("a", Some("1")), weighted.clone(), svc("a", Some("1"))];
        assert_eq!(dedup_services(listed), [svc("a", Some("1")), weighted], "an entry twice is kept once");
        let many: Vec<_> = (0..257).map(|i| svc(&format!("s{i}"), None)).collect();
        assert!(validate_services(&many).unwrap_err().to_string().contains("limit per node is 256"));
        let bad = ServiceInfo { name: "".into(), version: None, metadata: Metadata::new(), weight: None };
        assert!(validate_services(&[bad]).is_err());
    }

    #[test]
    fn metadata_rules() {
        let ok: Metadata = [("zone".into(), "eu-1".into())].into();
        assert!(validate_metadata(&ok).is_ok());
        let bad_key: Metadata = [("bad key".into(), "v".into())].into();
        assert!(validate_metadata(&bad_key).is_err());
        let big: Metadata = [("k".into(), "v".repeat(1025))].into();
        assert!(validate_metadata(&big).unwrap_err().to_string().contains("limit is 1024"));
        let many: Metadata = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(validate_metadata(&many).is_err());
    }
}
