//! `mfe test proxy`: sign-in and CRUD through the gateway and nginx (built by the gateway issue).

use crate::Ctx;

#[derive(Debug, clap::Args)]
pub struct ProxyTestArgs {}

pub async fn run(_ctx: &Ctx, _args: ProxyTestArgs) -> anyhow::Result<()> {
    Err(crate::not_built("test proxy"))
}
