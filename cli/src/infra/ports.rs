//! Who holds a TCP port: a connect probe plus, on Linux, the owning process read from /proc, so a
//! taken port is reported as `port 5432 is already in use by postgres (pid 812)`.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// True when something accepts connections on 127.0.0.1:`port` (or [::1]:`port`).
pub fn in_use(port: u16) -> bool {
    ["127.0.0.1", "[::1]"].iter().any(|host| {
        let addr: SocketAddr = format!("{host}:{port}").parse().expect("literal address");
        TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
    }) || listening_inode(port).is_some()
}

/// `name (pid N)` of the process listening on `port`, when /proc tells.
pub fn owner(port: u16) -> Option<String> {
    let inode = listening_inode(port)?;
    let needle = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).map(|l| l.to_string_lossy() == needle).unwrap_or(false) {
                let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                return Some(format!("{} (pid {pid})", comm.trim()));
            }
        }
    }
    None
}

/// One line describing a taken port, with its owner when known.
pub fn describe_taken(port: u16) -> String {
    match owner(port) {
        Some(who) => format!("port {port} is already in use by {who}"),
        None => format!("port {port} is already in use by another process"),
    }
}

/// The socket inode of a LISTEN socket on `port` in /proc/net/tcp or tcp6.
fn listening_inode(port: u16) -> Option<u64> {
    const LISTEN: &str = "0A";
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || cols[3] != LISTEN {
                continue;
            }
            let local_port = cols[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                return cols[9].parse().ok();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_listener_is_seen_as_in_use_with_this_process_as_owner() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(in_use(port));
        let owner = owner(port).expect("our own listener is visible in /proc");
        assert!(owner.contains(&format!("pid {}", std::process::id())), "{owner}");
        drop(listener);
        assert!(!in_use(port));
    }
}
