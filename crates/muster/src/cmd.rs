//! The everyday commands: against a registry server (`--registry`, `MUSTER_REGISTRY`) or, for
//! `nodes`, `find` and `watch`, straight against a Titan-compatible Redis registry (`--redis`).
//!
//! Exit codes: 0 done (and, for `find`, something found), 1 nothing found or an error, 2 usage.
//! Tables by default, `--json` for scripts (`watch --json` prints one JSON object per line).
//!
//! Layout: this file runs a command and holds the read commands (`nodes`, `services`, `find`,
//! `watch`, `health`); `args.rs` every command's flags; `registration.rs` `register` and
//! `deregister`; `acl.rs` token management; `peer.rs` the Netron peer commands (`call`, `get`,
//! `set`, `describe`); `output.rs` how results print.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use muster_api::v1::{Instance, NodeList, instances_of};
use muster_client::{Client, ClientConfig, ClientError, RegistrationSpec, WatchOptions};
use muster_core::{
    Metadata, Registry, ServiceFilter, ServiceInfo, ServiceQuery, VersionQuery, WatchEvent, WatchStart,
};

mod acl;
mod args;
mod output;
mod peer;
mod registration;

use acl::acl;
pub(crate) use args::*;
use registration::{check_of, deregister, register};

use output::{ago, instance_rows, json, out, service_list, table, watch_line};

/// A failure: its message and exit code.
struct Failure(String, u8);

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Self(message.into(), 2)
    }

    fn error(message: impl Into<String>) -> Self {
        Self(message.into(), 1)
    }
}

fn from_client(error: ClientError) -> Failure {
    match error {
        error if error.is_unreachable() => Failure::error(format!(
            "{error} — is `muster serve` running? (set --registry or MUSTER_REGISTRY if it runs elsewhere)"
        )),
        ClientError::Api { status, message, .. } if (400..500).contains(&status) && status != 404 => {
            Failure::usage(format!("the registry refused: {message}"))
        }
        other => Failure::error(other.to_string()),
    }
}

fn from_store(error: &muster_core::Error, url: &str) -> Failure {
    Failure::error(format!("cannot read the Redis registry at {url}: {}", error.message()))
}

/// Runs one command; prints errors; returns the exit code.
pub(crate) async fn run(command: ClientCommand) -> ExitCode {
    let outcome = match command {
        ClientCommand::Register {
            server,
            address,
            services,
            id,
            ttl,
            interval,
            metadata,
            check,
            check_settings,
        } => match check.map(|c| check_of(&c, &check_settings)).transpose() {
            Ok(check) => register(&server, address, &services, id, ttl, interval, &metadata, check).await,
            Err(failure) => Err(failure),
        },
        ClientCommand::Deregister { server, id } => deregister(&server, &id).await,
        ClientCommand::Nodes { source, all } => nodes(&source, all).await,
        ClientCommand::Services { server } => services(&server).await,
        ClientCommand::Find { source, service, version, version_req } => {
            find(&source, &service, version.as_deref(), version_req.as_deref()).await
        }
        ClientCommand::Watch { source, service } => watch(&source, service).await,
        ClientCommand::Health { server } => health(&server).await,
        ClientCommand::Acl { command } => acl(command).await,
        ClientCommand::Call { source, service, method, args } => {
            peer::call(&source, &service, &method, &args).await
        }
        ClientCommand::Get { source, service, property } => peer::get(&source, &service, &property).await,
        ClientCommand::Set { source, service, property, value } => {
            peer::set(&source, &service, &property, &value).await
        }
        ClientCommand::Describe { source, service } => peer::describe(&source, service.as_deref()).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message, code)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

fn client(server: &Server) -> Result<Client, Failure> {
    let config = ClientConfig {
        registry_url: server.registry.clone(),
        request_timeout: Duration::from_secs(5),
        token: server.token.as_deref().map(muster_client::Token::new),
        ca_cert: server.ca_cert.clone(),
        client_identity: server.client_cert.clone(),
        ..ClientConfig::default()
    };
    Client::with_config(config).map_err(|e| Failure::usage(format!("--registry: {e}")))
}

/// The Redis registry at `url`, for inspection: read-only (no sweeper, no cleanup, no cache
/// write, so it works against a replica and leaves the key space as it was); `channel` also
/// receives Titan peers' channel messages (for `watch`) when no Muster sweeper reconciles the prefix.
async fn redis(source: &Source, url: &str, channel: bool) -> Result<muster_redis::RedisRegistry, Failure> {
    let config = muster_redis::RedisConfig::from_url(url)
        .map_err(|e| Failure::usage(format!("--redis: {}", e.message())))?
        .with_preset(source.preset);
    let config = muster_redis::RedisConfig {
        prefix: source.prefix.clone().unwrap_or(config.prefix),
        read_only: true,
        pubsub_enabled: channel,
        ..config
    };
    muster_redis::RedisRegistry::connect(config).await.map_err(|e| from_store(&e, url))
}

async fn nodes(source: &Source, all: bool) -> Result<(), Failure> {
    let list = match &source.redis {
        Some(url) => {
            if all {
                return Err(Failure::usage(
                    "--all needs a server (Redis forgets nodes when their TTL runs out)",
                ));
            }
            let registry = redis(source, url, false).await?;
            let revision = registry.current_revision().await.map_err(|e| from_store(&e, url))?;
            let nodes = registry.list_active().await.map_err(|e| from_store(&e, url))?;
            NodeList { revision, nodes }
        }
        None => client(&source.server)?.nodes(all).await.map_err(from_client)?,
    };
    if source.server.json {
        out(&json(&list));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.node_id.to_string(),
                n.address.to_string(),
                n.status.as_str().to_owned(),
                ago(n.timestamp_ms),
                service_list(&n.services),
            ]
        })
        .collect();
    out(&table(&["ID", "ADDRESS", "STATUS", "HEARTBEAT", "SERVICES"], &rows));
    Ok(())
}

async fn services(server: &Server) -> Result<(), Failure> {
    let list = client(server)?.services().await.map_err(from_client)?;
    if server.json {
        out(&json(&list));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .services
        .iter()
        .map(|s| vec![s.name.clone(), s.instances.to_string(), s.versions.join(",")])
        .collect();
    out(&table(&["SERVICE", "INSTANCES", "VERSIONS"], &rows));
    Ok(())
}

fn query(service: &str, version: Option<&str>, version_req: Option<&str>) -> Result<ServiceQuery, Failure> {
    let bad = |e: muster_core::Error| Failure::usage(e.message().to_owned());
    let mut query = ServiceQuery::parse(service).map_err(bad)?;
    if let Some(version) = version {
        query = query.with_version(VersionQuery::exact(version).map_err(bad)?);
    }
    if let Some(requirement) = version_req {
        query = query.with_version(VersionQuery::semver(requirement).map_err(bad)?);
    }
    Ok(query)
}

async fn find(
    source: &Source,
    service: &str,
    version: Option<&str>,
    version_req: Option<&str>,
) -> Result<(), Failure> {
    let query = query(service, version, version_req)?;
    // Every instance of the service in one read; the version is matched here, so the versions the
    // service does have can be named when none matches.
    let all: Vec<Instance> = match &source.redis {
        Some(url) => {
            let registry = redis(source, url, false).await?;
            let any = ServiceQuery::new(query.name()).map_err(|e| Failure::usage(e.message().to_owned()))?;
            let nodes = registry.find(&any).await.map_err(|e| from_store(&e, url))?;
            nodes.iter().flat_map(|n| instances_of(n, |s| s.name == query.name())).collect()
        }
        None => client(&source.server)?.fetch_instances(query.name(), &[]).await.map_err(from_client)?,
    };
    let (instances, others): (Vec<Instance>, Vec<Instance>) =
        all.into_iter().partition(|i| query.version().matches(i.version.as_deref()));
    if source.server.json {
        out(&json(&instances));
    } else if !instances.is_empty() {
        out(&table(&["ID", "ADDRESS", "VERSION", "STATUS", "WEIGHT", "URL"], &instance_rows(&instances)));
    }
    if instances.is_empty() {
        return Err(Failure::error(format!(
            "no instances of {query}{}",
            versions_hint(query.name(), &others)
        )));
    }
    Ok(())
}

/// When a versioned query found nothing: the versions the service has, as a hint.
fn versions_hint(name: &str, others: &[Instance]) -> String {
    let mut versions: Vec<&str> = others.iter().map(|i| i.version.as_deref().unwrap_or("(none)")).collect();
    versions.sort_unstable();
    versions.dedup();
    match versions.len() {
        0 => String::new(),
        1 => format!(" ({name} has version {})", versions[0]),
        _ => format!(" ({name} has versions {})", versions.join(", ")),
    }
}

async fn watch(source: &Source, service: Option<String>) -> Result<(), Failure> {
    if let Some(service) = &service {
        muster_core::name::validate_service_name(service)
            .map_err(|e| Failure::usage(e.message().to_owned()))?;
    }
    let as_json = source.server.json;
    let mut stream = match &source.redis {
        Some(url) => {
            let registry = Arc::new(redis(source, url, true).await?);
            let stream = registry.watch(WatchStart::Now).await.map_err(|e| from_store(&e, url))?;
            let url = url.clone();
            let mut filter = ServiceFilter::new(service.clone());
            stream
                .filter_map(move |item| {
                    let item = match item {
                        Ok(WatchEvent::Event(e)) => filter.pass(&e).then_some(Ok(WatchEvent::Event(e))),
                        Ok(WatchEvent::Peer(e)) => filter.pass(&e).then_some(Ok(WatchEvent::Peer(e))),
                        Ok(WatchEvent::Resync(mut snapshot)) => {
                            snapshot.nodes = filter.reset(snapshot.nodes);
                            Some(Ok(WatchEvent::Resync(snapshot)))
                        }
                        Err(error) => Some(Err(error)),
                    };
                    futures::future::ready(item)
                })
                .map(move |item| {
                    // Keep the registry alive as long as the stream.
                    let _ = &registry;
                    item.map_err(|e| from_store(&e, &url))
                })
                .boxed()
        }
        None => {
            let client = client(&source.server)?;
            let options = WatchOptions { service, ..WatchOptions::default() };
            client.watch(&options).await.map_err(from_client)?.map(|item| item.map_err(from_client)).boxed()
        }
    };
    if !as_json {
        out("watching; Ctrl-C to stop\n");
    }
    let stop = muster_client::shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return Ok(()),
            item = stream.next() => match item {
                Some(Ok(item)) => out(&watch_line(&item, as_json)),
                Some(Err(failure)) => return Err(failure),
                None => return Err(Failure::error("the registry closed the watch (did it stop?)")),
            },
        }
    }
}

async fn health(server: &Server) -> Result<(), Failure> {
    let client = client(server)?;
    match client.ready().await {
        Ok(body) => {
            if server.json {
                out(&json(&body));
            } else {
                let revision = body.get("revision").and_then(serde_json::Value::as_u64).unwrap_or(0);
                let preserving =
                    body.get("selfPreservation").and_then(serde_json::Value::as_bool).unwrap_or(false);
                let note = if preserving { "; self-preservation: expiry paused" } else { "" };
                out(&format!("{} is ready (revision {revision}{note})\n", server.registry));
            }
            Ok(())
        }
        Err(ClientError::Api { status: 503, message, .. }) => {
            if server.json {
                out(&json(&serde_json::json!({"status": "not ready", "message": message})));
            }
            Err(Failure::error(format!(
                "{} is up but not ready (its store is unreachable: {message})",
                server.registry
            )))
        }
        Err(error) => Err(from_client(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_from_flags() {
        assert_eq!(
            query("users", Some("1.0.0"), None).ok().map(|q| q.to_string()),
            Some("users@1.0.0".into())
        );
        assert_eq!(query("users@^1", None, None).ok().map(|q| q.to_string()), Some("users@^1".into()));
        assert_eq!(query("bad name", None, None).err().map(|f| f.1), Some(2));
        assert_eq!(query("users", None, Some("not a req")).err().map(|f| f.1), Some(2));
    }
}
