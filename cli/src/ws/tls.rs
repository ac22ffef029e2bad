//! TLS for the probes: the dev stack's nginx serves a self-signed certificate, so `--ca PATH`
//! trusts that certificate and `--insecure` skips verification (development only). The same
//! choice builds the WebSocket connector and the HTTP client, so one flag covers both.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context;
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};

/// How to trust the server's certificate.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// Accept any server certificate (the dev stack's self-signed one); never for production.
    #[arg(long)]
    pub insecure: bool,
    /// Trust this PEM certificate (e.g. the dev CA written by `mfe ssl generate`).
    #[arg(long, value_name = "PATH")]
    pub ca: Option<PathBuf>,
}

impl TlsArgs {
    /// A rustls client configuration: system roots, plus `--ca`, or no verification.
    pub fn rustls_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("tls: no protocol versions")?;
        let config = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
                .with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_roots() {
                let _ = roots.add(cert);
            }
            if let Some(ca) = &self.ca {
                for cert in CertificateDer::pem_file_iter(ca)
                    .with_context(|| format!("cannot read the CA certificate {}", ca.display()))?
                {
                    let cert = cert.with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
                    roots.add(cert).with_context(|| format!("{} is not a usable CA certificate", ca.display()))?;
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        Ok(Arc::new(config))
    }

    /// An HTTP client trusting the same certificates.
    pub fn http_client(&self) -> anyhow::Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).no_proxy();
        if self.insecure {
            builder = builder.danger_accept_invalid_certs(true);
        }
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read the CA certificate {}", ca.display()))?;
            builder = builder.add_root_certificate(
                reqwest::Certificate::from_pem(&pem)
                    .with_context(|| format!("{} is not a PEM certificate", ca.display()))?,
            );
        }
        builder.build().context("cannot build the HTTP client")
    }
}

/// The system's trusted roots; empty when there are none (then only `--ca` is trusted).
fn rustls_native_roots() -> Vec<CertificateDer<'static>> {
    let mut out = Vec::new();
    for path in ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"] {
        if let Ok(iter) = CertificateDer::pem_file_iter(path) {
            out.extend(iter.flatten());
            break;
        }
    }
    out
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
