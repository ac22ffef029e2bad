//! `mfe up`, `mfe down`, `mfe status`: the whole stack (not built yet).

use crate::Ctx;

#[derive(Debug, clap::Args)]
pub struct UpArgs {}
#[derive(Debug, clap::Args)]
pub struct DownArgs {}
#[derive(Debug, clap::Args)]
pub struct StatusArgs {}

pub async fn up(_ctx: &Ctx, _a: UpArgs) -> anyhow::Result<()> {
    Err(crate::not_built("up"))
}
pub async fn down(_ctx: &Ctx, _a: DownArgs) -> anyhow::Result<()> {
    Err(crate::not_built("down"))
}
pub async fn status(_ctx: &Ctx, _a: StatusArgs) -> anyhow::Result<()> {
    Err(crate::not_built("status"))
}
