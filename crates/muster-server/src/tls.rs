//! TLS for the server (rustls with the ring provider): a certificate and key in PEM files,
//! optionally a CA whose certificates clients must present (mutual TLS). The files are read again
//! whenever they change (checked every two seconds): a renewed certificate is served to new
//! connections without a restart; a broken file is logged and the previous certificate kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

/// Where the server's TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificate chain (the server's certificate first).
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM certificate authorities of client certificates; set, every client must present one.
    pub client_ca: Option<PathBuf>,
}

/// How often the files are checked for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// The current rustls configuration, swapped when the files change.
pub(crate) struct Tls {
    config: TlsConfig,
    current: ArcSwap<rustls::ServerConfig>,
}

impl Tls {
    /// Reads the files; fails with a message naming the file at fault.
    pub(crate) fn load(config: TlsConfig) -> Result<Self, String> {
        let current = ArcSwap::from_pointee(build(&config)?);
        Ok(Self { config, current })
    }

    /// An acceptor with the current certificate.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// Rebuilds the configuration whenever a file's modification time or size changes.
    pub(crate) async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut seen = self.stamps();
        loop {
            tokio::select! {
                () = tokio::time::sleep(RELOAD_CHECK) => {}
                () = shutdown.cancelled() => return,
            }
            let now = self.stamps();
            if now == seen {
                continue;
            }
            match build(&self.config) {
                Ok(config) => {
                    self.current.store(Arc::new(config));
                    seen = now;
                    tracing::info!(cert = %self.config.cert.display(), "TLS certificate reloaded");
                }
                // A half-written renewal: keep serving the previous certificate and try again.
                Err(error) => {
                    tracing::warn!(%error, "TLS files changed but cannot be used; keeping the previous ones")
                }
            }
        }
    }

    fn stamps(&self) -> Vec<Option<(SystemTime, u64)>> {
        let files = [Some(&self.config.cert), Some(&self.config.key), self.config.client_ca.as_ref()];
        files
            .into_iter()
            .flatten()
            .map(|path| std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
            .collect()
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

fn build(config: &TlsConfig) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&config.cert)?;
    let key =
        PrivateKeyDer::from_pem_file(&config.key).map_err(|e| format!("{}: {e}", config.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(path)? {
                roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("{} and {}: {e}", config.cert.display(), config.key.display()))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(server)
}
