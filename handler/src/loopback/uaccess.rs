//! User memory access of the loopback kernel: `copy_from_user`, `copy_to_user` and the
//! page pin, done exactly as the kernel sees user memory. Every pointer field of the ABI
//! (`version_str`, `preply`, `pbuf`, `psense_buffer`, `ws_descriptors`...) is a user virtual
//! address of this very process; it is accessed only through `process_vm_readv` /
//! `process_vm_writev` on our own pid, so an invalid address returns `EFAULT` instead of
//! crashing the process, exactly like `copy_from_user` in the kernel (spec §3.2, §3.4).
//!
//! Cost: these calls are the model's own syscalls, which the real kernel does not make (its
//! `copy_from_user` is a few instructions), so they are kept few and counted
//! ([`UserMemory::syscalls`]): several ranges go in ONE call ([`UserMemory::read_ranges`],
//! up to `IOV_MAX` iovecs), a pin probes all its pages in one call, and the pid is cached
//! ([`own_pid`]).
// UNSAFETY: process_vm_readv/process_vm_writev take raw iovecs; they are the one way to touch
// arbitrary user addresses without risking a fault in our own address space. pthread_atfork
// registers the fork hook that keeps the cached pid right.
#![allow(unsafe_code)]

use crate::transport::Errno;
use std::sync::atomic::AtomicI32;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Once;

/// Kernel page size (x86_64).
pub(crate) const PAGE_SIZE: u64 = 4096;

/// Most iovecs one `process_vm_readv`/`process_vm_writev` takes (`UIO_MAXIOV`; more is EINVAL).
const IOV_MAX: usize = 1024;

/// Our pid, or 0 until first used (and again in a forked child, see [`own_pid`]).
static PID: AtomicI32 = AtomicI32::new(0);

extern "C" fn forget_pid_in_child() {
    PID.store(0, Ordering::Relaxed);
}

/// The pid `process_vm_*` targets: ourselves. Cached, since `getpid` is a real syscall that
/// used to double the model's syscalls. Fork-safe: a `pthread_atfork` child hook clears the
/// cache, so a forked child (which has none of the model's threads, but could still call it)
/// reads its own memory, never its parent's. Children made without the hooks (`vfork`,
/// `posix_spawn`, a raw `clone`) exec at once and never reach the model.
fn own_pid() -> libc::pid_t {
    let pid = PID.load(Ordering::Relaxed);
    if pid != 0 {
        return pid;
    }
    static AT_FORK: Once = Once::new();
    AT_FORK.call_once(|| {
        // SAFETY: registers a plain `extern "C"` function with no captured state; the hook
        // only stores to an atomic, which is async-signal-safe as a child hook must be.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(forget_pid_in_child)) };
        if rc != 0 {
            log::error!("loopback: pthread_atfork failed ({rc}); a forked child must not use the model");
        }
    });
    // SAFETY: getpid has no preconditions and cannot fail.
    let pid = unsafe { libc::getpid() };
    PID.store(pid, Ordering::Relaxed);
    pid
}

/// The loopback kernel's own syscalls so far (one [`crate::loopback::LoopbackKernel`]): what
/// the in-process model costs on top of the handler, so that "kernel-model syscalls per
/// command" is measured, not guessed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelSyscalls {
    /// `process_vm_readv` calls (copy_from_user, pins).
    pub process_vm_readv: u64,
    /// `process_vm_writev` calls (copy_to_user).
    pub process_vm_writev: u64,
    /// Writes to a poll pipe (arming readiness, spec §3.9).
    pub poll_pipe_writes: u64,
    /// Reads from a poll pipe (disarming readiness).
    pub poll_pipe_reads: u64,
}

impl ModelSyscalls {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.process_vm_readv + self.process_vm_writev + self.poll_pipe_writes + self.poll_pipe_reads
    }
}

/// User memory of this process as one loopback kernel reaches it, with its syscall counters.
#[derive(Debug, Default)]
pub(crate) struct UserMemory {
    readv: AtomicU64,
    writev: AtomicU64,
    pipe_writes: AtomicU64,
    pipe_reads: AtomicU64,
    /// Buffers found changed while SCST owned them (`ownership.rs`).
    ownership_violations: AtomicU64,
}

/// Direction of one transfer.
#[derive(Clone, Copy)]
enum Dir {
    FromUser,
    ToUser,
}

impl UserMemory {
    /// The counters so far.
    pub fn syscalls(&self) -> ModelSyscalls {
        ModelSyscalls {
            process_vm_readv: self.readv.load(Ordering::Relaxed),
            process_vm_writev: self.writev.load(Ordering::Relaxed),
            poll_pipe_writes: self.pipe_writes.load(Ordering::Relaxed),
            poll_pipe_reads: self.pipe_reads.load(Ordering::Relaxed),
        }
    }

    /// Buffers found changed while SCST owned them, so far.
    pub fn ownership_violations(&self) -> u64 {
        self.ownership_violations.load(Ordering::Relaxed)
    }

    /// Count `n` buffers found changed while SCST owned them.
    pub fn count_ownership_violations(&self, n: u64) {
        if n > 0 {
            self.ownership_violations.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Count one write to a poll pipe.
    pub fn count_pipe_write(&self) {
        self.pipe_writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Count one read from a poll pipe.
    pub fn count_pipe_read(&self) {
        self.pipe_reads.fetch_add(1, Ordering::Relaxed);
    }

    /// Copy `out.len()` bytes from user address `addr` into `out` (the kernel's
    /// `copy_from_user`): one `process_vm_readv`.
    ///
    /// # Errors
    /// `EFAULT` if any byte of the range is not readable.
    pub fn copy_from_user(&self, addr: u64, out: &mut [u8]) -> Result<(), Errno> {
        if self.read_ranges(&mut [(addr, out)]) == 1 {
            Ok(())
        } else {
            Err(Errno::EFAULT)
        }
    }

    /// Copy `data` to user address `addr` (the kernel's `copy_to_user`): one
    /// `process_vm_writev`.
    ///
    /// # Errors
    /// `EFAULT` if any byte of the range is not writable.
    pub fn copy_to_user(&self, addr: u64, data: &[u8]) -> Result<(), Errno> {
        if self.write_ranges(&[(addr, data)]) == 1 {
            Ok(())
        } else {
            Err(Errno::EFAULT)
        }
    }

    /// Read every `(addr, buffer)` range, in order, with as few `process_vm_readv` calls as
    /// `IOV_MAX` allows (one for up to 1024 ranges). Returns how many leading ranges were read
    /// completely: a fault stops the transfer there, as the kernel's partial transfer does, so
    /// the caller knows exactly which element faulted; the ranges after it are not read (their
    /// buffers hold anything).
    pub fn read_ranges(&self, ranges: &mut [(u64, &mut [u8])]) -> usize {
        super::device::assert_unlocked("copy_from_user");
        let spans: Vec<Span> = ranges
            .iter_mut()
            .map(|(addr, buf)| Span {
                addr: *addr,
                local: buf.as_mut_ptr(),
                len: buf.len(),
            })
            .collect();
        self.transfer(Dir::FromUser, &spans)
    }

    /// [`Self::read_ranges`] into fresh vectors: `(addr, len, out)` reads `len` bytes into `out`
    /// (emptied first) without zeroing them beforehand: a 128 KiB response zeroed and then
    /// overwritten cost the model a memset per command, about a tenth of a 128 KiB read's CPU.
    /// Returns how many leading ranges were read completely; those vectors hold their `len`
    /// bytes, the others are left empty.
    pub fn read_ranges_to_vecs(&self, ranges: &mut [(u64, usize, &mut Vec<u8>)]) -> usize {
        super::device::assert_unlocked("copy_from_user");
        let spans: Vec<Span> = ranges
            .iter_mut()
            .map(|(addr, len, out)| {
                out.clear();
                out.reserve_exact(*len);
                Span {
                    addr: *addr,
                    local: out.spare_capacity_mut().as_mut_ptr().cast(),
                    len: *len,
                }
            })
            .collect();
        let complete = self.transfer(Dir::FromUser, &spans);
        for (_, len, out) in ranges.iter_mut().take(complete) {
            // SAFETY: the range was read completely, so the kernel wrote all `len` bytes of
            // the capacity reserved above (`transfer` counts a span only once every byte of
            // it has moved), and `len <= capacity`.
            unsafe { out.set_len(*len) };
        }
        complete
    }

    /// Write every `(addr, bytes)` range, in order, with as few `process_vm_writev` calls as
    /// `IOV_MAX` allows. Returns how many leading ranges were written completely (a fault
    /// stops the transfer there; nothing after it is written).
    pub fn write_ranges(&self, ranges: &[(u64, &[u8])]) -> usize {
        super::device::assert_unlocked("copy_to_user");
        let spans: Vec<Span> = ranges
            .iter()
            .map(|(addr, data)| Span {
                addr: *addr,
                // process_vm_writev only reads the local buffers; iovec has no const flavour.
                local: data.as_ptr().cast_mut(),
                len: data.len(),
            })
            .collect();
        self.transfer(Dir::ToUser, &spans)
    }

    /// "Pin" `[addr, addr + len)`: probe one byte of every page the range spans, as
    /// `get_user_pages` would fault each page in, all pages in one `process_vm_readv` (per
    /// 1024 pages). The model treats a successful probe as the pin.
    ///
    /// # Errors
    /// `EFAULT` if a page of the range is not mapped readable, or the range wraps.
    pub fn pin_user_pages(&self, addr: u64, len: u64) -> Result<(), Errno> {
        if len == 0 {
            return Ok(());
        }
        let end = addr.checked_add(len).ok_or(Errno::EFAULT)?;
        let first_page = addr & !(PAGE_SIZE - 1);
        let pages = (end - first_page).div_ceil(PAGE_SIZE);
        let mut probes = vec![0u8; usize::try_from(pages).map_err(|_| Errno::EFAULT)?];
        let mut ranges: Vec<(u64, &mut [u8])> = probes
            .chunks_mut(1)
            .enumerate()
            .map(|(i, byte)| ((first_page + i as u64 * PAGE_SIZE).max(addr), byte))
            .collect();
        let n = ranges.len();
        if self.read_ranges(&mut ranges) == n {
            Ok(())
        } else {
            Err(Errno::EFAULT)
        }
    }

    /// Read a C string the way `dev_user_check_version` does: copy a FIXED `len` bytes (all
    /// must be readable), force a NUL at the last byte, stop at the first NUL (spec §1.4).
    ///
    /// # Errors
    /// `EFAULT` if the fixed-size range is not readable.
    pub fn copy_fixed_c_string(&self, addr: u64, len: usize) -> Result<Vec<u8>, Errno> {
        let mut buf = vec![0u8; len];
        self.copy_from_user(addr, &mut buf)?;
        if let Some(last) = buf.last_mut() {
            *last = 0;
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        buf.truncate(end);
        Ok(buf)
    }

    /// Move `spans` in order, up to `IOV_MAX` of them per syscall; returns how many leading
    /// spans moved completely.
    fn transfer(&self, dir: Dir, spans: &[Span]) -> usize {
        // Position: span `first`, `offset` bytes of it already moved.
        let mut first = 0usize;
        let mut offset = 0usize;
        let mut local: Vec<libc::iovec> = Vec::with_capacity(spans.len().min(IOV_MAX));
        let mut remote: Vec<libc::iovec> = Vec::with_capacity(spans.len().min(IOV_MAX));
        loop {
            // Empty spans are complete without touching memory.
            while spans.get(first).is_some_and(|s| s.len == offset) {
                first += 1;
                offset = 0;
            }
            if first == spans.len() {
                return first;
            }
            local.clear();
            remote.clear();
            for (i, s) in spans.iter().enumerate().skip(first) {
                if local.len() == IOV_MAX {
                    break;
                }
                let skip = if i == first { offset } else { 0 };
                if s.len == skip {
                    continue;
                }
                let Some(start) = s.addr.checked_add(skip as u64) else {
                    // A range that wraps the address space faults where it wraps: nothing
                    // from here on is attempted.
                    break;
                };
                local.push(libc::iovec {
                    iov_base: s.local.wrapping_add(skip).cast(),
                    iov_len: s.len - skip,
                });
                remote.push(libc::iovec {
                    iov_base: start as usize as *mut libc::c_void,
                    iov_len: s.len - skip,
                });
            }
            if local.is_empty() {
                return first;
            }
            let pid = own_pid();
            let count = local.len() as libc::c_ulong;
            let n = match dir {
                Dir::FromUser => {
                    self.readv.fetch_add(1, Ordering::Relaxed);
                    // SAFETY: every local iovec covers the unmoved tail of one buffer the
                    // caller lends us mutably for this call (`Span` invariant); the remote
                    // iovecs are only dereferenced by the kernel, which checks them and stops
                    // with a partial count (or EFAULT) at an unmapped address.
                    unsafe { libc::process_vm_readv(pid, local.as_ptr(), count, remote.as_ptr(), count, 0) }
                }
                Dir::ToUser => {
                    self.writev.fetch_add(1, Ordering::Relaxed);
                    // SAFETY: the local iovecs cover buffers the caller lends us for this
                    // call, which the kernel only reads; the remote iovecs are checked by the
                    // kernel, which returns EFAULT or a partial count for bad addresses.
                    unsafe { libc::process_vm_writev(pid, local.as_ptr(), count, remote.as_ptr(), count, 0) }
                }
            };
            if n <= 0 {
                return first;
            }
            // Advance over what moved. A short count stops inside span `first`; the next call
            // starts exactly there and fails at once if the address really is bad.
            let mut moved = n as usize;
            while moved > 0 && first < spans.len() {
                let left = spans[first].len - offset;
                if moved >= left {
                    moved -= left;
                    first += 1;
                    offset = 0;
                } else {
                    offset += moved;
                    moved = 0;
                }
            }
        }
    }
}

/// One range of a transfer: `len` bytes at user address `addr` and at local pointer `local`.
/// Invariant: `local` is valid for `len` bytes (writes too, for a read from user memory) for
/// as long as the span is used, which the builders above ensure by borrowing the buffer.
struct Span {
    addr: u64,
    local: *mut u8,
    len: usize,
}

/// Test helpers with the signatures of the kernel functions, on counters of their own.
#[cfg(test)]
static TEST_MEMORY: UserMemory = UserMemory {
    readv: AtomicU64::new(0),
    writev: AtomicU64::new(0),
    pipe_writes: AtomicU64::new(0),
    pipe_reads: AtomicU64::new(0),
    ownership_violations: AtomicU64::new(0),
};

/// `copy_from_user` for tests that are not a loopback kernel.
#[cfg(test)]
pub(crate) fn copy_from_user(addr: u64, out: &mut [u8]) -> Result<(), Errno> {
    TEST_MEMORY.copy_from_user(addr, out)
}

/// `copy_to_user` for tests that are not a loopback kernel.
#[cfg(test)]
pub(crate) fn copy_to_user(addr: u64, data: &[u8]) -> Result<(), Errno> {
    TEST_MEMORY.copy_to_user(addr, data)
}

/// `pin_user_pages` for tests that are not a loopback kernel.
#[cfg(test)]
pub(crate) fn pin_user_pages(addr: u64, len: u64) -> Result<(), Errno> {
    TEST_MEMORY.pin_user_pages(addr, len)
}

/// `copy_fixed_c_string` for tests that are not a loopback kernel.
#[cfg(test)]
pub(crate) fn copy_fixed_c_string(addr: u64, len: usize) -> Result<Vec<u8>, Errno> {
    TEST_MEMORY.copy_fixed_c_string(addr, len)
}

/// Whether `fd` polls readable right now (test helper for the level-triggered poll fd).
#[cfg(test)]
pub(crate) fn poll_readable(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack, count 1, zero timeout: poll only writes revents.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n == 1 && pfd.revents & libc::POLLIN != 0
}

/// Test helper: two anonymous pages, the second made inaccessible, so that a string can end
/// right before unreadable memory (to check fixed-size reads, spec §1.4).
#[cfg(test)]
pub(crate) struct GuardedPage {
    base: *mut libc::c_void,
}

#[cfg(test)]
impl GuardedPage {
    pub(crate) fn new() -> Self {
        // SAFETY: anonymous private mapping of two pages, checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * PAGE_SIZE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "mmap");
        // SAFETY: the second page lies inside the mapping just created.
        let rc = unsafe {
            libc::mprotect(
                base.cast::<u8>().add(PAGE_SIZE as usize).cast(),
                PAGE_SIZE as usize,
                libc::PROT_NONE,
            )
        };
        assert_eq!(rc, 0, "mprotect");
        Self { base }
    }

    /// Write `bytes` so that they end exactly at the guard page; returns their address.
    pub(crate) fn place_at_end(&self, bytes: &[u8]) -> u64 {
        let addr = self.base as u64 + PAGE_SIZE - bytes.len() as u64;
        copy_to_user(addr, bytes).expect("first page is writable");
        addr
    }
}

#[cfg(test)]
impl Drop for GuardedPage {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `new`.
        unsafe { libc::munmap(self.base, 2 * PAGE_SIZE as usize) };
    }
}

/// Test helper: one anonymous page that can later be made inaccessible, keeping its mapping
/// (so the address cannot be reused by another test's mapping meanwhile), like a buffer the
/// handler unmapped after the kernel pinned it.
#[cfg(test)]
pub(crate) struct RevocablePage {
    base: *mut libc::c_void,
}

#[cfg(test)]
impl RevocablePage {
    pub(crate) fn new() -> Self {
        // SAFETY: anonymous private mapping of one page, checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE_SIZE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "mmap");
        Self { base }
    }

    pub(crate) fn addr(&self) -> u64 {
        self.base as u64
    }

    /// Fill the page with `byte`.
    pub(crate) fn fill(&self, byte: u8) {
        copy_to_user(self.addr(), &[byte; PAGE_SIZE as usize]).expect("the page is writable");
    }

    /// The page's bytes.
    pub(crate) fn contents(&self) -> Vec<u8> {
        let mut out = vec![0u8; PAGE_SIZE as usize];
        copy_from_user(self.addr(), &mut out).expect("the page is readable");
        out
    }

    /// Make the page inaccessible (PROT_NONE); the mapping stays.
    pub(crate) fn revoke(&self) {
        // SAFETY: changes the protection of exactly the mapping created in `new`.
        let rc = unsafe { libc::mprotect(self.base, PAGE_SIZE as usize, libc::PROT_NONE) };
        assert_eq!(rc, 0, "mprotect");
    }
}

#[cfg(test)]
impl Drop for RevocablePage {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `new`.
        unsafe { libc::munmap(self.base, PAGE_SIZE as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_round_trip_and_bad_addresses_fault() {
        let mut target = vec![0u8; 10_000];
        let addr = target.as_mut_ptr() as u64;
        copy_to_user(addr + 5, b"hello").unwrap();
        let mut out = [0u8; 5];
        copy_from_user(addr + 5, &mut out).unwrap();
        assert_eq!(&out, b"hello");
        assert_eq!(&target[5..10], b"hello");
        assert_eq!(copy_from_user(8, &mut out), Err(Errno::EFAULT));
        assert_eq!(copy_to_user(8, b"x"), Err(Errno::EFAULT));
        assert_eq!(pin_user_pages(8, 4096), Err(Errno::EFAULT));
        pin_user_pages(addr, 10_000).unwrap();
    }

    #[test]
    fn fixed_c_string_reads_exactly_len_and_forces_nul() {
        let mut s = *b"GPLxxxx\0";
        s[3] = 0;
        assert_eq!(copy_fixed_c_string(s.as_ptr() as u64, 8).unwrap(), b"GPL");
        let full = *b"abcdefgh";
        assert_eq!(copy_fixed_c_string(full.as_ptr() as u64, 8).unwrap(), b"abcdefg");
    }

    #[test]
    fn ranges_pins_and_pipe_events_are_counted_per_syscall() {
        let mem = UserMemory::default();
        let mut a = [0u8; 3];
        let mut b = [0u8; 5];
        let src = *b"abcdefgh";
        let base = src.as_ptr() as u64;
        let read = mem.read_ranges(&mut [(base, &mut a[..]), (base + 3, &mut b[..])]);
        assert_eq!(read, 2);
        assert_eq!((&a, &b), (b"abc", b"defgh"));
        assert_eq!(mem.syscalls().process_vm_readv, 1, "two ranges, one syscall");
        let pages = vec![0u8; 3 * PAGE_SIZE as usize];
        mem.pin_user_pages(pages.as_ptr() as u64, pages.len() as u64)
            .unwrap();
        assert_eq!(
            mem.syscalls().process_vm_readv,
            2,
            "three pages probed in one syscall"
        );
        mem.copy_to_user(a.as_mut_ptr() as u64, b"xyz").unwrap();
        assert_eq!(&a, b"xyz");
        mem.count_pipe_write();
        mem.count_pipe_read();
        let s = mem.syscalls();
        assert_eq!(
            (s.process_vm_writev, s.poll_pipe_writes, s.poll_pipe_reads),
            (1, 1, 1)
        );
        assert_eq!(s.total(), 5);
    }

    #[test]
    fn a_fault_stops_the_ranges_at_the_first_bad_one() {
        let mem = UserMemory::default();
        let guard = GuardedPage::new();
        // Range 1 straddles into the guard page: 4 bytes readable, then the fault.
        let end = guard.place_at_end(b"0123");
        let mut ok = [0u8; 4];
        let mut straddling = [0u8; 8];
        let mut after = [0u8; 4];
        let src = *b"good";
        let read = mem.read_ranges(&mut [
            (src.as_ptr() as u64, &mut ok[..]),
            (end, &mut straddling[..]),
            (src.as_ptr() as u64, &mut after[..]),
        ]);
        assert_eq!(
            read, 1,
            "the straddling range is not complete, nor anything after it"
        );
        assert_eq!(&ok, b"good");
        assert_eq!(after, [0; 4], "nothing after the fault was read");
        // A partial count, then the retry at the bad byte fails: two calls.
        assert_eq!(mem.syscalls().process_vm_readv, 2);
        assert_eq!(mem.pin_user_pages(end, 8), Err(Errno::EFAULT));
    }

    /// Reading into fresh vectors: complete ranges hold exactly their bytes, a range cut by a
    /// fault and every range after it stay empty (no uninitialized byte is ever visible).
    #[test]
    fn ranges_read_into_vectors_hold_only_what_was_read() {
        let mem = UserMemory::default();
        let guard = GuardedPage::new();
        let end = guard.place_at_end(b"0123");
        let src = *b"good bytes";
        let (mut ok, mut empty, mut straddling, mut after) =
            (vec![9u8; 3], Vec::new(), Vec::new(), Vec::new());
        let read = mem.read_ranges_to_vecs(&mut [
            (src.as_ptr() as u64, 10, &mut ok),
            (src.as_ptr() as u64, 0, &mut empty),
            (end, 8, &mut straddling),
            (src.as_ptr() as u64, 4, &mut after),
        ]);
        assert_eq!(read, 2);
        assert_eq!(ok, b"good bytes");
        assert!(empty.is_empty());
        assert!(straddling.is_empty(), "a partly read range is not handed out");
        assert!(after.is_empty());
    }

    #[test]
    fn the_pid_is_cached() {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        assert_eq!(own_pid(), pid);
        assert_eq!(PID.load(Ordering::Relaxed), pid);
    }
}
