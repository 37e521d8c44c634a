//! The zone's names: what a name under the domain (or a reverse lookup) asks for, which instances
//! speak an RFC 2782 protocol, and a node's host as a DNS name.

use std::net::IpAddr;

use hickory_proto::rr::Name;
use muster_core::NodeInfo;

/// What a name under the zone asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// A service's instances, optionally of one version (its dashed form); in the SRV form, the
    /// protocol asked for (`tcp` for `_tcp`), or the A/AAAA form (`None`).
    Service { name: String, version: Option<String>, proto: Option<String> },
    /// A reverse lookup (`<reversed address>.in-addr.arpa.` or `ip6.arpa.`) of a registered address.
    Reverse(IpAddr),
    /// One node by id.
    Node(String),
    /// The zone's apex.
    Apex,
    /// `ns.<domain>`: the server itself, which the SOA and NS records name.
    NameServer,
}

/// What `name` (lower case) asks for, when it is one of the zone's forms under `domain` or a
/// reverse lookup of an address.
pub(super) fn target(domain: &Name, name: &Name) -> Option<Target> {
    if !domain.zone_of(name) {
        // `<reversed address>.in-addr.arpa.` / `ip6.arpa.`: a whole address, not a network.
        let net = name.parse_arpa_name().ok()?;
        return (net.prefix_len() == net.max_prefix_len()).then(|| Target::Reverse(net.addr()));
    }
    let depth = usize::from(name.num_labels()) - usize::from(domain.num_labels());
    let labels: Vec<String> =
        name.iter().take(depth).map(|l| String::from_utf8_lossy(l).into_owned()).collect();
    // `_<service>` and `_<protocol>` of an RFC 2782 name.
    let srv = |service: &str, proto: &str, version: Option<&str>| {
        Some(Target::Service {
            name: service.strip_prefix('_')?.to_owned(),
            version: version.map(ToOwned::to_owned),
            proto: Some(proto.strip_prefix('_').filter(|p| !p.is_empty())?.to_owned()),
        })
    };
    match labels.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => Some(Target::Apex),
        ["ns"] => Some(Target::NameServer),
        [id, "node"] => Some(Target::Node((*id).to_owned())),
        [service, "service"] => {
            Some(Target::Service { name: (*service).to_owned(), version: None, proto: None })
        }
        [version, service, "service"] if version.starts_with('v') && !service.starts_with('_') => {
            Some(Target::Service {
                name: (*service).to_owned(),
                version: Some(version[1..].to_owned()),
                proto: None,
            })
        }
        // RFC 2782: `_<service>._<protocol>.service.<domain>`, or straight under the domain.
        [service, proto, "service"] | [service, proto] => srv(service, proto, None),
        [service, proto, version, "service"] if version.starts_with('v') => {
            srv(service, proto, Some(&version[1..]))
        }
        _ => None,
    }
}

/// True when the instance speaks `proto` (lower case): the service's `protocol` metadata, else the
/// node's (a list: `tcp`, `udp`, `tcp,udp`, ...), `tcp` when neither says.
pub(super) fn declares(node: &NodeInfo, service: &muster_core::ServiceInfo, proto: &str) -> bool {
    match service.metadata.get("protocol").or_else(|| node.metadata.get("protocol")) {
        None => proto == "tcp",
        Some(list) => list.split([',', ' ']).any(|p| p.trim().eq_ignore_ascii_case(proto)),
    }
}

/// The node's host as a DNS name, when its address is a host name rather than an IP.
pub(super) fn host_name(node: &NodeInfo) -> Option<Name> {
    let host = node.address.host_unbracketed();
    if host.parse::<IpAddr>().is_ok() {
        return None;
    }
    let mut name = Name::from_ascii(host).ok()?;
    name.set_fqdn(true);
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str) -> Option<Target> {
        let domain = Name::from_ascii("muster.").unwrap();
        target(&domain, &Name::from_ascii(name).unwrap().to_lowercase())
    }

    fn service(name: &str, version: Option<&str>, proto: Option<&str>) -> Option<Target> {
        Some(Target::Service {
            name: name.into(),
            version: version.map(Into::into),
            proto: proto.map(Into::into),
        })
    }

    #[test]
    fn names_map_to_targets() {
        assert_eq!(parse("users.service.muster."), service("users", None, None));
        assert_eq!(parse("USERS.Service.Muster."), service("users", None, None), "case-insensitive");
        assert_eq!(parse("v1-2-0.users.service.muster."), service("users", Some("1-2-0"), None));
        assert_eq!(parse("_users._tcp.service.muster."), service("users", None, Some("tcp")));
        assert_eq!(parse("_users._udp.service.muster."), service("users", None, Some("udp")));
        assert_eq!(
            parse("_users._tcp.muster."),
            service("users", None, Some("tcp")),
            "RFC 2782's short form"
        );
        assert_eq!(parse("_users._tcp.v1-2-0.service.muster."), service("users", Some("1-2-0"), Some("tcp")));
        assert_eq!(parse("node-7.node.muster."), Some(Target::Node("node-7".into())));
        assert_eq!(parse("muster."), Some(Target::Apex));
        assert_eq!(parse("7.0.0.10.in-addr.arpa."), Some(Target::Reverse("10.0.0.7".parse().unwrap())));
        let v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.";
        assert_eq!(parse(v6), Some(Target::Reverse("::1".parse().unwrap())));
        for other in [
            "users.muster.",
            "a.b.users.service.muster.",
            "users._tcp.service.muster.",
            "users.service.consul.",
            "x1.users.service.muster.",
            "_users._.service.muster.",
            "0.10.in-addr.arpa.",
        ] {
            assert_eq!(parse(other), None, "{other}");
        }
    }
}
