//! Rules over the whole workspace, checked from its sources and its manifests.

use std::path::{Path, PathBuf};
use std::process::Command;

use mfe_core::env::VARS;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

/// The non-test Rust sources: every `src/` of the workspace, without `tests/`, `benches/`,
/// `examples/` and without the `#[cfg(test)]` module at the end of a file.
fn sources() -> Vec<(PathBuf, String)> {
    let mut dirs = vec![root().join("cli/src"), root().join("gateway/src")];
    for entry in std::fs::read_dir(root().join("services")).expect("services/") {
        dirs.push(entry.expect("a services/ entry").path().join("src"));
    }
    let mut out = Vec::new();
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("a readable source file");
                let text = match text.find("#[cfg(test)]\nmod tests") {
                    Some(at) => text[..at].to_string(),
                    None => text,
                };
                out.push((path, text));
            }
        }
    }
    out
}

/// The variable names read in `text`: the first argument of `env::var`, `env::var_os`, the
/// `mfe_core::env` readers (`get`, `lookup`, `parse_env*`, turbofish allowed), `find_binary`,
/// plus clap's `env = "X"` and the `env_var: "X"` fields of image and binary tables.
fn reads(text: &str) -> Vec<String> {
    // `env::var` covers `env::var_os` (the rest of a name is skipped).
    const CALLS: &[&str] = &["env::var", "env::get", "env::lookup", "parse_env", "find_binary"];
    const FIELDS: &[&str] = &["env = ", "env_var: "];
    let bytes = text.as_bytes();
    let mut names = Vec::new();
    let literal_at = |mut i: usize| -> Option<String> {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if bytes.get(i) != Some(&b'"') {
            return None;
        }
        let start = i + 1;
        let len =
            bytes[start..].iter().take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || **b == b'_').count();
        (len > 0 && bytes.get(start + len) == Some(&b'"')).then(|| text[start..start + len].to_string())
    };
    for call in CALLS {
        for (at, _) in text.match_indices(call) {
            let mut i = at + call.len();
            // `parse_env_ms`, `parse_env_opt::<u64>`: the rest of the name, then a turbofish.
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            if text[i..].starts_with("::<") {
                let mut depth = 0;
                while i < bytes.len() {
                    match bytes[i] {
                        b'<' => depth += 1,
                        b'>' if depth == 1 => {
                            i += 1;
                            break;
                        }
                        b'>' => depth -= 1,
                        _ => {}
                    }
                    i += 1;
                }
            }
            if bytes.get(i) == Some(&b'(') {
                names.extend(literal_at(i + 1));
            }
        }
    }
    for field in FIELDS {
        for (at, _) in text.match_indices(field) {
            names.extend(literal_at(at + field.len()));
        }
    }
    names
}

#[test]
fn the_scanner_finds_every_form_of_read() {
    let text = r#"std::env::var("A_1") env::var_os("B") env::get("C") parse_env::<u16>("D", 1)
        parse_env_ms("E", d) find_binary("F", &[]) #[arg(env = "G")] env_var: "H", env::var(name)"#;
    assert_eq!(reads(text), ["A_1", "B", "C", "D", "E", "F", "G", "H"]);
}

#[test]
fn every_environment_variable_read_in_the_sources_is_documented() {
    let mut missing = Vec::new();
    let mut seen = 0;
    for (path, text) in sources() {
        for name in reads(&text) {
            seen += 1;
            if !VARS.iter().any(|v| v.name == name) {
                missing.push(format!("{name} ({})", path.strip_prefix(root()).unwrap_or(&path).display()));
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(seen > 30, "the scanner found only {seen} reads: is it still looking in the right places?");
    assert!(
        missing.is_empty(),
        "read but not documented in mfe_core::env::VARS (add a row with a doc line, then \
         `mfe env example > .env.example`): {}",
        missing.join(", ")
    );
}

#[test]
fn only_mfe_events_depends_on_lapin() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let packages = meta["packages"].as_array().expect("a package list");
    assert!(packages.len() >= 8, "the workspace has its crates");
    let offenders: Vec<String> = packages
        .iter()
        .filter(|p| p["name"] != "mfe-events")
        .filter(|p| p["dependencies"].as_array().is_some_and(|d| d.iter().any(|d| d["name"] == "lapin")))
        .map(|p| p["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(offenders.is_empty(), "only mfe-events speaks AMQP, yet lapin is a dependency of {offenders:?}");
}

#[test]
fn mfe_core_depends_on_no_workspace_crate() {
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    assert!(!manifest.contains("path ="), "mfe-core is the bottom of the crate graph:\n{manifest}");
}
