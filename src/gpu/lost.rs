//! A lost device: a driver reset, a watchdog that stopped a long kernel (Windows' TDR, macOS),
//! a GPU removed or fallen off the bus. wgpu reports it once, through the device-lost callback;
//! every later call on that device fails or does nothing. What the device held is gone, so the
//! only way on is a new device, and only a caller that can rebuild its state (a journaled
//! session) can take it: [`devices_lost`] tells such a caller that its failure was a loss.
//!
//! `REVIVE_LOSE_DEVICE_AFTER=N` destroys the first device of the process after its N-th submit,
//! the way a reset would take it mid-run, so that the tests can hold the recovery to its promise.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Devices lost in this process since it started.
static DEVICES_LOST: AtomicUsize = AtomicUsize::new(0);
/// The injected loss happens once per process: a recovered run goes on on its new device.
static INJECTION_TAKEN: AtomicBool = AtomicBool::new(false);

/// How many devices this process has lost: a caller compares it before and after its work.
pub fn devices_lost() -> usize {
    DEVICES_LOST.load(Ordering::SeqCst)
}

/// Why a device was lost, once it is.
#[derive(Clone, Default)]
pub struct LostState(Arc<Mutex<Option<String>>>);

impl LostState {
    /// Watches `device`: wgpu calls back once when it is lost.
    pub fn watch(device: &wgpu::Device) -> LostState {
        let state = LostState::default();
        let inner = state.clone();
        device.set_device_lost_callback(move |reason, message| {
            let why = if message.is_empty() { format!("{reason:?}") } else { format!("{reason:?}: {message}") };
            inner.mark(why);
        });
        state
    }

    /// The first report wins: an injected loss is marked before wgpu's own callback follows.
    fn mark(&self, why: String) {
        let mut lost = self.0.lock().unwrap();
        if lost.is_none() {
            DEVICES_LOST.fetch_add(1, Ordering::SeqCst);
            *lost = Some(why);
        }
    }

    pub fn reason(&self) -> Option<String> {
        self.0.lock().unwrap().clone()
    }
}

/// The submit after which this device is to be lost (`REVIVE_LOSE_DEVICE_AFTER`), for the first
/// device the process opens only.
pub fn injection_point() -> Option<u64> {
    let n = std::env::var("REVIVE_LOSE_DEVICE_AFTER").ok()?.parse::<u64>().ok()?;
    (!INJECTION_TAKEN.swap(true, Ordering::SeqCst)).then_some(n)
}

/// Destroys `device` as a reset would take it, and marks it lost at once with `why` (wgpu's own
/// callback comes only once its queue has drained).
pub fn destroy(device: &wgpu::Device, state: &LostState, why: String) {
    log::warn!("destroying the device: {why}");
    state.mark(why);
    device.destroy();
}
