//! `muster call`, `get`, `set` and `describe`: what grpcurl is to gRPC, for Netron peers. A peer is
//! reached at `--peer ws://host:port`, or found by its service through `--redis` (a fleet on
//! Redis, Netron's keys by default) or `--registry` (a `muster serve`).

use std::sync::Arc;

use futures::StreamExt;
use muster_peer::wire::Value;
use muster_peer::{Interface, Peer, PeerConfig, PeerError, RemotePeer};

use super::{Failure, out};

/// Where the peer is.
#[derive(Debug, clap::Args)]
pub(crate) struct PeerSource {
    /// The peer's address, `ws://host:port`.
    #[arg(long, conflicts_with_all = ["redis", "registry"])]
    peer: Option<String>,
    /// Find the service in a fleet on Redis (`redis://host:6379`).
    #[arg(long, conflicts_with = "registry")]
    redis: Option<String>,
    /// The kind of fleet on Redis: `netron` (prefix `netron:discovery`) or `titan`.
    #[arg(long, default_value = "netron", value_parser = crate::preset)]
    preset: muster_core::Preset,
    /// Find the service through a registry server (`http://127.0.0.1:3100`).
    #[arg(long)]
    registry: Option<String>,
    /// Print JSON only (`describe`: the definitions' metadata).
    #[arg(long)]
    json: bool,
}

fn from_peer(error: PeerError) -> Failure {
    match error {
        PeerError::Remote(error) => {
            // The error's own fields (`code`, `details`, ...) as JSON, one per line.
            let mut text = format!("the service answered {}: {}", error.name, error.message);
            for (name, value) in &error.fields {
                text.push_str(&format!("\n  {name}: {}", muster_peer::to_json(value)));
            }
            Failure::error(text)
        }
        PeerError::UnknownService(service) => Failure::error(format!("no peer offers {service}")),
        other => Failure::error(other.to_string()),
    }
}

/// The peer offering `service` (or the one at `--peer`): the candidates found are tried in turn
/// until one answers (a peer that died is still listed until its TTL runs out).
async fn remote(source: &PeerSource, service: Option<&str>) -> Result<(Peer, RemotePeer), Failure> {
    let peer = Peer::new(PeerConfig::default());
    let urls: Vec<String> = match (&source.peer, &source.redis, &source.registry) {
        (Some(url), _, _) => vec![url.clone()],
        (None, Some(redis), _) => {
            let service = service.ok_or_else(|| Failure::usage("name a service to find it on Redis"))?;
            let config = muster_redis::RedisConfig::from_url(redis)
                .map_err(|e| Failure::usage(format!("--redis: {}", e.message())))?
                .with_preset(source.preset);
            let config = muster_redis::RedisConfig { read_only: true, ..config };
            let registry = muster_redis::RedisRegistry::connect(config)
                .await
                .map_err(|e| Failure::error(format!("cannot read the fleet at {redis}: {}", e.message())))?;
            let query = muster_core::ServiceQuery::parse(service)
                .map_err(|e| Failure::usage(e.message().to_owned()))?;
            let nodes = muster_core::Registry::find(&registry, &query)
                .await
                .map_err(|e| Failure::error(e.message().to_owned()))?;
            nodes.iter().map(|node| format!("ws://{}", node.address)).collect()
        }
        (None, None, Some(registry)) => {
            let service =
                service.ok_or_else(|| Failure::usage("name a service to find it through a registry"))?;
            let client = muster_client::Client::new(registry)
                .map_err(|e| Failure::usage(format!("--registry: {e}")))?;
            let (name, version) = service.split_once('@').map_or((service, None), |(n, v)| (n, Some(v)));
            let params: Vec<(&str, &str)> = version.map(|v| vec![("versionReq", v)]).unwrap_or_default();
            let instances =
                client.fetch_instances(name, &params).await.map_err(|e| Failure::error(e.to_string()))?;
            instances
                .iter()
                .map(|instance| {
                    let host = if instance.host.contains(':') {
                        format!("[{}]", instance.host)
                    } else {
                        instance.host.clone()
                    };
                    format!("ws://{host}:{}", instance.port)
                })
                .collect()
        }
        (None, None, None) => {
            return Err(Failure::usage(
                "say where the peer is: --peer ws://host:port, --redis URL or --registry URL",
            ));
        }
    };
    let mut last = format!("no peer offers {}", service.unwrap_or_default());
    for url in &urls {
        match peer.connect(url).await {
            Ok(remote) => return Ok((peer, remote)),
            Err(error) => last = format!("cannot reach the peer at {url}: {error}"),
        }
    }
    Err(Failure::error(last))
}

/// `muster call SERVICE METHOD [ARG...]`.
pub(crate) async fn call(
    source: &PeerSource,
    service: &str,
    method: &str,
    args: &[String],
) -> Result<(), Failure> {
    let values = args.iter().map(|arg| argument(arg)).collect::<Result<Vec<_>, _>>()?;
    let (peer, remote) = remote(source, Some(service)).await?;
    let interface: Interface = remote.query_interface(service).map_err(from_peer)?;
    let result = interface.call(method, values).await.map_err(from_peer)?;
    if let Value::StreamReference(_) = result {
        // A stream: one chunk per line until it ends or Ctrl-C.
        let mut chunks = interface.call_stream_from(result).map_err(from_peer)?;
        let signal = muster_client::shutdown_signal();
        tokio::pin!(signal);
        loop {
            tokio::select! {
                chunk = chunks.next() => match chunk {
                    Some(Ok(value)) => out(&format!("{}\n", muster_peer::to_json(&value))),
                    Some(Err(error)) => return Err(Failure::error(format!("the stream failed: {error}"))),
                    None => break,
                },
                () = &mut signal => break,
            }
        }
    } else {
        out(&format!("{}\n", muster_peer::to_json(&result)));
    }
    peer.stop().await;
    Ok(())
}

/// A command-line value: JSON, with Netron's richer types in the tagged form.
fn argument(arg: &str) -> Result<Value, Failure> {
    let json: serde_json::Value = serde_json::from_str(arg).map_err(|e| {
        Failure::usage(format!("argument {arg:?} is not a JSON value ({e}); quote strings: '\"text\"'"))
    })?;
    muster_peer::from_tagged_json(&json).map_err(|e| Failure::usage(format!("argument {arg}: {e}")))
}

/// `muster get SERVICE PROPERTY`.
pub(crate) async fn get(source: &PeerSource, service: &str, property: &str) -> Result<(), Failure> {
    let (peer, remote) = remote(source, Some(service)).await?;
    let interface = remote.query_interface(service).map_err(from_peer)?;
    let value = interface.get(property).await.map_err(from_peer)?;
    out(&format!("{}\n", muster_peer::to_json(&value)));
    peer.stop().await;
    Ok(())
}

/// `muster set SERVICE PROPERTY VALUE`.
pub(crate) async fn set(
    source: &PeerSource,
    service: &str,
    property: &str,
    value: &str,
) -> Result<(), Failure> {
    let value = argument(value)?;
    let (peer, remote) = remote(source, Some(service)).await?;
    let interface = remote.query_interface(service).map_err(from_peer)?;
    interface.set(property, value).await.map_err(from_peer)?;
    peer.stop().await;
    Ok(())
}

/// `muster describe [SERVICE]`.
pub(crate) async fn describe(source: &PeerSource, service: Option<&str>) -> Result<(), Failure> {
    let (peer, remote) = remote(source, service).await?;
    let names = match service {
        Some(service) => vec![service.to_owned()],
        None => remote.service_names(),
    };
    let mut described = Vec::new();
    for name in &names {
        let interface = remote.query_interface(name).map_err(from_peer)?;
        described.push((name.clone(), Arc::new(interface.definition().meta.clone())));
    }
    if source.json {
        let all: serde_json::Map<String, serde_json::Value> =
            described.iter().map(|(name, meta)| (name.clone(), muster_peer::to_json(meta))).collect();
        out(&format!("{}\n", serde_json::Value::Object(all)));
    } else {
        let mut text = String::new();
        for (name, meta) in &described {
            text.push_str(&format!("{name}\n"));
            if let Some(Value::Object(methods)) = meta.get("methods") {
                for (method, info) in methods {
                    let arguments: Vec<&str> = match info.get("arguments") {
                        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
                        _ => Vec::new(),
                    };
                    let returns = info.get("type").and_then(Value::as_str).unwrap_or("unknown");
                    text.push_str(&format!("  {method}({}) -> {returns}\n", arguments.join(", ")));
                }
            }
            if let Some(Value::Object(properties)) = meta.get("properties") {
                for (property, info) in properties {
                    let kind = info.get("type").and_then(Value::as_str).unwrap_or("unknown");
                    let access =
                        if info.get("readonly") == Some(&Value::Bool(true)) { " (read-only)" } else { "" };
                    text.push_str(&format!("  {property}: {kind}{access}\n"));
                }
            }
        }
        out(&text);
    }
    peer.stop().await;
    Ok(())
}
