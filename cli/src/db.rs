//! `mfe db` (not built yet: see the issue that builds it).

use crate::Ctx;

#[derive(Debug, clap::Args)]
pub struct DbArgs {
    /// Arguments of the command (accepted so `--help` lists the group).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub rest: Vec<String>,
}

pub async fn run(_ctx: &Ctx, _args: DbArgs) -> anyhow::Result<()> {
    Err(crate::not_built("db"))
}
