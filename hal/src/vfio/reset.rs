//! `VFIO_DEVICE_RESET` on a busy function: retried a few times, then reported as busy.
//!
//! vfio-pci's `vfio_pci_ioctl_reset` (drivers/vfio/pci/vfio_pci_core.c) resets with
//! `pci_try_reset_function` (drivers/pci/pci.c), which does not wait for the locks a reset
//! needs: when `pci_dev_trylock` cannot take the function's device lock (`device_trylock`: a
//! driver probe, bind or unbind, a PM transition, another reset through sysfs `reset`) or its
//! config-access lock (`pci_cfg_access_trylock`: another reset, a user config access blocked
//! by one), and on kernels that also lock the upstream bridge for a reset, that bridge's, it
//! returns `-EAGAIN` at once. Such a holder lets go within milliseconds to a few hundred (an
//! FLR takes at least 100 ms): a busy function is a passing state, not a failed reset, so it
//! must not send teardown or recovery down the "reset failed" path (bus mastering off, or no
//! proof that DMA stopped). Every other errno is an answer and is returned at once.

use std::io;
use std::time::Duration;
use std::time::Instant;

/// How many times a busy function's reset is tried in all.
pub(super) const ATTEMPTS: u32 = 5;

/// The pause after the first busy answer; each later pause doubles it. With [`ATTEMPTS`]
/// that is 50 + 100 + 200 + 400 ms: at most 750 ms of waiting, well inside what the engines
/// give a function reset (SCA-1: 5 s, `FUNCTION_RESET_ALLOWANCE`; NVMe: the admin timeout).
pub(super) const FIRST_PAUSE: Duration = Duration::from_millis(50);

/// The function stayed busy through every attempt (the kernel answered EAGAIN each time).
#[derive(Debug, thiserror::Error)]
#[error(
    "{device} stayed busy through {attempts} reset attempts over {} ms: the kernel could not take \
     its device or config-access lock (or its upstream bridge's) without waiting, so something \
     else held it: another reset of this function or of one under the same bridge, a driver \
     probe, bind or unbind, or a sysfs access to /sys/bus/pci/devices/{device}/ (`reset`, \
     `config`, `remove`); look in dmesg and for tools touching it (lspci, setpci, a monitoring \
     agent, a second scst-accel), then start the disk again",
    .waited.as_millis()
)]
pub(super) struct ResetBusy {
    /// Device identifier (its PCI address).
    pub(super) device: String,
    /// Attempts made, each answered EAGAIN.
    pub(super) attempts: u32,
    /// Time from the first attempt to the last answer.
    pub(super) waited: Duration,
    /// The last answer (EAGAIN, kept for its errno).
    #[source]
    pub(super) source: io::Error,
}

/// Call `call` until it does not fail with EAGAIN, at most `attempts` times, pausing
/// `first_pause`, then twice that, and so on between calls (no lock may be held: the pause is
/// [`crate::locks::sleep`]). Each busy answer that is retried is logged.
///
/// # Errors
/// A failure other than EAGAIN, at once; EAGAIN on every attempt: an error of kind
/// [`io::ErrorKind::ResourceBusy`] whose inner error is [`ResetBusy`] (its source the last
/// EAGAIN).
pub(super) fn retry_busy<T>(
    device: &str,
    attempts: u32,
    first_pause: Duration,
    mut call: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let started = Instant::now();
    let mut pause = first_pause;
    let mut attempt = 1;
    loop {
        match call() {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                if attempt >= attempts {
                    return Err(io::Error::new(
                        io::ErrorKind::ResourceBusy,
                        ResetBusy {
                            device: device.to_owned(),
                            attempts: attempt,
                            waited: started.elapsed(),
                            source: e,
                        },
                    ));
                }
                log::warn!(
                    "{device}: VFIO_DEVICE_RESET found the function busy (EAGAIN: its device or \
                     config-access lock is held), attempt {attempt} of {attempts}; trying again \
                     in {} ms",
                    pause.as_millis()
                );
                crate::locks::sleep(pause);
                pause = pause.saturating_mul(2);
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The time [`retry_busy`] can pause in all when every attempt is busy.
#[cfg(test)]
fn total_pause(attempts: u32, first_pause: Duration) -> Duration {
    (0..attempts.saturating_sub(1))
        .map(|n| first_pause.saturating_mul(1 << n))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno(n: i32) -> io::Error {
        io::Error::from_raw_os_error(n)
    }

    /// A stand-in for the ioctl answering from `answers` in turn (Ok past the end), counting
    /// calls.
    fn scripted(answers: Vec<i32>, calls: &mut u32) -> impl FnMut() -> io::Result<()> + '_ {
        move || {
            let answer = answers.get(*calls as usize).copied();
            *calls += 1;
            match answer {
                Some(e) => Err(errno(e)),
                None => Ok(()),
            }
        }
    }

    #[test]
    fn a_function_busy_twice_is_reset_on_the_third_call() {
        let mut calls = 0;
        let r = retry_busy(
            "0000:00:04.0",
            ATTEMPTS,
            Duration::from_millis(1),
            scripted(vec![libc::EAGAIN, libc::EAGAIN], &mut calls),
        );
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(calls, 3);
    }

    #[test]
    fn a_function_busy_every_time_is_reported_busy_after_the_bound() {
        let mut calls = 0;
        let mut always = || {
            calls += 1;
            Err::<(), _>(errno(libc::EAGAIN))
        };
        let e = retry_busy("0000:00:04.0", 4, Duration::from_millis(1), &mut always)
            .expect_err("busy every time");
        assert_eq!(calls, 4, "tried exactly the bound");
        assert_eq!(e.kind(), io::ErrorKind::ResourceBusy);
        // What the operator reads: HalError::Reset and its chain (tools' error_chain walks it).
        let hal = crate::HalError::Reset {
            device: "0000:00:04.0".into(),
            source: e,
        };
        let mut chain = vec![hal.to_string()];
        let mut source = std::error::Error::source(&hal);
        while let Some(s) = source {
            chain.push(s.to_string());
            source = s.source();
        }
        assert!(chain[0].contains("reset of 0000:00:04.0 failed"), "{chain:?}");
        assert!(
            chain[1].contains("stayed busy through 4 reset attempts"),
            "{chain:?}"
        );
        assert!(
            chain[1].contains("/sys/bus/pci/devices/0000:00:04.0/"),
            "{chain:?}"
        );
        assert!(chain[1].contains("dmesg"), "{chain:?}");
        let errno = std::io::Error::from_raw_os_error(libc::EAGAIN).to_string();
        assert_eq!(chain.last(), Some(&errno), "the errno is kept: {chain:?}");
    }

    #[test]
    fn another_errno_is_returned_at_once() {
        let mut calls = 0;
        let e = retry_busy(
            "0000:00:04.0",
            ATTEMPTS,
            Duration::from_millis(1),
            scripted(vec![libc::EIO], &mut calls),
        )
        .expect_err("EIO is an answer");
        assert_eq!(calls, 1, "not retried");
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
    }

    #[test]
    fn the_retries_wait_less_than_a_second_in_all() {
        let total = total_pause(ATTEMPTS, FIRST_PAUSE);
        assert_eq!(total, Duration::from_millis(750));
        assert!(total < Duration::from_secs(1));
    }
}
