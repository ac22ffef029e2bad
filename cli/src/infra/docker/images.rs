//! `mfe infra build-images`: local stand-ins for the official images, made from Debian
//! packages (scripts/build-images.sh) and loaded through the Docker API as one `docker save`
//! archive, for machines without a registry.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use bollard::image::ImportImageOptions;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use super::{docker_message, is_not_found, BuildImagesArgs, Docker};
use crate::config::Component;
use crate::Ctx;

/// One local image: a tag over the shared Debian root filesystem with its own entrypoint.
pub(super) struct LocalImage {
    pub(super) tag: &'static str,
    /// The compose variable that selects it.
    pub(super) env_var: &'static str,
    pub(super) entrypoint: &'static str,
    pub(super) cmd: &'static [&'static str],
    pub(super) env: &'static [&'static str],
    pub(super) ports: &'static [&'static str],
    pub(super) stop_signal: &'static str,
}

const PATH_ENV: &str = "PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The stand-ins for the official images docker-compose.yml names.
const LOCAL_IMAGES: [LocalImage; 4] = [
    LocalImage {
        tag: "mfe-local/postgres:15",
        env_var: "MFE_POSTGRES_IMAGE",
        entrypoint: "/usr/local/bin/entrypoint-postgres.sh",
        cmd: &["postgres"],
        env: &["PGDATA=/var/lib/postgresql/data"],
        ports: &["5432/tcp"],
        stop_signal: "SIGINT",
    },
    LocalImage {
        tag: "mfe-local/rabbitmq:3-management",
        env_var: "MFE_RABBITMQ_IMAGE",
        entrypoint: "/usr/local/bin/entrypoint-rabbitmq.sh",
        cmd: &["rabbitmq-server"],
        env: &["HOME=/var/lib/rabbitmq"],
        ports: &["5672/tcp", "15672/tcp"],
        stop_signal: "SIGTERM",
    },
    LocalImage {
        tag: "mfe-local/redis:7",
        env_var: "MFE_REDIS_IMAGE",
        entrypoint: "/usr/local/bin/entrypoint-redis.sh",
        cmd: &["redis-server"],
        env: &[],
        ports: &["6379/tcp"],
        stop_signal: "SIGTERM",
    },
    LocalImage {
        tag: "mfe-local/nginx:1.22",
        env_var: "MFE_NGINX_IMAGE",
        entrypoint: "/usr/local/bin/entrypoint-nginx.sh",
        cmd: &["nginx", "-g", "daemon off;"],
        env: &[],
        ports: &["80/tcp", "443/tcp"],
        stop_signal: "SIGQUIT",
    },
];

/// The local stand-in of `make images` for a compose service: the postgres one for every
/// database, else the one named like the service.
pub(super) fn local_image_for(service: &str) -> Option<&'static LocalImage> {
    let is_db = Component::parse(service).is_ok_and(|c| c.db_service().is_some());
    let repo = format!("mfe-local/{}:", if is_db { "postgres" } else { service });
    LOCAL_IMAGES.iter().find(|l| l.tag.starts_with(&repo))
}

/// `mfe infra build-images`: the Debian root filesystem (scripts/build-images.sh, cached), then
/// one `docker load` stream holding every local image over that one layer.
pub async fn build_images(ctx: &Ctx, args: BuildImagesArgs) -> anyhow::Result<()> {
    let docker = Docker::connect(&ctx.config).await?;
    let mut missing = Vec::new();
    for img in &LOCAL_IMAGES {
        match docker.api.inspect_image(img.tag).await {
            Ok(_) if !args.force => {}
            Ok(_) => missing.push(img),
            Err(e) if is_not_found(&e) => missing.push(img),
            Err(e) => bail!("cannot inspect image {}: {}", img.tag, docker_message(&e)),
        }
    }
    if missing.is_empty() {
        eprintln!("local images present: {} (--force rebuilds)", LOCAL_IMAGES.map(|i| i.tag).join(", "));
        print_selection();
        return Ok(());
    }
    let t0 = Instant::now();
    let cache = std::env::var("MFE_IMAGE_CACHE").unwrap_or_else(|_| "/var/cache/mfe-images".into());
    let rootfs = PathBuf::from(&cache).join("rootfs-bookworm.tar");
    let script = ctx.config.root.join("scripts/build-images.sh");
    let status = std::process::Command::new(&script)
        .arg(&rootfs)
        .env("MFE_IMAGE_CACHE", &cache)
        .env("MFE_REBUILD", if args.force { "1" } else { "0" })
        .status()
        .with_context(|| format!("cannot run {}", script.display()))?;
    anyhow::ensure!(status.success(), "{} failed (see its message above)", script.display());
    let rootfs_s = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    eprintln!("images: hashing {}", rootfs.display());
    let path = rootfs.clone();
    let (diff_id, layer_len) = tokio::task::spawn_blocking(move || -> anyhow::Result<(String, u64)> {
        let mut f = std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut h = Sha256::new();
        let n = std::io::copy(&mut f, &mut h)?;
        Ok((format!("sha256:{}", hex::encode(h.finalize())), n))
    })
    .await??;

    let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut manifest = Vec::new();
    let mut head_files: Vec<(String, Vec<u8>)> = Vec::new();
    for img in &missing {
        let mut env = vec![PATH_ENV.to_string(), "LANG=C.UTF-8".to_string()];
        env.extend(img.env.iter().map(|s| s.to_string()));
        let config = serde_json::json!({
            "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
            "os": "linux",
            "created": created,
            "config": {
                "Env": env,
                "Entrypoint": [img.entrypoint],
                "Cmd": img.cmd,
                "ExposedPorts": img.ports.iter().map(|p| (p.to_string(), serde_json::json!({}))).collect::<serde_json::Map<_, _>>(),
                "StopSignal": img.stop_signal,
                "WorkingDir": "/",
                "Labels": {"org.opencontainers.image.description": "mfe local stand-in built from Debian bookworm packages"},
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": created, "created_by": "mfe infra build-images (scripts/build-images.sh)"}],
        });
        let bytes = serde_json::to_vec(&config)?;
        let name = format!("{}.json", hex::encode(Sha256::digest(&bytes)));
        manifest.push(serde_json::json!({"Config": name, "RepoTags": [img.tag], "Layers": ["layer/layer.tar"]}));
        head_files.push((name, bytes));
    }
    head_files.insert(0, ("manifest.json".into(), serde_json::to_vec(&manifest)?));

    eprintln!("images: loading {} into Docker", missing.iter().map(|i| i.tag).collect::<Vec<_>>().join(", "));
    let stream = save_archive(head_files, rootfs.clone(), layer_len).await?;
    let mut load = docker.api.import_image_stream(ImportImageOptions { quiet: true }, stream, None);
    while let Some(item) = load.next().await {
        let info =
            item.map_err(|e| anyhow::anyhow!("docker load of the local images failed: {}", docker_message(&e)))?;
        if let Some(err) = info.error {
            bail!("docker load of the local images failed: {err}");
        }
        if let Some(s) = info.stream.filter(|s| !s.trim().is_empty()) {
            eprintln!("images: {}", s.trim());
        }
    }
    eprintln!(
        "images: built in {:.0} s (root filesystem {:.0} s, load {:.0} s)",
        t0.elapsed().as_secs_f64(),
        rootfs_s,
        t1.elapsed().as_secs_f64()
    );
    print_selection();
    Ok(())
}

fn print_selection() {
    eprintln!(
        "`mfe infra start --runtime docker` runs them where the official images are absent and cannot be pulled; \
         to run them in every case set:"
    );
    for img in &LOCAL_IMAGES {
        println!("{}={}", img.env_var, img.tag);
    }
}

/// A `docker save`-format archive as a byte stream: the small files, then `layer/layer.tar`
/// streamed from disk (the layer is a whole root filesystem: it is never held in memory).
async fn save_archive(
    files: Vec<(String, Vec<u8>)>,
    layer: PathBuf,
    layer_len: u64,
) -> anyhow::Result<impl Stream<Item = Bytes> + Send + 'static> {
    // Headers from the tar crate; the blocks are laid out here, because the archive's end
    // (padding and two zero blocks) comes after the layer, which is streamed, not buffered.
    let mut head = Vec::new();
    head.extend_from_slice(tar_header("layer/", 0, tar::EntryType::Directory)?.as_bytes());
    for (name, bytes) in &files {
        head.extend_from_slice(tar_header(name, bytes.len() as u64, tar::EntryType::Regular)?.as_bytes());
        head.extend_from_slice(bytes);
        head.resize(head.len().next_multiple_of(512), 0);
    }
    head.extend_from_slice(tar_header("layer/layer.tar", layer_len, tar::EntryType::Regular)?.as_bytes());
    let padding = (layer_len.next_multiple_of(512) - layer_len) as usize;
    let mut tail = vec![0u8; padding];
    tail.extend_from_slice(&[0u8; 1024]);

    let file = tokio::fs::File::open(&layer).await.with_context(|| format!("cannot open {}", layer.display()))?;
    let body = futures::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 20];
        match f.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Bytes::from(buf), f))
            }
        }
    });
    Ok(futures::stream::iter([Bytes::from(head)]).chain(body).chain(futures::stream::iter([Bytes::from(tail)])))
}

/// A ustar header for a regular file or a directory, owned by root, with its checksum.
fn tar_header(name: &str, size: u64, kind: tar::EntryType) -> anyhow::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).with_context(|| format!("{name} does not fit a tar header"))?;
    h.set_entry_type(kind);
    h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h.set_cksum();
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_component_has_a_local_stand_in() {
        for c in Component::ALL {
            let local = local_image_for(c.name()).unwrap_or_else(|| panic!("{c} has no local image"));
            let kind = if c.db_service().is_some() { "postgres" } else { c.name() };
            assert!(local.tag.starts_with(&format!("mfe-local/{kind}:")), "{c}: {}", local.tag);
        }
        assert!(local_image_for("prometheus").is_none());
    }

    #[test]
    fn a_tar_header_has_a_checksum_tar_accepts() {
        let h = *tar_header("manifest.json", 1234, tar::EntryType::Regular).unwrap().as_bytes();
        let octal = |field: &[u8]| std::str::from_utf8(field).unwrap().trim_matches(['\0', ' ']).to_string();
        let stored = u32::from_str_radix(&octal(&h[148..156]), 8).unwrap();
        let mut copy = h;
        copy[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, copy.iter().map(|&b| u32::from(b)).sum::<u32>());
        assert_eq!(u64::from_str_radix(&octal(&h[124..136]), 8).unwrap(), 1234);
    }

    #[tokio::test]
    async fn a_save_archive_reads_back_as_tar_with_its_files_and_layer() {
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("layer.tar");
        std::fs::write(&layer, vec![7u8; 1000]).unwrap();
        let files = vec![("manifest.json".to_string(), b"[]".to_vec()), ("abc.json".to_string(), b"{}".to_vec())];
        let stream = save_archive(files, layer, 1000).await.unwrap();
        let bytes: Vec<u8> = stream.collect::<Vec<Bytes>>().await.concat();
        assert_eq!(bytes.len() % 512, 0);
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
            seen.push((entry.path().unwrap().display().to_string(), content.len()));
        }
        let expected = [("layer/", 0), ("manifest.json", 2), ("abc.json", 2), ("layer/layer.tar", 1000)];
        assert_eq!(seen, expected.map(|(n, l)| (n.to_string(), l)));
    }
}
