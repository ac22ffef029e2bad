//! The crash point of the chaos suite: a consumer killed between its database commit and its ack.
//!
//! `SIGUSR1` arms it and `SIGUSR2` disarms it. Armed, the next delivery whose handler returned
//! `Ok` — its effects and its `processed_events` row committed in the handler's transaction —
//! aborts the process before the ack is sent. The broker then hands the delivery (and every
//! other unacked one of the channel) to the next consumer, whose inbox must find it done: the
//! one failure the idempotent consumer exists for, produced at the instant that tests it
//! (`mfe test chaos`, fault `kill-consumer-after-commit`).
//!
//! The last line the process writes names the event, on stderr, unbuffered, so the suite can
//! say which delivery the crash left unacked.
//!
//! Why signals and not the `fail` crate: its points exist only in builds with its `failpoints`
//! feature and are configured from inside the process or from its environment at start, while
//! the suite arms a running process of the ordinary build at a moment of its choosing. Listening
//! to `SIGUSR1` adds no way to die: its default action already terminates the process, which
//! now ends at a point the at-least-once delivery covers instead of anywhere.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use tokio::signal::unix::{signal, SignalKind};

/// How the last line of an aborted process begins; the event id follows.
pub const ABORT_LINE: &str = "crash point: aborting after the commit of event";

static ARMED: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

/// Starts listening to `SIGUSR1` / `SIGUSR2`, once per process, on a thread of its own (so the
/// listener outlives whichever runtime called first), and returns once the signals are caught.
/// A consumer loop calls it as it starts.
pub fn install() {
    INSTALL.call_once(|| {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let listen = move || -> std::io::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
            rt.block_on(async {
                let (mut arm, mut disarm) =
                    (signal(SignalKind::user_defined1())?, signal(SignalKind::user_defined2())?);
                let _ = ready_tx.send(());
                loop {
                    tokio::select! {
                        Some(()) = arm.recv() => set(true),
                        Some(()) = disarm.recv() => set(false),
                        else => return Ok(()),
                    }
                }
            })
        };
        let spawned = std::thread::Builder::new().name("crash-point".into()).spawn(move || {
            if let Err(e) = listen() {
                tracing::warn!(
                    "crash point: cannot listen to SIGUSR1/SIGUSR2 ({e}); the chaos suite cannot arm this process"
                );
            }
        });
        match spawned {
            // Dropped unsent when listening failed.
            Ok(_) => {
                let _ = ready_rx.recv_timeout(std::time::Duration::from_secs(5));
            }
            Err(e) => tracing::warn!("crash point: no listener thread ({e})"),
        }
    });
}

/// Arms (`true`) or disarms the crash point of this process; the signals call it.
pub fn set(armed: bool) {
    ARMED.store(armed, Ordering::SeqCst);
    eprintln!("crash point: {}", if armed { "armed (SIGUSR1)" } else { "disarmed (SIGUSR2)" });
}

/// Whether the crash point is armed.
pub fn armed() -> bool {
    ARMED.load(Ordering::SeqCst)
}

/// Called after a handler succeeded and before its ack: when armed, aborts the process.
pub(crate) fn after_commit(queue: &str, event_id: uuid::Uuid) {
    // A relaxed load first: the swap (a write) only when armed, once per process life.
    if ARMED.load(Ordering::Relaxed) && ARMED.swap(false, Ordering::SeqCst) {
        eprintln!("{ABORT_LINE} {event_id} from queue {queue}, before its ack");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn signals_arm_and_disarm() {
        install();
        let me = std::process::id().to_string();
        let kill = |sig: &str| std::process::Command::new("kill").args([sig, &me]).status().unwrap();
        let wait_for = |want: bool| async move {
            for _ in 0..200 {
                if armed() == want {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            false
        };
        assert!(kill("-USR1").success());
        assert!(wait_for(true).await, "SIGUSR1 arms");
        assert!(kill("-USR2").success());
        assert!(wait_for(false).await, "SIGUSR2 disarms");
        // Disarmed, the point lets the ack go on.
        after_commit("q", uuid::Uuid::nil());
    }
}
