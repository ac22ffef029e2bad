//! `mfe ssl generate` end to end: the real binary, checked with openssl.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn mfe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mfe")).args(args).output().expect("the mfe binary runs")
}

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is needed by this test — apt-get install openssl (scripts/install-deps.sh)")
}

fn generate_into(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["ssl", "generate", "--out", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    mfe(&args)
}

#[test]
fn the_certificate_verifies_against_the_ca_written_beside_it() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let out = generate_into(dir.path(), &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let verify = openssl(&[
        "verify",
        "-CAfile",
        dir.path().join("ca.crt").to_str().unwrap(),
        dir.path().join("self-signed.crt").to_str().unwrap(),
    ]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    assert!(String::from_utf8_lossy(&verify.stdout).trim_end().ends_with(": OK"));
}

#[test]
fn the_certificate_names_localhost_its_subdomains_both_loopbacks_and_extra_hosts() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let out = generate_into(dir.path(), &["--host", "mfe.test", "--host", "10.1.2.3", "--days", "30"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = openssl(&["x509", "-in", dir.path().join("self-signed.crt").to_str().unwrap(), "-noout", "-text"]);
    let text = String::from_utf8_lossy(&text.stdout);
    for san in [
        "DNS:localhost",
        "DNS:*.localhost",
        "IP Address:127.0.0.1",
        "IP Address:0:0:0:0:0:0:0:1",
        "DNS:mfe.test",
        "IP Address:10.1.2.3",
    ] {
        assert!(text.contains(san), "{san} missing from:\n{text}");
    }
    let end = openssl(&[
        "x509",
        "-in",
        dir.path().join("self-signed.crt").to_str().unwrap(),
        "-noout",
        "-checkend",
        &(29 * 86400).to_string(),
    ]);
    assert!(end.status.success(), "a 30-day certificate must still be valid in 29 days");
    let end = openssl(&[
        "x509",
        "-in",
        dir.path().join("self-signed.crt").to_str().unwrap(),
        "-noout",
        "-checkend",
        &(31 * 86400).to_string(),
    ]);
    assert!(!end.status.success(), "a 30-day certificate must have expired in 31 days");
}

#[test]
fn both_private_keys_are_readable_only_by_their_owner() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let dir = tempfile::tempdir().unwrap();
    assert!(generate_into(dir.path(), &[]).status.success());
    for key in ["self-signed.key", "ca.key"] {
        let mode = std::fs::metadata(dir.path().join(key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key} has mode {mode:o}");
    }
}

#[test]
fn a_second_generation_without_force_exits_1_and_changes_nothing() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let dir = tempfile::tempdir().unwrap();
    assert!(generate_into(dir.path(), &[]).status.success());
    let read = |f: &str| std::fs::read(dir.path().join(f)).unwrap();
    let before: Vec<Vec<u8>> =
        ["self-signed.crt", "self-signed.key", "ca.crt", "ca.key"].iter().map(|f| read(f)).collect();
    let again = generate_into(dir.path(), &[]);
    assert_eq!(again.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already exists") && stderr.contains("--force"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one clear line: {stderr}");
    let after: Vec<Vec<u8>> =
        ["self-signed.crt", "self-signed.key", "ca.crt", "ca.key"].iter().map(|f| read(f)).collect();
    assert_eq!(before, after);
    let forced = generate_into(dir.path(), &["--force"]);
    assert!(forced.status.success());
    assert_ne!(read("self-signed.crt"), before[0], "--force writes a new certificate");
}

#[test]
fn json_output_reports_subject_sans_expiry_and_the_openssl_fingerprint() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let out = mfe(&["--json", "ssl", "generate", "--out", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let m = &v["checks"][0]["metrics"];
    assert_eq!(v["command"], "ssl generate");
    assert!(m["sans"].as_str().unwrap().contains("*.localhost"));
    assert!(m["not_after"].as_str().unwrap().ends_with('Z'));
    let fp = openssl(&[
        "x509",
        "-in",
        dir.path().join("self-signed.crt").to_str().unwrap(),
        "-noout",
        "-fingerprint",
        "-sha256",
    ]);
    let fp = String::from_utf8_lossy(&fp.stdout);
    assert_eq!(fp.trim().rsplit('=').next().unwrap(), m["sha256"].as_str().unwrap());
}

#[test]
fn ensure_certificates_writes_the_configured_files_once_and_then_leaves_them_alone() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = mfe::config::Config::from_env().unwrap();
    cfg.ssl_cert_path = dir.path().join("tls/edge.crt");
    cfg.ssl_key_path = dir.path().join("tls/edge.key");
    assert!(mfe::ssl::ensure_certificates(&cfg).unwrap(), "missing certificates are generated");
    assert!(dir.path().join("tls/ca.crt").is_file(), "the CA is written beside the certificate");
    let first = std::fs::read(&cfg.ssl_cert_path).unwrap();
    assert!(!mfe::ssl::ensure_certificates(&cfg).unwrap(), "present certificates are kept");
    assert_eq!(std::fs::read(&cfg.ssl_cert_path).unwrap(), first);
    let mode = std::fs::metadata(&cfg.ssl_key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}
