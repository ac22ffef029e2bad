//! `mfe ssl generate`: the TLS certificate nginx serves (SPEC §3).
//!
//! Like mkcert, it makes a small local certificate authority (`ca.crt`, `ca.key`) and a leaf
//! certificate signed by it (`self-signed.crt`, `self-signed.key`) for localhost, *.localhost,
//! 127.0.0.1 and ::1 plus any `--host`. nginx serves the leaf; a user who wants a browser without
//! warnings trusts `ca.crt` once. Keys are written mode 0600, and nothing is overwritten without
//! `--force`: either every file is written or none.

use crate::config::Config;
use crate::report::{Check, Report};
use crate::Ctx;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Names every leaf certificate covers, whatever `--host` adds.
pub const DEFAULT_SANS: [&str; 4] = ["localhost", "*.localhost", "127.0.0.1", "::1"];

#[derive(Debug, Args)]
pub struct SslArgs {
    #[command(subcommand)]
    pub command: SslCommand,
}

#[derive(Debug, Subcommand)]
pub enum SslCommand {
    /// Write a local CA and a certificate signed by it for localhost (nginx serves it).
    Generate(GenerateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// Directory for ca.crt, ca.key, self-signed.crt and self-signed.key (default: the directory
    /// of SSL_CERT_PATH, with the file names of SSL_CERT_PATH and SSL_KEY_PATH).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
    /// Validity of the certificates in days.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Extra host names or IP addresses for the certificate (repeatable).
    #[arg(long = "host", value_name = "H")]
    pub hosts: Vec<String>,
}

/// Where one generation writes its four files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
}

impl CertPaths {
    /// The configured paths (SSL_CERT_PATH / SSL_KEY_PATH), the CA beside the certificate.
    pub fn from_config(cfg: &Config) -> Self {
        let dir = cfg.ssl_cert_path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self {
            cert: cfg.ssl_cert_path.clone(),
            key: cfg.ssl_key_path.clone(),
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
        }
    }

    pub fn in_dir(dir: &Path) -> Self {
        Self {
            cert: dir.join("self-signed.crt"),
            key: dir.join("self-signed.key"),
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
        }
    }

    fn all(&self) -> [&Path; 4] {
        [&self.cert, &self.key, &self.ca_cert, &self.ca_key]
    }
}

/// What was written: the facts `generate` prints.
#[derive(Debug, Clone)]
pub struct Generated {
    pub paths: CertPaths,
    pub subject: String,
    pub sans: Vec<String>,
    pub not_after: time::OffsetDateTime,
    /// SHA-256 of the leaf certificate's DER, `AB:CD:…` as openssl prints it.
    pub sha256: String,
}

/// Generates the CA and the leaf into `paths`. Refuses (changing nothing) when any of the files
/// exists and `force` is false.
pub fn generate(paths: &CertPaths, days: u32, extra_hosts: &[String], force: bool) -> anyhow::Result<Generated> {
    if !force {
        if let Some(existing) = paths.all().into_iter().find(|p| p.exists()) {
            bail!("{} already exists — pass --force to replace the certificates", existing.display());
        }
    }
    anyhow::ensure!(days > 0, "--days must be at least 1");
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::hours(1);
    let not_after = now + time::Duration::days(i64::from(days));

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("cannot build the CA parameters")?;
    ca_params.distinguished_name = dn("mfe local development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_key = KeyPair::generate().context("cannot generate the CA key")?;
    let ca_cert = ca_params.self_signed(&ca_key).context("cannot sign the CA certificate")?;

    let mut sans: Vec<String> = DEFAULT_SANS.iter().map(|s| s.to_string()).collect();
    for h in extra_hosts {
        if !sans.contains(h) {
            sans.push(h.clone());
        }
    }
    let mut leaf = CertificateParams::new(sans.clone()).context("a --host is not a valid DNS name or IP address")?;
    let subject = "localhost";
    leaf.distinguished_name = dn(subject);
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let leaf_key = KeyPair::generate().context("cannot generate the certificate key")?;
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).context("cannot sign the certificate")?;

    write_file(&paths.ca_cert, ca_cert.pem().as_bytes(), 0o644)?;
    write_file(&paths.ca_key, ca_key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&paths.cert, leaf_cert.pem().as_bytes(), 0o644)?;
    write_file(&paths.key, leaf_key.serialize_pem().as_bytes(), 0o600)?;

    let digest = Sha256::digest(leaf_cert.der());
    let sha256 = digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
    Ok(Generated { paths: paths.clone(), subject: format!("CN={subject}, O=mfe"), sans, not_after, sha256 })
}

/// Generates the configured certificate when it is missing (`mfe up` calls this before nginx).
/// Returns true when it wrote new files.
/// `2027-11-25T18:17:42Z`: the expiry as people and scripts read it.
pub fn format_time(t: time::OffsetDateTime) -> String {
    chrono::DateTime::from_timestamp(t.unix_timestamp(), 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

pub fn ensure_certificates(cfg: &Config) -> anyhow::Result<bool> {
    let paths = CertPaths::from_config(cfg);
    if paths.cert.is_file() && paths.key.is_file() {
        return Ok(false);
    }
    let g = generate(&paths, 365, &[], true)?;
    eprintln!(
        "ssl: generated {} (CA {}) valid until {}",
        g.paths.cert.display(),
        g.paths.ca_cert.display(),
        format_time(g.not_after)
    );
    Ok(true)
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "mfe");
    dn
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // `mode` only applies to new files; an overwritten key must not keep looser permissions.
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

pub async fn run(ctx: &Ctx, args: SslArgs) -> anyhow::Result<()> {
    match args.command {
        SslCommand::Generate(a) => {
            let paths = match &a.out {
                Some(dir) => CertPaths::in_dir(dir),
                None => CertPaths::from_config(&ctx.config),
            };
            let g = generate(&paths, a.days, &a.hosts, a.force)?;
            let mut report = Report::new("ssl generate");
            report.push(
                Check::new(
                    "certificate",
                    true,
                    format!(
                        "{} signed by the local CA, valid until {}",
                        g.paths.cert.display(),
                        format_time(g.not_after)
                    ),
                )
                .metric("subject", g.subject.clone())
                .metric("sans", g.sans.join(","))
                .metric("not_after", format_time(g.not_after))
                .metric("sha256", g.sha256.clone())
                .metric("key", g.paths.key.display().to_string()),
            );
            report.push(
                Check::new("ca", true, format!("trust {} once to avoid browser warnings", g.paths.ca_cert.display()))
                    .metric("key", g.paths.ca_key.display().to_string()),
            );
            if !ctx.json {
                eprintln!("subject:     {}", g.subject);
                eprintln!("SANs:        {}", g.sans.join(", "));
                eprintln!("expires:     {}", format_time(g.not_after));
                eprintln!("SHA-256:     {}", g.sha256);
                eprintln!("certificate: {}", g.paths.cert.display());
                eprintln!("key:         {} (0600)", g.paths.key.display());
                eprintln!("CA:          {} (trust it once: e.g. copy to /usr/local/share/ca-certificates and run update-ca-certificates)", g.paths.ca_cert.display());
                return Ok(());
            }
            report.emit(true)
        }
    }
}
