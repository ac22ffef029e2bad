//! The network partition of `mfe test chaos`: one broker node cut off from the other two while
//! all three keep running and their clients keep their connections.
//!
//! The native runtime's nodes share the host's network namespace (each binds 127.0.0.1 on ports
//! of its own), and a running process cannot be moved into another namespace, so the partition
//! is cut by packet filter instead of by namespace, in the OUTPUT chain (every loopback segment
//! passes it once):
//! - the node's open distribution connections, found in `/proc/<pid>/fd` and `/proc/net/tcp`:
//!   every segment from or to their ports on the node's side is dropped (its own distribution
//!   port, where its peers connected, and the local ports of the connections it opened);
//! - the connections it opens while cut: its Erlang VM is moved into a cgroup (v2) of its own,
//!   and every TCP segment a socket of that cgroup sends to a distribution port of the cluster is
//!   dropped. (A socket belongs to the cgroup its process was in when it was created, so this
//!   rule alone would miss the connections already open.)
//!
//! Both directions of every inter-node link go silent — the node sends nothing to its peers,
//! and nothing they send reaches it — which is what a cable cut looks like to Erlang
//! distribution and to Raft; the node's AMQP and management listeners are untouched, so its
//! clients stay connected to a node in the minority, the hard case. Healing deletes the rules
//! and moves the VM back to the cgroup it came from; the TCP connections resume where they
//! stalled (or, after a long cut, Erlang has closed them and the nodes connect anew).
//!
//! A run killed while the partition is cut leaves the rule and the cgroup behind; the next
//! [`Partition::cut`] of the same node removes them first (they are named after the node).

use anyhow::{bail, Context as _};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A cut partition; [`Partition::heal`] (or drop) repairs it.
#[derive(Debug)]
pub struct Partition {
    pid: u32,
    /// The cgroup the VM was in, as `/proc/<pid>/cgroup` names it (relative to the v2 root).
    home: String,
    /// The cgroup of the cut, relative to the v2 root.
    cgroup: String,
    root: PathBuf,
    rules: Vec<Vec<String>>,
    healed: bool,
}

/// The arguments of the rule after `iptables -I/-D OUTPUT` for sockets made while cut: TCP
/// from `cgroup` to one of `ports` is dropped.
pub fn cgroup_rule(cgroup: &str, ports: &[u16]) -> Vec<String> {
    let mut rule =
        vec!["-p", "tcp", "-m", "cgroup", "--path", cgroup].into_iter().map(String::from).collect::<Vec<_>>();
    rule.extend(ports_match("--dports", ports));
    rule.extend(["-j", "DROP"].map(String::from));
    rule
}

/// The rules for connections already open: TCP from or to one of `ports` is dropped, at most
/// 15 ports a rule (multiport's limit).
pub fn port_rules(ports: &[u16]) -> Vec<Vec<String>> {
    ports
        .chunks(15)
        .map(|chunk| {
            let mut rule = vec!["-p".to_string(), "tcp".into()];
            rule.extend(ports_match("--ports", chunk));
            rule.extend(["-j", "DROP"].map(String::from));
            rule
        })
        .collect()
}

fn ports_match(which: &str, ports: &[u16]) -> [String; 4] {
    let list = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    ["-m".into(), "multiport".into(), which.into(), list]
}

/// The local ports of the TCP connections among `sockets` (socket inodes) whose local or remote
/// port is one of `dist_ports`, from a `/proc/net/tcp` text: the node's side of every
/// distribution link it has open.
pub fn dist_link_ports(proc_net_tcp: &str, sockets: &[u64], dist_ports: &[u16]) -> Vec<u16> {
    let mut ports: Vec<u16> = proc_net_tcp
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
            let (local, remote, inode) = (port(f.get(1)?)?, port(f.get(2)?)?, f.get(9)?.parse::<u64>().ok()?);
            let linked = remote != 0 && (dist_ports.contains(&local) || dist_ports.contains(&remote));
            (linked && sockets.contains(&inode)).then_some(local)
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The socket inodes `pid` holds open.
fn sockets_of(pid: u32) -> anyhow::Result<Vec<u64>> {
    let dir = format!("/proc/{pid}/fd");
    let mut inodes = Vec::new();
    for fd in fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))?.flatten() {
        if let Ok(target) = fs::read_link(fd.path()) {
            let t = target.to_string_lossy();
            if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                inodes.extend(n.parse::<u64>().ok());
            }
        }
    }
    Ok(inodes)
}

/// Where the cgroup v2 hierarchy is mounted, from a `/proc/self/mounts` text.
pub fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// A process's cgroup v2 path, from a `/proc/<pid>/cgroup` text (the `0::<path>` line).
pub fn cgroup2_of(proc_cgroup: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_string)
}

/// Why a partition cannot be cut on this machine, or `None` when it can.
pub fn unavailable() -> Option<String> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if cgroup2_mount(&mounts).is_none() {
        return Some("no cgroup v2 hierarchy is mounted, so a node's traffic cannot be told apart".into());
    }
    match Command::new("iptables").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("`iptables --version` failed: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(_) => Some("iptables is not installed (apt-get install iptables; make deps installs it)".into()),
    }
}

fn iptables(op: &str, rule: &[String]) -> anyhow::Result<std::process::Output> {
    Command::new("iptables")
        .args(["-w", op, "OUTPUT"])
        .args(rule)
        .output()
        .with_context(|| format!("cannot run iptables {op} OUTPUT"))
}

/// Moves `pid` into the cgroup at `dir` (absolute path).
fn move_to(dir: &Path, pid: u32) -> anyhow::Result<()> {
    let procs = dir.join("cgroup.procs");
    fs::write(&procs, pid.to_string()).with_context(|| format!("cannot move pid {pid} into {}", procs.display()))
}

/// Moves every process of the cgroup `from` into `to`; one that exits meanwhile is skipped.
fn move_all(from: &Path, to: &Path) -> anyhow::Result<()> {
    let procs = fs::read_to_string(from.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|p| p.trim().parse::<u32>().ok()) {
        if let Err(e) = move_to(to, pid) {
            if Path::new(&format!("/proc/{pid}")).exists() {
                return Err(e);
            }
        }
    }
    Ok(())
}

impl Partition {
    /// Cuts the process `pid` (a node's Erlang VM) off from the cluster whose distribution ports
    /// are `dist_ports` (its own among them); `name` names the cgroup (`mfe-partition-<name>`).
    pub fn cut(pid: u32, name: &str, dist_ports: &[u16]) -> anyhow::Result<Self> {
        if let Some(why) = unavailable() {
            bail!("cannot cut a partition: {why}");
        }
        let mounts = fs::read_to_string("/proc/self/mounts")?;
        let root = cgroup2_mount(&mounts).context("no cgroup v2 mount")?;
        let proc_cgroup =
            fs::read_to_string(format!("/proc/{pid}/cgroup")).with_context(|| format!("pid {pid} is not running"))?;
        let home = cgroup2_of(&proc_cgroup).with_context(|| format!("pid {pid} has no cgroup v2 path"))?;
        let cgroup = format!("mfe-partition-{name}");
        let dir = root.join(&cgroup);
        // A run killed while cut left its rules and cgroup: undo them before cutting again.
        if dir.is_dir() {
            delete_rules_naming(&cgroup)?;
            move_all(&dir, &root.join(home.trim_start_matches('/')))?;
            fs::remove_dir(&dir).with_context(|| format!("cannot remove the leftover cgroup {}", dir.display()))?;
        }
        fs::create_dir(&dir).with_context(|| format!("cannot create the cgroup {}", dir.display()))?;
        let mut cut = Self { pid, home, cgroup: cgroup.clone(), root, rules: Vec::new(), healed: false };
        // New sockets first, then the open links: nothing slips between the two.
        cut.insert(cgroup_rule(&cgroup, dist_ports))?;
        move_to(&dir, pid)?;
        let tcp = fs::read_to_string("/proc/net/tcp").context("cannot read /proc/net/tcp")?;
        let links = dist_link_ports(&tcp, &sockets_of(pid)?, dist_ports);
        for rule in port_rules(&links) {
            // Commented with the cgroup's name, so a leftover can be found and deleted.
            let mut rule = rule;
            rule.splice(0..0, ["-m", "comment", "--comment", &cgroup].map(String::from));
            cut.insert(rule)?;
        }
        Ok(cut)
    }

    fn insert(&mut self, rule: Vec<String>) -> anyhow::Result<()> {
        let out = iptables("-I", &rule)?;
        if !out.status.success() {
            bail!(
                "iptables refused the partition rule ({}): {}",
                rule.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        self.rules.push(rule);
        Ok(())
    }

    /// What was cut and how, for the report.
    pub fn describe(&self) -> String {
        let rules: Vec<String> = self.rules.iter().map(|r| format!("iptables -I OUTPUT {}", r.join(" "))).collect();
        format!("pid {} in cgroup {}; {}", self.pid, self.cgroup, rules.join("; "))
    }

    /// Repairs the partition: the rule deleted, the VM back in its own cgroup, the cut's cgroup
    /// removed.
    pub fn heal(mut self) -> anyhow::Result<()> {
        self.heal_inner()
    }

    fn heal_inner(&mut self) -> anyhow::Result<()> {
        if self.healed {
            return Ok(());
        }
        self.healed = true;
        let mut failed = Vec::new();
        for rule in &self.rules {
            let out = iptables("-D", rule)?;
            if !out.status.success() {
                failed.push(format!("{}: {}", rule.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
            }
        }
        let home = self.root.join(self.home.trim_start_matches('/'));
        let dir = self.root.join(&self.cgroup);
        // The VM and whatever it started while cut (a port program): all go back, or the
        // cgroup cannot be removed.
        move_all(&dir, &home)?;
        fs::remove_dir(&dir).with_context(|| format!("cannot remove the cgroup {}", dir.display()))?;
        anyhow::ensure!(failed.is_empty(), "cannot delete the partition rule(s): {}", failed.join("; "));
        Ok(())
    }
}

/// Deletes every OUTPUT rule that names `cgroup` (as its cgroup or its comment): the leftovers
/// of a run killed while cut.
fn delete_rules_naming(cgroup: &str) -> anyhow::Result<()> {
    let out = Command::new("iptables").args(["-w", "-S", "OUTPUT"]).output().context("cannot run iptables -S")?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(spec) = line.strip_prefix("-A OUTPUT ") else { continue };
        if spec.split_whitespace().any(|w| w == cgroup) {
            let rule: Vec<String> = spec.split_whitespace().map(String::from).collect();
            let _ = iptables("-D", &rule);
        }
    }
    Ok(())
}

impl Drop for Partition {
    fn drop(&mut self) {
        if let Err(e) = self.heal_inner() {
            eprintln!("chaos: healing the partition failed: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_drop_new_sockets_of_the_cgroup_and_every_open_link() {
        assert_eq!(
            cgroup_rule("mfe-partition-rabbit-2", &[45772, 45773, 45774]).join(" "),
            "-p tcp -m cgroup --path mfe-partition-rabbit-2 -m multiport --dports 45772,45773,45774 -j DROP"
        );
        let ports: Vec<u16> = (1..=16).collect();
        let rules = port_rules(&ports);
        assert_eq!(rules.len(), 2, "15 ports a rule");
        assert_eq!(rules[1].join(" "), "-p tcp -m multiport --ports 16 -j DROP");
    }

    #[test]
    fn the_links_are_the_sockets_of_the_pid_on_a_distribution_port() {
        // 127.0.0.1:45773 (0xB2CD) listening, a link from :40000 (0x9C40) to it, a link of
        // another process, and an AMQP client connection of the node's.
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100007F:B2CD 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 11 1 0\n\
            1: 0100007F:9C40 0100007F:B2CC 01 00000000:00000000 00:00000000 00000000 0 0 12 1 0\n\
            2: 0100007F:9C41 0100007F:B2CC 01 00000000:00000000 00:00000000 00000000 0 0 99 1 0\n\
            3: 0100007F:B2CD 0100007F:9C50 01 00000000:00000000 00:00000000 00000000 0 0 13 1 0\n\
            4: 0100007F:1628 0100007F:9C60 01 00000000:00000000 00:00000000 00000000 0 0 14 1 0\n";
        assert_eq!(dist_link_ports(tcp, &[11, 12, 13, 14], &[45772, 45773]), vec![40000, 45773]);
    }

    #[test]
    fn the_cgroup2_mount_and_a_process_path_are_read_from_proc() {
        let mounts = "proc /proc proc rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mount(mounts), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0\n"), None);
        assert_eq!(cgroup2_of("4:memory:/x\n0::/system.slice/a\n").as_deref(), Some("/system.slice/a"));
        assert_eq!(cgroup2_of("4:memory:/x\n"), None);
    }

    /// The real thing, on a process of this test's own: a connection it opened before the cut
    /// and one it opens while cut both go silent, others' connections to the same port do not,
    /// and after healing a process connects and talks again.
    #[test]
    fn a_cut_process_loses_its_open_links_and_new_ones_and_healing_restores_them() {
        if let Some(why) = unavailable() {
            panic!("this machine cannot cut partitions: {why}");
        }
        use std::io::{BufRead as _, BufReader, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // An echo server: the "peer" at the distribution port.
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut w = s.try_clone().unwrap();
                    for line in BufReader::new(s).lines().map_while(Result::ok) {
                        let _ = writeln!(w, "{line}");
                    }
                });
            }
        });
        // Connects, says so, waits to be told to go, then reports whether the open link echoes
        // and whether a new connection opens.
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/{port}; echo connected; read go; echo ping >&3; \
             if read -t 2 -u 3 r; then o=ok; else o=silent; fi; \
             if timeout 2 bash -c 'exec 4<>/dev/tcp/127.0.0.1/{port}'; then n=ok; else n=silent; fi; \
             echo \"open=$o new=$n\""
        );
        let run = |cut_it: bool| -> (String, Option<Partition>) {
            let mut child = Command::new("bash")
                .args(["-c", &script])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "connected");
            let cut = cut_it
                .then(|| Partition::cut(child.id(), &format!("selftest-{}", std::process::id()), &[port]).unwrap());
            writeln!(child.stdin.take().unwrap()).unwrap();
            line.clear();
            out.read_line(&mut line).unwrap();
            child.wait().unwrap();
            (line.trim().to_string(), cut)
        };
        let (seen, cut) = run(true);
        assert_eq!(seen, "open=silent new=silent", "inside the partition");
        let mut outside = std::net::TcpStream::connect(("127.0.0.1", port)).expect("outside the partition");
        writeln!(outside, "hello").unwrap();
        let mut echo = String::new();
        BufReader::new(&outside).read_line(&mut echo).unwrap();
        assert_eq!(echo, "hello\n", "a connection outside the partition still talks");
        cut.unwrap().heal().unwrap();
        assert_eq!(run(false).0, "open=ok new=ok", "after healing");
    }
}
