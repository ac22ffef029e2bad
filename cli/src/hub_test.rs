//! `mfe test`: the event-hub reliability suite and the proxy suite (not built yet).

use crate::Ctx;

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    #[command(subcommand)]
    pub command: TestCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum TestCommand {
    /// RabbitMQ reliability suite (SPEC §7).
    EventHub,
    /// Sign-in and CRUD through the gateway and nginx.
    Proxy(crate::proxy_test::ProxyTestArgs),
}

pub async fn run(_ctx: &Ctx, args: TestArgs) -> anyhow::Result<()> {
    match args.command {
        TestCommand::EventHub => Err(crate::not_built("test event-hub")),
        TestCommand::Proxy(a) => crate::proxy_test::run(_ctx, a).await,
    }
}
