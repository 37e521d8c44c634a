//! Active health checks: what a registration asks the registry to run against the node.
//!
//! A check travels with the node as metadata under `check.` (`check.type`, `check.target`,
//! `check.interval-ms`, `check.timeout-ms`, `check.failures`, `check.successes`), so every backend
//! stores it and every server of a fleet sees it; the registry writes the last failure's
//! description to `check.output` when the check sets the node `DOWN`, and removes it when the
//! check brings it back `UP`.

use muster_core::Metadata;
use serde::{Deserialize, Serialize};

/// The metadata key of the last failure's description (present while the check holds the node down).
pub const CHECK_OUTPUT: &str = "check.output";

/// How a check reaches the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// `GET` of a URL; any 2xx passes.
    Http,
    /// A TCP connection opens.
    Tcp,
}

/// An active health check (`check` of a registration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Check {
    /// `http` or `tcp`.
    #[serde(rename = "type")]
    pub kind: CheckKind,
    /// The URL (`http`) or `host:port` (`tcp`). Default: the instance's health URL
    /// (`http://<address><health metadata, default /health>`) or the node's address.
    #[serde(default)]
    pub target: Option<String>,
    /// Time between checks in milliseconds (100 ms to 1 h; default 10 s).
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// How long one check may take in milliseconds (10 ms up to the interval; default 2 s or the
    /// interval when shorter).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Failures in a row that set the node `DOWN` (1-100; default 3).
    #[serde(default = "default_failures")]
    pub failures: u32,
    /// Successes in a row that bring it back `UP` (1-100; default 2).
    #[serde(default = "default_successes")]
    pub successes: u32,
}

fn default_interval() -> u64 {
    10_000
}
fn default_failures() -> u32 {
    3
}
fn default_successes() -> u32 {
    2
}

impl Check {
    /// The timeout in effect.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.timeout_ms.unwrap_or(2_000).min(self.interval_ms))
    }

    /// The interval.
    pub fn interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.interval_ms)
    }

    /// Checks the settings; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(100..=3_600_000).contains(&self.interval_ms) {
            return Err(format!("check.intervalMs: {} is outside 100..=3600000", self.interval_ms));
        }
        if let Some(timeout) = self.timeout_ms
            && !(10..=self.interval_ms).contains(&timeout)
        {
            return Err(format!("check.timeoutMs: {timeout} is outside 10..=intervalMs"));
        }
        for (field, n) in [("failures", self.failures), ("successes", self.successes)] {
            if !(1..=100).contains(&n) {
                return Err(format!("check.{field}: {n} is outside 1..=100"));
            }
        }
        match (&self.kind, &self.target) {
            (CheckKind::Http, Some(url)) => {
                http_host(url).ok_or_else(|| format!("check.target: {url:?} is not an http(s) URL"))?;
            }
            (CheckKind::Tcp, Some(address)) => {
                muster_core::Address::parse(address.as_str())
                    .map_err(|e| format!("check.target: {}", e.message()))?;
            }
            (_, None) => {}
        }
        Ok(())
    }

    /// Writes the check into `metadata` (replacing a previous one).
    pub fn write_to(&self, metadata: &mut Metadata) {
        metadata.retain(|key, _| !key.starts_with("check.") || key == CHECK_OUTPUT);
        let kind = match self.kind {
            CheckKind::Http => "http",
            CheckKind::Tcp => "tcp",
        };
        metadata.insert("check.type".into(), kind.into());
        if let Some(target) = &self.target {
            metadata.insert("check.target".into(), target.clone());
        }
        metadata.insert("check.interval-ms".into(), self.interval_ms.to_string());
        if let Some(timeout) = self.timeout_ms {
            metadata.insert("check.timeout-ms".into(), timeout.to_string());
        }
        metadata.insert("check.failures".into(), self.failures.to_string());
        metadata.insert("check.successes".into(), self.successes.to_string());
    }

    /// The check a node's metadata describes, when it describes a valid one.
    pub fn read_from(metadata: &Metadata) -> Option<Self> {
        let kind = match metadata.get("check.type")?.as_str() {
            "http" => CheckKind::Http,
            "tcp" => CheckKind::Tcp,
            _ => return None,
        };
        let number = |key: &str| metadata.get(key).map(|v| v.parse::<u64>().ok());
        let timeout_ms = match number("check.timeout-ms") {
            None => None,
            Some(parsed) => Some(parsed?),
        };
        let check = Self {
            kind,
            target: metadata.get("check.target").cloned(),
            interval_ms: number("check.interval-ms").unwrap_or(Some(default_interval()))?,
            timeout_ms,
            failures: u32::try_from(number("check.failures").unwrap_or(Some(3))?).ok()?,
            successes: u32::try_from(number("check.successes").unwrap_or(Some(2))?).ok()?,
        };
        check.validate().ok().map(|()| check)
    }
}

/// `http://` or `https://` followed by a host: enough to refuse what a GET could never reach.
fn http_host(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"))?;
    let host = rest.split(['/', '?', '#']).next()?;
    (!host.is_empty() && !host.contains(char::is_whitespace)).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_round_trip_through_metadata_and_bad_ones_are_named() {
        let check: Check = serde_json::from_str(r#"{"type":"http","intervalMs":500,"failures":2}"#).unwrap();
        assert_eq!((check.successes, check.timeout()), (2, std::time::Duration::from_millis(500)));
        let mut metadata = Metadata::from([("zone".into(), "a".into()), ("check.old".into(), "x".into())]);
        check.write_to(&mut metadata);
        assert_eq!(Check::read_from(&metadata), Some(check));
        assert_eq!(metadata.get("zone").map(String::as_str), Some("a"), "other metadata kept");
        assert!(!metadata.contains_key("check.old"));
        for (bad, field) in [
            (r#"{"type":"http","intervalMs":50}"#, "intervalMs"),
            (r#"{"type":"http","timeoutMs":20000}"#, "timeoutMs"),
            (r#"{"type":"tcp","failures":0}"#, "failures"),
            (r#"{"type":"http","target":"ftp://x"}"#, "target"),
            (r#"{"type":"tcp","target":"nohost"}"#, "target"),
        ] {
            let check: Check = serde_json::from_str(bad).unwrap();
            assert!(check.validate().unwrap_err().contains(field), "{bad}");
        }
        assert!(serde_json::from_str::<Check>(r#"{"type":"udp"}"#).is_err());
        let garbled =
            Metadata::from([("check.type".into(), "http".into()), ("check.failures".into(), "x".into())]);
        assert_eq!(Check::read_from(&garbled), None);
    }
}
