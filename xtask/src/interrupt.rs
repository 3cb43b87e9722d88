//! Ctrl-C and SIGTERM: stop cleanly, keeping what finished.
//!
//! Owns the process's SIGINT and SIGTERM handling while a command that honours it runs
//! ([`install`], called by the experiment command and by every QEMU boot). The first signal
//! only sets a flag ([`requested`]), in the handler itself (`signal_hook::flag`, async-signal
//! safe): a QEMU boot then kills its QEMU and removes its device-memory files, and the
//! experiment runner starts no new point, keeps the points that finished and writes its
//! partial results. A second signal of either kind exits at once (status 1), for when the
//! clean stop is not quick enough.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// The flags the handlers set: SIGINT's, SIGTERM's.
fn flags() -> &'static (Arc<AtomicBool>, Arc<AtomicBool>) {
    static FLAGS: OnceLock<(Arc<AtomicBool>, Arc<AtomicBool>)> = OnceLock::new();
    FLAGS.get_or_init(|| (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false))))
}

/// Installs the handlers (once; later calls do nothing).
pub fn install() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let (int, term) = flags();
        let any = Arc::new(AtomicBool::new(false));
        for (sig, flag) in [(signal_hook::consts::SIGINT, int), (signal_hook::consts::SIGTERM, term)] {
            // Registered first, so it runs first: with a signal already seen, this is the
            // second one, and the process exits.
            let _ = signal_hook::flag::register_conditional_shutdown(sig, 1, any.clone());
            let _ = signal_hook::flag::register(sig, any.clone());
            let _ = signal_hook::flag::register(sig, flag.clone());
        }
    });
}

/// The signal that asked for a stop (`SIGINT` or `SIGTERM`), if one did.
pub fn requested() -> Option<i32> {
    let (int, term) = flags();
    if int.load(Ordering::SeqCst) {
        Some(signal_hook::consts::SIGINT)
    } else if term.load(Ordering::SeqCst) {
        Some(signal_hook::consts::SIGTERM)
    } else {
        None
    }
}

/// The signal's name.
pub fn name(sig: i32) -> &'static str {
    match sig {
        signal_hook::consts::SIGINT => "SIGINT (Ctrl-C)",
        signal_hook::consts::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// The exit status a command stopped by `sig` ends with (128 + the signal, as shells report).
pub fn exit_status(sig: i32) -> u8 {
    (128 + sig).min(255) as u8
}
