//! `mfe ws`: WebSocket end-to-end probes of the gateway (SPEC §8).
//!
//! # Layout
//! - [`probe`]: `mfe ws probe` — token, connect, ack, ping/pong, triggered events, fan-out.
//!   Its `--ca` / `--insecure` are [`crate::tls::TlsArgs`], shared with every other client.
//! - `fanout`: the triggered events and their delivery to every socket (the fan-out benchmark).

mod fanout;
pub mod probe;

use crate::Ctx;

#[derive(Debug, clap::Args)]
pub struct WsArgs {
    #[command(subcommand)]
    pub command: WsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum WsCommand {
    /// Connect with a token, check the ack and ping/pong, optionally trigger events and measure
    /// their delivery, or hold many sockets and measure fan-out latency.
    Probe(probe::ProbeArgs),
}

pub async fn run(ctx: &Ctx, args: WsArgs) -> anyhow::Result<()> {
    match args.command {
        WsCommand::Probe(a) => probe::run(ctx, a).await,
    }
}
