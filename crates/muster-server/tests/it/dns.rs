//! The DNS interface over real sockets: hickory's resolver and `dig` (UDP and TCP), answers that
//! follow registrations, status changes, deregistrations and expiries at once, truncation with the
//! TCP retry, SRV by version and by declared protocol (RFC 2782), reverse lookups, the ACL default
//! policy, and the DNS metrics on `/metrics`.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::Resolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use muster_core::{
    Address, DeregisterReason, NodeId, NodeStatus, NodeUpdate, Registration, Registry, ServiceInfo,
};
use muster_memory::MemoryRegistry;
use muster_server::dns::{DnsConfig, start};
use muster_server::{AclConfig, AppState, ServerConfig};

async fn dns_of(state: &AppState) -> SocketAddr {
    let config = DnsConfig { listen: "127.0.0.1:0".parse().unwrap(), ..DnsConfig::default() };
    start(state, config).await.unwrap().local_addr
}

/// A resolver asking only our server, without a cache (answers must follow the registry).
fn resolver(at: SocketAddr) -> Resolver<TokioRuntimeProvider> {
    let mut server = NameServerConfig::udp_and_tcp(at.ip());
    for connection in &mut server.connections {
        connection.port = at.port();
    }
    let config = ResolverConfig::from_name_servers(vec![server]);
    let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
    builder.options_mut().cache_size = 0;
    builder.options_mut().attempts = 1;
    builder.build().unwrap()
}

fn service(name: &str, version: Option<&str>, weight: Option<u32>) -> ServiceInfo {
    ServiceInfo { weight, ..ServiceInfo::new(name, version).unwrap() }
}

async fn register(
    registry: &MemoryRegistry,
    id: &str,
    address: &str,
    services: Vec<ServiceInfo>,
    ttl: Duration,
) {
    let registration =
        Registration::new(NodeId::new(id).unwrap(), Address::parse(address).unwrap(), services, ttl).unwrap();
    registry.heartbeat(registration).await.unwrap();
}

async fn ips(resolver: &Resolver<TokioRuntimeProvider>, name: &str) -> BTreeSet<IpAddr> {
    match resolver.lookup_ip(name).await {
        Ok(found) => found.iter().collect(),
        Err(error) if error.is_no_records_found() || error.is_nx_domain() => BTreeSet::new(),
        Err(error) => panic!("{name}: {error}"),
    }
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `dig @<at> <args>`'s output (one try, no retry over UDP).
fn dig(at: SocketAddr, args: &[&str]) -> String {
    let port = at.port().to_string();
    let output = std::process::Command::new("dig")
        .args(["@127.0.0.1", "-p", &port, "+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("dig runs (Debian package dnsutils)");
    assert!(output.status.success(), "dig {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// The lines of `dig +short` output, sorted.
fn sorted(output: String) -> Vec<String> {
    let mut lines: Vec<String> = output.lines().map(ToOwned::to_owned).collect();
    lines.sort();
    lines
}

fn set(ips: &[&str]) -> BTreeSet<IpAddr> {
    ips.iter().map(|ip| ip.parse().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_follow_the_registry() {
    let registry = MemoryRegistry::new();
    let state = AppState::new(Arc::new(registry.clone()), ServerConfig::default());
    let at = dns_of(&state).await;
    let dns = resolver(at);
    let long = Duration::from_secs(60);
    register(&registry, "users-1", "10.0.0.5:8080", vec![service("users", Some("1.2.0"), Some(3))], long)
        .await;
    register(&registry, "users-2", "[::1]:8081", vec![service("users", Some("2.0.0"), None)], long).await;
    until("both instances answer", || async {
        ips(&dns, "users.service.muster.").await == set(&["10.0.0.5", "::1"])
    })
    .await;
    assert_eq!(ips(&dns, "USERS.Service.Muster.").await, set(&["10.0.0.5", "::1"]), "names ignore case");
    assert_eq!(ips(&dns, "v1-2-0.users.service.muster.").await, set(&["10.0.0.5"]), "one exact version");
    assert_eq!(ips(&dns, "users-2.node.muster.").await, set(&["::1"]), "a node by id");

    let srv = dns.lookup("_users._tcp.service.muster.", RecordType::SRV).await.unwrap();
    let mut records: Vec<(u16, u16, String)> = srv
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some((srv.port, srv.weight, srv.target.to_ascii())),
            _ => None,
        })
        .collect();
    records.sort();
    assert_eq!(
        records,
        [(8080, 3, "users-1.node.muster.".to_owned()), (8081, 1, "users-2.node.muster.".to_owned())],
        "SRV: port, weight, the node's name"
    );
    assert!(
        srv.additionals().iter().any(|r| matches!(r.data, RData::A(_))),
        "the targets' addresses come along"
    );
    assert!(srv.answers().iter().all(|r| r.ttl <= 5), "the configured TTL");

    let unknown = dns.lookup_ip("nobody.service.muster.").await.unwrap_err();
    assert!(unknown.is_nx_domain(), "an unknown service is NXDOMAIN: {unknown}");

    // A status change, a deregistration and an expiry show in the next answer.
    let id = NodeId::new("users-1").unwrap();
    registry.update(&id, NodeUpdate::new().status(NodeStatus::Down)).await.unwrap();
    until("a DOWN instance is left out", || async {
        ips(&dns, "users.service.muster.").await == set(&["::1"])
    })
    .await;
    registry.deregister(&NodeId::new("users-2").unwrap(), DeregisterReason::Graceful).await.unwrap();
    until("a deregistered node is gone", || async { ips(&dns, "users.service.muster.").await.is_empty() })
        .await;
    register(
        &registry,
        "short",
        "10.0.0.9:80",
        vec![service("brief", None, None)],
        Duration::from_millis(300),
    )
    .await;
    until("the new node answers", || async {
        ips(&dns, "brief.service.muster.").await == set(&["10.0.0.9"])
    })
    .await;
    until("the silent node expired", || async { ips(&dns, "brief.service.muster.").await.is_empty() }).await;
    state.shutdown();
}

/// `dig` over UDP and TCP; an answer too large for UDP is truncated and complete over TCP;
/// a host-name address is a CNAME; the apex has an SOA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_over_udp_and_tcp_with_truncation() {
    let registry = MemoryRegistry::new();
    let state = AppState::new(Arc::new(registry.clone()), ServerConfig::default());
    let at = dns_of(&state).await;
    let long = Duration::from_secs(60);
    for n in 0..60 {
        register(
            &registry,
            &format!("big-{n:02}"),
            &format!("10.1.0.{n}:9000"),
            vec![service("big", None, None)],
            long,
        )
        .await;
    }
    register(&registry, "web-1", "web.example.com:80", vec![service("web", None, None)], long).await;
    let dig = |args: &[&str]| dig(at, args);
    let resolver = resolver(at);
    until("all 60 registered", || async { ips(&resolver, "big.service.muster.").await.len() == 60 }).await;
    let udp = dig(&["big.service.muster.", "A", "+ignore", "+noedns"]);
    assert!(udp.contains(" tc") || udp.contains("tc "), "truncated over UDP: {udp}");
    // As many records as fit in 512 bytes, not an empty answer: a client that never retries over
    // TCP still gets addresses (as Consul answers).
    let kept = udp.lines().filter(|l| l.starts_with("big.service.muster.") && l.contains("\tA\t")).count();
    assert!((20..60).contains(&kept), "{kept} of 60 records fit in a 512-byte answer: {udp}");
    let short = dig(&["big.service.muster.", "A", "+ignore", "+short", "+noedns"]);
    assert_eq!(short.lines().count(), kept, "the truncated answer's records");
    let roomy = dig(&["big.service.muster.", "A", "+ignore", "+bufsize=1232"]);
    let more = roomy.lines().filter(|l| l.starts_with("big.service.muster.") && l.contains("\tA\t")).count();
    assert!(more > kept, "a larger EDNS buffer carries more: {more} vs {kept}");
    let tcp = dig(&["big.service.muster.", "A", "+tcp", "+short"]);
    assert_eq!(tcp.lines().count(), 60, "complete over TCP: {tcp}");
    let retried = dig(&["big.service.muster.", "A", "+short", "+noedns"]);
    assert_eq!(retried.lines().count(), 60, "dig retries a truncated answer over TCP");
    // A node's TXT: its status, then its metadata; a DOWN node still answers by node name.
    let down = Registration::new(
        NodeId::new("db-1").unwrap(),
        Address::parse("10.2.0.1:5432").unwrap(),
        vec![service("db", None, None)],
        long,
    )
    .unwrap()
    .with_status(muster_core::NodeStatus::Down)
    .with_metadata([("zone".to_owned(), "eu-1".to_owned())].into_iter().collect())
    .unwrap();
    registry.heartbeat(down).await.unwrap();
    until("db-1 is known", || async { !ips(&resolver, "db-1.node.muster.").await.is_empty() }).await;
    assert_eq!(dig(&["db-1.node.muster.", "TXT", "+short"]), "\"status=DOWN\" \"zone=eu-1\"\n");
    assert_eq!(dig(&["db-1.node.muster.", "A", "+short"]), "10.2.0.1\n", "a DOWN node answers by name");
    assert!(dig(&["db.service.muster.", "A", "+short"]).is_empty(), "but not for its service");
    let cname = dig(&["web.service.muster.", "A"]);
    assert!(cname.contains("CNAME\tweb.example.com."), "{cname}");
    let soa = dig(&["muster.", "SOA", "+short"]);
    assert!(soa.starts_with("ns.muster. hostmaster.muster."), "{soa}");
    // The server the SOA names exists: NS at the apex, and `ns.<domain>` is the DNS server's address.
    assert_eq!(dig(&["muster.", "NS", "+short"]), "ns.muster.\n");
    assert_eq!(dig(&["ns.muster.", "A", "+short"]), format!("{}\n", at.ip()));
    let none = dig(&["ns.muster.", "AAAA"]);
    assert!(
        none.contains("status: NOERROR") && none.contains("ANSWER: 0"),
        "an IPv4 server has no AAAA: {none}"
    );
    let outside = dig(&["example.org.", "A"]);
    assert!(outside.contains("status: REFUSED"), "names outside the zone are refused: {outside}");
    state.shutdown();
}

/// DNS carries no token: it follows the ACL default policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_follows_the_acl_default_policy() {
    for (policy, answered) in
        [(muster_core::acl::DefaultPolicy::Deny, false), (muster_core::acl::DefaultPolicy::Read, true)]
    {
        let registry = MemoryRegistry::new();
        let config = ServerConfig {
            acl: AclConfig { enabled: true, default_policy: policy, ..AclConfig::default() },
            ..ServerConfig::default()
        };
        let state = AppState::new(Arc::new(registry.clone()), config);
        let at = dns_of(&state).await;
        register(&registry, "a-1", "10.0.0.1:80", vec![service("a", None, None)], Duration::from_secs(60))
            .await;
        let dns = resolver(at);
        if answered {
            until("read policy answers", || async {
                ips(&dns, "a.service.muster.").await == set(&["10.0.0.1"])
            })
            .await;
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let refused = dns.lookup_ip("a.service.muster.").await.unwrap_err();
            assert!(
                !refused.is_nx_domain() && !refused.is_no_records_found(),
                "refused, not absent: {refused}"
            );
            assert!(refused.to_string().to_lowercase().contains("refused"), "{refused}");
        }
        state.shutdown();
    }
}

/// The zone and the TTL are settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_domain_and_ttl_are_settings() {
    let registry = MemoryRegistry::new();
    let state = AppState::new(Arc::new(registry.clone()), ServerConfig::default());
    let config = DnsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        domain: "corp".into(),
        ttl: 42,
        ..DnsConfig::default()
    };
    let at = start(&state, config).await.unwrap().local_addr;
    register(&registry, "a-1", "10.0.0.1:80", vec![service("a", None, None)], Duration::from_secs(60)).await;
    let dns = resolver(at);
    until("answered under the configured zone", || async {
        ips(&dns, "a.service.corp.").await == set(&["10.0.0.1"])
    })
    .await;
    let answer = dns.lookup("a.service.corp.", RecordType::A).await.unwrap();
    assert!(answer.answers().iter().all(|r| r.ttl == 42), "{:?}", answer.answers());
    let elsewhere = dns.lookup_ip("a.service.muster.").await.unwrap_err();
    assert!(!elsewhere.is_nx_domain(), "the default zone is not answered: {elsewhere}");
    state.shutdown();
}

/// Answers are kept per query while the registry is unchanged and handed out in rotations: over
/// as many lookups as there are instances, each instance comes first once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_answers_rotate_so_every_instance_comes_first() {
    let registry = MemoryRegistry::new();
    let state = AppState::new(Arc::new(registry.clone()), ServerConfig::default());
    let at = dns_of(&state).await;
    let dns = resolver(at);
    for i in 1..=3 {
        register(
            &registry,
            &format!("r{i}"),
            &format!("10.9.0.{i}:80"),
            vec![service("rot", None, None)],
            Duration::from_secs(60),
        )
        .await;
    }
    until("all three answer", || async { ips(&dns, "rot.service.muster.").await.len() == 3 }).await;
    let mut firsts = BTreeSet::new();
    for _ in 0..3 {
        let found = dns.lookup_ip("rot.service.muster.").await.unwrap();
        firsts.insert(found.iter().next().unwrap());
    }
    assert_eq!(
        firsts,
        set(&["10.9.0.1", "10.9.0.2", "10.9.0.3"]),
        "each instance first once in three lookups"
    );
}

/// SRV for one exact version; RFC 2782 names for each protocol an instance declares (`protocol`
/// metadata, `tcp` by default), with and without `.service`; PTR for registered addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_by_version_and_protocol_and_reverse_lookups() {
    let registry = MemoryRegistry::new();
    let state = AppState::new(Arc::new(registry.clone()), ServerConfig::default());
    let at = dns_of(&state).await;
    let long = Duration::from_secs(60);
    let with_metadata = |id: &str, address: &str, services: Vec<ServiceInfo>, pairs: &[(&str, &str)]| {
        Registration::new(NodeId::new(id).unwrap(), Address::parse(address).unwrap(), services, long)
            .unwrap()
            .with_metadata(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
            .unwrap()
    };
    register(&registry, "api-1", "10.3.0.1:8080", vec![service("api", Some("1.2.0"), None)], long).await;
    registry
        .heartbeat(with_metadata(
            "api-2",
            "10.3.0.2:8081",
            vec![service("api", Some("2.0.0"), None)],
            &[("protocol", "tcp,udp")],
        ))
        .await
        .unwrap();
    let mut resolver_service = service("resolver", None, None);
    resolver_service.metadata.insert("protocol".into(), "udp".into());
    registry
        .heartbeat(with_metadata("dns-1", "10.3.0.3:53", vec![resolver_service], &[("protocol", "tcp")]))
        .await
        .unwrap();
    register(&registry, "cache-1", "10.3.0.1:6379", vec![service("cache", None, None)], long).await;
    until("all four answer", || async { dig(at, &["cache-1.node.muster.", "A", "+short"]) == "10.3.0.1\n" })
        .await;

    let srv = |name: &str| sorted(dig(at, &[name, "SRV", "+short"]));
    assert_eq!(
        srv("_api._tcp.service.muster."),
        ["1 1 8080 api-1.node.muster.", "1 1 8081 api-2.node.muster."]
    );
    assert_eq!(
        srv("_api._tcp.muster."),
        srv("_api._tcp.service.muster."),
        "RFC 2782's form without .service"
    );
    assert_eq!(
        srv("_api._udp.service.muster."),
        ["1 1 8081 api-2.node.muster."],
        "only the one declaring udp"
    );
    assert_eq!(srv("_api._tcp.v1-2-0.service.muster."), ["1 1 8080 api-1.node.muster."], "one exact version");
    assert_eq!(srv("_api._udp.v1-2-0.service.muster."), Vec::<String>::new());
    // The service's own `protocol` wins over the node's.
    assert_eq!(srv("_resolver._udp.muster."), ["1 1 53 dns-1.node.muster."]);
    assert_eq!(srv("_resolver._tcp.muster."), Vec::<String>::new());
    let empty = dig(at, &["_resolver._tcp.service.muster.", "SRV"]);
    assert!(empty.contains("status: NOERROR") && empty.contains("ANSWER: 0"), "{empty}");
    let unknown = dig(at, &["_nothing._tcp.service.muster.", "SRV"]);
    assert!(unknown.contains("status: NXDOMAIN"), "{unknown}");

    // Reverse lookups: every node at the address, by node name.
    assert_eq!(
        sorted(dig(at, &["-x", "10.3.0.1", "+short"])),
        ["api-1.node.muster.", "cache-1.node.muster."]
    );
    assert_eq!(dig(at, &["-x", "10.3.0.3", "+short"]), "dns-1.node.muster.\n");
    let nobody = dig(at, &["-x", "10.9.9.9"]);
    assert!(nobody.contains("status: NXDOMAIN"), "{nobody}");
    registry.deregister(&NodeId::new("cache-1").unwrap(), DeregisterReason::Graceful).await.unwrap();
    until("the reverse lookup follows", || async {
        dig(at, &["-x", "10.3.0.1", "+short"]) == "api-1.node.muster.\n"
    })
    .await;
    state.shutdown();
}

/// `/metrics` counts DNS queries by question type, answer code and transport, the truncated
/// answers, and the time to answer (kept answers included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_metrics_on_the_metrics_page() {
    let registry = MemoryRegistry::new();
    let state = AppState::new(Arc::new(registry.clone()), ServerConfig::default());
    let at = dns_of(&state).await;
    let server = crate::TestServer::serve(state.clone()).await;
    let long = Duration::from_secs(60);
    for n in 0..60 {
        register(
            &registry,
            &format!("big-{n:02}"),
            &format!("10.4.0.{n}:80"),
            vec![service("big", None, None)],
            long,
        )
        .await;
    }
    until("the service answers", || async {
        dig(at, &["big.service.muster.", "A", "+tcp", "+short"]).lines().count() == 60
    })
    .await;
    let scrape = || async {
        let text = crate::client().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
        move |series: &str| -> u64 {
            text.lines()
                .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse::<f64>().ok())
                .map_or(0, |v| v as u64)
        }
    };
    let before = scrape().await;
    for _ in 0..3 {
        dig(at, &["big.service.muster.", "A", "+short", "+bufsize=4096"]);
    }
    dig(at, &["big.service.muster.", "A", "+ignore", "+noedns"]);
    dig(at, &["big-01.node.muster.", "TXT", "+short"]);
    dig(at, &["nothing.service.muster.", "A"]);
    dig(at, &["example.org.", "A"]);
    dig(at, &["big.service.muster.", "AAAA", "+tcp"]);
    let after = scrape().await;
    let delta = |series: &str| after(series) - before(series);
    let queries = |qtype: &str, rcode: &str, transport: &str| {
        delta(&format!(
            "muster_dns_queries_total{{qtype=\"{qtype}\",rcode=\"{rcode}\",transport=\"{transport}\"}}"
        ))
    };
    assert_eq!(queries("A", "NOERROR", "udp"), 4, "three kept answers and a truncated one");
    assert_eq!(queries("TXT", "NOERROR", "udp"), 1);
    assert_eq!(queries("A", "NXDOMAIN", "udp"), 1);
    assert_eq!(queries("A", "REFUSED", "udp"), 1);
    assert_eq!(queries("AAAA", "NOERROR", "tcp"), 1);
    assert_eq!(delta("muster_dns_truncated_total"), 1);
    assert_eq!(delta("muster_dns_answer_duration_seconds_count"), 8);
    state.shutdown();
}

/// DNS over TCP takes at most `max_tcp_connections` connections at once: one more is closed at
/// once, and a place freed by a closed connection is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_are_capped() {
    use tokio::io::AsyncReadExt;
    let registry = Arc::new(MemoryRegistry::new());
    let state = AppState::new(registry.clone(), ServerConfig::default());
    let config =
        DnsConfig { listen: "127.0.0.1:0".parse().unwrap(), max_tcp_connections: 2, ..DnsConfig::default() };
    let at = start(&state, config).await.unwrap().local_addr;
    register(&registry, "web-1", "10.0.0.1:80", vec![service("web", None, None)], Duration::from_secs(60))
        .await;
    // Two idle connections hold both places (each answered once, so each is surely accepted).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(at).await.unwrap();
        assert!(tcp_query(&mut stream).await, "a connection within the cap is answered");
        held.push(stream);
    }
    let mut refused = tokio::net::TcpStream::connect(at).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), refused.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "the third connection is closed at once: {read:?}");
    drop(held.pop());
    until("a freed place is taken again", || async {
        let Ok(mut stream) = tokio::net::TcpStream::connect(at).await else { return false };
        tcp_query(&mut stream).await
    })
    .await;
}

/// Sends one A query for `web.service.muster.` over a TCP connection; true when an answer came.
async fn tcp_query(stream: &mut tokio::net::TcpStream) -> bool {
    use hickory_resolver::proto::op::{Message, Query};
    use hickory_resolver::proto::rr::Name;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut message = Message::query();
    message.add_query(Query::query(Name::from_ascii("web.service.muster.").unwrap(), RecordType::A));
    let bytes = message.to_vec().unwrap();
    let len = u16::try_from(bytes.len()).unwrap();
    if stream.write_u16(len).await.is_err() || stream.write_all(&bytes).await.is_err() {
        return false;
    }
    let answer = async {
        let len = stream.read_u16().await?;
        let mut body = vec![0u8; usize::from(len)];
        stream.read_exact(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    matches!(tokio::time::timeout(Duration::from_secs(5), answer).await, Ok(Ok(body)) if !body.is_empty())
}

/// When `run` returns, every task the server started has ended — the change feed, health checks,
/// DNS and its open TCP connections — so the caller may shut the store down with nothing still
/// writing to it: the store's handle is held by the caller alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_returns_once_every_server_task_ended() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let state = AppState::new(Arc::clone(&registry), ServerConfig::default());
    let at = dns_of(&state).await;
    // An open, idle DNS connection: its task lives until the shutdown.
    let mut idle = tokio::net::TcpStream::connect(at).await.unwrap();
    assert!(tcp_query(&mut idle).await);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(muster_server::run(listener, state, async move {
        let _ = stopped.await;
    }));
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert_eq!(Arc::strong_count(&registry), 1, "a task of the server still holds the store");
}
