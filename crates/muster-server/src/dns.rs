//! The DNS interface (`muster serve --dns 127.0.0.1:8600`): any program finds a service with a
//! DNS lookup, answered from the server's live view of the registry (the fan-out hub's mirror, so
//! a registration or an expiry shows in the next answer).
//!
//! Names, under the domain (`muster.` by default):
//! - `<service>.service.<domain>`: A/AAAA of the service's `UP` instances (a CNAME to the host
//!   when no instance has an IP address);
//! - `v<version with dashes>.<service>.service.<domain>` (`v1-2-0` for `1.2.0`): one exact version;
//! - `_<service>._<protocol>.service.<domain>` or `_<service>._<protocol>.<domain>` (RFC 2782), and
//!   `_<service>._<protocol>.v<version>.service.<domain>` for one version: SRV of the instances
//!   that speak the protocol (a `protocol` metadata list, the service's or else the node's, `tcp`
//!   when neither says) with the port and the weight, the target `<node-id>.node.<domain>` (its
//!   address in the additional section) or the host name;
//! - `<reversed address>.in-addr.arpa.` / `.ip6.arpa.`: PTR `<node-id>.node.<domain>` of every
//!   node registered at that address (NXDOMAIN when none is);
//! - `<node-id>.node.<domain>`: the node's address (whatever its status), and TXT with its status
//!   and metadata (`status=DOWN`, `zone=eu-1`, ...);
//! - `<domain>`: SOA and NS (`ns.<domain>`); `ns.<domain>`: the DNS server's own address (its listen
//!   address; the loopback address when it listens on every interface).
//!
//! Answers are shuffled; the TTL is a setting. A service no node provides is NXDOMAIN with the
//! zone's SOA; a known name without records of the asked type is an empty answer with the SOA.
//! Queries follow the ACL default policy (DNS carries no token): names the anonymous caller may
//! not read are REFUSED. Over UDP, an answer larger than the client's buffer (512 bytes, or its
//! EDNS size up to 4096) is truncated (TC, so the client asks again over TCP) to as many of its
//! records as fit. `/metrics` counts queries by question type, answer code and transport
//! (`muster_dns_queries_total`), truncations, and the time to answer.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use muster_core::{NodeInfo, NodeStatus};
use rand::seq::SliceRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::answers::Bounded;

/// DNS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Where to answer (UDP and TCP on the same port).
    pub listen: SocketAddr,
    /// The zone answered, e.g. `muster.` (a trailing dot is added when missing).
    pub domain: String,
    /// The TTL of every answer, in seconds.
    pub ttl: u32,
    /// Most TCP connections open at once; one more is closed at once (a client then retries or
    /// asks over UDP).
    pub max_tcp_connections: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8600)),
            domain: "muster.".into(),
            ttl: 5,
            max_tcp_connections: 256,
        }
    }
}

/// Largest UDP answer, whatever a client's EDNS buffer says.
const MAX_UDP: usize = 4096;
/// Longest a TCP client may take to send a query.
const TCP_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

/// The DNS server, bound.
#[derive(Debug)]
pub struct DnsServer {
    /// The address answered on (UDP and TCP).
    pub local_addr: SocketAddr,
}

/// Binds UDP and TCP on `config.listen` (port 0: a free port, the same for both) and answers
/// until the server shuts down.
pub async fn start(state: &AppState, config: DnsConfig) -> std::io::Result<DnsServer> {
    let shutdown = state.inner.shutdown.clone();
    let zone = Arc::new(Zone::new(state.clone(), &config)?);
    let (udp, tcp) = bind(config.listen).await?;
    let local_addr = udp.local_addr()?;
    // One reader per core on the one socket: answering is mostly the kernel's send, which then
    // runs on every core.
    let udp = Arc::new(udp);
    let tasks = &state.inner.tasks;
    for _ in 0..std::thread::available_parallelism().map_or(1, usize::from) {
        tasks.spawn(serve_udp(Arc::clone(&udp), Arc::clone(&zone), shutdown.clone()));
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(config.max_tcp_connections.max(1)));
    tasks.spawn(serve_tcp(tcp, zone, permits, shutdown, tasks.clone()));
    Ok(DnsServer { local_addr })
}

/// A UDP socket and a TCP listener on one port.
async fn bind(listen: SocketAddr) -> std::io::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let mut last = None;
    for _ in 0..20 {
        let udp = tokio::net::UdpSocket::bind(listen).await?;
        match tokio::net::TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // Port 0 gave a UDP port whose TCP twin is taken: try another.
            Err(error) if listen.port() == 0 => last = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port for DNS")))
}

async fn serve_udp(socket: Arc<tokio::net::UdpSocket>, zone: Arc<Zone>, shutdown: CancellationToken) {
    let mut buffer = vec![0u8; MAX_UDP];
    loop {
        let (len, peer) = tokio::select! {
            received = socket.recv_from(&mut buffer) => match received {
                Ok(received) => received,
                Err(error) => {
                    tracing::debug!(%error, "DNS receive failed");
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        if let Some(answer) = zone.answer_bytes(&buffer[..len], Transport::Udp)
            && let Err(error) = socket.send_to(&answer, peer).await
        {
            tracing::debug!(%error, %peer, "DNS send failed");
        }
    }
}

async fn serve_tcp(
    listener: tokio::net::TcpListener,
    zone: Arc<Zone>,
    permits: Arc<tokio::sync::Semaphore>,
    shutdown: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::debug!(%error, "DNS accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        // At the cap, the connection is closed at once rather than left waiting.
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::debug!("DNS connection closed: at the TCP connection limit");
            continue;
        };
        let zone = Arc::clone(&zone);
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = tcp_connection(stream, &zone) => {}
                () = shutdown.cancelled() => {}
            }
            drop(permit);
        });
    }
}

/// Length-prefixed queries on one connection, answered in order, until the client stops.
async fn tcp_connection(mut stream: tokio::net::TcpStream, zone: &Zone) {
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else { return };
        let mut query = vec![0u8; usize::from(len)];
        if !matches!(tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query)).await, Ok(Ok(_))) {
            return;
        }
        let Some(answer) = zone.answer_bytes(&query, Transport::Tcp) else { return };
        let Ok(len) = u16::try_from(answer.len()) else { return };
        if stream.write_u16(len).await.is_err() || stream.write_all(&answer).await.is_err() {
            return;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp = 0,
    Tcp = 1,
}

/// What a name under the zone asks for.
#[derive(Debug, PartialEq, Eq)]
enum Target {
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

/// The zone: names under the domain, answered from the hub's mirror.
struct Zone {
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
    fn new(state: AppState, config: &DnsConfig) -> std::io::Result<Self> {
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
    fn answer_bytes(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
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

/// What `name` (lower case) asks for, when it is one of the zone's forms under `domain` or a
/// reverse lookup of an address.
fn target(domain: &Name, name: &Name) -> Option<Target> {
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
fn declares(node: &NodeInfo, service: &muster_core::ServiceInfo, proto: &str) -> bool {
    match service.metadata.get("protocol").or_else(|| node.metadata.get("protocol")) {
        None => proto == "tcp",
        Some(list) => list.split([',', ' ']).any(|p| p.trim().eq_ignore_ascii_case(proto)),
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

/// The node's host as a DNS name, when its address is a host name rather than an IP.
fn host_name(node: &NodeInfo) -> Option<Name> {
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
