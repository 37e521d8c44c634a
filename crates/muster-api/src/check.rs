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
pub const CHECK_OUTPUT: &str = muster_core::CHECK_OUTPUT;

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
    /// The `host:port` to check (IPv6 in brackets). Default: the node's address.
    #[serde(default)]
    pub target: Option<String>,
    /// `http` only: the path to GET (from `/`). Default: the node's `health` metadata, else
    /// `/health` (the instance's health URL).
    #[serde(default)]
    pub path: Option<String>,
    /// Time between checks in milliseconds (100 ms to 1 h; default 10 s).
    #[serde(default = "default_interval", deserialize_with = "whole")]
    pub interval_ms: u64,
    /// How long one check may take in milliseconds (10 ms to 1 h; default 2 s, or the interval
    /// when shorter). A check is never started while the previous one runs.
    #[serde(default, deserialize_with = "muster_core::schema::optional_whole")]
    pub timeout_ms: Option<u64>,
    /// Failures in a row that set the node `DOWN` (1-100; default 3).
    #[serde(default = "default_failures", deserialize_with = "whole")]
    pub failures: u32,
    /// Successes in a row that bring it back `UP` (1-100; default 2).
    #[serde(default = "default_successes", deserialize_with = "whole")]
    pub successes: u32,
}

/// A whole number that JSON may write as `7` or `7.0`.
fn whole<'de, D: serde::Deserializer<'de>, T: TryFrom<u64>>(deserializer: D) -> Result<T, D::Error> {
    muster_core::schema::optional_whole(deserializer)?
        .ok_or_else(|| serde::de::Error::custom("expected a whole number, got null"))
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
        // A configured timeout is honoured as given (a check longer than its interval delays the
        // next one); the default never exceeds the interval.
        std::time::Duration::from_millis(self.timeout_ms.unwrap_or(self.interval_ms.min(2_000)))
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
            && !(10..=3_600_000).contains(&timeout)
        {
            return Err(format!("check.timeoutMs: {timeout} is outside 10..=3600000"));
        }
        for (field, n) in [("failures", self.failures), ("successes", self.successes)] {
            if !(1..=100).contains(&n) {
                return Err(format!("check.{field}: {n} is outside 1..=100"));
            }
        }
        if let Some(address) = &self.target {
            muster_core::Address::parse(address.as_str())
                .map_err(|e| format!("check.target: {}", e.message()))?;
        }
        if let Some(path) = &self.path
            && !valid_path(path)
        {
            return Err(format!(
                "check.path: {path:?} must start with / and be at most {MAX_PATH} printable characters without spaces"
            ));
        }
        Ok(())
    }

    /// Writes the check into `metadata` (replacing a previous one).
    pub fn write_to(&self, metadata: &mut Metadata) {
        metadata.retain(|key, _| {
            !key.starts_with("check.") || key == CHECK_OUTPUT || key == muster_core::CHECK_SINCE
        });
        let kind = match self.kind {
            CheckKind::Http => "http",
            CheckKind::Tcp => "tcp",
        };
        metadata.insert("check.type".into(), kind.into());
        if let Some(target) = &self.target {
            metadata.insert("check.target".into(), target.clone());
        }
        if let Some(path) = &self.path {
            metadata.insert("check.path".into(), path.clone());
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
            path: metadata.get("check.path").cloned(),
            interval_ms: number("check.interval-ms").unwrap_or(Some(default_interval()))?,
            timeout_ms,
            failures: u32::try_from(number("check.failures").unwrap_or(Some(3))?).ok()?,
            successes: u32::try_from(number("check.successes").unwrap_or(Some(2))?).ok()?,
        };
        check.validate().ok().map(|()| check)
    }
}

/// Longest check path.
pub const MAX_PATH: usize = 1000;

/// The JSON Schema pattern of [`Check::path`].
pub const PATH_PATTERN: &str = "^/[!-~]{0,999}$";

fn valid_path(path: &str) -> bool {
    path.starts_with('/') && path.len() <= MAX_PATH && path.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_round_trip_through_metadata_and_bad_ones_are_named() {
        let check: Check = serde_json::from_str(
            r#"{"type":"http","intervalMs":500,"failures":2,"timeoutMs":20000,"path":"/ready?x=1"}"#,
        )
        .unwrap();
        // A configured timeout is honoured, even beyond the interval; the default is capped by it.
        assert_eq!((check.successes, check.timeout()), (2, std::time::Duration::from_secs(20)));
        let default = Check { timeout_ms: None, ..check.clone() };
        assert_eq!(default.timeout(), std::time::Duration::from_millis(500));
        let mut metadata = Metadata::from([("zone".into(), "a".into()), ("check.old".into(), "x".into())]);
        check.write_to(&mut metadata);
        assert_eq!(Check::read_from(&metadata), Some(check));
        assert_eq!(metadata.get("zone").map(String::as_str), Some("a"), "other metadata kept");
        assert!(!metadata.contains_key("check.old"));
        for (bad, field) in [
            (r#"{"type":"http","intervalMs":50}"#, "intervalMs"),
            (r#"{"type":"http","timeoutMs":5}"#, "timeoutMs"),
            (r#"{"type":"http","path":"health"}"#, "path"),
            (r#"{"type":"http","path":"/a b"}"#, "path"),
            (r#"{"type":"tcp","failures":0}"#, "failures"),
            (r#"{"type":"http","target":"http://x/"}"#, "target"),
            (r#"{"type":"tcp","target":"nohost"}"#, "target"),
        ] {
            let check: Check = serde_json::from_str(bad).unwrap();
            assert!(check.validate().unwrap_err().contains(field), "{bad}");
        }
        assert!(serde_json::from_str::<Check>(r#"{"type":"udp"}"#).is_err());
        let floats: Check =
            serde_json::from_str(r#"{"type":"tcp","intervalMs":500.0,"successes":1.0}"#).unwrap();
        assert_eq!((floats.interval_ms, floats.successes), (500, 1), "whole numbers written as floats");
        assert!(serde_json::from_str::<Check>(r#"{"type":"tcp","failures":1.5}"#).is_err());
        let garbled =
            Metadata::from([("check.type".into(), "http".into()), ("check.failures".into(), "x".into())]);
        assert_eq!(Check::read_from(&garbled), None);
    }
}
