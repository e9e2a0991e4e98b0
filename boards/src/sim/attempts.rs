//! Test support for the simulators' doorbell-writer tests (`tests::inline`,
//! `nvme::tests::inline`): a device thread may look at its queue on its own and take the work
//! first, as it may, so a scenario that needs the writer to run it is tried on a fresh device a
//! few times, and fails only if it fails every time.

/// Tries of a scenario before it counts as failed.
pub(crate) const ATTEMPTS: usize = 5;

/// Run `scenario` until it passes, at most [`ATTEMPTS`] times; panics with every failure.
pub(crate) fn on_some_attempt(what: &str, mut scenario: impl FnMut() -> Result<(), String>) {
    let mut failures = Vec::new();
    for _ in 0..ATTEMPTS {
        match scenario() {
            Ok(()) => return,
            Err(e) => failures.push(e),
        }
    }
    panic!("{what}: failed on every attempt: {failures:#?}");
}

/// `Err(message)` unless `ok`.
pub(crate) fn check(ok: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(message())
    }
}
