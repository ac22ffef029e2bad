//! `mfe infra --runtime docker` against a real Docker daemon: a project of its own
//! (`mfedockertest*`) on ports of its own (28432-28436, 28672/28673, 28379, 30080/30443), so it
//! never touches the native test stack or a developer's stack.
//!
//! Needs a running dockerd and the local images: `scripts/test-docker.sh --prepare` provides both
//! (make test calls it). No MFE_*_IMAGE is set: `mfe` itself runs the local stand-ins (mfe-local/*)
//! where the official images are absent and cannot be pulled, which these tests check; set
//! MFE_*_IMAGE in the environment to run others.

use std::collections::HashMap;
use std::process::{Command, Output};
use std::time::Instant;

const PROJECT: &str = "mfedockertest";

/// The environment of the docker test stack, independent of the environment cargo runs in.
fn stack_env(project: &str) -> HashMap<String, String> {
    let state = format!("/tmp/{project}-state");
    let mut env: HashMap<String, String> = [
        ("MFE_STATE_DIR", state.clone()),
        ("MFE_RUNTIME", "docker".into()),
        ("COMPOSE_PROJECT_NAME", project.into()),
        ("AUTH_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:28432/auth_db".into()),
        ("PAYMENTS_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:28433/payments_db".into()),
        ("ADMIN_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:28434/admin_db".into()),
        ("PROFILE_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:28435/profile_db".into()),
        ("LEGACY_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:28436/mfe_poc2".into()),
        ("RABBITMQ_URL", "amqp://admin:admin@127.0.0.1:28672/%2f".into()),
        ("RABBITMQ_MANAGEMENT_PORT", "28673".into()),
        ("REDIS_URL", "redis://127.0.0.1:28379".into()),
        ("NGINX_HTTP_PORT", "30080".into()),
        ("NGINX_HTTPS_PORT", "30443".into()),
        ("SSL_CERT_PATH", format!("{state}/ssl/self-signed.crt")),
        ("SSL_KEY_PATH", format!("{state}/ssl/self-signed.key")),
        ("GATEWAY_URL", "http://127.0.0.1:28000".into()),
        ("MFE_ROOT", concat!(env!("CARGO_MANIFEST_DIR"), "/..").into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for var in IMAGE_VARS {
        if let Ok(image) = std::env::var(var) {
            env.insert(var.into(), image);
        }
    }
    env
}

const IMAGE_VARS: [&str; 4] = ["MFE_POSTGRES_IMAGE", "MFE_RABBITMQ_IMAGE", "MFE_REDIS_IMAGE", "MFE_NGINX_IMAGE"];

/// The local stand-in of each MFE_*_IMAGE variable.
const LOCAL_IMAGES: [&str; 4] =
    ["mfe-local/postgres:15", "mfe-local/rabbitmq:3-management", "mfe-local/redis:7", "mfe-local/nginx:1.22"];

fn mfe(env: &HashMap<String, String>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mfe"));
    for var in IMAGE_VARS {
        cmd.env_remove(var);
    }
    cmd.args(args)
        .env_remove("DOCKER_HOST")
        .env_remove("RUST_LOG")
        .envs(env)
        .current_dir(std::env::temp_dir())
        .output()
        .expect("the mfe binary runs")
}

fn ok(env: &HashMap<String, String>, args: &[&str]) -> String {
    String::from_utf8_lossy(&ok_output(env, args).stdout).to_string()
}

fn ok_output(env: &HashMap<String, String>, args: &[&str]) -> Output {
    let out = mfe(env, args);
    assert!(
        out.status.success(),
        "mfe {} failed:\n{}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// Fails with instructions when no daemon answers or the images are missing.
fn require_docker(env: &HashMap<String, String>) -> bollard::Docker {
    let docker = rt().block_on(async {
        let d = bollard::Docker::connect_with_socket_defaults().ok()?.negotiate_version().await.ok()?;
        d.ping().await.ok()?;
        Some(d)
    });
    let docker = docker.expect(
        "no Docker daemon answers on /var/run/docker.sock — run `scripts/test-docker.sh --prepare` \
         (starts dockerd and builds the local images) before these tests",
    );
    for (var, local) in IMAGE_VARS.iter().zip(LOCAL_IMAGES) {
        let image = env.get(*var).map(String::as_str).unwrap_or(local);
        let found = rt().block_on(docker.inspect_image(image)).is_ok();
        assert!(found, "image {image} is missing — build the local images with `mfe infra build-images` (or scripts/test-docker.sh --prepare)");
    }
    docker
}

/// Containers, volumes and networks Docker holds for `project`.
fn leftovers(docker: &bollard::Docker, project: &str) -> Vec<String> {
    rt().block_on(async {
        let label = HashMap::from([("label".to_string(), vec![format!("com.docker.compose.project={project}")])]);
        let mut out = Vec::new();
        let containers = docker
            .list_containers(Some(bollard::container::ListContainersOptions {
                all: true,
                filters: label.clone(),
                ..Default::default()
            }))
            .await
            .unwrap();
        out.extend(containers.into_iter().flat_map(|c| c.names.unwrap_or_default()));
        let volumes =
            docker.list_volumes(Some(bollard::volume::ListVolumesOptions { filters: label.clone() })).await.unwrap();
        out.extend(volumes.volumes.unwrap_or_default().into_iter().map(|v| v.name));
        let networks =
            docker.list_networks(Some(bollard::network::ListNetworksOptions { filters: label })).await.unwrap();
        out.extend(networks.into_iter().filter_map(|n| n.name));
        out
    })
}

fn psql(port: u16, db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-d", db, "-Atc", sql])
        .env("PGPASSWORD", "postgres")
        .output()
        .expect("psql is needed by this test — apt-get install postgresql-client");
    assert!(out.status.success(), "psql on {port}/{db}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn management() -> reqwest::blocking::Client {
    reqwest::blocking::Client::new()
}

#[test]
fn the_docker_stack_starts_healthy_keeps_data_across_restarts_and_cleans_up_completely() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let env = stack_env(PROJECT);
    let docker = require_docker(&env);
    let _ = mfe(&env, &["infra", "clean", "--yes"]);
    ok(&env, &["ssl", "generate", "--force"]);

    let t0 = Instant::now();
    let started = ok_output(&env, &["infra", "start"]);
    eprintln!("figure: docker start (cold) {:.1} s", t0.elapsed().as_secs_f64());
    // No MFE_*_IMAGE: one line says which images run and why; where the official image is
    // absent (and, offline, cannot be pulled) that is the local stand-in.
    let stderr = String::from_utf8_lossy(&started.stderr);
    let image_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("images: ")).collect();
    assert_eq!(image_lines.len(), 1, "{stderr}");
    if !env.contains_key("MFE_POSTGRES_IMAGE") && rt().block_on(docker.inspect_image("postgres:15")).is_err() {
        let pullable = rt().block_on(docker.inspect_registry_image("postgres:15", None)).is_ok();
        let expected = if pullable { "postgres:15 (to be pulled" } else { "mfe-local/postgres:15" };
        assert!(image_lines[0].contains(expected), "{}", image_lines[0]);
    }

    let status: serde_json::Value = serde_json::from_str(&ok(&env, &["--json", "infra", "status"])).unwrap();
    assert_eq!(status["passed"], true, "{status:#}");
    let expected_ports = [
        ("auth_db", "28432"),
        ("payments_db", "28433"),
        ("admin_db", "28434"),
        ("profile_db", "28435"),
        ("legacy_db", "28436"),
        ("rabbitmq", "28672,28673"),
        ("redis", "28379"),
        ("nginx", "30443,30080"),
    ];
    for (name, ports) in expected_ports {
        let check = status["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap();
        assert_eq!(check["passed"], true, "{check}");
        assert!(check["detail"].as_str().unwrap().contains("healthy"), "{check}");
        assert_eq!(check["metrics"]["ports"], ports, "{check}");
    }

    for (port, db) in
        [(28432, "auth_db"), (28433, "payments_db"), (28434, "admin_db"), (28435, "profile_db"), (28436, "mfe_poc2")]
    {
        assert_eq!(psql(port, db, "SELECT current_database()"), db);
    }

    // A backup through the pg_dump of legacy_db's own container (what a docker-only host uses).
    psql(28436, "mfe_poc2", "CREATE TABLE backed_up (v text); INSERT INTO backed_up VALUES ('in the dump')");
    let out_dir = std::path::Path::new(&env["MFE_STATE_DIR"]).join("backups-test");
    let backup = ok(&env, &["--json", "db", "backup", "--pg-dump", "container", "--out", out_dir.to_str().unwrap()]);
    let backup: serde_json::Value = serde_json::from_str(&backup).unwrap();
    let dump = backup["path"].as_str().unwrap();
    let restored =
        Command::new("/usr/lib/postgresql/15/bin/pg_restore").args(["--data-only", "-f", "-", dump]).output().unwrap();
    assert!(restored.status.success(), "pg_restore reads the dump: {}", String::from_utf8_lossy(&restored.stderr));
    assert!(String::from_utf8_lossy(&restored.stdout).contains("in the dump"), "the row is in the dump");
    psql(28436, "mfe_poc2", "DROP TABLE backed_up");

    let health = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "https://localhost:30443/health"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&health.stdout), "200", "nginx container /health");
    let queues: serde_json::Value = management()
        .get("http://127.0.0.1:28673/api/queues/%2f")
        .basic_auth("admin", Some("admin"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        queues.as_array().unwrap().iter().any(|q| q["name"] == "events.dlq"),
        "the definitions of rabbitmq/definitions.json are loaded: {queues}"
    );

    // RabbitMQ restart keeps a durable queue.
    let queue_url = "http://127.0.0.1:28673/api/queues/%2f/mfe-docker-test-durable";
    let put = management()
        .put(queue_url)
        .basic_auth("admin", Some("admin"))
        .json(&serde_json::json!({"durable": true}))
        .send()
        .unwrap();
    assert!(put.status().is_success(), "declare: {}", put.status());
    let t1 = Instant::now();
    ok(&env, &["infra", "restart", "rabbitmq"]);
    eprintln!("figure: docker restart rabbitmq {:.1} s", t1.elapsed().as_secs_f64());
    let after = management().get(queue_url).basic_auth("admin", Some("admin")).send().unwrap();
    assert_eq!(after.status().as_u16(), 200, "the durable queue survives a restart");

    // Stop then start keeps database rows (named volumes).
    psql(28432, "auth_db", "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')");
    ok(&env, &["infra", "stop"]);
    let stopped: serde_json::Value = serde_json::from_slice(&mfe(&env, &["--json", "infra", "status"]).stdout).unwrap();
    assert_eq!(stopped["passed"], false, "a stopped stack is not healthy");
    let t2 = Instant::now();
    let warm = ok_output(&env, &["infra", "start"]);
    eprintln!("figure: docker start (warm, existing containers) {:.1} s", t2.elapsed().as_secs_f64());
    assert_eq!(psql(28432, "auth_db", "SELECT v FROM kept"), "still here");
    let warm = String::from_utf8_lossy(&warm.stderr);
    assert!(!warm.contains("recreating"), "the containers keep their images: {warm}");

    // Both runtimes hold data (the docker volumes, a native Redis that ran on the same port):
    // clean under auto removes both and says so, so no old data comes back at the next start.
    ok(&env, &["infra", "stop"]);
    ok(&env, &["infra", "start", "redis", "--runtime", "native"]);
    ok(&env, &["infra", "stop", "redis", "--runtime", "native"]);
    let native_dir = std::path::Path::new(&env["MFE_STATE_DIR"]).join("native");
    assert!(native_dir.join("redis").is_dir(), "native redis left its data");
    let mut auto = env.clone();
    auto.insert("MFE_RUNTIME".into(), "auto".into());
    let cleaned = String::from_utf8_lossy(&ok_output(&auto, &["infra", "clean", "--yes"]).stderr).to_string();
    assert!(cleaned.contains("cleaning both"), "{cleaned}");
    assert!(!native_dir.exists(), "the native data is removed: {cleaned}");
    assert_eq!(
        leftovers(&docker, PROJECT),
        Vec::<String>::new(),
        "clean --yes removes containers, volumes and network"
    );
}

#[test]
fn with_a_daemon_answering_auto_follows_the_native_data_and_clean_removes_it() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let project = "mfedockertestnative";
    let mut env = stack_env(project);
    let docker = require_docker(&env);
    env.insert("MFE_RUNTIME".into(), "auto".into());
    env.insert("REDIS_URL".into(), "redis://127.0.0.1:28381".into());
    let native_dir = std::path::Path::new(&env["MFE_STATE_DIR"]).join("native");
    let _ = std::fs::remove_dir_all(&env["MFE_STATE_DIR"]);
    assert_eq!(leftovers(&docker, project), Vec::<String>::new(), "the project starts empty");

    ok(&env, &["infra", "start", "redis", "--runtime", "native"]);
    ok(&env, &["infra", "stop", "redis", "--runtime", "native"]);
    assert!(native_dir.join("redis/data").is_dir(), "native redis left its data");

    // Nothing runs, the daemon answers, only the native state dir holds data: auto is native.
    let status = mfe(&env, &["infra", "status"]);
    let first = String::from_utf8_lossy(&status.stderr).lines().next().unwrap_or_default().to_string();
    assert!(first.starts_with("runtime: native (its data is in "), "{first}");

    let cleaned = String::from_utf8_lossy(&ok_output(&env, &["infra", "clean", "--yes"]).stderr).to_string();
    assert!(cleaned.contains("cleaned: every component stopped and its data removed (native runtime)"), "{cleaned}");
    assert!(!native_dir.exists(), "the native data is removed: {cleaned}");
    assert_eq!(leftovers(&docker, project), Vec::<String>::new(), "nothing created on the docker side");
    let again = String::from_utf8_lossy(&ok_output(&env, &["infra", "clean", "--yes"]).stderr).to_string();
    assert!(again.contains("nothing to remove"), "{again}");
    let _ = std::fs::remove_dir_all(&env["MFE_STATE_DIR"]);
}

#[test]
fn a_missing_unpullable_image_is_one_clear_line_and_creates_nothing() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let project = "mfedockertestnoimage";
    let mut env = stack_env(project);
    let docker = require_docker(&env);
    env.insert("MFE_REDIS_IMAGE".into(), "mfe-local/no-such-image:0".into());
    env.insert("REDIS_URL".into(), "redis://127.0.0.1:28380".into());
    let out = mfe(&env, &["infra", "start", "redis"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert!(last.contains("mfe-local/no-such-image:0") && last.contains("make images"), "{stderr}");
    assert_eq!(leftovers(&docker, project), Vec::<String>::new(), "nothing half-created");
}

#[test]
fn a_published_port_in_use_is_one_clear_line_naming_its_owner() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let project = "mfedockertestport";
    let mut env = stack_env(project);
    let docker = require_docker(&env);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    env.insert("REDIS_URL".into(), format!("redis://127.0.0.1:{port}"));
    let out = mfe(&env, &["infra", "start", "redis"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("port {port} is already in use by")), "{stderr}");
    assert_eq!(stderr.trim().lines().filter(|l| l.starts_with("error")).count(), 1, "{stderr}");
    assert_eq!(leftovers(&docker, project), Vec::<String>::new(), "nothing half-created");
}

#[test]
fn an_absent_daemon_is_one_clear_line_saying_how_to_start_one() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let mut env = stack_env("mfedockertestnodaemon");
    env.insert("DOCKER_HOST".into(), "unix:///tmp/mfe-no-docker-here.sock".into());
    let out = mfe(&env, &["infra", "status", "--runtime", "docker"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot reach the Docker daemon at unix:///tmp/mfe-no-docker-here.sock"), "{stderr}");
    assert!(stderr.contains("--runtime native"), "{stderr}");
}

/// `mfe up --replicas 2` on the docker runtime: the infrastructure in containers, two of every
/// service and gateway as local processes, and the nginx container balancing over both
/// gateways — a `kill -9` of the first gateway costs no request through nginx. Ports 295xx and
/// 296xx (the second replicas), clear of the other docker tests.
#[test]
fn with_replicas_the_nginx_container_balances_over_every_gateway() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let project = "mfedockertestreplicas";
    let mut env = stack_env(project);
    let docker = require_docker(&env);
    let db = |port: u16, name: &str| format!("postgres://postgres:postgres@127.0.0.1:{port}/{name}");
    for (var, value) in [
        ("AUTH_DATABASE_URL", db(29532, "auth_db")),
        ("PAYMENTS_DATABASE_URL", db(29533, "payments_db")),
        ("ADMIN_DATABASE_URL", db(29534, "admin_db")),
        ("PROFILE_DATABASE_URL", db(29535, "profile_db")),
        ("LEGACY_DATABASE_URL", db(29536, "mfe_poc2")),
        ("RABBITMQ_URL", "amqp://admin:admin@127.0.0.1:29572/%2f".into()),
        ("RABBITMQ_MANAGEMENT_PORT", "29573".into()),
        ("REDIS_URL", "redis://127.0.0.1:29579".into()),
        ("NGINX_HTTP_PORT", "29580".into()),
        ("NGINX_HTTPS_PORT", "29543".into()),
        ("GATEWAY_URL", "http://127.0.0.1:29500".into()),
        ("AUTH_SERVICE_URL", "http://127.0.0.1:29501".into()),
        ("PAYMENTS_SERVICE_URL", "http://127.0.0.1:29502".into()),
        ("ADMIN_SERVICE_URL", "http://127.0.0.1:29503".into()),
        ("PROFILE_SERVICE_URL", "http://127.0.0.1:29504".into()),
        ("GATEWAY_HEALTH_INTERVAL_MS", "1000".into()),
    ] {
        env.insert(var.into(), value);
    }
    /// Stops the stack and removes the project, however the test ends.
    struct Down<'a>(&'a HashMap<String, String>);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = mfe(self.0, &["down"]);
            let _ = mfe(self.0, &["infra", "clean", "--yes"]);
        }
    }
    let _ = mfe(&env, &["down"]);
    let _ = mfe(&env, &["infra", "clean", "--yes"]);
    let down = Down(&env);

    ok(&env, &["up", "--runtime", "docker", "--replicas", "2"]);
    let status: serde_json::Value = serde_json::from_str(&ok(&env, &["status", "--json"])).unwrap();
    let healthy =
        |name: &str| status["checks"].as_array().unwrap().iter().any(|c| c["name"] == name && c["passed"] == true);
    for name in ["nginx", "gateway", "gateway-2", "payments", "payments-2"] {
        assert!(healthy(name), "{name} is not a healthy row of mfe status: {status}");
    }

    let http = reqwest::blocking::Client::builder().danger_accept_invalid_certs(true).build().unwrap();
    let through_nginx = || {
        http.get("https://localhost:29543/api/payments").send().map(|r| r.status().as_u16()).unwrap_or_else(|e| {
            panic!("nginx did not answer: {e}");
        })
    };
    assert_eq!(through_nginx(), 401, "nginx → gateway → payments answers (no token: 401)");
    let pid_path = mfe::stack::pid_file(std::path::Path::new(&env["MFE_STATE_DIR"]), "gateway");
    let pid: i32 = std::fs::read_to_string(&pid_path).unwrap().trim().parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    // nginx sends a request whose connection the dead gateway refuses to the other one.
    let answers: Vec<u16> = (0..20).map(|_| through_nginx()).collect();
    assert!(answers.iter().all(|&s| s == 401), "every request through nginx answered by the live gateway: {answers:?}");

    drop(down);
    assert_eq!(leftovers(&docker, project), Vec::<String>::new(), "down and clean remove the project");
}
