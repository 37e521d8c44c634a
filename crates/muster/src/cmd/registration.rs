//! `muster register` and `muster deregister`: a node kept alive from the command line (with its
//! active check, if any), its health reported as it changes, and its removal.

use super::*;

/// `--check` as a check definition.
pub(crate) fn check_of(text: &str, settings: &CheckSettings) -> Result<muster_api::check::Check, Failure> {
    use muster_api::check::{Check, CheckKind};
    let (kind, target, path) = match text {
        "http" => (CheckKind::Http, None, None),
        "tcp" => (CheckKind::Tcp, None, None),
        url if url.starts_with("http://") => {
            let rest = &url["http://".len()..];
            let (target, path) =
                rest.find('/').map_or((rest, None), |i| (&rest[..i], Some(rest[i..].to_owned())));
            (CheckKind::Http, Some(target.to_owned()), path)
        }
        other => {
            return Err(Failure::usage(format!(
                "--check {other}: expected http, tcp or an http://host:port/path URL"
            )));
        }
    };
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if settings.check_path.is_some() && path.is_some() {
        return Err(Failure::usage("--check-path: the --check URL already names a path"));
    }
    let check = Check {
        kind,
        target,
        path: path.or_else(|| settings.check_path.clone()),
        interval_ms: millis(settings.check_interval),
        timeout_ms: settings.check_timeout.map(millis),
        failures: settings.check_failures,
        successes: settings.check_successes,
    };
    check.validate().map_err(|e| Failure::usage(format!("--check: {e}")))?;
    Ok(check)
}

#[allow(clippy::too_many_arguments)] // one per command-line setting
pub(crate) async fn register(
    server: &Server,
    address: String,
    services: &[String],
    id: Option<String>,
    ttl: Option<Duration>,
    interval: Option<Duration>,
    metadata: &[String],
    check: Option<muster_api::check::Check>,
) -> Result<(), Failure> {
    let mut spec = RegistrationSpec::new(address.clone());
    spec.check = check;
    for text in services {
        let service = ServiceInfo::parse(text)
            .map_err(|e| Failure::usage(format!("--service {text}: {}", e.message())))?;
        spec.services.push(service);
    }
    let mut meta = Metadata::new();
    for pair in metadata {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("--meta {pair}: expected key=value")))?;
        meta.insert(key.to_owned(), value.to_owned());
    }
    spec.metadata = meta;
    spec.id = id;
    spec.ttl = ttl;
    spec.heartbeat_interval = interval.unwrap_or(ttl.unwrap_or(Duration::from_secs(15)) / 3);
    spec.retry_delay = Duration::from_millis(500);
    spec.max_retries = 3;
    let client = client(server)?;
    let registration = client.register(spec.clone()).await.map_err(from_client)?;
    let id = registration.id().to_owned();
    if server.json {
        out(&(serde_json::json!({"registered": id, "address": address}).to_string() + "\n"));
    } else {
        out(&format!(
            "registered {id} at {address} ({}); heartbeating every {} ms — Ctrl-C to deregister\n",
            service_list(&spec.services),
            spec.heartbeat_interval.as_millis()
        ));
    }
    let mut health = registration.health();
    let mut known = health.borrow_and_update().clone();
    let signal = muster_client::shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            () = &mut signal => break,
            changed = health.changed() => {
                if changed.is_err() {
                    break;
                }
                let now = health.borrow_and_update().clone();
                report_health(server.json, &id, &known, &now);
                known = now;
            }
        }
    }
    registration.deregister().await.map_err(from_client)?;
    if server.json {
        out(&(serde_json::json!({"deregistered": id}).to_string() + "\n"));
    } else {
        out(&format!("deregistered {id}\n"));
    }
    Ok(())
}

/// Says what changed in a registration's heartbeats: the registry became unreachable, came back,
/// or had forgotten the node and has it again.
pub(crate) fn report_health(
    json: bool,
    id: &str,
    before: &muster_client::Health,
    now: &muster_client::Health,
) {
    let line = if now.registrations > before.registrations {
        Some((
            serde_json::json!({"event": "registered_again", "id": id, "registrations": now.registrations}),
            format!("registered {id} again (the registry had lost it)"),
        ))
    } else if before.failures == 0 && now.failures > 0 {
        let error = now.last_error.clone().unwrap_or_default();
        Some((
            serde_json::json!({"event": "unreachable", "id": id, "error": error}),
            format!("heartbeat failed: {error}; retrying"),
        ))
    } else if before.failures > 0 && now.failures == 0 {
        Some((serde_json::json!({"event": "reachable", "id": id}), "the registry answers again".to_owned()))
    } else {
        None
    };
    if let Some((json_line, text)) = line {
        if json {
            out(&(json_line.to_string() + "\n"));
        } else {
            out(&(text + "\n"));
        }
    }
}

pub(crate) async fn deregister(server: &Server, id: &str) -> Result<(), Failure> {
    muster_core::NodeId::new(id).map_err(|e| Failure::usage(e.message().to_owned()))?;
    let existed = client(server)?.deregister(id).await.map_err(from_client)?;
    if server.json {
        out(&(serde_json::json!({"id": id, "deregistered": existed}).to_string() + "\n"));
    }
    if !existed {
        return Err(Failure::error(format!("no node {id} in the registry")));
    }
    if !server.json {
        out(&format!("deregistered {id}\n"));
    }
    Ok(())
}
