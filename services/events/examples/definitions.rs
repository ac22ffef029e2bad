//! Regenerates the topology part (and the policies) of `rabbitmq/definitions.json` from the code, keeping the
//! users, vhosts and permissions already in the file:
//! `cargo run -p mfe-events --example definitions > rabbitmq/definitions.json.new`.

use mfe_events::topology::{definitions, platform_plan, policies};
use mfe_events::HubConfig;

fn main() -> anyhow::Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../rabbitmq/definitions.json");
    let mut file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let code = definitions(&platform_plan(&HubConfig::default()));
    for section in ["exchanges", "queues", "bindings"] {
        file[section] = code[section].clone();
    }
    file["policies"] = policies();
    println!("{}", serde_json::to_string_pretty(&file)?);
    Ok(())
}
