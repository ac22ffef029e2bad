//! Every `mfe` line of README.md's "package.json scripts → replacements" table runs as written.
//!
//! The test reads the table from README.md (a row counts when its replacement cell is a
//! backticked `mfe …` command), then runs each line — exactly its words, nothing added — with
//! the `mfe` binary against a stack of its own: fixed ports 19xxx (below the ephemeral range,
//! apart from the test stack's 2xxxx and the default stack's), its own state dir and project
//! name, so the destructive lines (`infra stop`, `infra restart`, `infra clean --yes`) hurt no
//! one. The stack is brought up with `mfe up`; the lines run in an order that gives each what
//! it needs (see [`rank`]); the stack is stopped and removed by [`StackGuard`] whatever happens.
//!
//! It fails, never skips: when the table cannot be found or parsed, when a line exits non-zero
//! or outlives its time, and when `infra logs -f` prints nothing or stops by itself.
//!
//! The service binaries must be built beside `mfe` (`cargo build --workspace`; `make test`
//! builds them).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::repo_root;

/// The stack of this test. Every variable that names a port, a directory or a project is set,
/// so nothing inherited (`make test` exports test.env) points a line at another stack.
const STATE_DIR: &str = "/tmp/mfe-readme-state";
const STACK_ENV: &[(&str, &str)] = &[
    ("MFE_STATE_DIR", STATE_DIR),
    ("MFE_RUNTIME", "native"),
    ("COMPOSE_PROJECT_NAME", "mfereadme"),
    ("AUTH_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:19432/auth_db"),
    ("PAYMENTS_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:19433/payments_db"),
    ("ADMIN_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:19434/admin_db"),
    ("PROFILE_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:19435/profile_db"),
    ("LEGACY_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:19436/mfe_poc2"),
    ("RABBITMQ_URL", "amqp://admin:admin@127.0.0.1:19672/%2f"),
    ("RABBITMQ_MANAGEMENT_PORT", "19673"),
    ("REDIS_URL", "redis://127.0.0.1:19379"),
    ("NGINX_HOST", "localhost"),
    ("NGINX_HTTP_PORT", "19080"),
    ("NGINX_HTTPS_PORT", "19443"),
    ("SSL_CERT_PATH", "/tmp/mfe-readme-state/ssl/self-signed.crt"),
    ("SSL_KEY_PATH", "/tmp/mfe-readme-state/ssl/self-signed.key"),
    ("GATEWAY_URL", "http://127.0.0.1:19300"),
    ("AUTH_SERVICE_URL", "http://127.0.0.1:19301"),
    ("PAYMENTS_SERVICE_URL", "http://127.0.0.1:19302"),
    ("ADMIN_SERVICE_URL", "http://127.0.0.1:19303"),
    ("PROFILE_SERVICE_URL", "http://127.0.0.1:19304"),
    ("WS_URL", "wss://localhost:19443/ws"),
    ("SENTRY_DSN", ""),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
];

/// Longest a line may take before it counts as failed (the event-hub suite restarts the broker
/// twice; everything else takes seconds).
const LINE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long `infra logs -f` is followed before it is killed.
const FOLLOW_FOR: Duration = Duration::from_secs(3);

/// One row of the table whose replacement is an `mfe` command.
#[derive(Debug, Clone)]
struct Line {
    script: String,
    /// The arguments after `mfe`, exactly as written.
    args: Vec<String>,
}

impl Line {
    fn text(&self) -> String {
        format!("mfe {}", self.args.join(" "))
    }

    fn starts_with(&self, words: &[&str]) -> bool {
        self.args.len() >= words.len() && self.args.iter().zip(words).all(|(a, w)| a == w)
    }
}

/// The `mfe` rows of the README table, or a message saying why the table cannot be read.
fn parse_table(readme: &str) -> Result<Vec<Line>, String> {
    const HEADING: &str = "## package.json scripts → replacements";
    let start = readme.find(HEADING).ok_or_else(|| format!("README.md has no `{HEADING}` section"))?;
    let rows: Vec<&str> = readme[start + HEADING.len()..]
        .lines()
        .skip_while(|l| !l.trim_start().starts_with('|'))
        .take_while(|l| l.trim_start().starts_with('|'))
        .collect();
    if rows.len() < 3 {
        return Err(format!("the `{HEADING}` section has no table"));
    }
    let cells = |row: &str| -> Vec<String> {
        row.trim().trim_start_matches('|').trim_end_matches('|').split('|').map(|c| c.trim().to_string()).collect()
    };
    if cells(rows[0]) != ["package.json script", "replacement"] {
        return Err(format!("unexpected header row of the table: {}", rows[0]));
    }
    let mut lines = Vec::new();
    for row in &rows[2..] {
        let c = cells(row);
        let [script, replacement] = c.as_slice() else {
            return Err(format!("a row of the table does not have two cells: {row}"));
        };
        let Some(rest) = replacement.strip_prefix("`mfe ") else { continue };
        let Some(command) = rest.strip_suffix('`') else {
            return Err(format!("the replacement of {script} is not one backticked command: {replacement}"));
        };
        if command.contains(['`', '"', '\'', '…', '<', '>', '$']) {
            return Err(format!("the replacement of {script} cannot run as written: {replacement}"));
        }
        lines.push(Line {
            script: script.trim_matches('`').to_string(),
            args: command.split_whitespace().map(String::from).collect(),
        });
    }
    Ok(lines)
}

/// The order the lines run in; each finds what it needs:
/// - `ssl generate` first, on the empty state dir (it refuses to overwrite; `mfe up` then uses
///   its certificates);
/// - after `mfe up`: reads and schema lines (already applied: no-ops), then, after
///   `mfe fixtures load`, backup and the migration lines, before anything writes sign-ups or
///   payments to the split databases that the legacy data does not hold (validation would
///   rightly fail);
/// - `test event-hub` (it restarts the broker, and returns only once a running gateway routes to
///   every service again), then the lines that write users and payments (`test proxy`,
///   `ws probe`) — the README's own order, so a user typing them one after the other meets no
///   503 while the services reconnect;
/// - `infra logs -f`, then restart, stop, start, and `infra clean --yes` last.
///
/// A line this list does not know runs after the suites (it may need the broker restarted by
/// `test event-hub` to be back: the components are healthy again when it returns), before the
/// destructive lines.
fn rank(line: &Line) -> u32 {
    const ORDER: &[(&[&str], u32)] = &[
        (&["ssl", "generate"], 0),
        (&["infra", "status"], 10),
        (&["infra", "ui"], 10),
        (&["db", "status"], 10),
        (&["db", "migrate"], 11),
        (&["db", "backup"], 20),
        (&["migrate", "export"], 21),
        (&["migrate", "import"], 22),
        (&["migrate", "validate"], 23),
        (&["migrate", "run"], 24),
        (&["test", "event-hub"], 40),
        (&["test", "proxy"], 41),
        (&["ws", "probe"], 42),
        (&["infra", "logs"], 60),
        (&["infra", "restart"], 70),
        (&["infra", "stop"], 71),
        (&["infra", "start"], 72),
        (&["infra", "clean"], 99),
    ];
    ORDER.iter().find(|(words, _)| line.starts_with(words)).map_or(50, |(_, r)| *r)
}

/// Rank of the setup steps that are not table lines: `mfe up` after `ssl generate`, the
/// legacy fixtures before the migration lines.
const UP_AFTER: u32 = 0;
const FIXTURES_BEFORE: u32 = 20;

/// Runs `mfe` against this test's stack, from a scratch working directory (backups and
/// migration data land there).
struct Mfe {
    bin: PathBuf,
    workdir: tempfile::TempDir,
    n_runs: std::cell::Cell<usize>,
}

/// What one run left behind.
struct Outcome {
    ok: bool,
    secs: f64,
    stdout: String,
    stderr: String,
    why: String,
}

impl Mfe {
    fn new() -> Self {
        let workdir = tempfile::tempdir().expect("a scratch working directory");
        Mfe { bin: PathBuf::from(env!("CARGO_BIN_EXE_mfe")), workdir, n_runs: Default::default() }
    }

    fn command(&self, args: &[String]) -> (Command, PathBuf, PathBuf) {
        let n = self.n_runs.get();
        self.n_runs.set(n + 1);
        let out = self.workdir.path().join(format!("{n:02}.stdout"));
        let err = self.workdir.path().join(format!("{n:02}.stderr"));
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .current_dir(self.workdir.path())
            .env("MFE_ROOT", repo_root())
            .envs(STACK_ENV.iter().copied())
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap());
        (cmd, out, err)
    }

    /// Runs to completion, or kills it after `limit`.
    fn run(&self, args: &[String], limit: Duration) -> Outcome {
        let (mut cmd, out, err) = self.command(args);
        let t0 = Instant::now();
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        let status = wait_at_most(&mut child, limit);
        let secs = t0.elapsed().as_secs_f64();
        let (stdout, stderr) = (read(&out), read(&err));
        let (ok, why) = match status {
            Some(s) if s.success() => (true, String::new()),
            Some(s) => (false, format!("exited with {s}")),
            None => {
                kill(&mut child);
                (false, format!("still running after {} s (killed)", limit.as_secs()))
            }
        };
        Outcome { ok, secs, stdout, stderr, why }
    }

    /// Runs a following command (`infra logs -f`) for `span`: it must print and keep running.
    fn follow(&self, args: &[String], span: Duration) -> Outcome {
        let (mut cmd, out, err) = self.command(args);
        let t0 = Instant::now();
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        let status = wait_at_most(&mut child, span);
        kill(&mut child);
        let (stdout, stderr) = (read(&out), read(&err));
        let n_lines = stdout.lines().count() + stderr.lines().count();
        let (ok, why) = match status {
            Some(s) => (false, format!("stopped by itself ({s}) instead of following")),
            None if n_lines == 0 => (false, format!("printed nothing in {} s", span.as_secs())),
            None => (true, format!("{n_lines} lines in {} s, still following (killed)", span.as_secs())),
        };
        Outcome { ok, secs: t0.elapsed().as_secs_f64(), stdout, stderr, why }
    }
}

fn wait_at_most(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().expect("wait for mfe") {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The last `n` lines of `s`, for failure messages.
fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Stops and removes the test's stack when the test ends, passed or failed.
struct StackGuard<'a>(&'a Mfe);

impl StackGuard<'_> {
    /// Removes whatever a previous, interrupted run left, then guards the new stack.
    fn fresh(mfe: &Mfe) -> StackGuard<'_> {
        let guard = StackGuard(mfe);
        guard.teardown();
        if Path::new(STATE_DIR).exists() {
            std::fs::remove_dir_all(STATE_DIR).unwrap_or_else(|e| panic!("cannot remove {STATE_DIR}: {e}"));
        }
        guard
    }

    fn teardown(&self) {
        for args in [&["down"][..], &["infra", "clean", "--yes"][..]] {
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            let o = self.0.run(&args, Duration::from_secs(120));
            if !o.ok {
                eprintln!("readme table: cleanup `mfe {}` {}: {}", args.join(" "), o.why, tail(&o.stderr, 5));
            }
        }
    }
}

impl Drop for StackGuard<'_> {
    /// The state dir goes too, unless the test failed: then its logs are kept for reading.
    fn drop(&mut self) {
        self.teardown();
        if std::thread::panicking() {
            eprintln!("readme table: logs kept in {STATE_DIR} (removed by the next run)");
        } else {
            let _ = std::fs::remove_dir_all(STATE_DIR);
        }
    }
}

#[test]
fn the_table_is_read_from_the_readme_and_refuses_what_cannot_run_as_written() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let lines = parse_table(&std::fs::read_to_string(repo_root().join("README.md")).unwrap()).unwrap();
    assert!(lines.iter().any(|l| l.script == "infra:start" && l.args == ["infra", "start"]), "{lines:?}");
    let table = "## package.json scripts → replacements\n\n| package.json script | replacement |\n|---|---|\n";
    let rows = parse_table(&format!("{table}| `a` | `mfe ws probe --token …` |\n| `b` | none |\n"));
    assert!(rows.unwrap_err().contains("cannot run as written"));
    assert!(parse_table("# no table here").unwrap_err().contains("has no `## package.json"));
    let only_b = parse_table(&format!("{table}| `b` | none: `cargo build` |\n")).unwrap();
    assert!(only_b.is_empty());
}

#[test]
fn every_mfe_line_of_the_package_json_table_runs_as_written() {
    let _serial = mfe_testkit::serial::group(module_path!());
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("read README.md");
    let mut lines = parse_table(&readme).unwrap_or_else(|e| panic!("{e}"));
    assert!(lines.len() >= 20, "only {} `mfe` lines found in the README table: {lines:?}", lines.len());
    lines.sort_by_key(rank);

    let t0 = Instant::now();
    let mfe = Mfe::new();
    let _guard = StackGuard::fresh(&mfe);
    let mut failures = Vec::new();
    let mut timings = Vec::new();
    let mut up_done = false;
    let mut fixtures_done = false;
    let setup = |name: &str, args: &[&str], timings: &mut Vec<String>| {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let o = mfe.run(&args, LINE_TIMEOUT);
        timings.push(format!("{:>7.1} s  (setup) mfe {}", o.secs, args.join(" ")));
        assert!(o.ok, "{name} `mfe {}` {}:\n{}\n{}", args.join(" "), o.why, tail(&o.stdout, 20), tail(&o.stderr, 40));
    };
    for line in &lines {
        let r = rank(line);
        if !up_done && r > UP_AFTER {
            setup("bringing the stack up:", &["up"], &mut timings);
            up_done = true;
        }
        if !fixtures_done && r >= FIXTURES_BEFORE {
            setup("loading the legacy sample data:", &["fixtures", "load"], &mut timings);
            fixtures_done = true;
        }
        let o = if line.starts_with(&["infra", "logs"]) && line.args.iter().any(|a| a == "-f" || a == "--follow") {
            mfe.follow(&line.args, FOLLOW_FOR)
        } else {
            mfe.run(&line.args, LINE_TIMEOUT)
        };
        eprintln!(
            "readme table: {:>7.1} s  {} ({}) {}",
            o.secs,
            line.text(),
            line.script,
            if o.ok { "ok" } else { "FAILED" }
        );
        timings.push(format!("{:>7.1} s  {}", o.secs, line.text()));
        if !o.ok {
            failures.push(format!(
                "`{}` (README row {}) {}:\n--- stdout (last lines)\n{}\n--- stderr (last lines)\n{}",
                line.text(),
                line.script,
                o.why,
                tail(&o.stdout, 15),
                tail(&o.stderr, 25)
            ));
        }
    }
    eprintln!("readme table: {} lines in {:.1} s\n{}", lines.len(), t0.elapsed().as_secs_f64(), timings.join("\n"));
    assert!(failures.is_empty(), "{} README line(s) failed:\n\n{}", failures.len(), failures.join("\n\n"));
}
