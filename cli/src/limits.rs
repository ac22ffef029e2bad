//! Open-file limits: every socket is a file descriptor, and the default soft limit of a login
//! shell (1 024) is far below what the stack's socket target needs.
//!
//! `mfe` raises its own soft `RLIMIT_NOFILE` to the hard limit once at start-up
//! ([`raise_nofile_limit`]), before it spawns anything, so every process it starts — the
//! gateway and services of `mfe up`, PostgreSQL, RabbitMQ, Redis and nginx of the native runtime,
//! and the sockets of `mfe ws probe` itself — inherits the raised limit. Only the soft limit moves:
//! raising the hard one needs privileges a CLI should not assume, so [`nofile_check`] tells the
//! user (in `mfe doctor`) how to raise it when it is too low.
//!
//! What is "enough" ([`needed_nofile`]): the gateway holds one descriptor per WebSocket, nginx two
//! (client and upstream; on one core one worker holds them all), plus headroom for listeners,
//! logs and HTTP traffic. A process with CAP_SYS_RESOURCE may go beyond the hard limit, so nginx
//! started with it raises its workers itself (`worker_rlimit_nofile` in nginx/nginx.conf) and the
//! hard limit only has to cover the gateway's one per socket. Being root is not enough: many
//! containers drop that capability even for root (this machine's did: setrlimit → EPERM).

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Concurrent WebSocket connections the stack is sized for through the front door (issue 18).
pub const TARGET_SOCKETS: u64 = 10_000;

/// Descriptors beyond the sockets: listeners, log files, upstream pools, HTTP clients.
const HEADROOM: u64 = 1_024;

/// The soft and hard open-file limits before and after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nofile {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises this process's soft open-file limit to its hard limit (or, when the hard limit is
/// unlimited, to the kernel's `fs.nr_open` ceiling). Never lowers it; a failure leaves the limit
/// as it was and is only logged, since most commands open a handful of files.
pub fn raise_nofile_limit() -> Nofile {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return Nofile { soft_before: 0, soft: 0, hard: 0 };
    };
    let target = if hard == nix::sys::resource::RLIM_INFINITY { kernel_nr_open().unwrap_or(soft) } else { hard };
    if target <= soft {
        return Nofile { soft_before: soft, soft, hard };
    }
    match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        Ok(()) => Nofile { soft_before: soft, soft: target, hard },
        Err(e) => {
            tracing::debug!(error = %e, soft, hard, "cannot raise the open-file limit");
            Nofile { soft_before: soft, soft, hard }
        }
    }
}

/// The current soft and hard open-file limits.
pub fn nofile() -> (u64, u64) {
    getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((0, 0))
}

/// The kernel's per-process ceiling for open files (`/proc/sys/fs/nr_open`).
fn kernel_nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open").ok()?.trim().parse().ok()
}

/// Whether this process may raise its open-file limit beyond the hard limit (CAP_SYS_RESOURCE
/// in its effective set, `/proc/self/status`), which the nginx it starts then inherits.
pub fn can_exceed_hard_limit() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim().to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps >> CAP_SYS_RESOURCE & 1 == 1)
}

/// The hard limit `sockets` WebSocket connections need on this machine: one descriptor each in
/// the gateway (and in the probe), two in nginx unless nginx can raise its own limit.
pub fn needed_nofile(sockets: u64, nginx_raises_its_own: bool) -> u64 {
    let per_socket = if nginx_raises_its_own { 1 } else { 2 };
    sockets * per_socket + HEADROOM
}

/// `mfe doctor`'s open-file line: whether the limit is enough for [`TARGET_SOCKETS`], and a detail
/// that starts with `warning:` and says what to run when it is not.
pub fn nofile_check(soft: u64, hard: u64, nginx_raises_its_own: bool) -> (bool, String) {
    let needed = needed_nofile(TARGET_SOCKETS, nginx_raises_its_own);
    // The hard limit is what counts: mfe raises every child's soft limit to it at start-up.
    if hard >= needed {
        let how = if nginx_raises_its_own {
            "nginx raises its workers to worker_rlimit_nofile itself"
        } else {
            "nginx holds two per socket within it"
        };
        (true, format!("soft {soft}, hard {hard}: enough for {TARGET_SOCKETS} WebSocket sockets ({how})"))
    } else {
        (
            false,
            format!(
                "warning: hard limit {hard} is below the {needed} that {TARGET_SOCKETS} WebSocket sockets need \
                 (one descriptor each in the gateway, two in nginx) — raise it: `ulimit -Hn 65536 && ulimit -n 65536` \
                 as root in the shell that runs mfe, `LimitNOFILE=65536` in a systemd unit, `* hard nofile 65536` in \
                 /etc/security/limits.conf (then log in again), or `docker run --ulimit nofile=65536:65536`"
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_limit_and_never_lowered() {
        let limits = raise_nofile_limit();
        assert_eq!(nofile(), (limits.soft, limits.hard));
        assert!(limits.soft >= limits.soft_before);
        if limits.hard != nix::sys::resource::RLIM_INFINITY {
            assert_eq!(limits.soft, limits.hard, "{limits:?}");
        }
    }

    #[test]
    fn ten_thousand_sockets_need_twice_the_descriptors_when_nginx_cannot_raise_its_own() {
        assert_eq!(needed_nofile(10_000, true), 11_024);
        assert_eq!(needed_nofile(10_000, false), 21_024);
    }

    #[test]
    fn a_low_hard_limit_is_a_warning_saying_what_to_run() {
        let (enough, detail) = nofile_check(1024, 4096, false);
        assert!(!enough);
        assert!(detail.starts_with("warning: hard limit 4096"), "{detail}");
        assert!(detail.contains("LimitNOFILE=65536"), "{detail}");
        let (enough, detail) = nofile_check(20_000, 20_000, true);
        assert!(enough, "{detail}");
        let (enough, _) = nofile_check(20_000, 20_000, false);
        assert!(!enough, "nginx needs 2 × 10 000 + headroom when it cannot raise its own limit");
    }
}
