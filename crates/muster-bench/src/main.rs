//! The load driver: measures the Redis backend against a `redis-server` it starts itself on a free
//! loopback port, and prints a Markdown report.
//!
//! `cargo run --release -p muster-bench -- redis [--seconds N]`
//! `cargo run --release -p muster-bench -- fanout [--watchers N] [--rounds R] [--queries Q] [--redis]` — N
//! server-sent-event watchers and Q blocking queries on a `muster serve` process (build it first with
//! `cargo build --release -p muster`), on the embedded store or a fresh `redis-server`; for each of R
//! registrations, the time until every watcher has seen it; the server's memory per idle watcher and
//! its Redis connections.
//! `cargo run --release -p muster-bench -- memory [--nodes N] [--store-only]` — resident memory per
//! node of an in-process server on the embedded store after N registrations over HTTP (or of the
//! embedded store alone, with registrations straight into it).
//! `cargo run --release -p muster-bench -- resolver [--lookups N]` — the SDK's resolver: cached
//! lookups per second on one core, and the time from a registration to the cache reflecting it.
//! `cargo run --release -p muster-bench -- titan [--nodes N] [--changes C] [--interval-ms M] [--keyspace]`
//! — a mixed fleet: N nodes written by Titan peers, heartbeating every 5 s; the Redis CPU time the
//! detection costs per second, and the time from a Titan-side change (pub/sub off) to the Muster
//! event; `--keyspace` enables keyspace notifications on the server.
//! `cargo run --release -p muster-bench -- peer [--seconds N]` — Netron peers on loopback: RPC calls
//! per second (64 in flight, on 1 and on 8 connections) with p50/p99, remote events per second,
//! stream throughput in 64 KiB chunks; calls by name and the failover time after SIGKILL of an instance
//! process (`peer-instance`, started by `peer` itself). `peer --separate [--workers W]` runs the
//! client and the server as two processes (W runtime worker threads each; tokio's default, one per
//! core, without it); `--listen ADDR` and `--connect URL` are the two halves.
//! `cargo run --release -p muster-bench -- soak [--nodes N] [--seconds S] [--redis] [--svg FILE]` — N
//! nodes heartbeating every second on a `muster serve` process for S seconds with watchers and
//! resolvers: memory, heartbeat latency, false expiries every 10 s, and an SVG plot.

#![allow(clippy::print_stdout)]

/// With `--features jemalloc`, the allocator of the `muster` binary.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod backend;
mod fanout;
mod measure;
mod memory;
mod mixed;
mod peer;
mod resolver;
mod soak;

use backend::run;
use fanout::fanout;
use measure::*;
use memory::{memory, store_memory};
use mixed::titan;
use resolver::resolver;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use muster_agent::Agent;
use muster_bench::{node_registration, populate};
use muster_core::{Address, DiscoveryOptions, EventKind, Registry, ServiceQuery, WatchEvent, WatchStart};
use muster_redis::{RedisConfig, RedisRegistry};
use muster_testkit::redis_server::RedisServer;
use muster_testkit::titan::REGISTER_HEARTBEAT_LUA as TITAN_HEARTBEAT_SCRIPT;
use tokio::time::Instant;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|s| s.parse().ok())
    };
    if args.first().map(String::as_str) == Some("fanout") {
        let watchers = flag("--watchers").unwrap_or(1000u64);
        let rounds = flag("--rounds").unwrap_or(20u64);
        let queries = flag("--queries").unwrap_or(100u64);
        let (watchers, rounds, queries) = (
            usize::try_from(watchers).unwrap_or(1000),
            usize::try_from(rounds).unwrap_or(20),
            usize::try_from(queries).unwrap_or(100),
        );
        let on_redis = args.iter().any(|a| a == "--redis");
        if let Err(error) = fanout(watchers, rounds, on_redis, queries).await {
            eprintln!("error: {error:#}");
            std::process::exit(1);
        }
        return;
    }
    if args.first().map(String::as_str) == Some("soak") {
        let nodes = usize::try_from(flag("--nodes").unwrap_or(10_000u64)).unwrap_or(10_000);
        let seconds = flag("--seconds").unwrap_or(600u64);
        let svg = args.iter().position(|a| a == "--svg").and_then(|i| args.get(i + 1)).cloned();
        if let Err(error) = soak::run(nodes, seconds, args.iter().any(|a| a == "--redis"), svg).await {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
        return;
    }
    if args.first().map(String::as_str) == Some("peer-instance") {
        let registry = args.iter().skip_while(|a| *a != "--registry").nth(1).cloned().unwrap_or_default();
        if let Err(error) = peer::serve_instance(&registry).await {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
        return;
    }
    if args.first().map(String::as_str) == Some("peer") {
        let seconds = flag("--seconds").unwrap_or(5u64);
        let text = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
        let connections = usize::try_from(flag("--connections").unwrap_or(8u64)).unwrap_or(8);
        let outcome = if let Some(address) = text("--listen") {
            peer::listen(&address).await
        } else if let Some(url) = text("--connect") {
            let server_pid = flag("--server-pid").and_then(|pid: u64| u32::try_from(pid).ok());
            peer::connect(&url, seconds, connections, server_pid).await
        } else if args.iter().any(|a| a == "--separate") {
            let workers = flag("--workers").and_then(|w: u64| usize::try_from(w).ok()).filter(|w| *w > 0);
            peer::separate(seconds, connections, workers).await
        } else {
            peer::run(seconds).await
        };
        if let Err(error) = outcome {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
        return;
    }
    if args.first().map(String::as_str) == Some("memory") {
        let nodes = usize::try_from(flag("--nodes").unwrap_or(100_000u64)).unwrap_or(100_000);
        let outcome = if args.iter().any(|a| a == "--store-only") {
            store_memory(nodes).await
        } else {
            memory(nodes).await
        };
        if let Err(error) = outcome {
            eprintln!("error: {error:#}");
            std::process::exit(1);
        }
        return;
    }
    if args.first().map(String::as_str) == Some("resolver") {
        let lookups = flag("--lookups").unwrap_or(5_000_000u64);
        if let Err(error) = resolver(lookups).await {
            eprintln!("error: {error:#}");
            std::process::exit(1);
        }
        return;
    }
    if args.first().map(String::as_str) == Some("titan") {
        let nodes = usize::try_from(flag("--nodes").unwrap_or(10_000u64)).unwrap_or(10_000);
        let changes = usize::try_from(flag("--changes").unwrap_or(100u64)).unwrap_or(100);
        let interval = Duration::from_millis(flag("--interval-ms").unwrap_or(500u64));
        let keyspace = args.iter().any(|a| a == "--keyspace");
        if let Err(error) = titan(nodes, changes, interval, keyspace).await {
            eprintln!("error: {error:#}");
            std::process::exit(1);
        }
        return;
    }
    if args.first().map(String::as_str) != Some("redis") {
        eprintln!(
            "usage: muster-bench redis [--seconds N] | titan [--nodes N] [--changes C] [--interval-ms M] [--keyspace] | fanout [--watchers N] [--rounds R] [--queries Q] [--redis] | memory [--nodes N] [--store-only] | resolver [--lookups N]"
        );
        std::process::exit(2);
    }
    let seconds = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(5u64);
    let duration = Duration::from_secs(seconds);
    if let Err(error) = run(duration).await {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
