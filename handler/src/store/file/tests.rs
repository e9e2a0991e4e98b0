mod failures;

use super::*;
use crate::store::CmdBuffer;
use scst_accel_dma::SgvPool;
use std::time::Instant;

/// The tests below that take an engine run once with each: `threads::NAME` and `uring::NAME`.
/// Where the kernel has no io_uring the uring ones say they were skipped (never a silent pass).
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod threads {
            $( #[test] fn $name() { super::$name(super::IoEngine::Threads) } )*
        }
        mod uring {
            $( #[test] fn $name() {
                if super::uring_or_skip(concat!("uring::", stringify!($name))) {
                    super::$name(super::IoEngine::Uring)
                }
            } )*
        }
    };
}

on_both_engines!(
    every_op_round_trips,
    write_same_of_one_block_writes_it,
    data_persists_across_reopen,
    out_of_range_and_malformed_requests,
    o_direct_on_tmpfs_opens_or_says_to_use_buffered_io,
    a_failed_write_is_a_write_error_at_the_failing_lba,
    many_queues_share_the_bounded_pool,
    a_failed_flush_stays_failed,
    a_file_reports_its_physical_block_and_unmapped_blocks_read_zero,
    a_loop_device_discards_and_zeroes_out,
    lba_status_reports_the_holes_of_a_file,
    abort_with_requests_in_flight_is_bounded_and_answers_all,
    the_escalations_abort_does_not_wait_for_a_hung_request,
    drop_with_requests_in_flight_is_bounded_and_frees_the_buffers,
    with_the_write_cache_off_write_same_and_copy_are_durable_when_good,
);

/// Whether io_uring works here; if not, the test `name` says it is skipped.
fn uring_or_skip(name: &str) -> bool {
    match super::uring::available() {
        Ok(()) => true,
        Err(reason) => {
            scst_accel_hal::skip::test_skipped(name, &format!("io_uring unavailable: {reason}"));
            false
        }
    }
}

/// A directory under the system's temp dir (ext4 here: O_DIRECT works), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        Self::under(&std::env::temp_dir(), tag)
    }

    fn under(root: &Path, tag: &str) -> Self {
        let dir = root.join(format!(
            "filestore-{tag}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn buffer(len: usize) -> IoBuffer {
    let pool = Arc::new(SgvPool::new(None, None, 1 << 30));
    IoBuffer::new(
        CmdBuffer::allocate(&mut crate::store::StoreToken::root(), &pool, len).expect("buffer"),
        len,
    )
}

/// Open, and check the store runs the engine asked for (Auto: either).
fn open(config: &FileStoreConfig) -> Result<FileStore, FileStoreError> {
    let store = FileStore::open(config)?;
    if config.io_engine != IoEngine::Auto {
        assert_eq!(
            store.io_engine().name(),
            config.io_engine.name(),
            "the engine asked for"
        );
    }
    Ok(store)
}

fn config(engine: IoEngine, path: &Path, size: Option<u64>) -> FileStoreConfig {
    FileStoreConfig {
        create_size: size,
        workers: 2,
        io_engine: engine,
        ..FileStoreConfig::new(path)
    }
}

/// Submit one request and wait (bounded) for its completion through the notify fd.
fn run(q: &mut Box<dyn StoreQueue>, op: StoreOp, buf: Option<&IoBuffer>) -> StoreStatus {
    let mut batch = vec![StoreRequest {
        tag: 7,
        op,
        buffer: buf.cloned(),
    }];
    q.submit(&mut crate::store::StoreToken::root(), &mut batch)
        .expect("submit");
    assert!(batch.is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while q.reap(&mut out) == 0 {
        assert!(Instant::now() < deadline, "no completion within 10 s");
        let fd = q.notify_fd().expect("a file queue has a notify fd");
        scst_accel_hal::fdio::poll_readable(&[fd], Duration::from_millis(100)).expect("poll");
    }
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].tag, 7);
    assert_eq!(q.in_flight(), 0);
    out[0].status
}

fn pattern(buf: &IoBuffer, len: usize, seed: u8) {
    let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8 ^ seed).collect();
    buf.write_at(0, &bytes);
}

fn bytes(buf: &IoBuffer, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    buf.read_at(0, &mut out);
    out
}

fn every_op_round_trips(engine: IoEngine) {
    let dir = TempDir::new("ops");
    let store = open(&config(engine, &dir.file("disk.img"), Some(1 << 20))).expect("open");
    let info = store.info();
    assert_eq!((info.block_size, info.num_blocks), (512, 2048));
    assert!(info.volatile_cache && info.supports_unmap);
    let mut q = store.open_queue().expect("queue");

    let src = buffer(8192);
    pattern(&src, 8192, 0x11);
    let write = |fua| StoreOp::Write {
        lba: 100,
        blocks: 16,
        fua,
    };
    assert_eq!(run(&mut q, write(false), Some(&src)), StoreStatus::Good);
    let dst = buffer(8192);
    assert_eq!(
        run(&mut q, StoreOp::Read { lba: 100, blocks: 16 }, Some(&dst)),
        StoreStatus::Good
    );
    assert_eq!(bytes(&dst, 8192), bytes(&src, 8192));

    // FUA through the O_DSYNC fd, then a flush.
    pattern(&src, 8192, 0x22);
    assert_eq!(run(&mut q, write(true), Some(&src)), StoreStatus::Good);
    assert_eq!(run(&mut q, StoreOp::Flush, None), StoreStatus::Good);
    assert_eq!(
        run(&mut q, StoreOp::Read { lba: 100, blocks: 16 }, Some(&dst)),
        StoreStatus::Good
    );
    assert_eq!(bytes(&dst, 8192), bytes(&src, 8192));

    // Compare: equal, then a miscompare at its byte offset.
    assert_eq!(
        run(&mut q, StoreOp::Compare { lba: 100, blocks: 16 }, Some(&src)),
        StoreStatus::Good
    );
    src.write_at(1000, &[!bytes(&src, 1001)[1000]]);
    assert_eq!(
        run(&mut q, StoreOp::Compare { lba: 100, blocks: 16 }, Some(&src)),
        StoreStatus::Miscompare { offset: Some(1000) }
    );

    assert_eq!(
        run(&mut q, StoreOp::Verify { lba: 0, blocks: 2048 }, None),
        StoreStatus::Good
    );

    // Write zeroes (written) and with deallocate (a hole), then unmap: all read zero.
    for (lba, deallocate) in [(100, false), (104, true)] {
        assert_eq!(
            run(
                &mut q,
                StoreOp::WriteZeroes {
                    lba,
                    blocks: 2,
                    deallocate
                },
                None
            ),
            StoreStatus::Good
        );
    }
    let ranges = vec![(112u64, 4u32)].into_boxed_slice();
    assert_eq!(run(&mut q, StoreOp::Unmap { ranges }, None), StoreStatus::Good);
    assert_eq!(
        run(&mut q, StoreOp::Read { lba: 100, blocks: 16 }, Some(&dst)),
        StoreStatus::Good
    );
    let got = bytes(&dst, 8192);
    let expected = bytes(&src, 8192);
    for block in 0..16 {
        let range = block * 512..(block + 1) * 512;
        let zero = matches!(block, 0 | 1 | 4 | 5 | 12..=15);
        if zero {
            assert!(got[range].iter().all(|&b| b == 0), "block {block} not zero");
        } else if block != 1 {
            assert_eq!(got[range.clone()], expected[range], "block {block}");
        }
    }
}

fn write_same_of_one_block_writes_it(engine: IoEngine) {
    let dir = TempDir::new("ws");
    let store = open(&config(engine, &dir.file("disk.img"), Some(1 << 20))).expect("open");
    let mut q = store.open_queue().expect("queue");
    let src = buffer(4096);
    src.fill(0, 512, 0xa5);
    assert_eq!(
        run(&mut q, StoreOp::WriteSame { lba: 7, blocks: 1 }, Some(&src)),
        StoreStatus::Good
    );
    // And a range longer than the scratch buffer (4 MiB of 512-byte blocks is out of a 1 MiB
    // disk: use the whole disk, 2048 blocks = 1 MiB, plus a 1-block tail check).
    src.fill(0, 512, 0x3c);
    assert_eq!(
        run(
            &mut q,
            StoreOp::WriteSame {
                lba: 20,
                blocks: 2028
            },
            Some(&src)
        ),
        StoreStatus::Good
    );
    let dst = buffer(4096);
    assert_eq!(
        run(&mut q, StoreOp::Read { lba: 6, blocks: 3 }, Some(&dst)),
        StoreStatus::Good
    );
    let got = bytes(&dst, 1536);
    assert!(got[..512].iter().all(|&b| b == 0));
    assert!(
        got[512..1024].iter().all(|&b| b == 0xa5),
        "the single block was written"
    );
    assert!(got[1024..].iter().all(|&b| b == 0));
    assert_eq!(
        run(&mut q, StoreOp::Read { lba: 2040, blocks: 8 }, Some(&dst)),
        StoreStatus::Good
    );
    assert!(bytes(&dst, 4096).iter().all(|&b| b == 0x3c));
}

fn data_persists_across_reopen(engine: IoEngine) {
    let dir = TempDir::new("persist");
    let path = dir.file("disk.img");
    let src = buffer(4096);
    pattern(&src, 4096, 0x77);
    {
        let store = open(&config(engine, &path, Some(64 << 10))).expect("create");
        let mut q = store.open_queue().expect("queue");
        let op = StoreOp::Write {
            lba: 8,
            blocks: 8,
            fua: false,
        };
        assert_eq!(run(&mut q, op, Some(&src)), StoreStatus::Good);
        assert_eq!(run(&mut q, StoreOp::Flush, None), StoreStatus::Good);
    }
    // Reopened without a size (the file's own), and with the same size.
    for size in [None, Some(64 << 10)] {
        let store = open(&config(engine, &path, size)).expect("reopen");
        assert_eq!(store.info().num_blocks, 128);
        let mut q = store.open_queue().expect("queue");
        let dst = buffer(4096);
        assert_eq!(
            run(&mut q, StoreOp::Read { lba: 8, blocks: 8 }, Some(&dst)),
            StoreStatus::Good
        );
        assert_eq!(bytes(&dst, 4096), bytes(&src, 4096));
    }
}

fn out_of_range_and_malformed_requests(engine: IoEngine) {
    let dir = TempDir::new("range");
    let store = open(&config(engine, &dir.file("disk.img"), Some(64 << 10))).expect("open");
    let mut q = store.open_queue().expect("queue");
    let buf = buffer(4096);
    for op in [
        StoreOp::Read { lba: 127, blocks: 2 },
        StoreOp::Read {
            lba: u64::MAX,
            blocks: 2,
        },
        StoreOp::Write {
            lba: 128,
            blocks: 1,
            fua: true,
        },
        StoreOp::WriteSame { lba: 120, blocks: 9 },
        StoreOp::Compare { lba: 128, blocks: 1 },
    ] {
        assert_eq!(
            run(&mut q, op.clone(), Some(&buf)),
            StoreStatus::OutOfRange,
            "{op:?}"
        );
    }
    assert_eq!(
        run(&mut q, StoreOp::Verify { lba: 100, blocks: 29 }, None),
        StoreStatus::OutOfRange
    );
    let ranges = vec![(0u64, 1u32), (127, 2)].into_boxed_slice();
    assert_eq!(
        run(&mut q, StoreOp::Unmap { ranges }, None),
        StoreStatus::OutOfRange
    );
    assert_eq!(
        run(&mut q, StoreOp::Read { lba: 0, blocks: 1 }, None),
        StoreStatus::InvalidRequest
    );
    assert_eq!(
        run(&mut q, StoreOp::Read { lba: 0, blocks: 9 }, Some(&buf)),
        StoreStatus::InvalidRequest
    );
}

/// Creating an image fsyncs the directory that holds it after the file (its name is durable
/// too, not only its blocks), and creation still works with the real fsync, a bare file name
/// included (its directory is `.`). A failed directory fsync is a typed error naming the
/// directory; the created file stays, opened as an existing image by a retry.
#[test]
fn creating_an_image_syncs_its_directory() {
    let dir = TempDir::new("create-dir");
    let path = dir.file("disk.img");
    let mut synced = Vec::new();
    create_file_syncing(&path, 1 << 20, 512, false, |d| {
        synced.push(d.to_owned());
        Ok(())
    })
    .expect("create");
    assert_eq!(
        synced,
        std::slice::from_ref(&dir.0),
        "the directory holding the image"
    );
    assert_eq!(directory_of(Path::new("disk.img")), Path::new("."));
    sync_directory(Path::new(".")).expect("the current directory syncs");

    let other = dir.file("other.img");
    let e = create_file_syncing(&other, 1 << 20, 512, false, |_| {
        Err(io::Error::from_raw_os_error(libc::EIO))
    })
    .unwrap_err();
    assert!(
        matches!(&e, FileStoreError::Io { path, what, .. } if *path == dir.0 && what.contains("directory")),
        "{e}"
    );
    assert_eq!(
        std::fs::metadata(&other).expect("stat").len(),
        1 << 20,
        "it stays"
    );
    open(&config(IoEngine::Threads, &other, Some(1 << 20))).expect("a retry opens it");
    let e = sync_directory(&dir.file("absent")).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound);

    open(&config(IoEngine::Threads, &dir.file("real.img"), Some(1 << 20)))
        .expect("create with the real fsync");
}

#[test]
fn creation_and_refusals_of_sizes() {
    let engine = IoEngine::Auto;
    let dir = TempDir::new("sizes");
    let path = dir.file("disk.img");
    let e = open(&config(engine, &path, None)).unwrap_err();
    assert!(matches!(e, FileStoreError::Missing { .. }), "{e}");
    assert!(e.to_string().contains("give a size"), "{e}");
    let e = open(&config(engine, &path, Some(1000))).unwrap_err();
    assert!(matches!(e, FileStoreError::NotMultiple { .. }), "{e}");
    let e = open(&config(engine, &path, Some(256))).unwrap_err();
    assert!(matches!(e, FileStoreError::TooSmall { .. }), "{e}");
    assert!(!path.exists(), "nothing is created for a bad size");

    open(&config(engine, &path, Some(1 << 20))).expect("create");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 1 << 20);
    for other in [512 << 10, 2 << 20] {
        let e = open(&config(engine, &path, Some(other))).unwrap_err();
        assert!(matches!(e, FileStoreError::SizeMismatch { .. }), "{e}");
        assert!(e.to_string().contains("never truncated"), "{e}");
        assert_eq!(
            std::fs::metadata(&path).expect("stat").len(),
            1 << 20,
            "untouched"
        );
    }

    // An existing file that is not a multiple of the block size, or smaller than one block.
    let odd = dir.file("odd.img");
    std::fs::write(&odd, vec![0u8; 4096 + 512]).expect("write");
    let e = open(&FileStoreConfig {
        block_size: Some(4096),
        ..config(engine, &odd, None)
    })
    .unwrap_err();
    assert!(matches!(e, FileStoreError::NotMultiple { .. }), "{e}");
    let tiny = dir.file("tiny.img");
    std::fs::write(&tiny, [0u8; 100]).expect("write");
    let e = open(&config(engine, &tiny, None)).unwrap_err();
    assert!(matches!(e, FileStoreError::TooSmall { .. }), "{e}");

    let e = open(&config(engine, &dir.file("no/such/dir.img"), Some(1 << 20))).unwrap_err();
    assert!(matches!(e, FileStoreError::NoDirectory { .. }), "{e}");
    let e = open(&config(engine, &dir.0, None)).unwrap_err();
    assert!(matches!(e, FileStoreError::NotFileOrDevice { .. }), "{e}");
    let e = open(&FileStoreConfig {
        block_size: Some(1000),
        ..config(engine, &path, None)
    })
    .unwrap_err();
    assert!(matches!(e, FileStoreError::BlockSize { .. }), "{e}");
}

#[test]
fn permission_denied_says_so() {
    let engine = IoEngine::Auto;
    let dir = TempDir::new("perm");
    let path = dir.file("ro.img");
    std::fs::write(&path, vec![0u8; 4096]).expect("write");
    let mut perms = std::fs::metadata(&path).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o400);
    std::fs::set_permissions(&path, perms).expect("chmod");
    match open(&config(engine, &path, None)) {
        Err(e) => {
            assert!(matches!(e, FileStoreError::PermissionDenied { .. }), "{e}");
            assert!(!e.is_io());
        }
        // root ignores the mode; an immutable file (chattr +i) stops root too (EPERM).
        Ok(store) => {
            drop(store);
            let chattr = |flag: &str| {
                std::process::Command::new("chattr")
                    .arg(flag)
                    .arg(&path)
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !chattr("+i") {
                scst_accel_hal::skip::test_skipped(
                    "permission_denied_says_so",
                    "running as root and chattr +i is not available",
                );
                return;
            }
            let result = open(&config(engine, &path, None));
            chattr("-i");
            let e = result.unwrap_err();
            assert!(matches!(e, FileStoreError::PermissionDenied { .. }), "{e}");
            assert!(e.to_string().contains("permission denied"), "{e}");
        }
    }
}

/// tmpfs refused O_DIRECT before Linux 6.6 (EINVAL at open); since, it accepts it. Either the
/// store opens and works, or the error is the typed one that says to use buffered I/O. Buffered
/// I/O works there in any case.
fn o_direct_on_tmpfs_opens_or_says_to_use_buffered_io(engine: IoEngine) {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        scst_accel_hal::skip::test_skipped(
            &format!("o_direct_on_tmpfs_opens_or_says_to_use_buffered_io ({engine})"),
            "no /dev/shm",
        );
        return;
    }
    let dir = TempDir::under(shm, "tmpfs");
    let path = dir.file("disk.img");
    match open(&config(engine, &path, Some(64 << 10))) {
        Ok(store) => {
            let mut q = store.open_queue().expect("queue");
            let buf = buffer(4096);
            assert_eq!(
                run(&mut q, StoreOp::Read { lba: 0, blocks: 8 }, Some(&buf)),
                StoreStatus::Good
            );
        }
        Err(e) => {
            assert!(matches!(e, FileStoreError::DirectUnsupported { .. }), "{e}");
            assert!(e.to_string().contains("buffered"), "{e}");
        }
    }
    let store = open(&FileStoreConfig {
        direct: false,
        ..config(engine, &path, Some(64 << 10))
    })
    .expect("buffered open");
    let mut q = store.open_queue().expect("queue");
    let buf = buffer(4096);
    buf.fill(0, 4096, 0x42);
    let op = StoreOp::Write {
        lba: 0,
        blocks: 8,
        fua: true,
    };
    assert_eq!(run(&mut q, op, Some(&buf)), StoreStatus::Good);
    assert_eq!(run(&mut q, StoreOp::Flush, None), StoreStatus::Good);
}

/// A failed write is WriteError at the failing LBA, never Good. A real EIO needs a failing
/// device (dm-error: device-mapper; a full file system for ENOSPC is the ignored test below,
/// it needs mount), so the errno is injected into the store's own transfer path
/// (what a short write followed by EIO looks like); and a file truncated under the store gives
/// a real EOF inside the range, which is a read error at the first missing block.
fn a_failed_write_is_a_write_error_at_the_failing_lba(engine: IoEngine) {
    let dir = TempDir::new("efbig");
    let store = open(&FileStoreConfig {
        direct: false,
        ..config(engine, &dir.file("disk.img"), Some(1 << 20))
    })
    .expect("open");
    let shared = Arc::clone(&store.shared);
    let buf = buffer(8192);
    buf.fill(0, 8192, 0x99);
    // Blocks 100..108 are written, then EIO from byte 4096 of the range (LBA 108) on.
    let status = shared.write(100 * 512, 8192, Through::WriteBack, |fd, pos, off, n| {
        if off >= 4096 {
            Err(io::Error::from_raw_os_error(libc::EIO))
        } else {
            buf.pwrite(fd, pos, off, n.min(4096 - off))
        }
    });
    assert_eq!(status, StoreStatus::WriteError { lba: 108 });
    let status = shared.read(0, 8192, |_, _, _, _| Err(io::Error::from_raw_os_error(libc::EIO)));
    assert_eq!(status, StoreStatus::ReadError { lba: 0 });
    // A file truncated under the store: reads past the new end hit EOF, a read error.
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.file("disk.img"))
        .expect("open")
        .set_len(4096)
        .expect("truncate");
    let mut q = store.open_queue().expect("queue");
    assert_eq!(
        run(&mut q, StoreOp::Read { lba: 6, blocks: 4 }, Some(&buf)),
        StoreStatus::ReadError { lba: 8 }
    );
    assert_eq!(
        run(&mut q, StoreOp::Verify { lba: 0, blocks: 16 }, None),
        StoreStatus::ReadError { lba: 8 }
    );
}

fn many_queues_share_the_bounded_pool(engine: IoEngine) {
    let dir = TempDir::new("pool");
    let store = open(&config(engine, &dir.file("disk.img"), Some(4 << 20))).expect("open");
    std::thread::scope(|scope| {
        for worker in 0..4u64 {
            let store = &store;
            scope.spawn(move || {
                let mut q = store.open_queue().expect("queue");
                let buf = buffer(4096);
                for i in 0..50u64 {
                    let lba = (worker * 50 + i) * 8;
                    buf.fill(0, 4096, (lba % 251) as u8);
                    let op = StoreOp::Write {
                        lba,
                        blocks: 8,
                        fua: i % 7 == 0,
                    };
                    assert_eq!(run(&mut q, op, Some(&buf)), StoreStatus::Good);
                    assert_eq!(
                        run(&mut q, StoreOp::Compare { lba, blocks: 8 }, Some(&buf)),
                        StoreStatus::Good
                    );
                }
            });
        }
    });
    // A batch larger than the queue depth is partly refused, the rest left in the batch.
    let mut q = store.open_queue().expect("queue");
    let mut batch: Vec<StoreRequest> = (0..QUEUE_DEPTH as u64 + 10)
        .map(|tag| StoreRequest {
            tag,
            op: StoreOp::Flush,
            buffer: None,
        })
        .collect();
    let e = q
        .submit(&mut crate::store::StoreToken::root(), &mut batch)
        .unwrap_err();
    assert!(matches!(e, StoreError::QueueFull { .. }), "{e}");
    assert_eq!(batch.len(), 10);
    assert_eq!(batch[0].tag, QUEUE_DEPTH as u64);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < QUEUE_DEPTH {
        assert!(Instant::now() < deadline);
        q.reap(&mut out);
        locks::sleep(Duration::from_millis(1));
    }
    assert!(out.iter().all(|c| c.status == StoreStatus::Good));
}

/// A failed fdatasync is sticky (Linux may have dropped the pages it could not write): every
/// later flush fails, at the lowest LBA written back since the last good flush. fdatasync
/// cannot be made to fail on a healthy file system here, so the threads' flush runs with an
/// fdatasync that fails with EIO (`Shared::flush_with`); the write-back tracking, the sticky
/// state and the later flushes of the engine (a real fdatasync, or FSYNC on the ring) are real.
fn a_failed_flush_stays_failed(engine: IoEngine) {
    let dir = TempDir::new("flush");
    let store = open(&config(engine, &dir.file("disk.img"), Some(64 << 10))).expect("open");
    let mut q = store.open_queue().expect("queue");
    let buf = buffer(4096);
    let write = |q: &mut Box<dyn StoreQueue>, lba, fua| {
        let op = StoreOp::Write { lba, blocks: 1, fua };
        assert_eq!(run(q, op, Some(&buf)), StoreStatus::Good);
    };
    for (lba, fua) in [(40, false), (9, true), (12, false)] {
        write(&mut q, lba, fua);
    }
    // FUA writes are already stable: the lowest written-back LBA is 12, not 9.
    assert_eq!(store.shared.dirty_low.load(Ordering::Acquire), 12);
    assert!(store.dump().expect("dump").contains("from LBA 12"));
    assert_eq!(run(&mut q, StoreOp::Flush, None), StoreStatus::Good);
    assert_eq!(store.shared.dirty_low.load(Ordering::Acquire), u64::MAX);
    write(&mut q, 30, false);
    write(&mut q, 20, false);
    let eio = || Err(io::Error::from_raw_os_error(libc::EIO));
    assert_eq!(store.shared.flush_with(&eio), StoreStatus::WriteError { lba: 20 });
    // Nothing written since, and the fdatasyncs succeed: still failed, at the same LBA.
    for _ in 0..2 {
        assert_eq!(
            run(&mut q, StoreOp::Flush, None),
            StoreStatus::WriteError { lba: 20 }
        );
    }
    assert!(store.dump().expect("dump").contains("FAILED"));
    // What is written back after the failure no fdatasync makes durable either: the failure
    // names it (every block below its LBA is durable, the engine's FUA READ relies on it).
    write(&mut q, 3, false);
    assert_eq!(
        run(&mut q, StoreOp::Flush, None),
        StoreStatus::WriteError { lba: 3 }
    );
    assert!(store.dump().expect("dump").contains("from LBA 3 on may be lost"));
}

/// A WRITE ZEROES done by punching a hole, and the part of a copy that copy_file_range made
/// before it stopped, are owed to the next flush like a write: a failed flush must name an LBA
/// no higher than theirs. The copy's source is cut by a truncation under the store, so
/// copy_file_range stops at the file's end and the rest fails (a read error).
#[test]
fn holes_and_partial_copies_are_owed_to_the_next_flush() {
    let dir = TempDir::new("owed");
    let path = dir.file("disk.img");
    // Buffered: copy_file_range within a file on any file system here.
    let store = open(&FileStoreConfig {
        direct: false,
        ..config(IoEngine::Threads, &path, Some(1 << 20))
    })
    .expect("open");
    let mut q = store.open_queue().expect("queue");
    let dirty = || store.shared.dirty_low.load(Ordering::Acquire);
    let buf = buffer(8192);
    pattern(&buf, 8192, 0x21);
    let write = StoreOp::Write {
        lba: 32,
        blocks: 16,
        fua: true,
    };
    assert_eq!(run(&mut q, write, Some(&buf)), StoreStatus::Good);
    assert_eq!(dirty(), u64::MAX);
    let zeroes = StoreOp::WriteZeroes {
        lba: 40,
        blocks: 8,
        deallocate: true,
    };
    assert_eq!(run(&mut q, zeroes, None), StoreStatus::Good);
    assert!(store.shared.punch.load(Ordering::Relaxed), "a hole was punched");
    assert_eq!(dirty(), 40, "the hole");
    assert_eq!(run(&mut q, StoreOp::Flush, None), StoreStatus::Good);
    // An UNMAP's holes too (LBPRZ: they change what reads return).
    let unmap = StoreOp::Unmap {
        ranges: vec![(48, 8), (24, 8)].into(),
    };
    assert_eq!(run(&mut q, unmap, None), StoreStatus::Good);
    assert_eq!(dirty(), 24, "the UNMAP's lower hole");
    assert_eq!(run(&mut q, StoreOp::Flush, None), StoreStatus::Good);
    // Blocks 32..40 stay; the copy of 32..48 to 0..16 copies 8 blocks, then finds the end.
    OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(40 * 512))
        .expect("truncate");
    let copy = StoreOp::Copy {
        src_lba: 32,
        dst_lba: 0,
        blocks: 16,
    };
    assert_eq!(run(&mut q, copy, None), StoreStatus::ReadError { lba: 40 });
    assert!(
        store.shared.copy_range.load(Ordering::Relaxed),
        "by copy_file_range"
    );
    let out = buffer(4096);
    assert_eq!(
        run(&mut q, StoreOp::Read { lba: 0, blocks: 8 }, Some(&out)),
        StoreStatus::Good
    );
    assert_eq!(bytes(&out, 4096), bytes(&buf, 4096), "the part copied");
    assert_eq!(dirty(), 0, "the part copied");
}

/// ENOSPC on a block device: out of space (thin provisioning) while the device still holds the
/// failing block, a write past its end (it shrank) once it ends before or inside that block, a
/// write error when its size cannot be read.
#[test]
fn enospc_on_a_device_is_out_of_space_unless_it_ends_before_the_block() {
    use super::failure::out_of_space;
    assert!(out_of_space(10, 512, || Ok(11 * 512)));
    assert!(out_of_space(10, 512, || Ok(1 << 30)));
    assert!(out_of_space(10, 4096, || Ok(11 * 4096)));
    assert!(!out_of_space(10, 512, || Ok(10 * 512)));
    assert!(!out_of_space(10, 512, || Ok(10 * 512 + 256)));
    assert!(!out_of_space(10, 4096, || Ok(11 * 512)));
    assert!(!out_of_space(10, 512, || Ok(0)));
    assert!(!out_of_space(10, 512, || Err(io::Error::from_raw_os_error(
        libc::EIO
    ))));
}

/// A medium whose fdatasyncs are scripted: call `k` (in the order they start) waits until the
/// test releases it, then returns `results[k]`; it counts the calls and the most that ran at
/// once. Every wait is bounded (10 s, then the call fails with ETIMEDOUT).
struct ScriptedSync {
    results: Vec<Option<i32>>,
    calls: AtomicUsize,
    running: AtomicUsize,
    max_running: AtomicUsize,
    released: Vec<AtomicBool>,
}

impl ScriptedSync {
    /// `results[k]`: None for success, Some(errno) for a failure.
    fn new(results: &[Option<i32>]) -> Self {
        Self {
            results: results.to_vec(),
            calls: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            max_running: AtomicUsize::new(0),
            released: results.iter().map(|_| AtomicBool::new(false)).collect(),
        }
    }

    fn sync(&self) -> io::Result<()> {
        let k = self.calls.fetch_add(1, Ordering::AcqRel);
        let now = self.running.fetch_add(1, Ordering::AcqRel) + 1;
        self.max_running.fetch_max(now, Ordering::AcqRel);
        let deadline = Instant::now() + Duration::from_secs(10);
        let released = loop {
            if self.released.get(k).is_none_or(|r| r.load(Ordering::Acquire)) {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            locks::sleep(Duration::from_millis(1));
        };
        self.running.fetch_sub(1, Ordering::AcqRel);
        match self.results.get(k).copied().flatten() {
            _ if !released => Err(io::Error::from_raw_os_error(libc::ETIMEDOUT)),
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => Ok(()),
        }
    }

    fn release(&self, k: usize) {
        self.released[k].store(true, Ordering::Release);
    }

    /// Wait (bounded) until `f` holds.
    fn until(&self, what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            locks::sleep(Duration::from_millis(1));
        }
    }
}

/// A queue end for `Shared::flush_in_turn`'s answers: its waiters and what they were answered.
struct FlushAnswers {
    queue: Arc<QueueShared>,
    answers: Receiver<StoreCompletion>,
}

impl FlushAnswers {
    fn new() -> Self {
        let (done, answers) = crossbeam_channel::unbounded();
        let queue = Arc::new(QueueShared {
            done,
            notify: EventFd::new().expect("eventfd"),
            abort_epoch: AtomicU64::new(0),
        });
        Self { queue, answers }
    }

    fn waiter(&self, tag: u64) -> FlushWaiter {
        FlushWaiter {
            tag,
            epoch: self.queue.abort_epoch.load(Ordering::Acquire),
            queue: Arc::clone(&self.queue),
        }
    }

    /// The `n` answers (bounded wait), as (tag, status) in tag order.
    fn take(&self, n: usize) -> Vec<(u64, StoreStatus)> {
        let mut got: Vec<_> = (0..n)
            .map(|i| {
                let c = self
                    .answers
                    .recv_timeout(Duration::from_secs(10))
                    .unwrap_or_else(|e| panic!("answer {i} of {n}: {e}"));
                (c.tag, c.status)
            })
            .collect();
        got.sort_unstable_by_key(|&(tag, _)| tag);
        got
    }
}

/// An I/O thread that unwinds inside its fdatasync (a panic) gives its turn back: the next
/// FLUSH runs, and serves one left waiting, instead of every later FLUSH waiting for a turn
/// nobody holds.
#[test]
fn a_flush_turn_is_given_back_by_a_thread_that_unwinds() {
    let dir = TempDir::new("unwind");
    let store = open(&config(IoEngine::Threads, &dir.file("disk.img"), Some(64 << 10))).expect("open");
    let shared = &*store.shared;
    let answers = FlushAnswers::new();
    let waiter = answers.waiter(1);
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // A FLUSH arrives while this one's fdatasync runs, then the fdatasync panics.
        shared.flush_in_turn(waiter, &|| {
            shared.flush_in_turn(answers.waiter(2), &|| Ok(()));
            panic!("an fdatasync that unwinds (test)")
        });
    }));
    assert!(unwound.is_err(), "the scripted fdatasync panics");
    shared.flush_in_turn(answers.waiter(3), &|| Ok(()));
    assert_eq!(
        answers.take(2),
        [(2, StoreStatus::Good), (3, StoreStatus::Good)],
        "the flush left waiting and the next one are served"
    );
}

/// Flushes `tags` started on threads of their own while the first one's fdatasync runs (the
/// later ones after `wrote_back(12)`): they are on the waiting list (or, were flushes not
/// serialized, in an fdatasync of their own) before the test releases any fdatasync.
fn start_overlapping_flushes<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    shared: &'s Shared,
    medium: &'s ScriptedSync,
    answers: &'s FlushAnswers,
    tags: &[u64],
) {
    let flushes = |seq: &Shared| seq.flushes.lock_unchecked_at_runtime().waiting.len();
    let (&first, later) = tags.split_first().expect("a flush");
    let waiter = answers.waiter(first);
    scope.spawn(move || shared.flush_in_turn(waiter, &|| medium.sync()));
    medium.until("the first fdatasync", || {
        medium.calls.load(Ordering::Acquire) == 1
    });
    shared.wrote_back(12 * 512);
    for &tag in later {
        let waiter = answers.waiter(tag);
        scope.spawn(move || shared.flush_in_turn(waiter, &|| medium.sync()));
    }
    let n = later.len();
    medium.until("the later flushes to wait or run", || {
        flushes(shared) == n || medium.calls.load(Ordering::Acquire) == 1 + n
    });
}

/// The flush that owed LBA 5 fails while flushes owing LBA 12 wait for it: they wait for the
/// next fdatasync instead of running their own alongside it (which could have taken the EIO of
/// block 5's page and named 12, so that a flush then said every block below 12 was on the
/// medium and the engine served a FUA READ of block 5; or answered GOOD over LBA 12 before the
/// failure was recorded, its own write-back error taken by the older one). They all name 5,
/// none is GOOD, and no fdatasync runs after the failure.
#[test]
fn a_flush_arriving_while_a_failing_fdatasync_runs_names_the_lowest_lba_and_is_not_good() {
    let dir = TempDir::new("overlap");
    let store = open(&config(IoEngine::Threads, &dir.file("disk.img"), Some(64 << 10))).expect("open");
    let shared = &*store.shared;
    // Call 0 (the first flush's) fails; a call 1 (a second one alongside) would succeed first.
    let medium = ScriptedSync::new(&[Some(libc::EIO), None, None]);
    let answers = FlushAnswers::new();
    shared.wrote_back(5 * 512);
    std::thread::scope(|scope| {
        start_overlapping_flushes(scope, shared, &medium, &answers, &[1, 2, 3]);
        medium.release(1);
        medium.release(2);
        medium.until("a second fdatasync to end", || {
            medium.running.load(Ordering::Acquire) <= 1
        });
        medium.release(0);
    });
    let failed = StoreStatus::WriteError { lba: 5 };
    assert_eq!(answers.take(3), [(1, failed), (2, failed), (3, failed)]);
    assert_eq!(
        medium.max_running.load(Ordering::Acquire),
        1,
        "one fdatasync at a time"
    );
    assert_eq!(medium.calls.load(Ordering::Acquire), 1, "none after the failure");
    let mut q = store.open_queue().expect("queue");
    assert_eq!(run(&mut q, StoreOp::Flush, None), failed);
}

/// FLUSHes arriving while an fdatasync runs join the next one: one fdatasync serves them all
/// (after the running one ends, never alongside it), and its failure names the lowest LBA they
/// owe; the running one's success is theirs to keep.
#[test]
fn flushes_arriving_while_an_fdatasync_runs_share_the_next_one() {
    let dir = TempDir::new("join");
    let store = open(&config(IoEngine::Threads, &dir.file("disk.img"), Some(64 << 10))).expect("open");
    let shared = &*store.shared;
    let medium = ScriptedSync::new(&[None, Some(libc::EIO), None]);
    let answers = FlushAnswers::new();
    shared.wrote_back(5 * 512);
    std::thread::scope(|scope| {
        start_overlapping_flushes(scope, shared, &medium, &answers, &[1, 2, 3]);
        medium.release(0);
        medium.release(1);
        medium.release(2);
    });
    let failed = StoreStatus::WriteError { lba: 12 };
    assert_eq!(
        answers.take(3),
        [(1, StoreStatus::Good), (2, failed), (3, failed)]
    );
    assert_eq!(
        medium.max_running.load(Ordering::Acquire),
        1,
        "one fdatasync at a time"
    );
    assert_eq!(
        medium.calls.load(Ordering::Acquire),
        2,
        "the waiting flushes share one"
    );
}

/// A FLUSH whose queue is aborted while it waits for the next fdatasync is answered Aborted
/// without one (it never began), and what was written back stays owed to the next flush.
#[test]
fn a_waiting_flush_of_an_aborted_queue_is_aborted_without_an_fdatasync() {
    let dir = TempDir::new("join-abort");
    let store = open(&config(IoEngine::Threads, &dir.file("disk.img"), Some(64 << 10))).expect("open");
    let shared = &*store.shared;
    let medium = ScriptedSync::new(&[None, None]);
    let answers = FlushAnswers::new();
    shared.wrote_back(5 * 512);
    std::thread::scope(|scope| {
        start_overlapping_flushes(scope, shared, &medium, &answers, &[1, 2]);
        answers.queue.abort_epoch.fetch_add(1, Ordering::AcqRel);
        medium.release(0);
        medium.release(1);
    });
    assert_eq!(
        answers.take(2),
        [(1, StoreStatus::Good), (2, StoreStatus::Aborted)]
    );
    assert_eq!(medium.calls.load(Ordering::Acquire), 1);
    assert_eq!(shared.dirty_low.load(Ordering::Acquire), 12, "still owed");
}

/// An fdatasync that fails for want of space (ENOSPC: a thin pool or a file system full when
/// the pages were written back; EDQUOT alike) is SpaceExhausted, as a write would be, not
/// WRITE ERROR; and it stays failed like any other flush failure (the pages were dropped), at
/// the lowest LBA owed, lowered by what is written back after it.
#[test]
fn a_flush_out_of_space_is_space_exhausted_and_stays_failed() {
    for errno in [libc::ENOSPC, libc::EDQUOT] {
        let dir = TempDir::new("flush-space");
        let store = open(&config(IoEngine::Threads, &dir.file("disk.img"), Some(64 << 10))).expect("open");
        let mut q = store.open_queue().expect("queue");
        let buf = buffer(4096);
        let op = |lba| StoreOp::Write {
            lba,
            blocks: 1,
            fua: false,
        };
        assert_eq!(run(&mut q, op(20), Some(&buf)), StoreStatus::Good);
        let full = || Err(io::Error::from_raw_os_error(errno));
        assert_eq!(
            store.shared.flush_with(&full),
            StoreStatus::SpaceExhausted { lba: 20 }
        );
        assert_eq!(
            run(&mut q, StoreOp::Flush, None),
            StoreStatus::SpaceExhausted { lba: 20 },
            "sticky"
        );
        assert_eq!(run(&mut q, op(3), Some(&buf)), StoreStatus::Good);
        assert_eq!(
            run(&mut q, StoreOp::Flush, None),
            StoreStatus::SpaceExhausted { lba: 3 }
        );
        assert!(store.dump().expect("dump").contains("FAILED"));
    }
}

/// Run a command of `disk` on `q` through all its store steps (`buf` is the data-out of those
/// that take one); its final response.
fn command(
    disk: &crate::scsi::Disk,
    q: &mut Box<dyn StoreQueue>,
    mut plan: crate::scsi::Plan,
    buf: &IoBuffer,
) -> crate::scsi::Response {
    loop {
        match plan {
            crate::scsi::Plan::Done(r) => return r,
            crate::scsi::Plan::Io(io) => {
                let status = run(q, io.op.clone(), io.op.uses_buffer().then_some(buf));
                plan = disk.finish(&io, status);
            }
        }
    }
}

/// WCE 0: WRITE SAME and an EXTENDED COPY segment, which the store writes back (it has no FUA
/// for them), are answered GOOD only once a flush covered them: nothing is left written back
/// since the last flush. With WCE 1 the WRITE SAME is left to the next SYNCHRONIZE CACHE.
fn with_the_write_cache_off_write_same_and_copy_are_durable_when_good(engine: IoEngine) {
    use crate::abi::sam_status;
    let dir = TempDir::new("wce0");
    let store = open(&config(engine, &dir.file("disk.img"), Some(1 << 20))).expect("open");
    let mut q = store.open_queue().expect("queue");
    let dirty = || store.shared.dirty_low.load(Ordering::Acquire);
    let data = vec![0x5au8; 512];
    let buf = buffer(4096);
    buf.write_at(0, &data);
    let write_same = [0x41, 0, 0, 0, 0, 5, 0, 0, 9, 0];
    for write_cache in [true, false] {
        let mut cfg = crate::scsi::DiskConfig::new(512, 2048);
        cfg.write_cache = write_cache;
        let disk = crate::scsi::Disk::try_new(cfg).expect("disk");
        let plan = disk.start(&mut locks::LockToken::root(), &write_same, &data);
        assert_eq!(command(&disk, &mut q, plan, &buf).status, sam_status::GOOD);
        if write_cache {
            assert_eq!(dirty(), 5, "WCE 1: owed to the next flush");
            assert_eq!(run(&mut q, StoreOp::Flush, None), StoreStatus::Good);
            continue;
        }
        assert_eq!(dirty(), u64::MAX, "WCE 0: WRITE SAME flushed before GOOD");
        let plan = disk.copy_segment(5, 100, 8 * 512);
        assert_eq!(command(&disk, &mut q, plan, &buf).status, sam_status::GOOD);
        assert_eq!(dirty(), u64::MAX, "WCE 0: the copy flushed before GOOD");
    }
    let out = buffer(4096);
    assert_eq!(
        run(&mut q, StoreOp::Read { lba: 100, blocks: 8 }, Some(&out)),
        StoreStatus::Good
    );
    assert!(bytes(&out, 4096).iter().all(|&b| b == 0x5a), "the copy was made");
}

/// A file on this file system: the physical block is st_blksize, and a hole reads as zeroes
/// (LBPRZ): UNMAP, then READ, returns zeroes where data was.
fn a_file_reports_its_physical_block_and_unmapped_blocks_read_zero(engine: IoEngine) {
    let dir = TempDir::new("lbprz");
    let path = dir.file("disk.img");
    let store = open(&FileStoreConfig {
        block_size: Some(512),
        ..config(engine, &path, Some(1 << 20))
    })
    .expect("open");
    let blksize = std::fs::metadata(&path).expect("stat").blksize();
    let info = store.info();
    if blksize == 4096 {
        assert_eq!(info.physical_block_size, 4096);
        assert_eq!(info.physical_block_exponent(), 3);
    } else {
        eprintln!("note: st_blksize here is {blksize}, not 4096");
    }
    assert!(info.supports_unmap && info.unmapped_reads_zero);
    let mut q = store.open_queue().expect("queue");
    let buf = buffer(65536);
    pattern(&buf, 65536, 0x5A);
    let write = StoreOp::Write {
        lba: 0,
        blocks: 128,
        fua: false,
    };
    assert_eq!(run(&mut q, write, Some(&buf)), StoreStatus::Good);
    // 4096-aligned, so a hole is punched whatever the file system block.
    let ranges = vec![(8u64, 16u32)].into_boxed_slice();
    assert_eq!(run(&mut q, StoreOp::Unmap { ranges }, None), StoreStatus::Good);
    let out = buffer(65536);
    let read = StoreOp::Read { lba: 0, blocks: 128 };
    assert_eq!(run(&mut q, read, Some(&out)), StoreStatus::Good);
    let got = bytes(&out, 65536);
    let expected = bytes(&buf, 65536);
    assert!(
        got[8 * 512..24 * 512].iter().all(|&b| b == 0),
        "unmapped blocks read zero"
    );
    assert_eq!(got[..8 * 512], expected[..8 * 512]);
    assert_eq!(got[24 * 512..], expected[24 * 512..]);
}

/// A file whose file system cannot punch holes (the probe's punch refused with EOPNOTSUPP, as
/// ramfs and vfat refuse it; the real one is `failures::ramfs_cannot_punch_holes_so_the_disk_is_thick`)
/// is not offered deallocation: thin, its UNMAPs would deallocate nothing and a FORMAT UNIT
/// would leave the old data where LBPRZ promises zeroes. The dump says so; WRITE ZEROES with
/// deallocate writes the zeroes. The probe punches past the end of the file, never inside.
#[test]
fn a_file_that_cannot_have_holes_punched_is_not_offered_deallocation() {
    let dir = TempDir::new("nopunch");
    let path = dir.file("disk.img");
    let size = 1u64 << 20;
    let probed = std::cell::Cell::new(None);
    let store = FileStore::open_probing(
        &config(IoEngine::Threads, &path, Some(size)),
        super::uring::available,
        |_: BorrowedFd<'_>, offset: u64, len: u64| {
            probed.set(Some((offset, len)));
            Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
        },
    )
    .expect("open");
    let (offset, len) = probed.get().expect("punching was probed");
    assert!(
        offset >= size && len > 0,
        "probed at {offset}+{len}, inside the file"
    );
    let info = store.info();
    assert!(
        !info.supports_unmap,
        "deallocation offered where no hole can be punched"
    );
    // The engine's disk: thin asked by the operator, as the service grants it.
    let mut cfg = crate::scsi::DiskConfig::for_store(&info);
    cfg.thin_provisioning = info.supports_unmap;
    let disk = crate::scsi::Disk::try_new(cfg).expect("disk");
    let provisioning = &disk.capabilities().provisioning;
    assert!(!provisioning.thin && !provisioning.unmapped_reads_zero);
    assert!(!store.shared.punch.load(Ordering::Relaxed));
    let dump = store.dump().expect("dump");
    assert!(dump.contains("cannot punch holes"), "{dump}");
    let mut q = store.open_queue().expect("queue");
    let buf = buffer(8192);
    pattern(&buf, 8192, 0x3C);
    let write = StoreOp::Write {
        lba: 0,
        blocks: 16,
        fua: false,
    };
    assert_eq!(run(&mut q, write, Some(&buf)), StoreStatus::Good);
    let zeroes = StoreOp::WriteZeroes {
        lba: 0,
        blocks: 16,
        deallocate: true,
    };
    assert_eq!(run(&mut q, zeroes, None), StoreStatus::Good);
    let out = buffer(8192);
    let read = StoreOp::Read { lba: 0, blocks: 16 };
    assert_eq!(run(&mut q, read, Some(&out)), StoreStatus::Good);
    assert!(bytes(&out, 8192).iter().all(|&b| b == 0));
    drop(q);
    drop(store);
    // Where the punch works, deallocation is offered.
    let store = FileStore::open_probing(
        &config(IoEngine::Threads, &path, Some(size)),
        super::uring::available,
        |_: BorrowedFd<'_>, _: u64, _: u64| Ok(()),
    )
    .expect("open");
    assert!(store.info().supports_unmap);
}

/// The probe of hole punching at open deallocates nothing the file holds and leaves its size
/// alone: a fully written image keeps every byte and every allocated block.
#[test]
fn probing_hole_punching_leaves_the_image_alone() {
    let dir = TempDir::new("punchprobe");
    let path = dir.file("disk.img");
    let size = 1usize << 20;
    std::fs::write(&path, vec![0xA5u8; size]).expect("image");
    let file = File::open(&path).expect("open");
    file.sync_all().expect("fsync");
    let before = file.metadata().expect("stat");
    let store = open(&FileStoreConfig {
        direct: false,
        ..config(IoEngine::Threads, &path, None)
    })
    .expect("open");
    assert!(
        store.info().supports_unmap,
        "the temp dir's file system punches holes"
    );
    let after = file.metadata().expect("stat");
    assert_eq!((after.len(), after.blocks()), (before.len(), before.blocks()));
    drop(store);
    assert!(std::fs::read(&path).expect("read").iter().all(|&b| b == 0xA5));
}

/// A loop device over a file in the temp dir, detached on drop.
struct LoopDevice {
    device: PathBuf,
    _dir: TempDir,
}

impl LoopDevice {
    /// `None`, with the reason, when one cannot be made here (not root, no losetup, no
    /// /dev/loop-control).
    fn new(size: u64) -> Result<Self, String> {
        // The effective uid, from /proc (no FFI for a test).
        let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
        let root = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0");
        if !root {
            return Err("not running as root (losetup needs it)".into());
        }
        let dir = TempDir::new("loop");
        let backing = dir.file("backing.img");
        let file = File::create(&backing).map_err(|e| e.to_string())?;
        file.set_len(size).map_err(|e| e.to_string())?;
        drop(file);
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&backing)
            .output()
            .map_err(|e| format!("cannot run losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let lo = Self { device, _dir: dir };
        if !lo.device.exists() {
            // A container may attach the device without having its node in /dev.
            return Err(format!(
                "{} was attached but has no device node here",
                lo.device.display()
            ));
        }
        Ok(lo)
    }

    fn queue_file(&self, name: &str) -> Option<String> {
        let dev = self.device.file_name()?.to_str()?;
        std::fs::read_to_string(format!("/sys/block/{dev}/queue/{name}"))
            .ok()
            .map(|s| s.trim().to_owned())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&self.device)
            .status();
    }
}

/// A block device's unmap granularity is its sysfs `queue/discard_granularity` in logical
/// blocks, rounded up (a smaller discard frees nothing: dm-thin's 64 KiB blocks), read through
/// a partition from its disk's queue; a device that does not discard (`discard_max_bytes` 0)
/// deallocates nothing and has none; one whose sysfs gives no granularity leaves the engine's
/// default (`None`). A fake sysfs root, so every case runs anywhere.
#[test]
fn a_block_devices_unmap_granularity_is_its_discard_granularity() {
    let dir = TempDir::new("sysfs");
    let sys = dir.0.clone();
    let queue = |device: &Path, files: &[(&str, &str)]| {
        let queue = device.join("queue");
        std::fs::create_dir_all(&queue).expect("queue dir");
        for (name, value) in files {
            std::fs::write(queue.join(name), format!("{value}\n")).expect("sysfs file");
        }
    };
    let node = |major: u32, minor: u32| sys.join(format!("dev/block/{major}:{minor}"));
    let limits = |major: u32, minor: u32| {
        queue_limits(&sys, Path::new("/dev/fake"), major, minor).expect("queue limits")
    };
    for (minor, logical, granularity, expected) in [
        (0, "512", "65536", 128),
        (1, "4096", "65536", 16),
        // Not a whole number of blocks: rounded up, as a discard of less frees nothing.
        (2, "4096", "6144", 2),
        // Below one block: one.
        (3, "4096", "512", 1),
    ] {
        let files = [
            ("logical_block_size", logical),
            ("discard_max_bytes", "17179869184"),
            ("discard_granularity", granularity),
        ];
        queue(&node(253, minor), &files);
        let got = limits(253, minor);
        assert!(got.discard, "{logical}/{granularity}");
        assert_eq!(
            got.unmap_granularity_blocks,
            Some(expected),
            "{logical}/{granularity}"
        );
    }
    // A device that does not discard: no UNMAP, whatever its granularity says.
    queue(
        &node(7, 0),
        &[
            ("logical_block_size", "512"),
            ("discard_max_bytes", "0"),
            ("discard_granularity", "4096"),
        ],
    );
    let loop0 = limits(7, 0);
    assert!(!loop0.discard);
    assert_eq!(loop0.unmap_granularity_blocks, None);
    // A device that discards but gives no granularity, or 0: the engine's default.
    queue(
        &node(8, 0),
        &[("logical_block_size", "512"), ("discard_max_bytes", "4096")],
    );
    assert_eq!(limits(8, 0).unmap_granularity_blocks, None);
    queue(
        &node(8, 16),
        &[
            ("logical_block_size", "512"),
            ("discard_max_bytes", "4096"),
            ("discard_granularity", "0"),
        ],
    );
    assert_eq!(limits(8, 16).unmap_granularity_blocks, None);
    // A partition: its node links to a directory inside its disk's, which holds the queue.
    let disk = sys.join("devices/virtual/block/dm-9");
    queue(
        &disk,
        &[
            ("logical_block_size", "512"),
            ("discard_max_bytes", "17179869184"),
            ("discard_granularity", "65536"),
        ],
    );
    std::fs::create_dir_all(disk.join("dm-9p1")).expect("partition dir");
    std::os::unix::fs::symlink(disk.join("dm-9p1"), node(259, 1)).expect("partition link");
    let partition = limits(259, 1);
    assert!(partition.discard);
    assert_eq!(partition.unmap_granularity_blocks, Some(128));
}

/// On a loop device (which discards: it punches holes in its backing file): UNMAP is
/// BLKDISCARD, WRITE ZEROES is BLKZEROOUT, and LBPRZ is claimed only if the device says
/// discarded blocks read as zeroes (discard_zeroes_data, 0 on modern kernels). Skipped, loudly,
/// where no loop device can be made.
fn a_loop_device_discards_and_zeroes_out(engine: IoEngine) {
    let lo = match LoopDevice::new(4 << 20) {
        Ok(lo) => lo,
        Err(reason) => {
            scst_accel_hal::skip::test_skipped(
                &format!("a_loop_device_discards_and_zeroes_out ({engine})"),
                &reason,
            );
            return;
        }
    };
    let store = open(&FileStoreConfig {
        workers: 2,
        io_engine: engine,
        ..FileStoreConfig::new(&lo.device)
    })
    .expect("open the loop device");
    let info = store.info();
    let discards = lo
        .queue_file("discard_max_bytes")
        .and_then(|s| s.parse::<u64>().ok())
        .is_some_and(|n| n > 0);
    let zeroes = lo.queue_file("discard_zeroes_data").as_deref() == Some("1");
    assert_eq!(info.supports_unmap, discards);
    assert_eq!(info.unmapped_reads_zero, discards && zeroes);
    // The device's own granularity, in its blocks (a loop device: its backing file system's).
    let granularity = lo
        .queue_file("discard_granularity")
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&g| discards && g > 0)
        .map(|g| {
            u32::try_from(g.div_ceil(u64::from(info.block_size)))
                .expect("blocks")
                .max(1)
        });
    assert_eq!(info.unmap_granularity_blocks, granularity);
    let physical = lo
        .queue_file("physical_block_size")
        .and_then(|s| s.parse::<u32>().ok())
        .expect("sysfs physical_block_size");
    assert_eq!(info.physical_block_size, physical.max(info.block_size));
    let bs = info.block_size as usize;
    let mut q = store.open_queue().expect("queue");
    let len = 64 * 1024;
    let blocks = u32::try_from(len / bs).expect("blocks");
    let data = buffer(len);
    pattern(&data, len, 0xA5);
    let out = buffer(len);
    let write = |q: &mut Box<dyn StoreQueue>| {
        let op = StoreOp::Write {
            lba: 0,
            blocks,
            fua: true,
        };
        assert_eq!(run(q, op, Some(&data)), StoreStatus::Good);
    };
    let read_is_zero = |q: &mut Box<dyn StoreQueue>| {
        let op = StoreOp::Read { lba: 0, blocks };
        assert_eq!(run(q, op, Some(&out)), StoreStatus::Good);
        bytes(&out, len).iter().all(|&b| b == 0)
    };
    // Neither BLKZEROOUT nor a discard is durable before a flush: owed to the next one.
    let owed = |q: &mut Box<dyn StoreQueue>| {
        let low = store.shared.dirty_low.load(Ordering::Acquire);
        assert_eq!(run(q, StoreOp::Flush, None), StoreStatus::Good);
        low
    };
    // WRITE ZEROES without deallocate: BLKZEROOUT, always zeroes.
    write(&mut q);
    let op = StoreOp::WriteZeroes {
        lba: 0,
        blocks,
        deallocate: false,
    };
    assert_eq!(run(&mut q, op, None), StoreStatus::Good);
    assert_eq!(owed(&mut q), 0, "BLKZEROOUT");
    assert!(read_is_zero(&mut q), "BLKZEROOUT left data");
    // WRITE ZEROES with deallocate: zeroes too (BLKDISCARD only where that guarantees them).
    write(&mut q);
    let op = StoreOp::WriteZeroes {
        lba: 0,
        blocks,
        deallocate: true,
    };
    assert_eq!(run(&mut q, op, None), StoreStatus::Good);
    assert_eq!(owed(&mut q), 0, "WRITE ZEROES with deallocate");
    assert!(read_is_zero(&mut q), "WRITE ZEROES with deallocate left data");
    // UNMAP: BLKDISCARD. A loop device punches a hole in its backing file, so the blocks
    // read zero here, though the store does not promise it unless the device says so.
    write(&mut q);
    let ranges = vec![(0u64, blocks)].into_boxed_slice();
    assert_eq!(run(&mut q, StoreOp::Unmap { ranges }, None), StoreStatus::Good);
    if discards {
        assert!(read_is_zero(&mut q), "BLKDISCARD on a loop device punches a hole");
    }
    drop(q);
    drop(store);
    // The ioctls themselves succeed (the store would otherwise fall back silently to writing
    // zeroes, and the checks above could not tell).
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&lo.device)
        .expect("reopen the loop device");
    sys::zero_out(file.as_fd(), 0, len as u64).expect("BLKZEROOUT");
    if discards {
        sys::discard(file.as_fd(), 0, len as u64).expect("BLKDISCARD");
    }
    // A misaligned range is EINVAL, not a silent partial operation.
    let err = sys::zero_out(file.as_fd(), 1, 512).expect_err("misaligned BLKZEROOUT");
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
}

/// GET LBA STATUS on a file: SEEK_DATA/SEEK_HOLE give the extents, an unmapped range is
/// reported deallocated (PROVISIONING STATUS 1), data mapped (0), SBC-3 §5.7.3.
fn lba_status_reports_the_holes_of_a_file(engine: IoEngine) {
    let dir = TempDir::new("lbastatus");
    let path = dir.file("disk.img");
    let store = open(&FileStoreConfig {
        block_size: Some(512),
        ..config(engine, &path, Some(1 << 20))
    })
    .expect("open");
    assert!(store.info().reports_lba_status);
    let mut q = store.open_queue().expect("queue");
    let buf = buffer(65536);
    pattern(&buf, 65536, 0x33);
    let write = StoreOp::Write {
        lba: 0,
        blocks: 128,
        fua: true,
    };
    assert_eq!(run(&mut q, write, Some(&buf)), StoreStatus::Good);
    let ranges = vec![(8u64, 16u32)].into_boxed_slice();
    assert_eq!(run(&mut q, StoreOp::Unmap { ranges }, None), StoreStatus::Good);
    let out = buffer(4096);
    let mut status = |lba: u64| {
        assert_eq!(
            run(&mut q, StoreOp::LbaStatus { lba }, Some(&out)),
            StoreStatus::Good
        );
        let d = bytes(&out, crate::store::LBA_STATUS_DATA_LEN);
        assert_eq!(&d[..4], &[0, 0, 0, 20], "PARAMETER DATA LENGTH: one descriptor");
        assert_eq!(u64::from_be_bytes(d[8..16].try_into().unwrap()), lba);
        let blocks = u32::from_be_bytes(d[16..20].try_into().unwrap());
        (blocks, d[20])
    };
    // The file is sparse: only what was written is mapped (the hole punched is 4096-aligned,
    // so it is exact on any file system with blocks up to 4 KiB).
    assert_eq!(status(0), (8, 0));
    assert_eq!(status(8), (16, 1));
    assert_eq!(status(24), (104, 0));
    assert_eq!(status(128), (2048 - 128, 1));
    assert_eq!(
        run(&mut q, StoreOp::LbaStatus { lba: 2048 }, Some(&out)),
        StoreStatus::OutOfRange
    );
    // A short allocation length gets the data truncated, nothing written past it.
    let short = IoBuffer::new(out.buffer.clone(), 8);
    out.fill(0, 4096, 0xEE);
    assert_eq!(
        run(&mut q, StoreOp::LbaStatus { lba: 0 }, Some(&short)),
        StoreStatus::Good
    );
    let d = bytes(&out, 9);
    assert_eq!(&d[..8], &[0, 0, 0, 20, 0, 0, 0, 0]);
    assert_eq!(d[8], 0xEE);
}

/// Submit `batch`, wholly accepted.
fn submit_all(q: &mut Box<dyn StoreQueue>, mut batch: Vec<StoreRequest>) {
    q.submit(&mut crate::store::StoreToken::root(), &mut batch)
        .expect("submit");
    assert!(batch.is_empty());
}

/// Reap until `n` completions came back (at most `bound`), each tag once.
fn reap_all(q: &mut Box<dyn StoreQueue>, n: usize, bound: Duration) -> Vec<StoreCompletion> {
    let deadline = Instant::now() + bound;
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} answered within {bound:?}",
            out.len()
        );
        if q.reap(&mut out) == 0 {
            let fd = q.notify_fd().expect("a file queue has a notify fd");
            scst_accel_hal::fdio::poll_readable(&[fd], Duration::from_millis(50)).expect("poll");
        }
    }
    let mut tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
    tags.sort_unstable();
    tags.dedup();
    assert_eq!(tags.len(), n, "every request answered exactly once");
    assert_eq!(q.in_flight(), 0);
    out
}

/// Large O_DIRECT reads and flushes in flight, then abort_all: it returns within its bound,
/// every request is answered (done or Aborted, nothing lost), and the queue serves afterwards.
fn abort_with_requests_in_flight_is_bounded_and_answers_all(engine: IoEngine) {
    let dir = TempDir::new("abort");
    let store = open(&config(engine, &dir.file("disk.img"), Some(32 << 20))).expect("open");
    let mut q = store.open_queue().expect("queue");
    let buffers: Vec<IoBuffer> = (0..32).map(|_| buffer(1 << 20)).collect();
    let mut batch: Vec<StoreRequest> = buffers
        .iter()
        .enumerate()
        .map(|(i, buf)| StoreRequest {
            tag: i as u64,
            op: StoreOp::Read {
                lba: i as u64 * 2048,
                blocks: 2048,
            },
            buffer: Some(buf.clone()),
        })
        .collect();
    batch.extend((32..40).map(|tag| StoreRequest {
        tag,
        op: StoreOp::Flush,
        buffer: None,
    }));
    // And ops the io_uring engine leaves to the threads: both sides are aborted together.
    batch.extend((40..44).map(|tag| StoreRequest {
        tag,
        op: StoreOp::Verify {
            lba: 0,
            blocks: 65536,
        },
        buffer: None,
    }));
    submit_all(&mut q, batch);
    let started = Instant::now();
    let n = q.abort_all();
    let took = started.elapsed();
    assert!(n <= 44, "{n}");
    assert!(
        took <= ABORT_WAIT + Duration::from_millis(500),
        "abort took {took:?}"
    );
    let out = reap_all(&mut q, 44, Duration::from_secs(10));
    for c in &out {
        assert!(
            matches!(c.status, StoreStatus::Good | StoreStatus::Aborted),
            "{c:?}"
        );
    }
    // Every buffer is back with its only owner: no request holds one any more.
    for buf in &buffers {
        assert_eq!(Arc::strong_count(&buf.buffer), 1);
    }
    let buf = buffer(4096);
    assert_eq!(
        run(&mut q, StoreOp::Read { lba: 0, blocks: 8 }, Some(&buf)),
        StoreStatus::Good
    );
}

/// The deadline escalation's abort (`start_abort_all`) returns at once though a request hangs
/// in an I/O thread (the test's stall, as a system call that does not return), where
/// `abort_all` waits up to [`ABORT_WAIT`] at every escalation: the worker serves meanwhile.
/// Nothing is let go early: the hung request keeps its buffer and stays in flight until it
/// completes, with its outcome; the one queued behind it is answered Aborted, unrun.
fn the_escalations_abort_does_not_wait_for_a_hung_request(engine: IoEngine) {
    let dir = TempDir::new("abort-hung");
    let store = open(&FileStoreConfig {
        workers: 1,
        ..config(engine, &dir.file("disk.img"), Some(1 << 20))
    })
    .expect("open");
    let mut q = store.open_queue().expect("queue");
    let buf = buffer(4096);
    store.shared.stall.store(true, Ordering::Release);
    // COMPARE goes to the I/O threads in both engines; the file's zeroes match the buffer's.
    let hung = StoreRequest {
        tag: 1,
        op: StoreOp::Compare { lba: 0, blocks: 8 },
        buffer: Some(buf.clone()),
    };
    submit_all(&mut q, vec![hung]);
    wait_stalled(&store, 1);
    submit_all(
        &mut q,
        verifies(1)
            .into_iter()
            .map(|r| StoreRequest { tag: 2, ..r })
            .collect(),
    );
    let started = Instant::now();
    assert_eq!(q.start_abort_all(), 2);
    let took = started.elapsed();
    assert!(took < ABORT_WAIT / 4, "the escalation's abort waited {took:?}");
    assert_eq!(q.in_flight(), 2, "both still in flight");
    assert_eq!(
        Arc::strong_count(&buf.buffer),
        2,
        "the hung request still holds its buffer"
    );
    store.shared.stall.store(false, Ordering::Release);
    let mut out = reap_all(&mut q, 2, Duration::from_secs(10));
    out.sort_by_key(|c| c.tag);
    assert_eq!(
        out.iter().map(|c| (c.tag, c.status)).collect::<Vec<_>>(),
        [(1, StoreStatus::Good), (2, StoreStatus::Aborted)]
    );
    assert_eq!(Arc::strong_count(&buf.buffer), 1, "given back once completed");
}

/// Dropping a queue with requests in flight returns within its bound and lets go of every
/// buffer (the kernel or the threads finished with them first).
fn drop_with_requests_in_flight_is_bounded_and_frees_the_buffers(engine: IoEngine) {
    let dir = TempDir::new("drop");
    let store = open(&config(engine, &dir.file("disk.img"), Some(32 << 20))).expect("open");
    let mut q = store.open_queue().expect("queue");
    let buffers: Vec<IoBuffer> = (0..32).map(|_| buffer(1 << 20)).collect();
    let batch = buffers
        .iter()
        .enumerate()
        .map(|(i, buf)| StoreRequest {
            tag: i as u64,
            op: StoreOp::Write {
                lba: i as u64 * 2048,
                blocks: 2048,
                fua: i % 2 == 0,
            },
            buffer: Some(buf.clone()),
        })
        .collect();
    submit_all(&mut q, batch);
    let started = Instant::now();
    drop(q);
    assert!(
        started.elapsed() <= JOIN_BOUND,
        "drop took {:?}",
        started.elapsed()
    );
    // The I/O threads may still be finishing a request they took (bounded by JOIN_BOUND too).
    let deadline = Instant::now() + JOIN_BOUND;
    while buffers.iter().any(|b| Arc::strong_count(&b.buffer) > 1) {
        assert!(Instant::now() < deadline, "a buffer is still held");
        locks::sleep(Duration::from_millis(1));
    }
}

/// io_uring is allowed here (kernel.io_uring_disabled = 0, root): forcing it opens a store on
/// rings, whose queues say so, and the store's dump names the engine.
#[test]
fn forced_uring_works_here() {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "absent".into());
    if let Err(reason) = super::uring::available() {
        scst_accel_hal::skip::test_skipped(
            "forced_uring_works_here",
            &format!("io_uring unavailable (kernel.io_uring_disabled = {disabled}): {reason}"),
        );
        return;
    }
    let dir = TempDir::new("forced");
    let store = open(&config(IoEngine::Uring, &dir.file("disk.img"), Some(1 << 20))).expect("open");
    assert_eq!(store.io_engine(), RunningEngine::Uring);
    assert!(store.dump().expect("dump").contains("engine uring"));
    let mut q = store.open_queue().expect("queue");
    assert!(
        q.dump().expect("dump").contains("io_uring"),
        "the queue has its ring"
    );
    let buf = buffer(4096);
    pattern(&buf, 4096, 0x5c);
    let write = StoreOp::Write {
        lba: 3,
        blocks: 8,
        fua: false,
    };
    assert_eq!(run(&mut q, write, Some(&buf)), StoreStatus::Good);
    let out = buffer(4096);
    assert_eq!(
        run(&mut q, StoreOp::Read { lba: 3, blocks: 8 }, Some(&out)),
        StoreStatus::Good
    );
    assert_eq!(bytes(&out, 4096), bytes(&buf, 4096));
}

/// A file truncated under the store in the middle of a block: the ring's read comes back
/// short, its remainder hits EOF, and the request is a read error at the first block not
/// wholly read (the partial one), never Good.
#[test]
fn uring_a_short_read_at_eof_is_not_good() {
    if !uring_or_skip("uring_a_short_read_at_eof_is_not_good") {
        return;
    }
    let dir = TempDir::new("short");
    let path = dir.file("disk.img");
    let store = open(&FileStoreConfig {
        direct: false,
        ..config(IoEngine::Uring, &path, Some(1 << 20))
    })
    .expect("open");
    let mut q = store.open_queue().expect("queue");
    let buf = buffer(8192);
    buf.fill(0, 8192, 0x99);
    let write = StoreOp::Write {
        lba: 0,
        blocks: 16,
        fua: false,
    };
    assert_eq!(run(&mut q, write, Some(&buf)), StoreStatus::Good);
    // Blocks 0..9 whole, block 9 cut after 488 of its 512 bytes.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len(9 * 512 + 488)
        .expect("truncate");
    assert_eq!(
        run(&mut q, StoreOp::Read { lba: 6, blocks: 4 }, Some(&buf)),
        StoreStatus::ReadError { lba: 9 }
    );
    assert_eq!(
        run(&mut q, StoreOp::Read { lba: 12, blocks: 1 }, Some(&buf)),
        StoreStatus::ReadError { lba: 12 }
    );
    assert_eq!(
        run(&mut q, StoreOp::Read { lba: 0, blocks: 9 }, Some(&buf)),
        StoreStatus::Good
    );
}

/// On the ring a FUA write carries RWF_DSYNC (counted from the rw_flags of the SQE as pushed,
/// `uring::sqe_rw_flags`), a write-back one does not and is owed to the next flush; the data is
/// what was written.
#[test]
fn uring_fua_writes_carry_rwf_dsync() {
    if !uring_or_skip("uring_fua_writes_carry_rwf_dsync") {
        return;
    }
    let dir = TempDir::new("dsync");
    let store = open(&config(IoEngine::Uring, &dir.file("disk.img"), Some(1 << 20))).expect("open");
    let mut q = store.open_queue().expect("queue");
    let dsync = || store.shared.dsync_writes.load(Ordering::Relaxed);
    let buf = buffer(4096);
    pattern(&buf, 4096, 0x3e);
    let write = |lba, fua| StoreOp::Write { lba, blocks: 8, fua };
    assert_eq!(run(&mut q, write(16, true), Some(&buf)), StoreStatus::Good);
    assert_eq!(dsync(), 1);
    assert_eq!(
        store.shared.dirty_low.load(Ordering::Acquire),
        u64::MAX,
        "FUA is stable already"
    );
    assert_eq!(run(&mut q, write(32, false), Some(&buf)), StoreStatus::Good);
    assert_eq!(dsync(), 1, "a write-back write has no RWF_DSYNC");
    assert_eq!(store.shared.dirty_low.load(Ordering::Acquire), 32);
    assert!(store
        .dump()
        .expect("dump")
        .contains("1 FUA writes with RWF_DSYNC"));
    let out = buffer(4096);
    assert_eq!(
        run(&mut q, StoreOp::Read { lba: 16, blocks: 8 }, Some(&out)),
        StoreStatus::Good
    );
    assert_eq!(bytes(&out, 4096), bytes(&buf, 4096));
}

/// `uring::sqe_rw_flags` reads the flags the builder put in the SQE: a write's rw_flags, exactly
/// (every bit, in place), and FSYNC's DATASYNC, which shares the union.
#[test]
fn sqe_rw_flags_reads_what_the_sqe_holds() {
    use io_uring::opcode;
    use io_uring::types;
    // Built, never submitted.
    let byte = [0u8; 1];
    let write = |flags| {
        opcode::Write::new(types::Fixed(0), byte.as_ptr(), 1)
            .rw_flags(flags)
            .build()
    };
    assert_eq!(super::uring::sqe_rw_flags(&write(0x1234_5678)), 0x1234_5678);
    assert_eq!(
        super::uring::sqe_rw_flags(&write(libc::RWF_DSYNC)),
        libc::RWF_DSYNC as u32
    );
    assert_eq!(super::uring::sqe_rw_flags(&write(0)), 0);
    let fsync = opcode::Fsync::new(types::Fixed(1))
        .flags(types::FsyncFlags::DATASYNC)
        .build();
    assert_eq!(
        super::uring::sqe_rw_flags(&fsync),
        types::FsyncFlags::DATASYNC.bits()
    );
}

/// The fd that holds an image's lock is open for writing: on NFS the exclusive flock is an
/// fcntl write lock (the client's emulation), which a read-only descriptor cannot take (EBADF),
/// so images on NFS would not open. Here it also takes that very lock.
#[test]
fn the_image_lock_fd_is_open_for_writing() {
    let dir = TempDir::new("lock-rw");
    let store = open(&config(IoEngine::Threads, &dir.file("disk.img"), Some(64 << 10))).expect("open");
    let claim = &store.shared._claim;
    let flags = sys::status_flags(claim.as_fd()).expect("F_GETFL");
    assert_eq!(flags & libc::O_ACCMODE, libc::O_RDWR);
    sys::posix_write_lock(claim.as_fd()).expect("the write lock NFS's flock emulation takes");
}

/// The threads' FUA writes are durable because their fd is O_DSYNC: the kernel's own flags of
/// the store's fds say so (fcntl F_GETFL), and that the fd of write-back writes is not (each
/// would wait for the medium).
#[test]
fn the_threads_fua_fd_is_o_dsync() {
    let dir = TempDir::new("odsync");
    for direct in [true, false] {
        let store = open(&FileStoreConfig {
            direct,
            ..config(
                IoEngine::Threads,
                &dir.file(&format!("{direct}.img")),
                Some(64 << 10),
            )
        })
        .expect("open");
        let flags = |file: &File| sys::status_flags(file.as_fd()).expect("F_GETFL");
        let shared = &store.shared;
        assert_ne!(flags(&shared.sync) & libc::O_DSYNC, 0, "the FUA fd");
        assert_eq!(flags(&shared.data) & libc::O_DSYNC, 0, "the write-back fd");
        for file in [&shared.sync, &shared.data] {
            assert_eq!(
                flags(file) & libc::O_DIRECT != 0,
                direct,
                "O_DIRECT as configured"
            );
            assert_eq!(flags(file) & libc::O_ACCMODE, libc::O_RDWR);
        }
    }
}

/// Records every log line of the test binary, for the fallback test.
struct Recorder(std::sync::Mutex<Vec<(log::Level, String)>>);

impl log::Log for Recorder {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let line = (record.level(), record.args().to_string());
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(line);
    }

    fn flush(&self) {}
}

static RECORDER: Recorder = Recorder(std::sync::Mutex::new(Vec::new()));

/// io_uring unavailable (the probe fails as the kernel's would): Auto falls back to the
/// threads, warns once in the process (a second store says it at info level), and serves;
/// forcing io_uring is the typed error that says what to do, before any file is created.
#[test]
fn without_io_uring_auto_falls_back_once_and_serves() {
    if log::set_logger(&RECORDER).is_err() {
        scst_accel_hal::skip::test_skipped(
            "without_io_uring_auto_falls_back_once_and_serves",
            "another logger is installed in this test binary",
        );
        return;
    }
    log::set_max_level(log::LevelFilter::Info);
    let dir = TempDir::new("fallback");
    let unavailable = || Err("io_uring_setup: ENOSYS (test)".to_owned());
    // Where the kernel lacks io_uring another test may have warned already (once per process).
    let warned_before = usize::from(FALLBACK_WARNED.load(Ordering::Acquire));
    let forced = dir.file("forced.img");
    let e = FileStore::open_probing(
        &config(IoEngine::Uring, &forced, Some(1 << 20)),
        unavailable,
        sys::punch_hole,
    )
    .unwrap_err();
    assert!(matches!(e, FileStoreError::UringUnavailable { .. }), "{e}");
    assert!(e.to_string().contains("--io-engine threads"), "{e}");
    assert!(!forced.exists(), "nothing created");
    for name in ["a.img", "b.img"] {
        let path = dir.file(name);
        let store = FileStore::open_probing(
            &config(IoEngine::Auto, &path, Some(1 << 20)),
            unavailable,
            sys::punch_hole,
        )
        .expect("open");
        assert_eq!(store.io_engine(), RunningEngine::Threads);
        let mut q = store.open_queue().expect("queue");
        assert!(!q.dump().expect("dump").contains("io_uring"), "a thread queue");
        let buf = buffer(4096);
        let write = StoreOp::Write {
            lba: 0,
            blocks: 8,
            fua: true,
        };
        assert_eq!(run(&mut q, write, Some(&buf)), StoreStatus::Good);
        assert_eq!(
            store.shared.dsync_writes.load(Ordering::Relaxed),
            0,
            "no ring: no RWF_DSYNC (the threads' FUA fd is O_DSYNC, the_threads_fua_fd_is_o_dsync)"
        );
    }
    let lines = RECORDER
        .0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let fallbacks = |level: log::Level| {
        lines
            .iter()
            .filter(|(l, m)| *l == level && m.contains("io_uring is not available"))
            .count()
    };
    assert_eq!(
        fallbacks(log::Level::Warn),
        1 - warned_before,
        "warned once: {lines:?}"
    );
    let ours = lines
        .iter()
        .filter(|(_, m)| m.contains("io_uring is not available") && m.contains(&*dir.0.to_string_lossy()))
        .count();
    assert_eq!(ours, 2, "each fallback logged: {lines:?}");
}

/// Reap `n` completions (bounded wait), as (tag, status) in tag order.
fn reap_n(q: &mut dyn StoreQueue, n: usize) -> Vec<(u64, StoreStatus)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while out.len() < n {
        assert!(Instant::now() < deadline, "{} of {n} completions", out.len());
        if q.reap(&mut out) == 0 {
            let fd = q.notify_fd().expect("a file queue has a notify fd");
            scst_accel_hal::fdio::poll_readable(&[fd], Duration::from_millis(50)).expect("poll");
        }
    }
    assert_eq!(q.in_flight(), 0);
    let mut got: Vec<_> = out.iter().map(|c| (c.tag, c.status)).collect();
    got.sort_unstable_by_key(|&(tag, _)| tag);
    got
}

/// The ring's handling of what the kernel answers, with the CQE injected as the kernel would
/// post it: a short write resubmits exactly its remainder (and only then is Good); a failed
/// FSYNC is a write error at the lowest LBA written back, and every later flush on the ring
/// fails the same; a failed read goes to the threads, which retry it whole; EINVAL (an
/// O_DIRECT misfit, not the medium) is InvalidRequest.
#[test]
fn uring_completions_from_the_kernel_are_handled_exactly() {
    if !uring_or_skip("uring_completions_from_the_kernel_are_handled_exactly") {
        return;
    }
    let dir = TempDir::new("cqe");
    let store = open(&config(IoEngine::Uring, &dir.file("disk.img"), Some(1 << 20))).expect("open");
    let threads = store.thread_queue().expect("thread queue");
    let Ok(mut q) = super::uring::UringQueue::new(Arc::clone(&store.shared), threads, 2) else {
        panic!("a ring for the queue");
    };
    let src = buffer(8192);
    pattern(&src, 8192, 0x41);
    let write = StoreRequest {
        tag: 1,
        op: StoreOp::Write {
            lba: 64,
            blocks: 16,
            fua: false,
        },
        buffer: Some(src.clone()),
    };
    // The kernel says 4096 of 8192 bytes were written (it wrote none: made up here).
    q.complete_as_the_kernel(write, 4096);
    assert_eq!(reap_n(&mut q, 1), [(1, StoreStatus::Good)]);
    let out = buffer(8192);
    let read = |tag| StoreRequest {
        tag,
        op: StoreOp::Read { lba: 64, blocks: 16 },
        buffer: Some(out.clone()),
    };
    q.submit(&mut crate::store::StoreToken::root(), &mut vec![read(2)])
        .expect("submit");
    assert_eq!(reap_n(&mut q, 1), [(2, StoreStatus::Good)]);
    let got = bytes(&out, 8192);
    assert!(
        got[..4096].iter().all(|&b| b == 0),
        "the part said done is not redone"
    );
    assert_eq!(
        got[4096..],
        bytes(&src, 8192)[4096..],
        "the remainder, at its offset"
    );
    assert_eq!(store.shared.dirty_low.load(Ordering::Acquire), 64);

    let flush = |tag| StoreRequest {
        tag,
        op: StoreOp::Flush,
        buffer: None,
    };
    // FLUSH is not on the ring (one fdatasync at a time for the store, `flush_in_turn`): it
    // goes to the threads, which answer the sticky failure of an fdatasync failed with EIO.
    let eio = || Err(io::Error::from_raw_os_error(libc::EIO));
    assert_eq!(store.shared.flush_with(&eio), StoreStatus::WriteError { lba: 64 });
    q.submit(
        &mut crate::store::StoreToken::root(),
        &mut vec![flush(4), flush(5)],
    )
    .expect("submit");
    assert_eq!(
        reap_n(&mut q, 2),
        [
            (4, StoreStatus::WriteError { lba: 64 }),
            (5, StoreStatus::WriteError { lba: 64 })
        ]
    );

    out.fill(0, 8192, 0xff);
    q.complete_as_the_kernel(read(6), -libc::EIO);
    assert_eq!(
        reap_n(&mut q, 1),
        [(6, StoreStatus::Good)],
        "retried whole by the threads"
    );
    assert_eq!(bytes(&out, 8192), got);
    q.complete_as_the_kernel(read(7), -libc::EINVAL);
    assert_eq!(reap_n(&mut q, 1), [(7, StoreStatus::InvalidRequest)]);
}

/// The size check of each io_uring WRITE to a regular file, read where the store chose
/// (`stat_on_ring`), keeps its protection (a write past the end of a file truncated under the
/// store is a write error at the first missing block, and the file is not grown), and the
/// frontend's worker (here the test's thread, which submits and reaps) stats the image once per
/// write exactly when the file system answers a stat from memory: `stats_on_worker` of the 23
/// writes.
fn uring_write_size_checks(name: &str, stat_on_ring: bool, stats_on_worker: u64) {
    if !uring_or_skip(name) {
        return;
    }
    let dir = TempDir::new(name);
    let path = dir.file("disk.img");
    let store = open(&config(IoEngine::Uring, &path, Some(1 << 20))).expect("open");
    store.shared.stat_on_ring.store(stat_on_ring, Ordering::Relaxed);
    let mut q = store.open_queue().expect("queue");
    let buf = buffer(4096);
    pattern(&buf, 4096, 0x3c);
    let write = |q: &mut Box<dyn StoreQueue>, lba| {
        run(
            q,
            StoreOp::Write {
                lba,
                blocks: 8,
                fua: lba % 2 == 1,
            },
            Some(&buf),
        )
    };
    let before = super::failure::tests::FSTATS.with(std::cell::Cell::get);
    for lba in 0..20 {
        assert_eq!(write(&mut q, lba * 8), StoreStatus::Good);
    }
    OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(100 * 512))
        .expect("truncate");
    assert_eq!(write(&mut q, 96), StoreStatus::WriteError { lba: 100 });
    assert_eq!(write(&mut q, 500), StoreStatus::WriteError { lba: 500 });
    assert_eq!(write(&mut q, 0), StoreStatus::Good);
    let stats = super::failure::tests::FSTATS.with(std::cell::Cell::get) - before;
    assert_eq!(
        stats, stats_on_worker,
        "the submitting thread stat'ed the image {stats} times for 23 writes"
    );
    assert_eq!(
        std::fs::metadata(&path).expect("stat").len(),
        100 * 512,
        "not grown"
    );
}

/// Off a local file system (NFS, FUSE...) the worker never stats the image: each write's size
/// check is a STATX on the ring.
#[test]
fn uring_writes_off_a_local_file_system_read_the_files_size_off_the_submitting_thread() {
    uring_write_size_checks(
        "uring_writes_off_a_local_file_system_read_the_files_size_off_the_submitting_thread",
        true,
        0,
    );
}

/// On a local file system the worker stats the image itself (answered from memory), with no
/// trip through io-wq per write.
#[test]
fn uring_writes_on_a_local_file_system_stat_on_the_worker() {
    uring_write_size_checks(
        "uring_writes_on_a_local_file_system_stat_on_the_worker",
        false,
        23,
    );
}

/// tmpfs answers a stat from memory; procfs is not on the list, and a type the store does not
/// know is taken for one that may not (the safe side: the STATX on the ring).
#[test]
fn a_file_system_stats_locally_only_when_known_to() {
    let local = |path: &str| {
        let f = File::open(path).expect(path);
        super::failure::stat_is_local(f.as_fd(), Path::new(path))
    };
    assert!(local("/dev/shm"), "tmpfs");
    assert!(!local("/proc/self/stat"), "procfs");
}

/// Wait (bounded) until `n` I/O threads of `store` hold a stalled job.
fn wait_stalled(store: &FileStore, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.shared.stalled.load(Ordering::Acquire) < n {
        assert!(Instant::now() < deadline, "{n} I/O threads did not take a job");
        locks::sleep(Duration::from_millis(2));
    }
}

/// `n` VERIFYs of one block (they go to the I/O threads in both engines).
fn verifies(n: u64) -> Vec<StoreRequest> {
    (0..n)
        .map(|tag| StoreRequest {
            tag,
            op: StoreOp::Verify { lba: tag, blocks: 1 },
            buffer: None,
        })
        .collect()
}

/// A ring transfer that failed goes to the I/O threads to be retried and its failing block
/// located; with the pool's channel full (it is shared by every queue of the disk), it waits
/// for room instead of being answered the ring's error unlocated: here an EIO on a healthy
/// file, which the threads' retry reads GOOD once the pool drains.
#[test]
fn a_ring_retry_waits_for_room_on_the_io_threads() {
    if !uring_or_skip("a_ring_retry_waits_for_room_on_the_io_threads") {
        return;
    }
    let dir = TempDir::new("ring-deferred");
    let store = open(&FileStoreConfig {
        workers: 1,
        ..config(IoEngine::Uring, &dir.file("disk.img"), Some(1 << 20))
    })
    .expect("open");
    let shared = Arc::clone(&store.shared);
    shared.stall.store(true, Ordering::Release);
    // Fill the pool's channel (one thread: 256 jobs) from two other queues, the thread stalled.
    let mut a: Box<dyn StoreQueue> = Box::new(store.thread_queue().expect("queue a"));
    submit_all(&mut a, verifies(256));
    wait_stalled(&store, 1);
    let mut c: Box<dyn StoreQueue> = Box::new(store.thread_queue().expect("queue c"));
    submit_all(&mut c, verifies(1));
    let threads = store.thread_queue().expect("thread queue");
    let Ok(mut b) = super::uring::UringQueue::new(Arc::clone(&store.shared), threads, 1) else {
        panic!("a ring for the queue");
    };
    let buf = buffer(4096);
    b.complete_as_the_kernel(
        StoreRequest {
            tag: 1,
            op: StoreOp::Read { lba: 0, blocks: 8 },
            buffer: Some(buf.clone()),
        },
        -libc::EIO,
    );
    let mut early = Vec::new();
    b.reap(&mut early);
    assert!(early.is_empty(), "answered while the pool had no room: {early:?}");
    shared.stall.store(false, Ordering::Release);
    assert_eq!(reap_n(&mut b, 1), [(1, StoreStatus::Good)], "the threads' retry");
    reap_all(&mut a, 256, Duration::from_secs(10));
    reap_all(&mut c, 1, Duration::from_secs(10));
}

/// Dropping the store with every I/O thread hung in a request waits one [`JOIN_BOUND`] for all
/// of them, not one each (four hung threads took 40 s, twice the service's stop timeout).
#[test]
fn dropping_a_store_with_hung_io_threads_waits_one_bound_for_all_of_them() {
    let dir = TempDir::new("hung-threads");
    let store = open(&FileStoreConfig {
        workers: 4,
        ..config(IoEngine::Threads, &dir.file("disk.img"), Some(1 << 20))
    })
    .expect("open");
    let shared = Arc::clone(&store.shared);
    shared.stall.store(true, Ordering::Release);
    let mut q = store.open_queue().expect("queue");
    submit_all(&mut q, verifies(4));
    wait_stalled(&store, 4);
    drop(q);
    let started = Instant::now();
    drop(store);
    let took = started.elapsed();
    shared.stall.store(false, Ordering::Release);
    assert!(
        took <= JOIN_BOUND + Duration::from_millis(1500),
        "dropping the store took {took:?} with 4 hung threads"
    );
}

/// A ring queue holding the pool's last reference, with a request the kernel never gives back
/// and both I/O threads hung: its drop waits one [`JOIN_BOUND`] for the ring and the threads
/// together, not the ring's bound and then the pool's.
#[test]
fn a_ring_queue_dropped_last_waits_one_bound_for_its_ring_and_the_threads() {
    if !uring_or_skip("a_ring_queue_dropped_last_waits_one_bound_for_its_ring_and_the_threads") {
        return;
    }
    let dir = TempDir::new("hung-ring");
    let store = open(&config(IoEngine::Uring, &dir.file("disk.img"), Some(1 << 20))).expect("open");
    let shared = Arc::clone(&store.shared);
    let threads = store.thread_queue().expect("thread queue");
    let Ok(mut q) = super::uring::UringQueue::new(Arc::clone(&store.shared), threads, 2) else {
        panic!("a ring for the queue");
    };
    shared.stall.store(true, Ordering::Release);
    let mut batch = verifies(2);
    q.submit(&mut crate::store::StoreToken::root(), &mut batch)
        .expect("submit");
    wait_stalled(&store, 2);
    let buf = buffer(4096);
    q.hold_as_if_in_the_kernel(StoreRequest {
        tag: 9,
        op: StoreOp::Read { lba: 0, blocks: 8 },
        buffer: Some(buf.clone()),
    });
    drop(store);
    let started = Instant::now();
    drop(q);
    let took = started.elapsed();
    shared.stall.store(false, Ordering::Release);
    assert!(
        took <= JOIN_BOUND + Duration::from_millis(1500),
        "dropping the ring queue took {took:?}"
    );
    assert_eq!(
        Arc::strong_count(&buf.buffer),
        2,
        "the held request's buffer is leaked"
    );
}

/// A ring queue holding the pool's last reference, its I/O threads idle: its drop ends them
/// at once (the channel disconnects when the queue lets go of its own sender), none is left
/// detached as if hung, and the drop does not wait out [`JOIN_BOUND`].
#[test]
fn a_ring_queue_dropped_last_with_idle_threads_ends_them_at_once() {
    if !uring_or_skip("a_ring_queue_dropped_last_with_idle_threads_ends_them_at_once") {
        return;
    }
    let dir = TempDir::new("idle-ring");
    let store = open(&config(IoEngine::Uring, &dir.file("disk.img"), Some(1 << 20))).expect("open");
    let shared = Arc::clone(&store.shared);
    let mut q = store.open_queue().expect("queue");
    let buf = buffer(4096);
    assert_eq!(
        run(&mut q, StoreOp::Read { lba: 0, blocks: 8 }, Some(&buf)),
        StoreStatus::Good
    );
    drop(store);
    let started = Instant::now();
    drop(q);
    let took = started.elapsed();
    assert_eq!(
        Arc::strong_count(&shared),
        1,
        "every I/O thread ended and let go of the store (none left detached)"
    );
    assert!(took < JOIN_BOUND / 2, "dropping the ring queue took {took:?}");
}

/// A thread-engine queue dropped with writes still queued for the pool (its one I/O thread
/// busy): none of them runs afterwards; the frontend that dropped it gave up on them.
#[test]
fn a_dropped_thread_queue_runs_none_of_its_queued_writes() {
    let dir = TempDir::new("dropq");
    let path = dir.file("disk.img");
    let store = open(&FileStoreConfig {
        workers: 1,
        ..config(IoEngine::Threads, &path, Some(1 << 20))
    })
    .expect("open");
    store.shared.stall.store(true, Ordering::Release);
    let mut q = store.open_queue().expect("queue");
    let buf = buffer(4096);
    pattern(&buf, 4096, 0x5a);
    // The one thread holds the VERIFY; the writes queue behind it.
    submit_all(&mut q, verifies(1));
    wait_stalled(&store, 1);
    submit_all(
        &mut q,
        (1..9u64)
            .map(|i| StoreRequest {
                tag: i,
                op: StoreOp::Write {
                    lba: 1000 + i * 8,
                    blocks: 8,
                    fua: false,
                },
                buffer: Some(buf.clone()),
            })
            .collect(),
    );
    drop(q);
    store.shared.stall.store(false, Ordering::Release);
    // The thread answers every job (to nobody) and lets go of its buffer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Arc::strong_count(&buf.buffer) > 1 {
        assert!(Instant::now() < deadline, "a job still holds the buffer");
        locks::sleep(Duration::from_millis(2));
    }
    drop(store);
    let data = std::fs::read(&path).expect("read");
    let landed = (1..9usize)
        .filter(|i| data[(1000 + i * 8) * 512..][..4096] == bytes(&buf, 4096)[..])
        .count();
    assert_eq!(
        landed, 0,
        "{landed} writes of the dropped queue landed after its drop"
    );
}

/// A ring queue dropped while the kernel still holds one of its requests leaks the request and
/// the store's shared state with it: the image stays claimed after the store is dropped, so no
/// handler opens it while that write may still land.
#[test]
fn a_ring_queue_that_leaks_a_request_keeps_the_image_claimed() {
    if !uring_or_skip("a_ring_queue_that_leaks_a_request_keeps_the_image_claimed") {
        return;
    }
    let dir = TempDir::new("leak-claim");
    let path = dir.file("disk.img");
    let store = open(&config(IoEngine::Uring, &path, Some(1 << 20))).expect("open");
    let threads = store.thread_queue().expect("thread queue");
    let Ok(mut q) = super::uring::UringQueue::new(Arc::clone(&store.shared), threads, 2) else {
        panic!("a ring for the queue");
    };
    let buf = buffer(4096);
    q.hold_as_if_in_the_kernel(StoreRequest {
        tag: 9,
        op: StoreOp::Write {
            lba: 0,
            blocks: 8,
            fua: false,
        },
        buffer: Some(buf.clone()),
    });
    drop(q);
    drop(store);
    match open(&config(IoEngine::Uring, &path, Some(1 << 20))) {
        Err(FileStoreError::Locked { .. }) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("the image opened again while a leaked write may still land"),
    }
}

/// A FUA write that fails may be a failed flush of the device's cache (without FUA of its own
/// the kernel answers the write and its post-flush with one error, and remembers a failed cache
/// flush nowhere a later fdatasync reports): with writes written back since the last good
/// flush, the next flush fails at the lowest of them, and stays failed, although the
/// fdatasync succeeds. With none written back, a failed FUA write loses nothing else: the
/// flushes stay good. Threads: the FUA write's transfer fails with EIO (`Shared::write`).
#[test]
fn a_failed_fua_write_fails_the_flush_of_what_was_written_back() {
    let dir = TempDir::new("fua-fail");
    let store = open(&config(IoEngine::Threads, &dir.file("disk.img"), Some(64 << 10))).expect("open");
    let mut q = store.open_queue().expect("queue");
    let bs = u64::from(store.info().block_size);
    let buf = buffer(4096);
    let eio = |_: BorrowedFd<'_>, _: u64, _: usize, _: usize| -> io::Result<usize> {
        Err(io::Error::from_raw_os_error(libc::EIO))
    };
    let fua_fails = |lba: u64| store.shared.write(lba * bs, bs as usize, Through::Fua, eio);

    // Nothing written back since the last flush: the failure is the write's own.
    assert_eq!(fua_fails(10), StoreStatus::WriteError { lba: 10 });
    assert_eq!(run(&mut q, StoreOp::Flush, None), StoreStatus::Good);

    let write = StoreOp::Write {
        lba: 2,
        blocks: 1,
        fua: false,
    };
    assert_eq!(run(&mut q, write, Some(&buf)), StoreStatus::Good);
    assert_eq!(fua_fails(10), StoreStatus::WriteError { lba: 10 });
    for _ in 0..2 {
        assert_eq!(
            run(&mut q, StoreOp::Flush, None),
            StoreStatus::WriteError { lba: 2 },
            "the write at LBA 2 may be lost with the cache flush"
        );
    }
}

/// The ring hands a failed FUA write to the threads, which redo it; the redo succeeding must
/// not hide the cache flush that may have failed with it: the next flush fails at the lowest
/// LBA written back before.
#[test]
fn a_failed_fua_write_on_the_ring_fails_the_next_flush_though_its_redo_succeeds() {
    let name = "a_failed_fua_write_on_the_ring_fails_the_next_flush_though_its_redo_succeeds";
    if let Some(flushed) = flush_after_ring_fua_failures(name, &[libc::EIO]) {
        assert_eq!(flushed, StoreStatus::WriteError { lba: 16 });
    }
}

/// On a ring queue: a write-back write at LBA 16, then FUA writes at LBA 64 that the kernel
/// answers with `errnos` (each redone by the threads, GOOD), then a flush: its status. `None`
/// (said) where io_uring is unavailable.
fn flush_after_ring_fua_failures(name: &str, errnos: &[i32]) -> Option<StoreStatus> {
    if !uring_or_skip(name) {
        return None;
    }
    let dir = TempDir::new("fua-ring");
    let store = open(&config(IoEngine::Uring, &dir.file("disk.img"), Some(1 << 20))).expect("open");
    let threads = store.thread_queue().expect("thread queue");
    let Ok(mut q) = super::uring::UringQueue::new(Arc::clone(&store.shared), threads, 2) else {
        panic!("a ring for the queue");
    };
    let src = buffer(4096);
    let write = |tag, lba, fua| StoreRequest {
        tag,
        op: StoreOp::Write { lba, blocks: 8, fua },
        buffer: Some(src.clone()),
    };
    q.submit(
        &mut crate::store::StoreToken::root(),
        &mut vec![write(1, 16, false)],
    )
    .expect("submit");
    assert_eq!(reap_n(&mut q, 1), [(1, StoreStatus::Good)]);
    for (tag, &errno) in (2..).zip(errnos) {
        q.complete_as_the_kernel(write(tag, 64, true), -errno);
        assert_eq!(
            reap_n(&mut q, 1),
            [(tag, StoreStatus::Good)],
            "redone by the threads (errno {errno})"
        );
    }
    let flush = StoreRequest {
        tag: 99,
        op: StoreOp::Flush,
        buffer: None,
    };
    q.submit(&mut crate::store::StoreToken::root(), &mut vec![flush])
        .expect("submit");
    let flushed = reap_n(&mut q, 1);
    assert_eq!(flushed.len(), 1);
    Some(flushed[0].1)
}

/// A queue whose io_uring cannot be set up (ENOMEM: the locked-memory limit before Linux
/// 5.12) is an error when `uring` was asked for, as the README says of a refused io_uring,
/// and a queue on the I/O threads under `auto`.
#[test]
fn a_forced_uring_engine_refuses_a_queue_without_a_ring() {
    if !uring_or_skip("a_forced_uring_engine_refuses_a_queue_without_a_ring") {
        return;
    }
    let dir = TempDir::new("forced-uring");
    let forced = open(&config(IoEngine::Uring, &dir.file("forced.img"), Some(1 << 20))).expect("open");
    super::uring::REFUSE_NEXT_RING.with(|r| r.set(true));
    match forced.open_queue() {
        Err(StoreError::Device(why)) => assert!(why.contains("io_uring"), "{why}"),
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a queue without its ring under a forced uring engine"),
    }
    let auto = open(&config(IoEngine::Auto, &dir.file("auto.img"), Some(1 << 20))).expect("open");
    super::uring::REFUSE_NEXT_RING.with(|r| r.set(true));
    assert!(
        auto.open_queue().is_ok(),
        "auto: the queue falls back to the threads"
    );
}

/// Under `auto`, a queue whose ring cannot be set up runs on the I/O threads, and what the store
/// reports says so: its `io_engine`, its dump, and a gauge taken before any queue opened (as
/// the tools take it when the store opens, before the workers start): "threads" while no
/// queue has a ring, "uring+threads" once another has one.
#[test]
fn under_auto_a_queue_without_its_ring_is_reported_on_the_threads() {
    if !uring_or_skip("under_auto_a_queue_without_its_ring_is_reported_on_the_threads") {
        return;
    }
    let dir = TempDir::new("auto-report");
    let store = open(&config(IoEngine::Auto, &dir.file("disk.img"), Some(1 << 20))).expect("open");
    let gauge = store.engine_gauge();
    assert_eq!(
        gauge.running(),
        RunningEngine::Uring,
        "io_uring chosen, no queue yet"
    );
    super::uring::REFUSE_NEXT_RING.with(|r| r.set(true));
    let fell_back = store
        .open_queue()
        .expect("auto: the queue falls back to the threads");
    assert!(
        !fell_back.dump().expect("dump").contains("io_uring"),
        "a thread queue"
    );
    assert_eq!(store.io_engine(), RunningEngine::Threads);
    assert_eq!(
        gauge.running(),
        RunningEngine::Threads,
        "the gauge reads the queues live"
    );
    let dump = store.dump().expect("dump");
    assert!(dump.contains("engine threads"), "{dump}");
    let ring = store.open_queue().expect("a queue with its ring");
    assert!(ring.dump().expect("dump").contains("io_uring"), "a ring queue");
    assert_eq!(store.io_engine(), RunningEngine::UringAndThreads);
    assert_eq!(gauge.running().name(), "uring+threads");
    let dump = store.dump().expect("dump");
    assert!(dump.contains("engine uring+threads"), "{dump}");
}

/// A write refused because the medium became read-only (EROFS: its file system remounted
/// read-only; EPERM: `blockdev --setro`, an immutable file) is DATA PROTECT / WRITE PROTECTED,
/// not a medium error at the LBA; an I/O error stays one.
#[test]
fn a_write_refused_by_a_read_only_medium_is_write_protected() {
    let dir = TempDir::new("write-protected");
    let store = open(&config(IoEngine::Threads, &dir.file("disk.img"), Some(1 << 20))).expect("open");
    for errno in [libc::EROFS, libc::EPERM] {
        assert_eq!(
            store.shared.write_failed(&io::Error::from_raw_os_error(errno), 3),
            StoreStatus::WriteProtected,
            "errno {errno}"
        );
    }
    assert_eq!(
        store
            .shared
            .write_failed(&io::Error::from_raw_os_error(libc::EIO), 3),
        StoreStatus::WriteError { lba: 3 }
    );
}

/// An I/O answered ENODEV or ENXIO (a block device removed, a disk marked dead) fails the
/// store, so that the disk is torn down rather than answering MEDIUM ERROR for ever; an EIO
/// does not.
#[test]
fn a_device_gone_fails_the_store() {
    let dir = TempDir::new("device-gone");
    let store = open(&config(IoEngine::Threads, &dir.file("disk.img"), Some(1 << 20))).expect("open");
    store
        .shared
        .read_failed(&io::Error::from_raw_os_error(libc::EIO), 3);
    assert_eq!(store.failure(), None, "a medium error is the command's");
    assert_eq!(
        store
            .shared
            .read_failed(&io::Error::from_raw_os_error(libc::ENODEV), 3),
        StoreStatus::ReadError { lba: 3 }
    );
    let why = store.failure().expect("the store failed");
    assert!(why.contains("the device is gone"), "{why}");
}

/// A FUA write on the ring refused before it reached the device (ENOMEM: a resource error of
/// the submission, as EAGAIN after its retries, ECANCELED or EBUSY are) is redone by the
/// threads, and is no failed cache flush: the next flush stays good. (An EIO is taken for one:
/// the test above.)
#[test]
fn a_fua_write_refused_before_the_device_does_not_fail_the_next_flush() {
    let name = "a_fua_write_refused_before_the_device_does_not_fail_the_next_flush";
    let errnos = [libc::ENOMEM, libc::EAGAIN, libc::ECANCELED, libc::EROFS];
    if let Some(flushed) = flush_after_ring_fua_failures(name, &errnos) {
        assert_eq!(flushed, StoreStatus::Good);
    }
}

/// A FUA write failing while an fdatasync runs, with what that fdatasync took over written back
/// before it: the fdatasync's success does not answer for it (`Shared::flushing_low`).
#[test]
fn a_fua_write_failing_during_an_fdatasync_fails_that_flush() {
    let dir = TempDir::new("fua-during");
    let store = open(&config(IoEngine::Threads, &dir.file("disk.img"), Some(64 << 10))).expect("open");
    let mut q = store.open_queue().expect("queue");
    let buf = buffer(4096);
    let write = StoreOp::Write {
        lba: 5,
        blocks: 1,
        fua: false,
    };
    assert_eq!(run(&mut q, write, Some(&buf)), StoreStatus::Good);
    let during = || {
        assert_eq!(
            store.shared.dirty_low.load(Ordering::Acquire),
            u64::MAX,
            "taken over"
        );
        store
            .shared
            .fua_write_failed(&io::Error::from_raw_os_error(libc::EIO));
        Ok(())
    };
    assert_eq!(
        store.shared.flush_with(&during),
        StoreStatus::WriteError { lba: 5 }
    );
    assert_eq!(
        run(&mut q, StoreOp::Flush, None),
        StoreStatus::WriteError { lba: 5 }
    );
}

/// An UNMAP is owed to the next flush from its attempt on, not only when the hole was punched:
/// a punch that fails part-way (EIO or ENOSPC splitting an extent) may have deallocated some of
/// the range, and the UNMAP is GOOD all the same. Here the punch is refused before it starts
/// (the file system said it cannot punch), which the store cannot tell from a partial failure.
#[test]
fn an_unmap_is_owed_to_the_next_flush_though_its_punch_failed() {
    let dir = TempDir::new("unmap-owed");
    let store = open(&config(IoEngine::Threads, &dir.file("disk.img"), Some(64 << 10))).expect("open");
    let mut q = store.open_queue().expect("queue");
    store.shared.punch.store(false, Ordering::Relaxed);
    let unmap = StoreOp::Unmap {
        ranges: vec![(40, 8), (24, 8)].into(),
    };
    assert_eq!(run(&mut q, unmap, None), StoreStatus::Good);
    assert_eq!(store.shared.dirty_low.load(Ordering::Acquire), 24);
    let zeroes = StoreOp::WriteZeroes {
        lba: 8,
        blocks: 8,
        deallocate: true,
    };
    assert_eq!(run(&mut q, zeroes, None), StoreStatus::Good);
    assert_eq!(store.shared.dirty_low.load(Ordering::Acquire), 8);
}
