//! The test stack runs beside a default stack (README, `make test`): no port of `test.env`, nor
//! one the test stack derives, is a port the default stack listens on or derives — and the
//! private ranges of the chaos and bench stacks are clear of them too.
//!
//! A RabbitMQ node listens on more than its AMQP port: the management API, the Erlang
//! distribution port (RabbitMQ's rule: AMQP + 20000, unless `RABBITMQ_DIST_PORT` says
//! otherwise) and, for its CLI tools (`rabbitmqctl`), the range distribution + 10000 to
//! distribution + 10010. `--ha` runs three nodes on each base port + 0, 1, 2. Epmd (4369) is
//! shared by design: one per host, every node of every stack registers its name there, which is
//! why the node names (`mfe<amqp port>@localhost`) must differ, and they do when the AMQP ports
//! do.
//!
//! Pure: reads `test.env`, the defaults of the environment table (`mfe_core::env::VARS`) and
//! docker-compose.yml's host-port defaults; nothing is started.

use mfe::infra::cluster::HaTopology;
use std::collections::BTreeMap;
use std::path::Path;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Epmd's port: shared by every Erlang node on the host, never a stack's own.
const EPMD: u16 = 4369;

/// The port ranges the stacks of tests and scripts take for themselves: 17xxx (the degradation
/// test), 18xxx (`cli/tests/it/ha_cluster.rs`), 19xxx (`cli/tests/it/readme_table.rs`), 21xxx
/// (`cli/tests/it/security.rs`), 27xxx (`cli/tests/it/chaos.rs`), 295xx-296xx
/// (`cli/tests/it/docker_runtime.rs` with replicas), 31xxx (`cli/tests/it/replicas.rs`), 30xxx
/// (`scripts/bench-replicas.sh`), 43xxx (`scripts/bench-ha.sh`), 44xxx (`scripts/bench-chaos.sh`).
/// The ones `make test` starts are below 32768, Linux's ephemeral range: there a client socket
/// (or its TIME-WAIT) the kernel numbered with one of a stack's fixed ports makes that listener
/// fail to bind.
const PRIVATE_RANGES: &[(u16, u16)] =
    &[(17000, 19999), (21000, 21999), (27000, 27999), (29500, 29699), (30000, 31999), (43000, 44999)];

/// Ports with what they are, so a collision names both sides.
#[derive(Default)]
struct Ports(BTreeMap<u16, Vec<String>>);

impl Ports {
    fn add(&mut self, port: u16, what: impl Into<String>) {
        self.0.entry(port).or_default().push(what.into());
    }

    /// The ports of a RabbitMQ broker of AMQP URL `url`: its one node and the three of `--ha`,
    /// each with its management, distribution and CLI ports.
    fn add_broker(&mut self, url: &str, management: u16, dist: Option<u16>, who: &str) {
        let topo = HaTopology::derive(&[url.to_string()], management, dist)
            .unwrap_or_else(|e| panic!("{who}: the broker's ports do not derive: {e}"));
        let mut cli_range = std::collections::BTreeSet::new();
        for n in &topo.nodes {
            self.add(n.amqp_port, format!("{who} AMQP of {}", n.name));
            self.add(n.management_port, format!("{who} management of {}", n.name));
            self.add(n.dist_port, format!("{who} Erlang distribution of {}", n.name));
            for offset in 10000..=10010u32 {
                let port = u32::from(n.dist_port) + offset;
                assert!(port <= 65535, "{who}: the CLI range of {} passes 65535 ({port})", n.name);
                cli_range.insert(port as u16);
            }
        }
        for port in cli_range {
            self.add(port, format!("{who} rabbitmqctl range"));
        }
    }
}

fn url_port(value: &str) -> Option<u16> {
    url::Url::parse(value.split(',').next()?).ok()?.port()
}

/// `KEY=VALUE` lines of test.env (comments and blank lines skipped).
fn test_env() -> BTreeMap<String, String> {
    let path = Path::new(ROOT).join("test.env");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("test.env: not KEY=VALUE: {l}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// Every port a default stack (native or docker, one broker node or `--ha`) listens on or derives.
fn default_ports() -> Ports {
    let mut ports = Ports::default();
    let default = |name: &str| {
        mfe_core::env::VARS.iter().find(|v| v.name == name).unwrap_or_else(|| panic!("{name} not in the table")).default
    };
    for var in mfe_core::env::VARS {
        if let Some(port) = url_port(var.default) {
            ports.add(port, format!("default {}", var.name));
        } else if var.name.ends_with("_PORT") && !var.default.is_empty() {
            let port = var.default.parse().unwrap_or_else(|_| panic!("{}={} is not a port", var.name, var.default));
            ports.add(port, format!("default {}", var.name));
        }
    }
    assert_eq!(default("RABBITMQ_DIST_PORT"), "", "the default broker derives its distribution port");
    let management = default("RABBITMQ_MANAGEMENT_PORT").parse().expect("a port");
    ports.add_broker(default("RABBITMQ_URL"), management, None, "default");
    // docker-compose.yml's published ports: `${VAR:-port}`.
    let compose = std::fs::read_to_string(Path::new(ROOT).join("docker-compose.yml")).expect("docker-compose.yml");
    for (i, _) in compose.match_indices(":-") {
        let digits: String = compose[i + 2..].chars().take_while(char::is_ascii_digit).collect();
        if compose[i + 2 + digits.len()..].starts_with('}') {
            if let Ok(port) = digits.parse::<u16>() {
                ports.add(port, "docker-compose.yml default");
            }
        }
    }
    ports
}

/// Every port the test stack of test.env listens on or derives.
fn test_ports(env: &BTreeMap<String, String>) -> Ports {
    let mut ports = Ports::default();
    for (key, value) in env {
        if key == "RABBITMQ_URL" || key == "RABBITMQ_MANAGEMENT_PORT" || key == "RABBITMQ_DIST_PORT" {
            continue;
        }
        if let Some(port) = url_port(value) {
            ports.add(port, format!("test {key}"));
        } else if key.ends_with("_PORT") {
            ports.add(
                value.parse().unwrap_or_else(|_| panic!("test.env: {key}={value} is not a port")),
                format!("test {key}"),
            );
        }
    }
    let get = |k: &str| env.get(k).unwrap_or_else(|| panic!("test.env sets no {k}"));
    let management = get("RABBITMQ_MANAGEMENT_PORT").parse().expect("a port");
    let dist = env.get("RABBITMQ_DIST_PORT").map(|p| p.parse().expect("RABBITMQ_DIST_PORT is a port"));
    ports.add_broker(get("RABBITMQ_URL"), management, dist, "test");
    ports
}

#[test]
fn no_test_port_is_a_default_port_or_one_it_derives() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let env = test_env();
    let (test, default) = (test_ports(&env), default_ports());
    let clashes: Vec<String> = test
        .0
        .iter()
        .filter_map(|(port, what)| default.0.get(port).map(|d| format!("{port}: {what:?} vs {d:?}")))
        .collect();
    assert!(clashes.is_empty(), "test.env collides with the default stack:\n{}", clashes.join("\n"));
    assert!(!test.0.contains_key(&EPMD) && !default.0.contains_key(&EPMD), "epmd's port is nobody's own");
    // Derived, not set: the private stacks of tests start from test.env's environment and
    // move only their AMQP and management ports, so a distribution port set here would be
    // every private broker's too (CI's stop 27: five tests failed on "port 25792 is already in
    // use by beam.smp").
    assert!(!env.contains_key("RABBITMQ_DIST_PORT"), "test.env leaves RABBITMQ_DIST_PORT to the AMQP + 20000 rule");
}

#[test]
fn the_test_stack_has_its_own_node_names_state_dir_and_project() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let env = test_env();
    let default = |name: &str| mfe_core::env::VARS.iter().find(|v| v.name == name).expect("in the table").default;
    for var in ["MFE_STATE_DIR", "COMPOSE_PROJECT_NAME"] {
        let test = env.get(var).unwrap_or_else(|| panic!("test.env sets no {var}"));
        assert_ne!(test, default(var), "{var} is the default stack's");
    }
    let node = |url: &str, dist: Option<u16>| HaTopology::derive(&[url.to_string()], 15672, dist).unwrap().names();
    let test_nodes = node(&env["RABBITMQ_URL"], env.get("RABBITMQ_DIST_PORT").map(|p| p.parse().unwrap()));
    let default_nodes = node(default("RABBITMQ_URL"), None);
    assert!(test_nodes.iter().all(|n| !default_nodes.contains(n)), "{test_nodes:?} vs {default_nodes:?}");
}

#[test]
fn the_private_ranges_of_test_and_bench_stacks_are_clear_of_the_default_and_test_stacks() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let env = test_env();
    for (who, ports) in [("default", default_ports()), ("test.env", test_ports(&env))] {
        for &(low, high) in PRIVATE_RANGES {
            let inside: Vec<String> =
                ports.0.range(low..=high).map(|(port, what)| format!("{port}: {what:?}")).collect();
            assert!(
                inside.is_empty(),
                "the {who} stack takes ports of the private range {low}-{high}:\n{}",
                inside.join("\n")
            );
        }
    }
}
