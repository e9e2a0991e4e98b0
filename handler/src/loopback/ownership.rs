//! Buffer ownership: the handler must not touch a buffer while SCST owns it (spec §3.6).
//!
//! With memory reuse a command's buffer stays in SCST's SGV cache after its EXEC reply: the
//! target driver sends a READ's data from it after the reply, and the core may hand the same
//! pages to a later command's EXEC, or give them back by ON_CACHED_MEM_FREE. Until one of those
//! two messages reaches the handler, the pages are SCST's: a handler (or its device, by a DMA
//! that outlived the command's reply) writing into them corrupts what the real kernel sends or
//! what the next command finds there, and nothing on the handler's side can see it.
//!
//! The model is kinder than the kernel here in one way it cannot avoid (it reads a READ's data
//! at the reply, not later when a target would send it), so it checks instead: it takes a
//! [`Fingerprint`] of what a cached buffer holds as SCST takes it back (a READ's data, read at
//! the reply; a WRITE's data-out, as the model copied it in before the EXEC), and compares the
//! buffer with it when the buffer goes back to the handler (a cache hit's EXEC, or
//! ON_CACHED_MEM_FREE), after the device lock is dropped and before the fetch that delivers it
//! returns, so before the handler may legitimately write there again; and, for the buffers the
//! last close's flush gives back (their ON_CACHED_MEM_FREE unjammed, never delivered), before
//! the close returns (`unjam.rs`). A difference is a violation: logged, counted
//! ([`super::LoopbackKernel::buffer_ownership_violations`]), and the delivery goes on as the
//! kernel's would.
//!
//! Stricter than SCST in one place, knowingly: a WRITE's fingerprint is taken at the data-out
//! copy, so a handler that changed a WRITE's data in place before its reply (its right: the
//! buffer is the handler's from the EXEC to the reply) would be counted; this handler never
//! does (BIDI commands, whose data-in shares the buffer, take no fingerprint).
//!
//! A cache hit whose EXEC never reaches the handler (aborted while queued) leaves the
//! buffer's fingerprint in the pool for the next hit; the delivery that makes the check spends
//! it (an undelivered one puts it back).
//!
//! Not covered: a command answered with no data (an error, an abort) leaves no new fingerprint,
//! so a late write into its buffer is not seen here (the workload's verification sees it if it
//! reaches the medium or an initiator); a write landing after the check is not seen either (the
//! check is a snapshot as the buffer comes back); and the count is the kernel's, not a
//! device's.

use super::uaccess::UserMemory;

/// What a buffer held when the handler last gave it to SCST: its first `len` bytes and a
/// hash of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    pub len: usize,
    pub hash: u64,
}

impl Fingerprint {
    /// The fingerprint of `data`, as read from the start of a buffer.
    pub fn of(data: &[u8]) -> Self {
        Self {
            len: data.len(),
            hash: hash(data),
        }
    }
}

/// A check due when a buffer goes back to the handler: its user address and what it held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Check {
    pub pbuf: u64,
    pub expected: Fingerprint,
}

/// 64-bit multiply-rotate hash over 8-byte words: a change to any word changes it with
/// overwhelming probability, at a fraction of a copy's cost (not collision-resistant against
/// an adversary, which a handler's stray write is not).
fn hash(data: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = data.len() as u64;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let word = u64::from_le_bytes(w.try_into().expect("chunks_exact(8)"));
        h = (h ^ word).wrapping_mul(K).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    h ^ (h >> 32)
}

/// Run `checks` (read each buffer again, all in one batch of reads into this thread's scratch
/// buffer) with the device lock dropped; returns how many found the buffer changed. `device` names the device in the log. A buffer that can no longer be read
/// is logged and not counted (the handler may unmap a buffer only once it got it back, so that
/// would be the model's error, not the handler's).
pub(crate) fn verify(mem: &UserMemory, device: &str, checks: impl Iterator<Item = Check> + Clone) -> u64 {
    thread_local! {
        /// Kept between fetches: the checks' reads allocate nothing once it is large enough.
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with_borrow_mut(|scratch| {
        let violations = verify_into(mem, device, checks, scratch);
        if scratch.capacity() > SCRATCH_KEPT {
            // A fetch of large buffers: not kept by every thread that ever made one.
            *scratch = Vec::new();
        }
        violations
    })
}

/// Largest scratch buffer a thread keeps between fetches.
const SCRATCH_KEPT: usize = 1 << 20;

fn verify_into(
    mem: &UserMemory,
    device: &str,
    checks: impl Iterator<Item = Check> + Clone,
    scratch: &mut Vec<u8>,
) -> u64 {
    let total: usize = checks.clone().map(|c| c.expected.len).sum();
    if total == 0 {
        return 0;
    }
    scratch.clear();
    scratch.resize(total, 0);
    let complete = {
        let mut rest = scratch.as_mut_slice();
        let mut ranges: Vec<(u64, &mut [u8])> = Vec::new();
        for c in checks.clone() {
            let (this, tail) = rest.split_at_mut(c.expected.len);
            ranges.push((c.pbuf, this));
            rest = tail;
        }
        mem.read_ranges(&mut ranges)
    };
    let mut violations = 0;
    let mut at = 0;
    for (i, c) in checks.enumerate() {
        let now = &scratch[at..at + c.expected.len];
        at += c.expected.len;
        if i >= complete {
            log::warn!(
                "loopback {device}: cannot read buffer {:#x} back to check it ({} bytes)",
                c.pbuf,
                c.expected.len
            );
            break;
        }
        if Fingerprint::of(now) != c.expected {
            log::error!(
                "loopback {device}: buffer {:#x} changed while SCST owned it (between its EXEC \
                 reply and its return to the handler): a real kernel would have sent or reused \
                 data the handler or its device overwrote",
                c.pbuf
            );
            violations += 1;
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_changed_word_or_length_changes_the_fingerprint() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
        let fp = Fingerprint::of(&data);
        assert_eq!(fp, Fingerprint::of(&data.clone()));
        for at in [0, 7, 8, 511, 2048, 4095] {
            let mut changed = data.clone();
            changed[at] ^= 0x40;
            assert_ne!(Fingerprint::of(&changed), fp, "byte {at}");
        }
        assert_ne!(Fingerprint::of(&data[..4095]), fp);
        assert_ne!(Fingerprint::of(&[0; 16]), Fingerprint::of(&[0; 24]));
    }
}
