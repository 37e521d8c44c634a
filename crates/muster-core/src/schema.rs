//! The validation rules as JSON Schema patterns (ECMA-262), for the API's OpenAPI document: a
//! request the document calls valid is accepted, and one it calls invalid is refused. Each pattern
//! is written from the validator next to it; the tests check both on the same examples.

/// A node id ([`crate::NodeId::new`]).
pub const NODE_ID: &str = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$";
/// A service name ([`crate::name::validate_service_name`]).
pub const SERVICE_NAME: &str = "^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$";
/// A service version ([`crate::name::validate_version`]).
pub const VERSION: &str = "^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$";
/// A metadata key ([`crate::service::validate_metadata`]).
pub const METADATA_KEY: &str = "^[A-Za-z0-9._/-]{1,128}$";

/// A semver requirement as `GET /v1/services/{name}/instances?versionReq=` documents it: one or
/// more comparators (`^1.2`, `>=1.0, <2`, `1.*`, `~1.2.3-beta.1`), a subset of what the server
/// parses. (The server parses every form its semver parser knows.)
pub const VERSION_REQ: &str = "^\\*$|^((=|>=|<=|>|<|~|\\^)?(0|[1-9][0-9]{0,8})(\\.((0|[1-9][0-9]{0,8})(\\.(0|[1-9][0-9]{0,8})(-(0|[1-9][0-9]{0,8}|[0-9]*[A-Za-z][0-9A-Za-z]*)(\\.(0|[1-9][0-9]{0,8}|[0-9]*[A-Za-z][0-9A-Za-z]*))*)?|\\.\\*)?|\\*))?)(, ?(=|>=|<=|>|<|~|\\^)?(0|[1-9][0-9]{0,8})(\\.((0|[1-9][0-9]{0,8})(\\.(0|[1-9][0-9]{0,8})(-(0|[1-9][0-9]{0,8}|[0-9]*[A-Za-z][0-9A-Za-z]*)(\\.(0|[1-9][0-9]{0,8}|[0-9]*[A-Za-z][0-9A-Za-z]*))*)?|\\.\\*)?|\\*))?)*$";

/// An ACL token's name.
pub const TOKEN_NAME: &str = "^[A-Za-z0-9._-]{1,64}$";
/// An ACL rule's service or node pattern (`*` is a wildcard).
pub const ACL_PATTERN: &str = "^[A-Za-z0-9._:@/*-]{1,256}$";
/// A blocking query's `wait`: a whole number with an optional unit (`500ms`, `30s`, `5m`, `1h`).
pub const WAIT: &str = "^[0-9]{1,9}(ms|s|m|h)?$";

/// A revision as text (`Last-Event-ID`).
pub const REVISION_TEXT: &str = "^[0-9]{1,19}$";

/// 1-5 digits, value 1-65535, leading zeros allowed.
const PORT: &str = "(0{0,4}[1-9]|0{0,3}[1-9][0-9]|0{0,2}[1-9][0-9]{2}|0?[1-9][0-9]{3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])";
const IPV4_OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";
const IPV6: &str = "(([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,7}:|\
([0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}|\
([0-9a-fA-F]{1,4}:){1,4}(:[0-9a-fA-F]{1,4}){1,3}|([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}|\
([0-9a-fA-F]{1,4}:){1,2}(:[0-9a-fA-F]{1,4}){1,5}|[0-9a-fA-F]{1,4}:(:[0-9a-fA-F]{1,4}){1,6}|\
:((:[0-9a-fA-F]{1,4}){1,7}|:))";
const LABEL: &str = "[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?";

/// A host as [`crate::Address::from_parts`] takes it: an IPv4 address, an IPv6 address (without
/// brackets) or a host name of at most 253 bytes (labels of 1–63 of `A-Z a-z 0-9 _ -`, not starting
/// or ending with `-`, not all digits).
pub fn host() -> String {
    format!("^({IPV4_OCTET}(\\.{IPV4_OCTET}){{3}}|{IPV6}|(?=.{{1,253}}$)(?![0-9.]+$){LABEL}(\\.{LABEL})*)$")
}

/// A port number 1–65535 as 1–5 digits (leading zeros allowed).
pub fn port_text() -> String {
    format!("^{PORT}$")
}

/// An address as [`crate::Address::parse`] takes it: `host:port`, IPv6 in brackets.
pub fn address() -> String {
    format!(
        "^({IPV4_OCTET}(\\.{IPV4_OCTET}){{3}}|\\[{IPV6}\\]|(?=[^:]{{1,253}}:)(?![0-9.]+:){LABEL}(\\.{LABEL})*):{PORT}$"
    )
}

/// Deserializes an optional whole number that JSON may write as `7` or `7.0` (JSON Schema calls
/// both integers), refusing fractions, negatives and values out of `T`'s range.
pub fn optional_whole<'de, D, T>(deserializer: D) -> std::result::Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::Deserialize;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Whole(u64),
        Float(f64),
    }
    let invalid = |shown: &dyn std::fmt::Display| {
        serde::de::Error::custom(format!("expected a whole number within range, got {shown}"))
    };
    let whole = match Option::<Number>::deserialize(deserializer)? {
        None => return Ok(None),
        Some(Number::Whole(n)) => n,
        Some(Number::Float(f)) if f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&f) => f as u64,
        Some(Number::Float(f)) => return Err(invalid(&f)),
    };
    T::try_from(whole).map(Some).map_err(|_| invalid(&whole))
}

#[cfg(test)]
mod tests {
    use crate::{Address, NodeId, name};

    #[test]
    fn whole_numbers_may_be_written_as_floats() {
        #[derive(serde::Deserialize)]
        struct W {
            #[serde(default, deserialize_with = "super::optional_whole")]
            w: Option<u32>,
        }
        let read = |json: &str| serde_json::from_str::<W>(json).map(|w| w.w);
        assert_eq!(read(r#"{"w": 7}"#).unwrap(), Some(7));
        assert_eq!(read(r#"{"w": 7.0}"#).unwrap(), Some(7));
        assert_eq!(read(r#"{"w": null}"#).unwrap(), None);
        assert_eq!(read(r#"{}"#).unwrap(), None);
        for bad in [r#"{"w": 7.5}"#, r#"{"w": -1}"#, r#"{"w": 4294967296}"#, r#"{"w": "7"}"#] {
            assert!(read(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn documented_version_requirements_parse() {
        for req in [
            "*",
            "^1.2",
            ">=1.0, <2",
            "1.*",
            "~1.2.3-beta.1",
            "=0.0.1",
            "<3,>1",
            "2",
            ">=1.*",
            "^1.2.*",
            "~0",
            "<0.0.0-a.0",
            "1.x",
            "1.2.X",
            "0.0.0-0a.1",
            "1.2.3-rc1",
        ] {
            assert!(crate::VersionQuery::semver(req).is_ok(), "{req}");
        }
        assert!(crate::name::validate_version("1").is_ok());
        assert!(crate::VersionQuery::semver("1.*.2").is_err(), "not documented, not accepted");
    }

    #[test]
    fn examples_agree_with_the_validators() {
        // (text, valid) for the validators; the patterns are checked on the same corpus by the
        // schemathesis run in CI and by hand with any ECMA-262 engine.
        for (text, valid) in
            [("a", true), ("users-1", true), ("a:b.c_d", true), ("-a", false), ("a b", false), ("é", false)]
        {
            assert_eq!(NodeId::new(text).is_ok(), valid, "{text}");
        }
        for (text, valid) in [("api/v1", true), ("x.y_z-1", true), ("/a", false), ("a:b", false), ("", false)]
        {
            assert_eq!(name::validate_service_name(text).is_ok(), valid, "{text}");
        }
        for (text, valid) in [("1.0.0+build.1", true), ("v2", true), ("+1", false), ("1 0", false)] {
            assert_eq!(name::validate_version(text).is_ok(), valid, "{text}");
        }
        for (text, valid) in [
            ("10.0.0.1:80", true),
            ("host-1.example_x:080", true),
            ("[::1]:8080", true),
            ("[2001:db8::ff00:42:8329]:1", true),
            ("a:65535", true),
            ("a:65536", false),
            ("a:0", false),
            ("a:000000", false),
            ("256.1.1.1:80", false),
            ("1.2.3:80", false),
            ("-a:80", false),
            ("a-:80", false),
            ("a..b:80", false),
            ("::1:80", false),
            ("[::1:80", false),
            ("h:", false),
            (":80", false),
        ] {
            assert_eq!(Address::parse(text).is_ok(), valid, "{text}");
        }
    }
}
