//! Network addresses of nodes: `host:port`, with IPv6 hosts in brackets.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest host name accepted (the DNS limit).
const MAX_HOST_LEN: usize = 253;

/// A node's address: a validated `host:port`, or the text another writer stored.
///
/// [`Address::parse`] (every address Muster accepts from its users) takes a DNS name
/// (`svc-1.internal`), an IPv4 address, or an IPv6 address in brackets (`[::1]:8080`), and a port
/// 1–65535. [`Address::from_wire`] keeps whatever a Titan or Netron peer wrote (`ws://10.8.8.9:9000`,
/// an unbracketed IPv6 address, ...) and finds host and port in it where it can. Either way the
/// string form is kept exactly as given, so it round-trips through the Titan wire format unchanged.
/// Deserialization is the wire form: a reader shows what was stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct Address {
    /// The whole text, as given.
    text: String,
    /// Byte range of the host in `text` (brackets included for a bracketed IPv6 host).
    host: (u16, u16),
    /// The port; 0 when the text has none that could be found.
    port: u16,
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::from_wire)
    }
}

impl Address {
    /// Parses and validates `host:port`.
    pub fn parse(text: impl Into<String>) -> Result<Self> {
        let text = text.into();
        let colon = text
            .rfind(':')
            .ok_or_else(|| Error::invalid("address", format!("{text:?} has no port (expected host:port)")))?;
        let (host, port) = (&text[..colon], &text[colon + 1..]);
        validate_port(port).map_err(|reason| Error::invalid("address", format!("{text:?}: {reason}")))?;
        validate_host(host).map_err(|reason| Error::invalid("address", format!("{text:?}: {reason}")))?;
        let port = port.parse().unwrap_or_default();
        // Validated hosts are at most 255 bytes, so the offsets fit.
        Ok(Self { host: (0, u16::try_from(colon).unwrap_or(u16::MAX)), port, text })
    }

    /// Keeps an address exactly as another writer stored it (Titan accepts any string), finding
    /// host and port where possible: a `scheme://` prefix and a path are skipped, and an
    /// unbracketed IPv6 address takes its last `:` group as the port. When nothing can be found,
    /// the host is the whole text and the port 0.
    pub fn from_wire(text: impl Into<String>) -> Self {
        let text = text.into();
        if let Ok(address) = Self::parse(text.as_str()) {
            return address;
        }
        let (start, end, port) = wire_parts(&text).unwrap_or((0, text.len(), 0));
        match (u16::try_from(start), u16::try_from(end)) {
            (Ok(start), Ok(end)) => Self { host: (start, end), port, text },
            _ => Self { host: (0, 0), port: 0, text },
        }
    }

    /// True when the address passed [`Address::parse`]'s rules (a `host:port` Muster would accept).
    pub fn is_valid(&self) -> bool {
        Self::parse(self.text.as_str()).is_ok()
    }

    /// Builds an address from a host and a port, adding brackets around a bare IPv6 host.
    pub fn from_parts(host: &str, port: u16) -> Result<Self> {
        if host.parse::<Ipv6Addr>().is_ok() {
            Self::parse(format!("[{host}]:{port}"))
        } else {
            Self::parse(format!("{host}:{port}"))
        }
    }

    /// The host part, with brackets for IPv6 written with them (`[::1]`).
    pub fn host(&self) -> &str {
        self.text.get(usize::from(self.host.0)..usize::from(self.host.1)).unwrap_or_default()
    }

    /// The host without IPv6 brackets, as a resolver or socket wants it.
    pub fn host_unbracketed(&self) -> &str {
        self.host().trim_start_matches('[').trim_end_matches(']')
    }

    /// The port (0 for a wire address in which none could be found).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// True when both name the same host: names compared without case, IP addresses by value.
    pub fn same_host(&self, other: &Self) -> bool {
        let (a, b) = (self.host_unbracketed(), other.host_unbracketed());
        match (a.parse::<std::net::IpAddr>(), b.parse::<std::net::IpAddr>()) {
            (Ok(a), Ok(b)) => a == b,
            _ => !a.is_empty() && a.eq_ignore_ascii_case(b),
        }
    }

    /// True when both name the same endpoint as parsed: host names compared without case, IP
    /// addresses by value (`::1` is `0:0::1`), ports as numbers (`x:080` is `x:80`).
    pub fn same_endpoint(&self, other: &Self) -> bool {
        self.port == other.port && self.port != 0 && self.same_host(other)
    }

    /// The whole `host:port` string.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The address as a URL: `http://host:port`, an IPv6 host in brackets even when the writer
    /// left them out (`http://[::1]:9000`), and a wire address that carries its own scheme
    /// (`ws://10.8.8.9:9000`) as written.
    pub fn url(&self) -> AddressUrl<'_> {
        AddressUrl(self)
    }
}

/// [`Address::url`]: displays the URL without building it first.
#[derive(Debug, Clone, Copy)]
pub struct AddressUrl<'a>(&'a Address);

impl fmt::Display for AddressUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let address = self.0;
        if address.text.contains("://") {
            return f.write_str(address.text.trim_end_matches('/'));
        }
        let host = address.host();
        if !host.starts_with('[') && host.contains(':') && address.port != 0 {
            return write!(f, "http://[{host}]:{}", address.port);
        }
        write!(f, "http://{}", address.text)
    }
}

/// Finds `(host start, host end, port)` in a wire address; `None` when there is no usable port.
fn wire_parts(text: &str) -> Option<(usize, usize, u16)> {
    let start = text.find("://").map_or(0, |i| i + 3);
    let rest = &text[start..];
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let colon = authority.rfind(':')?;
    let port: u16 = authority[colon + 1..].parse().ok().filter(|p| *p > 0)?;
    let host = &authority[..colon];
    let ok = match host.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']').is_some_and(|inner| inner.parse::<Ipv6Addr>().is_ok()),
        None => !host.is_empty() && (validate_host(host).is_ok() || host.parse::<Ipv6Addr>().is_ok()),
    };
    ok.then_some((start, start + colon, port))
}

fn validate_port(port: &str) -> std::result::Result<(), String> {
    if port.is_empty() {
        return Err("missing port".into());
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5 {
        return Err(format!("port {port:?} is not a number"));
    }
    match port.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(()),
        _ => Err(format!("port {port} is out of range 1-65535")),
    }
}

fn validate_host(host: &str) -> std::result::Result<(), String> {
    if host.is_empty() {
        return Err("missing host".into());
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or("unclosed '[' in IPv6 host")?;
        return inner
            .parse::<Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| format!("{inner:?} is not an IPv6 address"));
    }
    if host.contains(':') {
        return Err("IPv6 hosts must be written in brackets, like [::1]:8080".into());
    }
    if host.len() > MAX_HOST_LEN {
        return Err(format!("host is {} bytes long, the limit is {MAX_HOST_LEN}", host.len()));
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return host.parse::<Ipv4Addr>().map(|_| ()).map_err(|_| format!("{host:?} is not an IPv4 address"));
    }
    for label in host.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("host {host:?} has an empty or over-long label"));
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(format!("host {host:?} contains a character not allowed in a host name"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("host {host:?} has a label starting or ending with '-'"));
        }
    }
    Ok(())
}

impl TryFrom<String> for Address {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        Self::parse(value)
    }
}

impl TryFrom<&str> for Address {
    type Error = Error;
    fn try_from(value: &str) -> Result<Self> {
        Self::parse(value)
    }
}

impl std::str::FromStr for Address {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl From<Address> for String {
    fn from(a: Address) -> Self {
        a.text
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_keep_the_scheme_and_bracket_ipv6() {
        for (text, url) in [
            ("10.0.0.7:8080", "http://10.0.0.7:8080"),
            ("svc-1.internal:80", "http://svc-1.internal:80"),
            ("[::1]:9000", "http://[::1]:9000"),
            ("::1:9000", "http://[::1]:9000"),
            ("ws://10.8.8.9:9000", "ws://10.8.8.9:9000"),
            ("wss://h.example:443/", "wss://h.example:443"),
        ] {
            assert_eq!(Address::from_wire(text).url().to_string(), url, "{text}");
        }
    }

    use super::*;

    fn check(input: &str, expect: std::result::Result<(&str, u16), &str>) {
        match (Address::parse(input), expect) {
            (Ok(a), Ok((host, port))) => {
                assert_eq!((a.host(), a.port()), (host, port), "{input}");
                assert_eq!(a.as_str(), input);
            }
            (Err(e), Err(msg)) => {
                assert!(e.is_invalid_input());
                assert!(e.to_string().contains(msg), "{input}: {e}");
            }
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn parses_and_rejects() {
        check("localhost:3000", Ok(("localhost", 3000)));
        check("10.0.0.2:8000", Ok(("10.0.0.2", 8000)));
        check("svc-1.internal.example:65535", Ok(("svc-1.internal.example", 65535)));
        check("[::1]:8080", Ok(("[::1]", 8080)));
        check("[2001:db8::1]:1", Ok(("[2001:db8::1]", 1)));
        check("localhost", Err("no port"));
        check("localhost:", Err("missing port"));
        check(":80", Err("missing host"));
        check("host:0", Err("out of range"));
        check("host:70000", Err("out of range"));
        check("host:12a", Err("not a number"));
        check("::1:80", Err("brackets"));
        check("[::1:80", Err("unclosed"));
        check("[zz]:80", Err("not an IPv6"));
        check("300.1.1.1:80", Err("not an IPv4"));
        check("bad host:80", Err("not allowed"));
        check("-x.com:80", Err("starting or ending"));
        check("a..b:80", Err("empty or over-long"));
    }

    #[test]
    fn wire_addresses_are_kept_as_written() {
        for (text, host, port) in [
            ("ws://10.8.8.9:9000", "10.8.8.9", 9000),
            ("http://svc.local:8080/rpc", "svc.local", 8080),
            ("fe80::1:9000", "fe80::1", 9000),
            ("[::1]:80", "[::1]", 80),
            ("localhost", "localhost", 0),
            ("not an address", "not an address", 0),
            ("", "", 0),
        ] {
            let a = Address::from_wire(text);
            assert_eq!((a.as_str(), a.host(), a.port()), (text, host, port), "{text}");
            assert_eq!(a.is_valid(), text == "[::1]:80", "{text}");
        }
        assert_eq!(Address::from_wire("fe80::1:9000").host_unbracketed(), "fe80::1");
        let json: Address = serde_json::from_str("\"ws://h:1\"").unwrap();
        assert_eq!((json.as_str(), json.port()), ("ws://h:1", 1), "deserialization keeps the wire text");
        assert_eq!(Address::from_wire("h:1"), Address::parse("h:1").unwrap());
    }

    #[test]
    fn same_endpoint_compares_as_parsed() {
        let a = |text: &str| Address::parse(text).unwrap();
        assert!(a("x:080").same_endpoint(&a("x:80")));
        assert!(a("Host.Example:1").same_endpoint(&a("host.example:1")));
        assert!(a("[::1]:5").same_endpoint(&Address::from_parts("0:0::1", 5).unwrap()));
        assert!(!a("x:80").same_endpoint(&a("x:81")));
        assert!(!a("10.0.0.1:80").same_endpoint(&a("10.0.0.2:80")));
    }

    #[test]
    fn from_parts_brackets_ipv6() {
        assert_eq!(Address::from_parts("::1", 80).unwrap().as_str(), "[::1]:80");
        assert_eq!(Address::from_parts("::1", 80).unwrap().host_unbracketed(), "::1");
        assert_eq!(Address::from_parts("h", 1).unwrap().as_str(), "h:1");
    }
}
