//! The docker runtime: containers through the Docker API (bollard), defined by docker-compose.yml.
//! (Built by the Docker infrastructure issue.)

use crate::config::{Component, Config};
use crate::infra::ComponentStatus;
use crate::Ctx;

/// A connected Docker daemon.
pub struct Docker {
    _cfg: Config,
}

#[derive(Debug, clap::Args)]
pub struct BuildImagesArgs {}

impl Docker {
    pub async fn connect(_cfg: &Config) -> anyhow::Result<Self> {
        Err(crate::not_built("infra --runtime docker"))
    }
    pub async fn start(&self, _c: &[Component], _explicit: bool) -> anyhow::Result<()> {
        Err(crate::not_built("infra --runtime docker"))
    }
    pub async fn stop(&self, _c: &[Component]) -> anyhow::Result<()> {
        Err(crate::not_built("infra --runtime docker"))
    }
    pub async fn status(&self, _c: &[Component]) -> anyhow::Result<Vec<ComponentStatus>> {
        Err(crate::not_built("infra --runtime docker"))
    }
    pub async fn logs(&self, _c: Option<Component>, _f: bool, _t: usize) -> anyhow::Result<()> {
        Err(crate::not_built("infra --runtime docker"))
    }
    pub async fn clean(&self) -> anyhow::Result<()> {
        Err(crate::not_built("infra --runtime docker"))
    }
}

pub async fn build_images(_ctx: &Ctx, _a: BuildImagesArgs) -> anyhow::Result<()> {
    Err(crate::not_built("infra build-images"))
}
