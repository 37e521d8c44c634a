//! The `muster` command. The everyday commands (`register`, `deregister`, `nodes`, `services`,
//! `find`, `watch`, `health`, `acl`) and the Netron peer commands (`call`, `get`, `set`,
//! `describe`) live in [`cmd`]. `muster serve` runs the registry server: its settings are read once
//! ([`settings`]: flags, `MUSTER_*` environment variables, the `--config` file, and the seed-003
//! variables `PORT`, `HEARTBEAT_TIMEOUT_SECONDS`, `CLEANUP_INTERVAL_SECONDS`,
//! `MAX_INSTANCES_PER_SERVICE`, `ALLOWED_ORIGINS` as aliases), validated, mapped onto the server's
//! and the store's settings and run ([`serve`]).

use clap::{FromArgMatches, Parser, Subcommand};

mod cmd;
mod serve;
mod settings;

use serve::ServeArgs;
pub(crate) use serve::duration;
pub(crate) use settings::preset;
use settings::{Settings, apply_aliases, print_settings};

/// Service discovery and registration: `muster serve` runs the registry; the other commands talk
/// to it (and `nodes`, `find`, `watch` can read a Redis registry directly with `--redis`).
#[derive(Debug, Parser)]
#[command(name = "muster", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[expect(clippy::large_enum_variant, reason = "parsed once at start; never moved in a loop")]
enum Command {
    /// Run the registry server (REST API, watch, health) on the embedded store or on Redis.
    Serve(ServeArgs),
    #[command(flatten)]
    Client(cmd::ClientCommand),
}

/// jemalloc instead of the system allocator: requests are served on whichever worker thread is
/// free, so memory freed on one thread was allocated on another, which glibc's malloc pays for
/// with arena locks and consolidation (16 % of a resolve's CPU in `perf`); measured side by side
/// in docs/BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let settings::Read { matches, tokens } = match settings::settings(std::env::args_os().collect()) {
        Ok(read) => read,
        Err(Settings::Clap(error)) => error.exit(),
        Err(Settings::File(message)) => {
            eprintln!("error: {message}");
            return std::process::ExitCode::from(2);
        }
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut args = match cli.command {
        Command::Serve(args) => args,
        Command::Client(command) => return runtime.block_on(cmd::run(command)),
    };
    if let Some(("serve", serve)) = matches.subcommand() {
        if let Err(message) = apply_aliases(&mut args, serve, |key| std::env::var(key).ok()) {
            eprintln!("error: {message}");
            return std::process::ExitCode::from(2);
        }
        if args.check_config {
            print_settings(serve, &args);
            return std::process::ExitCode::SUCCESS;
        }
    }
    match runtime.block_on(serve::serve(args, tokens)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(format: &str, level: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colours only for a person at a terminal, never into files or log collectors.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    muster_client::shutdown_signal().await;
    tracing::info!("shutting down");
}
