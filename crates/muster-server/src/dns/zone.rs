//! Answers: the zone reads the hub's mirror for each question, builds the records (shuffled),
//! fits a UDP answer to the client's buffer, and keeps encoded answers while the mirror is
//! unchanged (bounded in count and bytes).

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use muster_core::{NodeInfo, NodeStatus};
use rand::seq::SliceRandom;

use super::names::{Target, declares, host_name, target};
use super::{DnsConfig, MAX_UDP, Transport};
use crate::AppState;
use crate::answers::Bounded;

/// The zone: names under the domain, answered from the hub's mirror.
pub(super) struct Zone {
    state: AppState,
    domain: Name,
    ttl: u32,
    soa: Record,
    /// The apex's NS record (`ns.<domain>`).
    ns: Record,
    /// The address `ns.<domain>` answers with: the DNS listen address, or the loopback address of
    /// its family when it listens on every interface (it cannot know which one a client used).
    ns_ip: IpAddr,
    /// Encoded answers kept while the mirror is unchanged, per transport (UDP, TCP), by query.
    kept: [std::sync::Mutex<Bounded<[u8], Kept>>; 2],
}

/// Most queries whose answers are kept per transport (all are forgotten when it is reached).
const MAX_KEPT: usize = 4096;
/// Most bytes of kept answers per transport (all are forgotten when it is reached; an answer with
/// its orders over an eighth of it is not kept), so clients varying their queries (the case of a
/// name, EDNS options) cannot make the server hold more.
const MAX_KEPT_BYTES: usize = 8 << 20;

/// Most orders of one answer kept (rotations of one shuffled order, handed out in turn).
const MAX_ORDERS: usize = 8;

/// The answers to one query (every byte but the id), built at one state of the mirror.
struct Kept {
    /// [`muster_core::log::Mirror::changes`] when they were built.
    changes: u64,
    /// The question's type, as an index into [`crate::metrics::DNS_TYPES`] (for the metrics).
    qtype: usize,
    /// The encoded answer in each kept order of its records.
    orders: Vec<Vec<u8>>,
    /// The order handed out next.
    next: usize,
}

/// `response` encoded within `limit` bytes: whole when it fits; else truncated (TC set) with as
/// many of its answer records as fit, in order — a client that never retries over TCP still gets
/// addresses — and without its authority and additional records. The count is found by halving,
/// so a large answer is encoded a logarithmic number of times.
fn fitted(response: &Message, limit: usize) -> Option<Vec<u8>> {
    let whole = response.to_vec().ok()?;
    if whole.len() <= limit {
        return Some(whole);
    }
    let mut truncated = response.truncate();
    let with = |truncated: &mut Message, count: usize| {
        truncated.answers = response.answers[..count].to_vec();
        truncated.to_vec().ok()
    };
    // The most records that fit: `fits` do, `fails` do not.
    let (mut fits, mut fails) = (0, response.answers.len());
    while fails - fits > 1 {
        let middle = fits + (fails - fits) / 2;
        match with(&mut truncated, middle) {
            Some(bytes) if bytes.len() <= limit => fits = middle,
            _ => fails = middle,
        }
    }
    with(&mut truncated, fits)
}

impl Zone {
    pub(super) fn new(state: AppState, config: &DnsConfig) -> std::io::Result<Self> {
        let invalid = |e: hickory_proto::ProtoError| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("DNS domain {:?}: {e}", config.domain),
            )
        };
        let mut domain = Name::from_ascii(&config.domain).map_err(invalid)?.to_lowercase();
        domain.set_fqdn(true);
        let mname = Name::from_ascii("ns").map_err(invalid)?.append_domain(&domain).map_err(invalid)?;
        let rname =
            Name::from_ascii("hostmaster").map_err(invalid)?.append_domain(&domain).map_err(invalid)?;
        let ns = Record::from_rdata(domain.clone(), config.ttl, RData::NS(NS(mname.clone())));
        let soa = SOA::new(mname, rname, 1, 3600, 600, 86_400, config.ttl);
        let soa = Record::from_rdata(domain.clone(), config.ttl, RData::SOA(soa));
        let ns_ip = match config.listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let kept = || std::sync::Mutex::new(Bounded::new(MAX_KEPT, MAX_KEPT_BYTES));
        Ok(Self { state, domain, ttl: config.ttl, soa, ns, ns_ip, kept: [kept(), kept()] })
    }

    /// The encoded answer to an encoded query (`None`: not a DNS message; dropped).
    ///
    /// An answer depends on every byte of the query but its id, the transport and the mirror; so
    /// answers are kept per query while the mirror is unchanged ([`Kept`]) and only the id is
    /// written per query. The records of a kept answer come in rotations of one shuffled order,
    /// handed out in turn, so every instance is first as often as the others.
    pub(super) fn answer_bytes(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let started = tokio::time::Instant::now();
        let (answer, qtype) = self.answer_and_type(query, transport)?;
        // The answer's code and TC bit, read back from its header.
        let (rcode, truncated) = (usize::from(answer[3] & 0x0f), answer[2] & 0x02 != 0);
        self.state.inner.metrics.dns.record(transport as usize, qtype, rcode, truncated, started.elapsed());
        Some(answer)
    }

    /// [`Zone::answer_bytes`] with the question's type (an index into
    /// [`crate::metrics::DNS_TYPES`]).
    fn answer_and_type(&self, query: &[u8], transport: Transport) -> Option<(Vec<u8>, usize)> {
        let changes = self.state.inner.hub.with_mirror(muster_core::log::Mirror::changes);
        let key = query.get(2..).filter(|_| query.len() >= 12);
        if let Some(key) = key {
            let mut kept = self.kept[transport as usize].lock().unwrap_or_else(|p| p.into_inner());
            if let Some(entry) = kept.get_mut(key).filter(|e| e.changes == changes) {
                let mut answer = entry.orders[entry.next % entry.orders.len()].clone();
                entry.next = entry.next.wrapping_add(1);
                answer[..2].copy_from_slice(&query[..2]);
                return Some((answer, entry.qtype));
            }
        }
        let other = crate::metrics::DNS_TYPES.len() - 1;
        let request = match Message::from_vec(query) {
            Ok(request) => request,
            Err(_) => {
                // A header we can read gets FORMERR; anything shorter is dropped.
                let id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
                let refused = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
                return Some((refused.to_vec().ok()?, other));
            }
        };
        let qtype = request.queries.first().map_or(other, |q| type_index(q.query_type()));
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let limit = match transport {
            Transport::Tcp => usize::from(u16::MAX),
            Transport::Udp => {
                request.edns.as_ref().map_or(512, |e| usize::from(e.max_payload()).clamp(512, MAX_UDP))
            }
        };
        let mut response = self.answer(&request);
        let rotations = response.answers.len().clamp(1, MAX_ORDERS);
        let mut orders = Vec::with_capacity(rotations);
        for _ in 0..rotations {
            orders.push(fitted(&response, limit)?);
            if !response.answers.is_empty() {
                response.answers.rotate_left(1);
            }
        }
        let first = orders[0].clone();
        if let Some(key) = key {
            let size = key.len() + orders.iter().map(Vec::len).sum::<usize>();
            let mut kept = self.kept[transport as usize].lock().unwrap_or_else(|p| p.into_inner());
            kept.insert(Box::from(key), Kept { changes, qtype, orders, next: 1 }, size);
        }
        Some((first, qtype))
    }

    fn answer(&self, request: &Message) -> Message {
        let mut response = Message::new(request.metadata.id, MessageType::Response, request.metadata.op_code);
        response.metadata = Metadata::response_from_request(&request.metadata);
        response.metadata.authoritative = true;
        if let Some(edns) = &request.edns {
            let mut ours = Edns::new();
            ours.set_max_payload(edns.max_payload().clamp(512, MAX_UDP as u16));
            response.set_edns(ours);
        }
        response.add_queries(request.queries.iter().cloned());
        if request.metadata.op_code != OpCode::Query {
            response.metadata.response_code = ResponseCode::NotImp;
            return response;
        }
        let [query] = request.queries.as_slice() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return response;
        };
        if query.query_class() != DNSClass::IN && query.query_class() != DNSClass::ANY {
            response.metadata.response_code = ResponseCode::Refused;
            return response;
        }
        let name = query.name().to_lowercase();
        let Some(target) = target(&self.domain, &name) else {
            response.metadata.response_code =
                if self.domain.zone_of(&name) { ResponseCode::NXDomain } else { ResponseCode::Refused };
            if response.metadata.response_code == ResponseCode::NXDomain {
                response.add_authority(self.soa.clone());
            }
            return response;
        };
        let code = self.records(&target, query.name(), query.query_type(), &mut response);
        response.metadata.response_code = code;
        // The zone's SOA on an empty answer of its own names (not on a reverse lookup's).
        if response.answers.is_empty() && code != ResponseCode::Refused && self.domain.zone_of(&name) {
            response.add_authority(self.soa.clone());
        }
        response
    }

    /// Adds the records of `target` of type `kind` to `response`; the response code.
    fn records(
        &self,
        target: &Target,
        owner: &Name,
        kind: RecordType,
        response: &mut Message,
    ) -> ResponseCode {
        let caller = self.state.inner.acl.anonymous_caller();
        match target {
            Target::Apex => {
                if matches!(kind, RecordType::SOA | RecordType::ANY) {
                    response.add_answer(self.soa.clone());
                }
                if matches!(kind, RecordType::NS | RecordType::ANY) {
                    response.add_answer(self.ns.clone());
                }
                ResponseCode::NoError
            }
            Target::NameServer => {
                let rdata = match self.ns_ip {
                    IpAddr::V4(ip) if matches!(kind, RecordType::A | RecordType::ANY) => {
                        Some(RData::A(A(ip)))
                    }
                    IpAddr::V6(ip) if matches!(kind, RecordType::AAAA | RecordType::ANY) => {
                        Some(RData::AAAA(AAAA(ip)))
                    }
                    _ => None,
                };
                response.add_answers(rdata.map(|rdata| Record::from_rdata(owner.clone(), self.ttl, rdata)));
                ResponseCode::NoError
            }
            Target::Node(id) => {
                let node = self.state.inner.hub.with_mirror(|mirror| {
                    // Node ids are looked up as written, then regardless of case (DNS is not).
                    mirror.get(&muster_core::NodeId::from_wire(id.as_str())).cloned().or_else(|| {
                        mirror.iter().find(|n| n.node_id.as_str().eq_ignore_ascii_case(id)).cloned()
                    })
                });
                let Some(node) = node else { return ResponseCode::NXDomain };
                if !caller.may_read_node(&node) {
                    return ResponseCode::Refused;
                }
                response.add_answers(self.address_records(owner, &node, kind));
                if matches!(kind, RecordType::TXT | RecordType::ANY) {
                    response.add_answer(self.node_text(owner, &node));
                }
                ResponseCode::NoError
            }
            Target::Reverse(ip) => {
                // A scan of the active nodes: reverse lookups are rare, and kept answers spare
                // the repeats.
                let names: Vec<Name> = self.state.inner.hub.with_mirror(|mirror| {
                    mirror
                        .iter()
                        .filter(|n| n.address.host_unbracketed().parse::<IpAddr>().is_ok_and(|a| a == *ip))
                        .filter(|n| caller.may_read_node(n))
                        .filter_map(|n| self.node_name(n))
                        .collect()
                });
                if names.is_empty() {
                    return ResponseCode::NXDomain;
                }
                if matches!(kind, RecordType::PTR | RecordType::ANY) {
                    response.add_answers(
                        names
                            .into_iter()
                            .map(|name| Record::from_rdata(owner.clone(), self.ttl, RData::PTR(PTR(name)))),
                    );
                }
                ResponseCode::NoError
            }
            Target::Service { name, version, proto } => {
                if !caller.may_read_service(name) {
                    return ResponseCode::Refused;
                }
                let (known, mut up) = self.state.inner.hub.with_mirror(|mirror| {
                    let exact = mirror.service(name).next().is_some();
                    let service = if exact {
                        name.clone()
                    } else {
                        // DNS names are case-insensitive; service names need not be.
                        match mirror.service_names().find(|s| s.eq_ignore_ascii_case(name)) {
                            Some(s) => s.to_owned(),
                            None => return (false, Vec::new()),
                        }
                    };
                    let up: Vec<(Arc<NodeInfo>, Option<u32>)> = mirror
                        .service(&service)
                        .filter(|n| n.status == NodeStatus::Up && caller.may_read_node(n))
                        .filter_map(|n| {
                            let s = n.services.iter().find(|s| s.name == service)?;
                            let wanted = version.as_ref().is_none_or(|v| {
                                s.version
                                    .as_deref()
                                    .is_some_and(|have| have.replace('.', "-").eq_ignore_ascii_case(v))
                            });
                            let speaks = proto.as_deref().is_none_or(|proto| declares(n, s, proto));
                            (wanted && speaks).then(|| (Arc::clone(n), s.weight))
                        })
                        .collect();
                    (true, up)
                });
                if !known {
                    return ResponseCode::NXDomain;
                }
                up.shuffle(&mut rand::rng());
                if proto.is_some() {
                    if matches!(kind, RecordType::SRV | RecordType::ANY) {
                        self.srv_records(owner, &up, response);
                    }
                } else {
                    self.service_addresses(owner, &up, kind, response);
                }
                ResponseCode::NoError
            }
        }
    }

    /// A/AAAA of the instances with IP addresses; a CNAME to the first host name when none has one.
    fn service_addresses(
        &self,
        owner: &Name,
        up: &[(Arc<NodeInfo>, Option<u32>)],
        kind: RecordType,
        response: &mut Message,
    ) {
        let mut any_ip = false;
        for (node, _) in up {
            if node.address.host_unbracketed().parse::<IpAddr>().is_ok() {
                any_ip = true;
                response.add_answers(self.address_records(owner, node, kind));
            }
        }
        if !any_ip
            && matches!(kind, RecordType::A | RecordType::AAAA | RecordType::CNAME | RecordType::ANY)
            && let Some(host) = up.iter().find_map(|(n, _)| host_name(n))
        {
            response.add_answer(Record::from_rdata(owner.clone(), self.ttl, RData::CNAME(CNAME(host))));
        }
    }

    fn srv_records(&self, owner: &Name, up: &[(Arc<NodeInfo>, Option<u32>)], response: &mut Message) {
        for (node, weight) in up {
            let target = match host_name(node) {
                Some(host) => host,
                None => {
                    let Some(target) = self.node_name(node) else { continue };
                    response.add_additionals(self.address_records(&target, node, RecordType::ANY));
                    target
                }
            };
            let weight = u16::try_from(weight.unwrap_or(1)).unwrap_or(u16::MAX);
            let srv = SRV::new(1, weight, node.address.port(), target);
            response.add_answer(Record::from_rdata(owner.clone(), self.ttl, RData::SRV(srv)));
        }
    }

    /// `<node-id>.node.<domain>`, when the node id is a DNS label.
    fn node_name(&self, node: &NodeInfo) -> Option<Name> {
        let label = Name::from_ascii(node.node_id.as_str()).ok()?;
        label.append_domain(&Name::from_ascii("node").ok()?.append_domain(&self.domain).ok()?).ok()
    }

    /// A node's TXT record: `status=<STATUS>` (a node that is not `UP` still answers by node name
    /// and says so here), then `key=value` for each metadata entry; each string at most 255 bytes
    /// (DNS's limit), cut at a character boundary.
    fn node_text(&self, owner: &Name, node: &NodeInfo) -> Record {
        let cut = |mut text: String| {
            let mut end = text.len().min(255);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text
        };
        let strings = std::iter::once(format!("status={}", node.status))
            .chain(node.metadata.iter().map(|(key, value)| format!("{key}={value}")))
            .map(cut)
            .collect();
        Record::from_rdata(owner.clone(), self.ttl, RData::TXT(TXT::new(strings)))
    }

    /// The A or AAAA record of a node's IP address, when it has one and `kind` asks for it.
    fn address_records(&self, owner: &Name, node: &NodeInfo, kind: RecordType) -> Option<Record> {
        let rdata = match node.address.host_unbracketed().parse::<IpAddr>().ok()? {
            IpAddr::V4(ip) if matches!(kind, RecordType::A | RecordType::ANY) => RData::A(A(ip)),
            IpAddr::V6(ip) if matches!(kind, RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(ip)),
            _ => return None,
        };
        Some(Record::from_rdata(owner.clone(), self.ttl, rdata))
    }
}

/// The index of a question type in [`crate::metrics::DNS_TYPES`].
fn type_index(kind: RecordType) -> usize {
    match kind {
        RecordType::A => 0,
        RecordType::AAAA => 1,
        RecordType::SRV => 2,
        RecordType::TXT => 3,
        RecordType::PTR => 4,
        RecordType::NS => 5,
        RecordType::SOA => 6,
        RecordType::CNAME => 7,
        RecordType::ANY => 8,
        _ => 9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clients varying their queries (here the case of the name, as DNS 0x20 does) cannot make
    /// the kept answers hold more than their budget, however large the answers.
    #[tokio::test]
    async fn kept_answers_are_bounded_in_bytes() {
        use muster_core::{Address, NodeId, Registration, Registry, ServiceInfo};
        let registry = Arc::new(muster_memory::MemoryRegistry::new());
        let state = AppState::new(Arc::clone(&registry) as Arc<dyn Registry>, crate::ServerConfig::default());
        for i in 0..300 {
            let registration = Registration::new(
                NodeId::new(format!("node-with-a-long-identifier-{i:04}")).unwrap(),
                Address::parse(format!("10.1.{}.{}:80", i / 250, i % 250 + 1)).unwrap(),
                vec![ServiceInfo::new("big", None).unwrap()],
                std::time::Duration::from_secs(600),
            )
            .unwrap();
            registry.heartbeat(registration).await.unwrap();
        }
        while state.inner.hub.with_mirror(muster_core::log::Mirror::len) < 300 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let zone = Zone::new(state, &DnsConfig::default()).unwrap();
        let name = "_big._tcp.service.muster.";
        let mut largest = 0;
        for variant in 0..200u32 {
            // A different case pattern per query: the same question to DNS, another key to us.
            let mut letter = 0;
            let cased: String = name
                .chars()
                .map(|c| {
                    if !c.is_ascii_alphabetic() {
                        return c;
                    }
                    letter += 1;
                    if variant >> (letter - 1) & 1 == 1 { c.to_ascii_uppercase() } else { c }
                })
                .collect();
            let mut query = Message::query();
            query.add_query(hickory_proto::op::Query::query(
                Name::from_ascii(&cased).unwrap(),
                RecordType::SRV,
            ));
            let answer = zone.answer_bytes(&query.to_vec().unwrap(), Transport::Tcp).unwrap();
            largest = largest.max(answer.len());
            let kept = zone.kept[Transport::Tcp as usize].lock().unwrap();
            assert!(kept.bytes() <= MAX_KEPT_BYTES, "{} bytes kept", kept.bytes());
        }
        assert!(largest > 10_000, "the answers are large ({largest} bytes)");
    }
}
