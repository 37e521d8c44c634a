//! Where `muster serve`'s settings come from: flags > `MUSTER_*` variables > the `--config` TOML
//! file > built-in defaults, with the seed-003 variables as aliases; and `--check-config`.

use std::time::Duration;

use clap::CommandFactory;
use clap::parser::ValueSource;

use crate::Cli;
use crate::serve::{ServeArgs, validate};

/// Seed-003 environment variables honoured when the Muster setting was left at its default.
const ALIASES: &[(&str, &str)] = &[
    ("listen", "PORT"),
    ("compat_ttl", "HEARTBEAT_TIMEOUT_SECONDS"),
    ("cleanup_interval", "CLEANUP_INTERVAL_SECONDS"),
    ("max_instances_per_service", "MAX_INSTANCES_PER_SERVICE"),
    ("allowed_origins", "ALLOWED_ORIGINS"),
];

/// Why the settings could not be read.
pub(crate) enum Settings {
    /// The command line or an environment variable (clap prints it).
    Clap(clap::Error),
    /// The `--config` file.
    File(String),
}

/// What the command line and the `--config` file hold.
pub(crate) struct Read {
    /// Every setting, layered.
    pub(crate) matches: clap::ArgMatches,
    /// The file's `[[acl.tokens]]` (none without a file).
    pub(crate) tokens: Vec<muster_server::DeclaredToken>,
}

/// The command line parsed with every layer: flags > `MUSTER_*` variables > the `--config` TOML
/// file > built-in defaults. The file's values become the arguments' defaults, so clap validates
/// them exactly like flags and any setting added to [`ServeArgs`] is read from all three. The file
/// is read once: its tokens come back with the settings.
pub(crate) fn settings(mut argv: Vec<std::ffi::OsString>) -> Result<Read, Settings> {
    // `muster help --help` asks for help too: the help subcommand takes no flags of its own.
    if argv.get(1).is_some_and(|a| a == "help") {
        argv.retain(|a| a != "--help" && a != "-h");
    }
    let first = Cli::command().try_get_matches_from(&argv).map_err(Settings::Clap)?;
    let alone = |matches| Ok(Read { matches, tokens: Vec::new() });
    let Some(("serve", serve)) = first.subcommand() else { return alone(first) };
    let Some(path) = serve.get_one::<std::path::PathBuf>("config") else { return alone(first) };
    let file = |message: String| Settings::File(format!("--config {}: {message}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| file(e.to_string()))?;
    let mut command = Cli::command();
    // `[acl]` holds settings named without the `acl-` prefix, and the declared tokens.
    let mut entries: Vec<(String, &toml::Value)> = Vec::new();
    for (key, value) in &table {
        match (key.as_str(), value) {
            ("acl", toml::Value::Table(acl)) => {
                for (key, value) in acl {
                    match key.as_str() {
                        "tokens" => {}
                        "enabled" => entries.push(("acl".into(), value)),
                        "default-policy" => entries.push(("acl-default-policy".into(), value)),
                        "public-metrics" | "public-openapi" => entries.push((key.clone(), value)),
                        other => return Err(file(format!("unknown setting `acl.{other}`"))),
                    }
                }
            }
            _ => entries.push((key.clone(), value)),
        }
    }
    let tokens = declared_tokens(&table).map_err(file)?;
    for (key, value) in &entries {
        let id = key.replace('-', "_");
        let known = command
            .find_subcommand("serve")
            .is_some_and(|serve| serve.get_arguments().any(|a| a.get_id() == id.as_str() && id != "config"));
        if !known {
            return Err(file(format!("unknown setting `{key}`")));
        }
        let value = match *value {
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(f) => f.to_string(),
            _ => return Err(file(format!("`{key}` must be a string, number or boolean"))),
        };
        command = command.mut_subcommand("serve", |serve| serve.mut_arg(id, |arg| arg.default_value(value)));
    }
    let matches = command.try_get_matches_from(&argv).map_err(|error| {
        // A bad value from the file is reported as the setting's; say where it came from.
        file(error.to_string().lines().next().unwrap_or_default().trim_start_matches("error: ").to_owned())
    })?;
    Ok(Read { matches, tokens })
}

/// A token of the configuration file's `[[acl.tokens]]`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct TokenEntry {
    name: String,
    /// The secret itself (the file then holds a credential: keep it private).
    secret: Option<String>,
    /// The secret's SHA-256 in hex (`printf %s "$SECRET" | sha256sum`).
    secret_sha256: Option<String>,
    #[serde(default)]
    rules: Vec<muster_core::acl::Rule>,
}

/// The tokens declared in a configuration file.
fn declared_tokens(table: &toml::Table) -> Result<Vec<muster_server::DeclaredToken>, String> {
    let Some(tokens) = table.get("acl").and_then(|acl| acl.get("tokens")) else { return Ok(Vec::new()) };
    let entries: Vec<TokenEntry> =
        tokens.clone().try_into().map_err(|e: toml::de::Error| format!("[[acl.tokens]]: {}", e.message()))?;
    let mut declared: Vec<muster_server::DeclaredToken> = Vec::new();
    for entry in entries {
        let at = |message: String| format!("[[acl.tokens]] `{}`: {message}", entry.name);
        muster_core::acl::validate_token_name(&entry.name).map_err(|e| at(e.message().to_owned()))?;
        let secret_hash = match (&entry.secret, &entry.secret_sha256) {
            (Some(secret), None) if secret.len() >= 16 => muster_server::hash_secret(secret),
            (Some(_), None) => return Err(at("a secret must be at least 16 characters".into())),
            (None, Some(hash)) if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
                hash.to_ascii_lowercase()
            }
            (None, Some(_)) => return Err(at("secret-sha256 must be 64 hex digits".into())),
            _ => return Err(at("give exactly one of secret and secret-sha256".into())),
        };
        if declared.iter().any(|d| d.name == entry.name) {
            return Err(at("declared twice".into()));
        }
        declared.push(muster_server::DeclaredToken { name: entry.name, secret_hash, rules: entry.rules });
    }
    Ok(declared)
}

/// `muster serve --check-config`: every setting with its value and where it came from.
pub(crate) fn print_settings(matches: &clap::ArgMatches, args: &ServeArgs) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let Some(serve) = Cli::command().find_subcommand("serve").cloned() else { return };
    for arg in serve.get_arguments() {
        let id = arg.get_id().as_str();
        if matches!(id, "config" | "check_config" | "help") {
            continue;
        }
        let mut value = matches
            .get_raw(id)
            .map(|values| values.map(|v| v.to_string_lossy().into_owned()).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        let mut source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag".to_owned(),
            Some(ValueSource::EnvVariable) => "environment".to_owned(),
            Some(ValueSource::DefaultValue) => "default or --config".to_owned(),
            _ => "unset".to_owned(),
        };
        // A seed-003 variable filled a setting left at its default: show what will be used.
        if matches.value_source(id) == Some(ValueSource::DefaultValue)
            && let Some((_, variable)) = ALIASES.iter().find(|(alias, _)| *alias == id)
            && std::env::var_os(variable).is_some()
        {
            value = match id {
                "listen" => args.listen.clone(),
                "compat_ttl" => format!("{}s", args.compat_ttl.as_secs()),
                "cleanup_interval" => format!("{}s", args.cleanup_interval.as_secs()),
                "max_instances_per_service" => args.max_instances_per_service.to_string(),
                _ => args.allowed_origins.clone(),
            };
            source = format!("{variable} (seed-003 variable)");
        }
        let _ = writeln!(out, "{} = {value:?}  # {source}", id.replace('_', "-"));
    }
}

/// Fills settings left at their default from the seed-003 variables.
pub(crate) fn apply_aliases(
    args: &mut ServeArgs,
    matches: &clap::ArgMatches,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(), String> {
    for (id, variable) in ALIASES {
        if matches.value_source(id) != Some(ValueSource::DefaultValue) {
            continue;
        }
        let Some(value) = env(variable) else { continue };
        let bad = |why: &str| format!("{variable}={value:?}: {why}");
        match *id {
            "listen" => {
                let port: u16 = value.parse().map_err(|_| bad("not a port number"))?;
                let host = args.listen.rsplit_once(':').map_or("127.0.0.1", |(host, _)| host);
                args.listen = format!("{host}:{port}");
            }
            "compat_ttl" => {
                args.compat_ttl =
                    Duration::from_secs(value.parse().map_err(|_| bad("not a number of seconds"))?);
            }
            "cleanup_interval" => {
                args.cleanup_interval =
                    Duration::from_secs(value.parse().map_err(|_| bad("not a number of seconds"))?);
            }
            "max_instances_per_service" => {
                args.max_instances_per_service = value.parse().map_err(|_| bad("not a number"))?;
            }
            _ => args.allowed_origins = value,
        }
    }
    let explicit = |id: &str| matches.value_source(id).is_some_and(|s| s != ValueSource::DefaultValue);
    if args.redis.is_some() && explicit("self_preservation") && args.self_preservation > 0.0 {
        return Err("--self-preservation applies to the embedded store only: on Redis, nodes expire \
                    by Redis key TTLs (the Titan wire format), which a server cannot pause"
            .into());
    }
    validate(args)
}

/// Parses `--preset`.
pub(crate) fn preset(text: &str) -> Result<muster_core::Preset, String> {
    text.parse().map_err(|e: muster_core::Error| e.message().to_owned())
}

/// `--config` files from random and mutated TOML: a setting or an error naming the file, never a
/// panic.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    const VALID: &str = "listen = \"127.0.0.1:3100\"\ndefault-ttl = \"20s\"\nmax-instances-per-service = 100\n\
        dns = \"127.0.0.1:8600\"\n[acl]\nenabled = true\ndefault-policy = \"read\"\n\
        [[acl.tokens]]\nname = \"ops\"\nsecret-sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n\
        rules = [{ services = \"*\", access = \"write\" }]\n";

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn config_files_never_panic(text in prop_oneof![muster_testkit::fuzz::mutated(VALID), any::<String>()]) {
            let dir = muster_testkit::redis_server::TempDir::new("fuzz");
            let path = dir.path().join("config.toml");
            std::fs::write(&path, &text).unwrap();
            let argv = ["muster", "serve", "--config", path.to_str().unwrap()].map(std::ffi::OsString::from).to_vec();
            let _ = super::settings(argv);
        }
    }

    #[test]
    fn the_valid_file_is_read() {
        let dir = muster_testkit::redis_server::TempDir::new("fuzz-valid");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, VALID).unwrap();
        let argv =
            ["muster", "serve", "--config", path.to_str().unwrap()].map(std::ffi::OsString::from).to_vec();
        let Ok(read) = super::settings(argv) else { panic!("the valid file is refused") };
        // The tokens come from the one read of the file, with the settings.
        assert_eq!(read.tokens.len(), 1);
        assert_eq!(read.tokens[0].name, "ops");
        let serve = read.matches.subcommand_matches("serve").unwrap();
        assert_eq!(serve.get_one::<String>("listen").map(String::as_str), Some("127.0.0.1:3100"));
    }
}
