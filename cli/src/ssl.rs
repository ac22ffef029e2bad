//! `mfe ssl` (not built yet: see the issue that builds it).

use crate::Ctx;

#[derive(Debug, clap::Args)]
pub struct SslArgs {
    /// Arguments of the command (accepted so `--help` lists the group).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub rest: Vec<String>,
}

pub async fn run(_ctx: &Ctx, _args: SslArgs) -> anyhow::Result<()> {
    Err(crate::not_built("ssl"))
}
