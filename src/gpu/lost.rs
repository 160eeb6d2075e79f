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
/// The adapter (name, backend) of the last device lost by a fault (not by this process's own
/// `destroy`): work that goes on after the loss goes on there, or waits for it, so that its
/// results stay those of one adapter.
static LOST_ADAPTER: Mutex<Option<(String, wgpu::Backend)>> = Mutex::new(None);
/// The injected loss happens once per process: a recovered run goes on on its new device.
static INJECTION_TAKEN: AtomicBool = AtomicBool::new(false);

/// How many devices this process has lost: a caller compares it before and after its work.
pub fn devices_lost() -> usize {
    DEVICES_LOST.load(Ordering::SeqCst)
}

/// The adapter a device was lost on by a fault, if one was: a new device must be opened there.
pub fn lost_adapter() -> Option<(String, wgpu::Backend)> {
    LOST_ADAPTER.lock().unwrap().clone()
}

/// Why a device was lost, once it is.
#[derive(Clone)]
pub struct LostState {
    why: Arc<Mutex<Option<String>>>,
    adapter: (String, wgpu::Backend),
}

impl LostState {
    /// Watches `device` of the adapter `info`: wgpu calls back once when it is lost (reason
    /// `Unknown` for a driver's loss, `Destroyed` after `Device::destroy`, which only this
    /// process calls).
    pub fn watch(device: &wgpu::Device, info: &wgpu::AdapterInfo) -> LostState {
        let state = LostState { why: Arc::default(), adapter: (info.name.clone(), info.backend) };
        let inner = state.clone();
        device.set_device_lost_callback(move |reason, message| {
            let why = if message.is_empty() { format!("{reason:?}") } else { format!("{reason:?}: {message}") };
            inner.mark(why, reason == wgpu::DeviceLostReason::Unknown);
        });
        state
    }

    /// The first report wins: an injected loss is marked before wgpu's own callback follows.
    /// A loss by a fault (`pin`) ties the work that goes on to this adapter.
    fn mark(&self, why: String, pin: bool) {
        let mut lost = self.why.lock().unwrap();
        if lost.is_none() {
            DEVICES_LOST.fetch_add(1, Ordering::SeqCst);
            *lost = Some(why);
            if pin {
                *LOST_ADAPTER.lock().unwrap() = Some(self.adapter.clone());
            }
        }
    }

    pub fn reason(&self) -> Option<String> {
        self.why.lock().unwrap().clone()
    }
}

/// The submit after which this device is to be lost (`REVIVE_LOSE_DEVICE_AFTER`), for the first
/// device the process opens only.
pub fn injection_point() -> Option<u64> {
    let n = std::env::var("REVIVE_LOSE_DEVICE_AFTER").ok()?.parse::<u64>().ok()?;
    (!INJECTION_TAKEN.swap(true, Ordering::SeqCst)).then_some(n)
}

/// Destroys `device` as a reset would take it, and marks it lost at once with `why` (wgpu's own
/// callback comes only once its queue has drained); `fault`: as a fault would (see `mark`).
pub fn destroy(device: &wgpu::Device, state: &LostState, why: String, fault: bool) {
    log::warn!("destroying the device: {why}");
    state.mark(why, fault);
    device.destroy();
}

thread_local! {
    /// Set while this thread runs [`caught`]: its panics are expected and reported as errors.
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The report of the last panic caught on this thread (message and location).
    static CAUGHT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` (a wgpu call that panics on a device error, as `Device::poll` does on a driver's
/// loss) and returns its panic as an error — the panic's message and where it was raised — in
/// place of unwinding, without the panic hook's report on stderr: the caller reports the error.
/// Other threads' panics, and this thread's outside `f`, go to the hook as before.
pub fn caught<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    // Installing a hook panics on a thread that is already panicking (a poll from a `Drop`).
    if !std::thread::panicking() {
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                // Under panic=abort nothing is caught: the report is all there will be.
                if cfg!(panic = "unwind") && CATCHING.with(|c| c.get()) {
                    CAUGHT.with(|c| *c.borrow_mut() = Some(info.to_string()));
                } else {
                    previous(info);
                }
            }));
        });
    }
    let was = CATCHING.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(was));
    result.map_err(|panic| {
        let message = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
        CAUGHT.with(|c| c.borrow_mut().take()).or(message).unwrap_or_else(|| "a panic without a message".into())
    })
}

#[cfg(test)]
mod tests {
    use super::caught;

    #[test]
    fn a_panic_inside_is_an_error_and_the_thread_goes_on() {
        assert_eq!(caught(|| 7), Ok(7));
        // The message, and where it was raised (this file), for a panic of any origin.
        let e = caught(|| -> u8 { panic!("device error {}", 3) }).unwrap_err();
        assert!(e.contains("device error 3") && e.contains("lost.rs"), "{e}");
        // Nested: the outer call still catches after the inner one returned.
        let e = caught(|| -> u8 {
            assert_eq!(caught(|| -> u8 { panic!("inner") }).map_err(|e| e.contains("inner")), Err(true));
            panic!("outer")
        })
        .unwrap_err();
        assert!(e.contains("outer"), "{e}");
        // A panic outside `caught` still unwinds as usual.
        assert!(std::panic::catch_unwind(|| panic!("outside")).is_err());
    }
}

