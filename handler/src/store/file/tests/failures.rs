//! Failures of real media (issue 10): a full file system (ENOSPC), a device that fails (EIO, on
//! a transfer or in the write-back a flush must report), a file truncated under the store, a
//! second handler on one image. Each ends with the status the engine turns into sense, checked
//! here through the engine too. They need root (mount, losetup) and skip loudly without it.

use super::*;
use crate::scsi::Disk;
use crate::scsi::DiskConfig;
use crate::scsi::Plan;
use crate::scsi::NO_DATA;
use std::process::Command;

/// An image of `size` bytes (created when absent), O_DIRECT, 2 I/O threads.
fn image_config(path: &Path, size: u64) -> FileStoreConfig {
    FileStoreConfig {
        create_size: Some(size),
        workers: 2,
        ..FileStoreConfig::new(path)
    }
}

/// Root, from /proc (no FFI for a test).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

/// Run a command; its stderr as the error.
fn sh(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A file system mounted on a directory of a temp dir; unmounted (and its loop device
/// detached) on drop, whatever the test did.
struct Mounted {
    mnt: PathBuf,
    loop_device: Option<String>,
    dir: TempDir,
}

impl Mounted {
    /// A tmpfs of `size` bytes.
    fn tmpfs(tag: &str, size: u64) -> Result<Self, String> {
        if !is_root() {
            return Err("not root (mount needs it)".into());
        }
        let dir = TempDir::new(tag);
        let mnt = dir.file("mnt");
        std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        let mnt_s = mnt.to_str().ok_or("temp path is not UTF-8")?.to_owned();
        sh(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size}"), "none", &mnt_s],
        )?;
        Ok(Self {
            mnt,
            loop_device: None,
            dir,
        })
    }

    /// A ramfs: a file system that cannot punch holes (fallocate(2) answers EOPNOTSUPP).
    fn ramfs(tag: &str) -> Result<Self, String> {
        if !is_root() {
            return Err("not root (mount needs it)".into());
        }
        let dir = TempDir::new(tag);
        let mnt = dir.file("mnt");
        std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        let mnt_s = mnt.to_str().ok_or("temp path is not UTF-8")?.to_owned();
        sh("mount", &["-t", "ramfs", "none", &mnt_s])?;
        Ok(Self {
            mnt,
            loop_device: None,
            dir,
        })
    }

    /// ext4 without a journal on a loop device over a `size`-byte file of the temp dir.
    fn ext4(tag: &str, size: u64) -> Result<Self, String> {
        if !is_root() {
            return Err("not root (losetup and mount need it)".into());
        }
        let dir = TempDir::new(tag);
        let backing = dir.file("fs.img");
        File::create(&backing)
            .and_then(|f| f.set_len(size))
            .map_err(|e| e.to_string())?;
        let backing_s = backing.to_str().ok_or("temp path is not UTF-8")?.to_owned();
        sh(
            "mkfs.ext4",
            &["-q", "-F", "-O", "^has_journal", "-b", "4096", &backing_s],
        )?;
        let device = sh("losetup", &["--find", "--show", &backing_s])?;
        let mut mounted = Self {
            mnt: dir.file("mnt"),
            loop_device: Some(device.clone()),
            dir,
        };
        std::fs::create_dir(&mounted.mnt).map_err(|e| e.to_string())?;
        let mnt_s = mounted.mnt.to_str().ok_or("temp path is not UTF-8")?.to_owned();
        if let Err(e) = sh("mount", &[&device, &mnt_s]) {
            // Not mounted: only the loop device to let go of.
            mounted.mnt = PathBuf::new();
            return Err(e);
        }
        Ok(mounted)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if !self.mnt.as_os_str().is_empty() {
            if let Err(e) = sh("umount", &[&self.mnt.to_string_lossy()]) {
                eprintln!("{e}; unmounting lazily");
                let _ = sh("umount", &["-l", &self.mnt.to_string_lossy()]);
            }
        }
        if let Some(device) = &self.loop_device {
            if let Err(e) = sh("losetup", &["-d", device]) {
                eprintln!("{e}");
            }
        }
        let _ = &self.dir;
    }
}

/// The sense the engine answers a WRITE (or READ) of `blocks` at `lba` with when the store
/// ends it with `status`: the first 14 bytes of fixed-format sense.
fn sense(thin: bool, write: bool, lba: u32, blocks: u16, status: StoreStatus) -> Vec<u8> {
    let mut config = DiskConfig::new(512, 1 << 20);
    config.thin_provisioning = thin;
    let disk = Disk::try_new(config).expect("disk");
    let mut cdb = vec![if write { 0x2a } else { 0x28 }, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    let data = vec![0u8; usize::from(blocks) * 512];
    let plan = if write {
        disk.start(&mut scst_accel_hal::locks::LockToken::root(), &cdb, &data)
    } else {
        disk.start(&mut scst_accel_hal::locks::LockToken::root(), &cdb, &NO_DATA)
    };
    let Plan::Io(io) = plan else {
        panic!("a READ/WRITE goes to the store")
    };
    match disk.finish(&io, status) {
        Plan::Done(r) => r.sense[..14].to_vec(),
        Plan::Io(_) => panic!("a failed command is done"),
    }
}

/// Fixed sense with VALID and INFORMATION = `lba`.
fn fixed(key: u8, (asc, ascq): (u8, u8), lba: u32) -> Vec<u8> {
    let mut s = vec![0xF0, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq];
    s[3..7].copy_from_slice(&lba.to_be_bytes());
    s
}

/// An image on a file system that cannot punch holes (ramfs) is not offered deallocation,
/// found at open: thin, its UNMAPs would deallocate nothing and a FORMAT UNIT would leave the
/// old data where LBPRZ promises zeroes. The dump says so.
#[test]
fn ramfs_cannot_punch_holes_so_the_disk_is_thick() {
    let name = "ramfs_cannot_punch_holes_so_the_disk_is_thick";
    let fs = match Mounted::ramfs("ramfs") {
        Ok(fs) => fs,
        Err(reason) => return scst_accel_hal::skip::test_skipped(name, &reason),
    };
    let store = FileStore::open(&FileStoreConfig {
        direct: false,
        ..image_config(&fs.file("disk.img"), 1 << 20)
    })
    .expect("open");
    assert!(!store.info().supports_unmap, "deallocation offered on ramfs");
    let dump = store.dump().expect("dump");
    assert!(dump.contains("cannot punch holes"), "{dump}");
}

/// ENOSPC: a sparse 1 MiB image on a 256 KiB tmpfs fills it up. The write that cannot get
/// space is SpaceExhausted at its first block that fails alone (DATA PROTECT / SPACE
/// ALLOCATION FAILED WRITE PROTECT on a thin disk, MEDIUM ERROR / WRITE ERROR on a fully
/// provisioned one), never Good; blocks already allocated still take overwrites; and a hole
/// UNMAP punched is unallocated again: a write into it on the full file system fails alike.
#[test]
fn a_full_file_system_is_space_exhausted_at_the_first_block_not_stored() {
    let name = "a_full_file_system_is_space_exhausted_at_the_first_block_not_stored";
    let fs = match Mounted::tmpfs("enospc", 256 << 10) {
        Ok(fs) => fs,
        Err(reason) => return scst_accel_hal::skip::test_skipped(name, &reason),
    };
    let store = FileStore::open(&FileStoreConfig {
        direct: false,
        ..image_config(&fs.file("disk.img"), 1 << 20)
    })
    .expect("a sparse 1 MiB file fits");
    let mut q = store.open_queue().expect("queue");
    let buf = buffer(64 << 10);
    buf.fill(0, 64 << 10, 0xee);
    let write = |q: &mut Box<dyn StoreQueue>, lba: u64, blocks: u32| {
        run(
            q,
            StoreOp::Write {
                lba,
                blocks,
                fua: false,
            },
            Some(&buf),
        )
    };
    let mut failed = None;
    for lba in (0..2048).step_by(128) {
        match write(&mut q, lba, 128) {
            StoreStatus::Good => {}
            StoreStatus::SpaceExhausted { lba: at } => {
                assert!((lba..lba + 128).contains(&at), "{at} outside the write at {lba}");
                failed = Some(at);
                break;
            }
            other => panic!("write at {lba}: {other:?}"),
        }
    }
    let at = failed.expect("a file system smaller than the image fills up");
    // Everything before the failing block was stored, and can be overwritten in place.
    let out = buffer(512);
    let read_one = |q: &mut Box<dyn StoreQueue>, lba| run(q, StoreOp::Read { lba, blocks: 1 }, Some(&out));
    assert_eq!(read_one(&mut q, at - 1), StoreStatus::Good);
    assert!(bytes(&out, 512).iter().all(|&b| b == 0xee));
    assert_eq!(write(&mut q, at - 8, 8), StoreStatus::Good);
    // The sense of each provisioning, with the LBA in INFORMATION.
    let lba = u32::try_from(at).expect("small");
    assert_eq!(
        sense(true, true, lba, 8, StoreStatus::SpaceExhausted { lba: at }),
        fixed(7, (0x27, 0x07), lba)
    );
    assert_eq!(
        sense(false, true, lba, 8, StoreStatus::SpaceExhausted { lba: at }),
        fixed(3, (0x0C, 0x00), lba)
    );
    // Punch the first 64 KiB out (UNMAP), fill the space it freed elsewhere, then write into
    // the hole: it needs allocating again, and there is no space.
    let ranges = vec![(0u64, 128u32)].into_boxed_slice();
    assert_eq!(run(&mut q, StoreOp::Unmap { ranges }, None), StoreStatus::Good);
    let mut refilled = false;
    for lba in (at..2048).step_by(8) {
        match write(&mut q, lba, 8) {
            StoreStatus::Good => {}
            StoreStatus::SpaceExhausted { .. } => {
                refilled = true;
                break;
            }
            other => panic!("write at {lba}: {other:?}"),
        }
    }
    assert!(refilled, "the space of the hole was used up again");
    assert_eq!(write(&mut q, 0, 8), StoreStatus::SpaceExhausted { lba: 0 });
    // Reads of the hole are zeroes, and Good: a hole is deallocated, not lost.
    assert_eq!(read_one(&mut q, 0), StoreStatus::Good);
    assert!(bytes(&out, 512).iter().all(|&b| b == 0));
    drop(q);
    drop(store);
}

/// The extents of `path` from filefrag, in 512-byte units: (file offset, device offset, length).
fn extents(path: &Path) -> Result<Vec<(u64, u64, u64)>, String> {
    let out = sh("filefrag", &["-v", "-b512", &path.to_string_lossy()])?;
    // "   0:        0..    8191:       2336..     10527:   8192:             last,eof"
    Ok(out
        .lines()
        .filter_map(|line| {
            let numbers: Vec<u64> = line
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().ok())
                .collect::<Option<_>>()?;
            let first = line.trim_start().split(':').next()?;
            (first.parse::<u64>().is_ok() && numbers.len() >= 6).then(|| (numbers[1], numbers[3], numbers[5]))
        })
        .collect())
}

/// An image on ext4 over a loop device, written and synced (so every block is allocated), and
/// where on the device its LBA `cut_lba` lies.
struct ImageOnLoop {
    fs: Mounted,
    image: PathBuf,
    /// The device's byte where the image's `cut_lba` is.
    device_end: u64,
}

impl ImageOnLoop {
    /// `Err` with the reason where it cannot be made here (not root, no mkfs.ext4 or filefrag).
    fn new(tag: &str, data: &[u8], cut_lba: u64) -> Result<Self, String> {
        let fs = Mounted::ext4(tag, 16 << 20)?;
        let image = fs.file("disk.img");
        std::fs::write(&image, data).expect("write the image");
        File::open(&image).and_then(|f| f.sync_all()).expect("sync");
        let extents = extents(&image)?;
        let &(file_at, device_at, _) = extents
            .iter()
            .find(|&&(f, _, n)| (f..f + n).contains(&cut_lba))
            .unwrap_or_else(|| panic!("no extent holds LBA {cut_lba}: {extents:?}"));
        Ok(Self {
            device_end: (device_at + cut_lba - file_at) * 512,
            fs,
            image,
        })
    }

    /// Shrink the device to end at the image's `cut_lba` (the loop device's backing file
    /// truncated, `losetup -c`): the image's blocks from there on fail in the block layer.
    fn cut(&self) {
        OpenOptions::new()
            .write(true)
            .open(self.fs.dir.file("fs.img"))
            .and_then(|f| f.set_len(self.device_end))
            .expect("truncate the loop device's backing file");
        let device = self.fs.loop_device.as_deref().expect("a loop device");
        sh("losetup", &["-c", device]).expect("losetup -c");
    }
}

/// A genuine EIO from a device: device-mapper is not available everywhere (no dm-error), so
/// the device under an ext4 file system is shrunk while it is mounted (the loop device's
/// backing file truncated, `losetup -c`): the blocks of the image past the device's new end
/// fail in the block layer ("attempt to access beyond end of device", EIO). A READ over the
/// cut is ReadError at the first block past it (MEDIUM ERROR / UNRECOVERED READ ERROR with
/// that LBA in INFORMATION), a WRITE is WriteError there (MEDIUM ERROR / WRITE ERROR).
#[test]
fn a_failing_device_is_a_medium_error_at_the_failing_lba() {
    let name = "a_failing_device_is_a_medium_error_at_the_failing_lba";
    let size = 4u64 << 20;
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    // The device will be cut at the image's LBA 4096 (a file system block boundary).
    let cut_lba = 4096u64;
    let image = match ImageOnLoop::new("eio", &data, cut_lba) {
        Ok(image) => image,
        Err(reason) => return scst_accel_hal::skip::test_skipped(name, &reason),
    };
    let store = FileStore::open(&image_config(&image.image, size)).expect("open the image (O_DIRECT)");
    let mut q = store.open_queue().expect("queue");
    let buf = buffer(8192);
    assert_eq!(
        run(
            &mut q,
            StoreOp::Read {
                lba: cut_lba - 8,
                blocks: 16
            },
            Some(&buf)
        ),
        StoreStatus::Good,
        "the whole image reads before the device shrinks"
    );
    image.cut();
    // A read over the cut: the first 8 blocks come, the 9th is the first that fails alone.
    assert_eq!(
        run(
            &mut q,
            StoreOp::Read {
                lba: cut_lba - 8,
                blocks: 16
            },
            Some(&buf)
        ),
        StoreStatus::ReadError { lba: cut_lba }
    );
    assert_eq!(
        run(
            &mut q,
            StoreOp::Read {
                lba: cut_lba - 8,
                blocks: 8
            },
            Some(&buf)
        ),
        StoreStatus::Good
    );
    assert_eq!(
        &bytes(&buf, 4096)[..],
        &data[(cut_lba as usize - 8) * 512..cut_lba as usize * 512]
    );
    let write = StoreOp::Write {
        lba: cut_lba + 8,
        blocks: 16,
        fua: false,
    };
    assert_eq!(
        run(&mut q, write, Some(&buf)),
        StoreStatus::WriteError { lba: cut_lba + 8 }
    );
    // A write-back write over the cut lands its first 8 blocks in the cache before it fails:
    // the next flush owes them from its first block (a failed flush may have lost them).
    let dirty = |store: &FileStore| store.shared.dirty_low.load(std::sync::atomic::Ordering::Acquire);
    let over_the_cut = StoreOp::Write {
        lba: cut_lba - 8,
        blocks: 16,
        fua: false,
    };
    assert_eq!(
        run(&mut q, over_the_cut, Some(&buf)),
        StoreStatus::WriteError { lba: cut_lba }
    );
    assert_eq!(
        dirty(&store),
        cut_lba - 8,
        "the blocks before the failure are owed to a flush"
    );
    assert_eq!(
        run(&mut q, StoreOp::Verify { lba: 0, blocks: 8192 }, None),
        StoreStatus::ReadError { lba: cut_lba }
    );
    let lba = u32::try_from(cut_lba).expect("small");
    assert_eq!(
        sense(false, false, lba - 8, 16, StoreStatus::ReadError { lba: cut_lba }),
        fixed(3, (0x11, 0x00), lba)
    );
    assert_eq!(
        sense(
            true,
            true,
            lba + 8,
            16,
            StoreStatus::WriteError { lba: cut_lba + 8 }
        ),
        fixed(3, (0x0C, 0x00), lba + 8)
    );
    drop(q);
    drop(store);
    drop(image);
}

/// A write-back error reaches the FLUSH even when a FUA write came between. Linux reports a
/// write-back error once per open file description (errseq): on the ring a FUA write is
/// RWF_DSYNC, which syncs its description and takes the EIO it finds there; the flush, on a
/// description of its own, still sees it. Here a page of the image past the cut is dirtied and
/// written back (failing) through another open of the file, a FUA write to a good block
/// follows, then the flush must fail, and stay failed.
#[test]
fn a_write_back_error_reaches_the_flush_after_a_fua_write() {
    let name = "a_write_back_error_reaches_the_flush_after_a_fua_write";
    for engine in [IoEngine::Threads, IoEngine::Uring] {
        if engine == IoEngine::Uring && !uring_or_skip(&format!("{name} (uring)")) {
            continue;
        }
        let cut_lba = 4096u64;
        let image = match ImageOnLoop::new("wberr", &vec![0x6b; 4 << 20], cut_lba) {
            Ok(image) => image,
            Err(reason) => return scst_accel_hal::skip::test_skipped(name, &reason),
        };
        image.cut();
        // Buffered: a FUA write is then a page cache write plus a sync of its description.
        let store = FileStore::open(&FileStoreConfig {
            direct: false,
            io_engine: engine,
            ..image_config(&image.image, 4 << 20)
        })
        .expect("open the image");
        let mut q = store.open_queue().expect("queue");
        let other = OpenOptions::new().write(true).open(&image.image).expect("open");
        std::os::unix::fs::FileExt::write_at(&other, &[0x11; 4096], (cut_lba + 8) * 512)
            .expect("dirty a page");
        let e = other.sync_data().expect_err("the page is past the device's end");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
        let buf = buffer(4096);
        let fua = StoreOp::Write {
            lba: 8,
            blocks: 8,
            fua: true,
        };
        // Its own status is what the kernel tells its description (it may take the EIO too).
        run(&mut q, fua, Some(&buf));
        for _ in 0..2 {
            assert_eq!(
                run(&mut q, StoreOp::Flush, None),
                StoreStatus::WriteError { lba: 0 },
                "{engine}: the flush after the lost write-back"
            );
        }
        drop(q);
        drop(store);
        drop(image);
    }
}

/// A file truncated under the running store: a READ past the new end is a read error at the
/// first missing block (the short read is not answered Good over zeroes), and a WRITE there is
/// refused as a write error rather than growing the file back (the store never grows it).
#[test]
fn a_file_truncated_under_the_store_is_neither_read_nor_grown() {
    let dir = TempDir::new("truncated");
    let path = dir.file("disk.img");
    let store = FileStore::open(&image_config(&path, 1 << 20)).expect("open");
    let mut q = store.open_queue().expect("queue");
    let buf = buffer(8192);
    pattern(&buf, 8192, 0x5a);
    let write = |q: &mut Box<dyn StoreQueue>, lba| {
        run(
            q,
            StoreOp::Write {
                lba,
                blocks: 16,
                fua: false,
            },
            Some(&buf),
        )
    };
    assert_eq!(write(&mut q, 2000), StoreStatus::Good);
    // 10 blocks and a half are left.
    OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(10 * 512 + 256))
        .expect("truncate");
    assert_eq!(
        run(&mut q, StoreOp::Read { lba: 4, blocks: 16 }, Some(&buf)),
        StoreStatus::ReadError { lba: 10 }
    );
    assert_eq!(
        run(
            &mut q,
            StoreOp::Read {
                lba: 2000,
                blocks: 16
            },
            Some(&buf)
        ),
        StoreStatus::ReadError { lba: 2000 }
    );
    assert_eq!(write(&mut q, 2000), StoreStatus::WriteError { lba: 2000 });
    assert_eq!(write(&mut q, 4), StoreStatus::WriteError { lba: 10 });
    let same = |q: &mut Box<dyn StoreQueue>| run(q, StoreOp::WriteSame { lba: 1000, blocks: 4 }, Some(&buf));
    assert_eq!(same(&mut q), StoreStatus::WriteError { lba: 1000 });
    assert_eq!(
        std::fs::metadata(&path).expect("stat").len(),
        10 * 512 + 256,
        "the file was not grown"
    );
    // Inside what is left, the disk still works.
    assert_eq!(
        run(
            &mut q,
            StoreOp::Write {
                lba: 0,
                blocks: 8,
                fua: true
            },
            Some(&buf)
        ),
        StoreStatus::Good
    );
}

/// Two stores on one image: the second is refused with the typed error that names the path
/// and says how to find the holder; once the first is gone the image opens again. On a block
/// device, the kernel's exclusive open refuses the second (Busy).
#[test]
fn a_second_store_on_one_image_is_refused() {
    let dir = TempDir::new("lock");
    let path = dir.file("disk.img");
    let first = FileStore::open(&image_config(&path, 64 << 10)).expect("open");
    let e = FileStore::open(&image_config(&path, 64 << 10)).expect_err("a second store on the image");
    assert!(matches!(e, FileStoreError::Locked { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&*path.to_string_lossy()) && text.contains("fuser") && text.contains("another process"),
        "{text}"
    );
    drop(first);
    let again = FileStore::open(&image_config(&path, 64 << 10)).expect("the lock went with the store");
    drop(again);

    let lo = match LoopDevice::new(1 << 20) {
        Ok(lo) => lo,
        Err(reason) => {
            return scst_accel_hal::skip::test_skipped(
                "a_second_store_on_one_image_is_refused (block device)",
                &reason,
            )
        }
    };
    let first = FileStore::open(&FileStoreConfig::new(&lo.device)).expect("open the loop device");
    let e = FileStore::open(&FileStoreConfig::new(&lo.device)).expect_err("a second store on the device");
    assert!(matches!(e, FileStoreError::Busy { .. }), "{e}");
    assert!(e.to_string().contains("fuser"), "{e}");
    drop(first);
}

/// ENOSPC from a block device that did not shrink is a thin-provisioned device out of space
/// (dm-thin, or a SCSI disk's DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT): it is
/// SpaceExhausted, as for a full file system. No thin pool here (device-mapper is not
/// everywhere), so the errno is injected into the store's own transfer path on a real loop
/// device, whose size the store then reads as on a real failure; once the device is cut short
/// of the block, the same ENOSPC is a write error.
#[test]
fn enospc_from_a_block_device_that_did_not_shrink_is_space_exhausted() {
    let name = "enospc_from_a_block_device_that_did_not_shrink_is_space_exhausted";
    let lo = match LoopDevice::new(1 << 20) {
        Ok(lo) => lo,
        Err(reason) => return scst_accel_hal::skip::test_skipped(name, &reason),
    };
    let store = FileStore::open(&FileStoreConfig::new(&lo.device)).expect("open the loop device");
    let bs = u64::from(store.info().block_size);
    let lba = store.info().num_blocks - 8;
    let enospc = || {
        store
            .shared
            .write(lba * bs, 4096, Through::WriteBack, |_, _, _, _| {
                Err(io::Error::from_raw_os_error(libc::ENOSPC))
            })
    };
    assert_eq!(enospc(), StoreStatus::SpaceExhausted { lba });
    OpenOptions::new()
        .write(true)
        .open(lo._dir.file("backing.img"))
        .and_then(|f| f.set_len(lba * bs))
        .expect("cut the backing file");
    sh("losetup", &["-c", &lo.device.to_string_lossy()]).expect("losetup -c");
    assert_eq!(enospc(), StoreStatus::WriteError { lba });
}

/// A block device shrunk under the store (a loop device whose backing file was cut, `losetup
/// -c`): a read past its new end is a read error at the first missing block, and a write there
/// (ENOSPC from the block layer: past the device's end, not a full file system) a write error,
/// not SpaceExhausted.
#[test]
fn a_block_device_shrunk_under_the_store_is_a_medium_error() {
    let name = "a_block_device_shrunk_under_the_store_is_a_medium_error";
    let lo = match LoopDevice::new(1 << 20) {
        Ok(lo) => lo,
        Err(reason) => return scst_accel_hal::skip::test_skipped(name, &reason),
    };
    let store = FileStore::open(&FileStoreConfig::new(&lo.device)).expect("open the loop device");
    let mut q = store.open_queue().expect("queue");
    let buf = buffer(8192);
    pattern(&buf, 8192, 0x3c);
    let write = StoreOp::Write {
        lba: 1020,
        blocks: 4,
        fua: false,
    };
    assert_eq!(run(&mut q, write.clone(), Some(&buf)), StoreStatus::Good);
    OpenOptions::new()
        .write(true)
        .open(lo._dir.file("backing.img"))
        .and_then(|f| f.set_len(1000 * 512))
        .expect("cut the backing file");
    sh("losetup", &["-c", &lo.device.to_string_lossy()]).expect("losetup -c");
    assert_eq!(
        run(&mut q, StoreOp::Read { lba: 996, blocks: 8 }, Some(&buf)),
        StoreStatus::ReadError { lba: 1000 }
    );
    assert_eq!(
        run(&mut q, write, Some(&buf)),
        StoreStatus::WriteError { lba: 1020 }
    );
}

/// A block device whose size went to 0 under the store (removed: Linux sets a removed disk's
/// capacity to 0; here a loop device whose backing file was emptied, `losetup -c`) fails the
/// store, so that the disk is torn down; a shrunk one does not (the test above).
#[test]
fn a_block_device_gone_to_size_zero_fails_the_store() {
    let name = "a_block_device_gone_to_size_zero_fails_the_store";
    let lo = match LoopDevice::new(1 << 20) {
        Ok(lo) => lo,
        Err(reason) => return scst_accel_hal::skip::test_skipped(name, &reason),
    };
    let store = FileStore::open(&FileStoreConfig::new(&lo.device)).expect("open the loop device");
    let mut q = store.open_queue().expect("queue");
    let buf = buffer(4096);
    assert_eq!(
        run(&mut q, StoreOp::Read { lba: 0, blocks: 8 }, Some(&buf)),
        StoreStatus::Good
    );
    assert_eq!(store.failure(), None);
    OpenOptions::new()
        .write(true)
        .open(lo._dir.file("backing.img"))
        .and_then(|f| f.set_len(0))
        .expect("empty the backing file");
    sh("losetup", &["-c", &lo.device.to_string_lossy()]).expect("losetup -c");
    assert_eq!(
        run(&mut q, StoreOp::Read { lba: 0, blocks: 8 }, Some(&buf)),
        StoreStatus::ReadError { lba: 0 }
    );
    let why = store.failure().expect("the store failed");
    assert!(why.contains("its size is now 0"), "{why}");
}
