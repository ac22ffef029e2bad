//! Client TLS of the CLI: which server certificates `mfe`'s HTTP and WebSocket clients trust
//! (`mfe ws probe`, `mfe test proxy`, their sign-ins, sign-ups and triggers), and the one line
//! a certificate failure prints.
//!
//! The rule: the system store, plus the dev CA that `mfe ssl generate` / `mfe up` wrote for the
//! stack this run is configured for (`ca.crt` beside `SSL_CERT_PATH`, see
//! [`crate::ssl::CertPaths::from_config`]), plus `--ca FILE` when given. `mfe` signed nginx's
//! certificate with that CA itself, so trusting it needs no flag: a user who just ran `mfe up`
//! or `make demo` can probe the stack as written in the README. `--insecure` stays for a
//! foreign dev stack whose CA is not at hand.
//!
//! One [`rustls::ClientConfig`] serves both reqwest (`use_preconfigured_tls`) and
//! tokio-tungstenite, so the HTTP half and the WebSocket half of a command can never disagree
//! about what is trusted. The system store is read by `rustls-native-certs` (it honours
//! `SSL_CERT_FILE` / `SSL_CERT_DIR` like OpenSSL does).

use std::{
    error::Error as StdError,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime},
    CertificateError, DigitallySignedStruct, SignatureScheme,
};

use crate::config::Config;

/// How a client trusts servers: `#[command(flatten)]` it into a command's arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Also trust this PEM CA certificate (the stack's own CA, ca.crt beside SSL_CERT_PATH, and
    /// the system store are always trusted).
    #[arg(long, value_name = "PATH", conflicts_with = "insecure")]
    pub ca: Option<PathBuf>,
    /// Accept any server certificate: for a foreign dev stack whose CA you do not have; never
    /// for production.
    #[arg(long)]
    pub insecure: bool,
}

/// Where the dev CA of the configured stack is: `ca.crt` beside `SSL_CERT_PATH`.
pub fn stack_ca_path(cfg: &Config) -> PathBuf {
    crate::ssl::CertPaths::from_config(cfg).ca_cert
}

impl TlsArgs {
    /// The trust of a client talking to the stack `cfg` describes.
    pub fn for_stack(&self, cfg: &Config) -> anyhow::Result<ClientTls> {
        self.with_stack_ca(&stack_ca_path(cfg))
    }

    /// The trust of a client whose stack keeps its CA at `stack_ca` (trusted when the file
    /// exists; a file that exists but is no certificate is an error, not silently skipped,
    /// since the failure line would then claim it was tried).
    pub fn with_stack_ca(&self, stack_ca: &Path) -> anyhow::Result<ClientTls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("tls: no protocol versions")?;
        let stack_ca_found = stack_ca.is_file();
        let mut ca_files = Vec::new();
        let config = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
                .with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            // Unreadable entries of the system store are skipped: one bad file there must not
            // stop a client that only needs the stack's CA.
            let (_, _) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if stack_ca_found {
                add_pem_roots(&mut roots, stack_ca).with_context(|| {
                    format!("the stack's CA {} (beside SSL_CERT_PATH) is unusable — regenerate it with `mfe ssl generate --force`", stack_ca.display())
                })?;
                ca_files.push(stack_ca.to_path_buf());
            }
            if let Some(ca) = &self.ca {
                add_pem_roots(&mut roots, ca).with_context(|| format!("--ca {}", ca.display()))?;
                ca_files.push(ca.clone());
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        Ok(ClientTls {
            config: Arc::new(config),
            ca_files,
            stack_ca: stack_ca.to_path_buf(),
            stack_ca_found,
            insecure: self.insecure,
        })
    }
}

/// Adds every certificate of a PEM file as a trusted root.
fn add_pem_roots(roots: &mut rustls::RootCertStore, path: &Path) -> anyhow::Result<()> {
    let mut n = 0;
    for cert in CertificateDer::pem_file_iter(path).with_context(|| format!("cannot read {}", path.display()))? {
        let cert = cert.with_context(|| format!("{} is not a PEM certificate", path.display()))?;
        roots.add(cert).with_context(|| format!("{} is not a usable CA certificate", path.display()))?;
        n += 1;
    }
    anyhow::ensure!(n > 0, "{} holds no PEM certificate", path.display());
    Ok(())
}

/// What one command's clients trust, and how to say so when a server is not trusted.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    /// CA files trusted besides the system store, in the order they were added.
    ca_files: Vec<PathBuf>,
    /// Where the stack's CA was looked for, named in the failure line when it was absent.
    stack_ca: PathBuf,
    stack_ca_found: bool,
    insecure: bool,
}

impl ClientTls {
    /// The CA files trusted besides the system store (the stack's CA when found, then `--ca`).
    pub fn ca_files(&self) -> &[PathBuf] {
        &self.ca_files
    }

    /// What a server's certificate is verified against, for reports: `the system store and
    /// /…/ca.crt`, or `nothing (--insecure)`.
    pub fn trusted(&self) -> String {
        if self.insecure {
            return "nothing (--insecure)".to_string();
        }
        let mut all = vec!["the system store".to_string()];
        all.extend(self.ca_files.iter().map(|p| p.display().to_string()));
        match all.len() {
            1 => all.remove(0),
            n => format!("{} and {}", all[..n - 1].join(", "), all[n - 1]),
        }
    }

    /// An HTTP client with this trust (30 s per request; proxies ignored: every target is a
    /// stack the user runs).
    pub fn http_client(&self) -> anyhow::Result<reqwest::Client> {
        self.http_client_from(None)
    }

    /// [`Self::http_client`] whose connections leave from `local` (a loopback address of its
    /// own gives a simulated user its own rate-limit bucket at nginx).
    pub fn http_client_from(&self, local: Option<std::net::IpAddr>) -> anyhow::Result<reqwest::Client> {
        reqwest::Client::builder()
            .local_address(local)
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .use_preconfigured_tls((*self.config).clone())
            .build()
            .context("cannot build the HTTP client")
    }

    /// The rustls configuration itself, for clients that speak raw TLS (`mfe test security`).
    pub fn rustls_config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }

    /// A WebSocket connector with this trust.
    pub fn ws_connector(&self) -> tokio_tungstenite::Connector {
        tokio_tungstenite::Connector::Rustls(self.config.clone())
    }

    /// `err`, from a request to or a handshake with `server`, as the one line to print: a
    /// certificate failure names the server, the CA files tried and what to do next; anything
    /// else keeps its causes behind `context`.
    pub fn error<E>(&self, server: &str, err: E, context: impl std::fmt::Display) -> anyhow::Error
    where
        E: StdError + Send + Sync + 'static,
    {
        match self.explain(server, &err) {
            Some(line) => anyhow::anyhow!(line),
            None => anyhow::Error::new(err).context(context.to_string()),
        }
    }

    /// The line for `err` when a certificate failure caused it, else `None`.
    pub fn explain(&self, server: &str, err: &(dyn StdError + 'static)) -> Option<String> {
        certificate_error(err).map(|reason| self.untrusted_line(server, &reason))
    }

    /// The line for a server whose certificate failed verification.
    fn untrusted_line(&self, server: &str, reason: &CertificateError) -> String {
        let server = server_name(server);
        let only = if self.ca_files.is_empty() { " only" } else { "" };
        let tried = format!("tried {}{only}", self.trusted());
        let missing = if self.stack_ca_found || self.insecure {
            String::new()
        } else {
            format!(" (no stack CA at {})", self.stack_ca.display())
        };
        let (what, next) = match reason {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => (
                "certificate expired",
                "renew it with `mfe ssl generate --force` and restart nginx (`mfe infra restart nginx`)",
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => (
                "certificate not valid for this name",
                "add the name with `mfe ssl generate --force --host NAME` and restart nginx, or use a name the certificate covers (localhost)",
            ),
            _ => (
                "certificate not trusted",
                "run `mfe ssl generate` for this stack, pass --ca FILE, or --insecure for a foreign dev stack",
            ),
        };
        format!("{server}: {what} ({}); {tried}{missing} — {next}", reason_name(reason))
    }
}

/// The variant name of a certificate error (`UnknownIssuer`), without the context some carry.
/// `BadSignature` is what another stack's CA gives (every `mfe ssl generate` CA has the same
/// name, so the verifier tries it and its signature does not match): it says so.
fn reason_name(reason: &CertificateError) -> String {
    if matches!(reason, CertificateError::BadSignature) {
        return "BadSignature: signed by another CA of the same name, e.g. another stack's".to_string();
    }
    let debug = format!("{reason:?}");
    let end = debug.find([' ', '(', '{']).unwrap_or(debug.len());
    debug[..end].trim_end_matches("Context").to_string()
}

/// A URL without its query (the probe's token travels there) and credentials.
fn server_name(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            let _ = u.set_password(None);
            let _ = u.set_username("");
            // `Url` drops a scheme's default port; the line names the port connected to.
            match (u.port(), u.port_or_known_default()) {
                (None, Some(port)) => {
                    format!("{}://{}:{port}{}", u.scheme(), u.host_str().unwrap_or_default(), u.path())
                }
                _ => u.to_string(),
            }
        }
        Err(_) => url.split('?').next().unwrap_or(url).to_string(),
    }
}

/// The certificate verification error somewhere in `err`'s causes, if that is why it failed.
///
/// rustls errors reach us wrapped in `std::io::Error`s (tokio-rustls), whose `source()` skips
/// the wrapped error itself, so each `io::Error` is opened with `get_ref` as well.
fn certificate_error(err: &(dyn StdError + 'static)) -> Option<CertificateError> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(rustls::Error::InvalidCertificate(c)) = e.downcast_ref::<rustls::Error>() {
            return Some(c.clone());
        }
        if let Some(inner) = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            if let Some(c) = certificate_error(inner) {
                return Some(c);
            }
        }
        next = e.source();
    }
    None
}

/// Accepts every certificate but still checks handshake signatures (`--insecure`).
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with_cert_in(dir: &Path) -> Config {
        let mut cfg = Config::from_env().expect("configuration");
        cfg.ssl_cert_path = dir.join("self-signed.crt");
        cfg.ssl_key_path = dir.join("self-signed.key");
        cfg
    }

    fn unknown_issuer() -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        )
    }

    #[test]
    fn the_stack_ca_beside_ssl_cert_path_is_trusted_without_flags() {
        let dir = tempfile::tempdir().unwrap();
        crate::ssl::generate(&crate::ssl::CertPaths::in_dir(dir.path()), 1, &[], false).unwrap();
        let cfg = config_with_cert_in(dir.path());
        assert_eq!(stack_ca_path(&cfg), dir.path().join("ca.crt"));
        let tls = TlsArgs::default().for_stack(&cfg).unwrap();
        assert_eq!(tls.ca_files(), [dir.path().join("ca.crt")]);
    }

    #[test]
    fn a_missing_stack_ca_is_named_in_the_failure_line_and_ca_adds_a_file() {
        let empty = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        crate::ssl::generate(&crate::ssl::CertPaths::in_dir(other.path()), 1, &[], false).unwrap();
        let other_ca = other.path().join("ca.crt");
        let args = TlsArgs { ca: Some(other_ca.clone()), insecure: false };
        let tls = args.for_stack(&config_with_cert_in(empty.path())).unwrap();
        assert_eq!(tls.ca_files(), std::slice::from_ref(&other_ca));
        let line = tls.error("wss://localhost/ws?token=secret.jwt", unknown_issuer(), "connect").to_string();
        assert_eq!(
            line,
            format!(
                "wss://localhost:443/ws: certificate not trusted (UnknownIssuer); tried the system store and {} \
                 (no stack CA at {}) — run `mfe ssl generate` for this stack, pass --ca FILE, or --insecure for a \
                 foreign dev stack",
                other_ca.display(),
                empty.path().join("ca.crt").display()
            )
        );
        assert!(!line.contains("secret"), "the token must not be printed: {line}");
    }

    #[test]
    fn the_failure_line_lists_every_ca_file_tried() {
        let stack = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        crate::ssl::generate(&crate::ssl::CertPaths::in_dir(stack.path()), 1, &[], false).unwrap();
        crate::ssl::generate(&crate::ssl::CertPaths::in_dir(other.path()), 1, &[], false).unwrap();
        let args = TlsArgs { ca: Some(other.path().join("ca.crt")), insecure: false };
        let tls = args.for_stack(&config_with_cert_in(stack.path())).unwrap();
        let line = tls.untrusted_line("https://localhost:19443", &CertificateError::UnknownIssuer);
        let expected = format!(
            "https://localhost:19443/: certificate not trusted (UnknownIssuer); tried the system store, {} and {} — ",
            stack.path().join("ca.crt").display(),
            other.path().join("ca.crt").display()
        );
        assert!(line.starts_with(&expected), "{line}");
    }

    #[test]
    fn a_stack_ca_that_is_no_certificate_is_refused_with_its_path_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), "not a certificate").unwrap();
        let err = TlsArgs::default().for_stack(&config_with_cert_in(dir.path())).unwrap_err();
        let line = crate::error_line(&err);
        assert!(line.contains(&dir.path().join("ca.crt").display().to_string()), "{line}");
        assert!(line.contains("mfe ssl generate --force"), "{line}");
    }

    #[test]
    fn a_certificate_error_is_found_through_io_and_other_wrappers_and_other_errors_are_not() {
        assert_eq!(certificate_error(&unknown_issuer()), Some(CertificateError::UnknownIssuer));
        let wrapped = tokio_tungstenite::tungstenite::Error::Io(unknown_issuer());
        assert_eq!(certificate_error(&wrapped), Some(CertificateError::UnknownIssuer));
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(certificate_error(&refused), None);
        let tls = TlsArgs::default().with_stack_ca(Path::new("/nonexistent/ca.crt")).unwrap();
        let e = tls.error("https://localhost:1", refused, "sign-in at https://localhost:1 failed");
        assert_eq!(crate::error_line(&e), "sign-in at https://localhost:1 failed: connection refused");
    }

    #[test]
    fn an_expired_certificate_says_how_to_renew_it() {
        let tls = TlsArgs::default().with_stack_ca(Path::new("/nonexistent/ca.crt")).unwrap();
        let line = tls.untrusted_line("https://localhost", &CertificateError::Expired);
        assert!(line.contains("certificate expired (Expired)"), "{line}");
        assert!(line.contains("mfe ssl generate --force"), "{line}");
    }
}
