//! Certificates made at test time: a CA, a server certificate for `localhost` and `127.0.0.1`
//! signed by it, and a client certificate signed by it (for mutual TLS), written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// PEM files of one test PKI.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate (trust it to verify the server, or to require client certificates).
    pub ca: PathBuf,
    /// The server's certificate.
    pub server_cert: PathBuf,
    /// The server's private key.
    pub server_key: PathBuf,
    /// The client's certificate and private key in one file.
    pub client: PathBuf,
    /// A second CA's certificate, which signed nothing here (a client trusting only it fails).
    pub other_ca: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("a key")).expect("a CA certificate")
}

impl TestPki {
    /// Generates everything into `dir` (created if missing).
    pub fn generate(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("the PKI directory");
        let authority = ca("muster test CA");
        let server_key = KeyPair::generate().expect("a key");
        let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server parameters")
            .signed_by(&server_key, &authority)
            .expect("a server certificate");
        let client_key = KeyPair::generate().expect("a key");
        let mut client_params =
            CertificateParams::new(vec!["client.muster.test".to_owned()]).expect("client parameters");
        client_params.distinguished_name.push(DnType::CommonName, "muster test client");
        let client = client_params.signed_by(&client_key, &authority).expect("a client certificate");
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("a PEM file");
            path
        };
        Self {
            ca: write("ca.pem", authority.pem()),
            server_cert: write("server.pem", server.pem()),
            server_key: write("server-key.pem", server_key.serialize_pem()),
            client: write("client.pem", format!("{}{}", client.pem(), client_key.serialize_pem())),
            other_ca: write("other-ca.pem", ca("another CA").pem()),
        }
    }
}
