//! nginx configuration for both runtimes: the repository's `nginx/` rendered with this run's
//! ports and upstream addresses. (Built by the Docker infrastructure issue.)

use crate::config::Config;
use std::path::{Path, PathBuf};

/// Writes a runnable nginx prefix under `dir` and returns the path of its main config file.
pub fn prepare_native(_cfg: &Config, _dir: &Path) -> anyhow::Result<PathBuf> {
    Err(crate::not_built("infra start nginx (nginx configuration)"))
}
