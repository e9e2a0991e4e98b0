//! Options shared by `demo` and `serve`: the exported disk and its registration.

use crate::identity::Identity;
use crate::units::parse_size;
use clap::Args;
use scst_accel_handler::frontend::FrontendConfig;
use scst_accel_handler::scsi::DiskConfig;
use scst_accel_handler::store::file::IoEngine;
use scst_accel_handler::store::StoreInfo;
use scst_accel_handler::transport::register::options_for_store;
use scst_accel_handler::transport::register::RegisterParams;
use scst_accel_handler::transport::version;
use std::path::PathBuf;

/// What [`valid_disk_name`] accepts, for messages.
pub const DISK_NAME_RULE: &str = "1 to 48 characters of A-Z a-z 0-9 _ . - not starting with '.'";

/// Whether `name` can be a disk's name: it names the SCST device (a sysfs directory, a command
/// argument) and the identity state file `STATE_DIR/identity/<name>.toml`, so a leading '.'
/// (".", "..", a hidden file) is refused too. The configuration check and the state file use
/// this one rule, so `check-config` accepts exactly the names `serve` can use.
pub fn valid_disk_name(name: &str) -> bool {
    (1..=48).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// The disk and how it registers with SCST.
#[derive(Args, Debug, Clone)]
pub struct DiskArgs {
    /// SCST device name (sysfs name; 1-48 characters of A-Z a-z 0-9 _ . -, not starting with '.').
    #[arg(long, default_value = "accel0")]
    pub name: String,
    /// Disk size (k, M, G, T suffixes).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub size: u64,
    /// Logical block size in bytes (power of two, 512 to 4096).
    #[arg(long, default_value_t = 512)]
    pub block_size: u32,
    /// Worker threads serving /dev/scst_user.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Commands fetched per REPLY_AND_GET_MULTI call.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Cap on command-buffer memory; beyond it SCST gets BUSY.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub buffer_memory: u64,
    /// scst_user interface version: 3.11 (default), 3.10, 3.9, 3.8, or the literal string the
    /// kernel expects (find it with `dmesg | grep 'Incorrect version of user device'`).
    #[arg(long, default_value = "3.11")]
    pub scst_version: String,
    /// A device request older than this is escalated (stop the queue, reset, fail with sense).
    #[arg(long, default_value = "5s", value_parser = crate::units::parse_duration)]
    pub command_timeout: std::time::Duration,
    /// Largest transfer in blocks advertised in the block limits VPD page.
    #[arg(long, default_value_t = 2048)]
    pub max_transfer_blocks: u32,
    /// The disk image (--board file; created at --size when absent, and an existing one must
    /// have that size: it is never truncated nor grown) or the block device (--board
    /// blockdev; its size and block size are the device's: a --size or --block-size given
    /// must be the device's, or the disk is refused).
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// Buffered I/O through the page cache instead of O_DIRECT (--board file/blockdev), for
    /// file systems that refuse O_DIRECT.
    #[arg(long)]
    pub buffered: bool,
    /// How the file store does its I/O (--board file/blockdev): auto (io_uring where the
    /// kernel offers it, else a pool of I/O threads, said once in the log), uring (fail when
    /// it is unavailable), or threads.
    #[arg(long, default_value = "auto", value_parser = IoEngine::parse)]
    pub io_engine: IoEngine,
    /// The write cache's default: `false` starts the disk written through (WCE 0 in the
    /// caching mode page, every write FUA) and brings WCE 0 back after a LOGICAL UNIT RESET,
    /// on every frontend; `true` (the default) is WCE 1 where the store has a volatile cache (a
    /// file, a block device, an NVMe namespace with one) and 0 where it has none. Initiators
    /// may still change the current WCE with MODE SELECT.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub write_cache: bool,
    /// Command buffers to map at start-up, as SIZE:COUNT (e.g. 128k:512; repeatable), so the
    /// first commands of that size map nothing on a worker. Within --buffer-memory; one arena
    /// of 4 KiB buffers is always mapped for a device board.
    #[arg(long = "premap", value_name = "SIZE:COUNT", value_parser = Premap::parse)]
    pub premap: Vec<Premap>,
    /// `size` was given (on the command line or in the configuration file), not defaulted: a
    /// block device's size is its own, and one given must be it ([`DiskArgs::note_given`]).
    #[arg(skip)]
    pub size_given: bool,
    /// The same for `block_size`.
    #[arg(skip)]
    pub block_size_given: bool,
}

impl DiskArgs {
    /// Note which of the settings a block device decides were given on the command line
    /// (`matches`: the subcommand's), so that one given and not the device's is refused rather
    /// than ignored.
    pub fn note_given(&mut self, matches: &clap::ArgMatches) {
        let given = |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
        self.size_given |= given("size");
        self.block_size_given |= given("block_size");
    }
}

/// Largest buffer the SGV pool caches (and so can pre-map): its top size class, 4 MiB.
const PREMAP_MAX_BUFFER: u64 = 4 << 20;

/// One `--premap SIZE:COUNT` request: COUNT buffers of SIZE bytes (rounded up to the pool's
/// size class) made ready before the first command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Premap {
    /// Bytes per buffer, 1 to 4 MiB.
    pub buffer_size: u64,
    /// How many buffers, at least 1.
    pub buffers: usize,
}

impl Premap {
    /// Parse `SIZE:COUNT` (SIZE with a k/M suffix or in bytes).
    ///
    /// # Errors
    /// What is wrong and the accepted form.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (size, count) = text
            .split_once(':')
            .ok_or_else(|| format!("`{text}` is not SIZE:COUNT (e.g. 128k:512)"))?;
        let buffer_size = parse_size(size)?;
        if buffer_size == 0 || buffer_size > PREMAP_MAX_BUFFER {
            return Err(format!(
                "`{text}`: the buffer size must be 1 byte to 4M (larger buffers are never cached, \
                 so never pre-mapped)"
            ));
        }
        let buffers = count
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("`{text}`: COUNT must be a whole number of buffers, at least 1"))?;
        Ok(Self { buffer_size, buffers })
    }
}

impl std::fmt::Display for Premap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let size = self.buffer_size;
        if size.is_multiple_of(1 << 20) {
            write!(f, "{}M:{}", size >> 20, self.buffers)
        } else if size.is_multiple_of(1 << 10) {
            write!(f, "{}k:{}", size >> 10, self.buffers)
        } else {
            write!(f, "{size}:{}", self.buffers)
        }
    }
}

impl DiskArgs {
    /// Validate what the library would otherwise refuse later.
    pub fn validate(&self) -> Result<u64, String> {
        if !self.block_size.is_power_of_two() || !(512..=4096).contains(&self.block_size) {
            return Err(format!(
                "--block-size {} must be a power of two from 512 to 4096",
                self.block_size
            ));
        }
        let blocks = self.size / u64::from(self.block_size);
        if blocks == 0 || !self.size.is_multiple_of(u64::from(self.block_size)) {
            return Err(format!(
                "--size {} must be a non-zero multiple of the block size",
                self.size
            ));
        }
        if self.max_transfer_blocks == 0 {
            return Err("--max-transfer-blocks must be at least 1".into());
        }
        if self.workers == 0 || self.batch == 0 {
            return Err("--workers and --batch must be at least 1".into());
        }
        Ok(blocks)
    }

    /// The SCSI disk.
    ///
    /// The geometry is the store's: on a hardware board the medium's size and block size (an
    /// NVMe namespace's NSZE and LBA format) are what READ CAPACITY reports, whatever `--size`
    /// said; the block limits VPD never advertises more than the device takes in one request.
    ///
    /// The identity (vendor, product, serial, VPD 83h designator) is resolved beforehand
    /// ([`crate::identity::resolve`]), never derived from the name: two appliances that both
    /// call their disk `accel0` must not report the same LUN.
    ///
    /// `copy_manager`: the disk is made a LUN of SCST's copy manager (a `copy_manager` export
    /// that is applied, or the clone measurement's own LUN); only then does it advertise
    /// EXTENDED COPY (3PC, REPORT SUPPORTED OPERATION CODES), which fails for every disk the
    /// copy manager does not know (docs/xcopy.md §2).
    pub fn disk_config(&self, info: &StoreInfo, identity: &Identity, copy_manager: bool) -> DiskConfig {
        // Geometry, write cache and provisioning facts exactly as the store has them
        // (`DiskConfig::for_store`: WCE = 1 only over a volatile cache, the physical block
        // exponent, LBPRZ and GET LBA STATUS only where the store guarantees them). Thin
        // provisioning itself is the caller's choice, bounded by `info.supports_unmap`.
        let mut config = DiskConfig::for_store(info);
        // The operator's write-through (`write_cache = false`, as SCST vdisk's `write_through`
        // or LIO's `emulate_write_cache=0`): the default WCE is 0, so the disk starts written
        // through and a reset, which restores the default (the page cannot be saved), keeps
        // it so. V_SUP stays: the cache is there, and an initiator may still turn it on. A
        // store without a volatile cache has WCE 0 anyway.
        if !self.write_cache {
            config.write_cache = false;
            if info.volatile_cache {
                log::info!(
                    "disk {}: write_cache = false: written through (WCE 0) at start and after every reset",
                    self.name
                );
            } else {
                log::debug!(
                    "disk {}: write_cache = false: its store has no volatile cache, WCE is 0 anyway",
                    self.name
                );
            }
        }
        identity.apply(&mut config);
        config.limits.max_transfer_blocks = config.limits.max_transfer_blocks.min(self.max_transfer_blocks);
        if copy_manager {
            config.copy_manager_lun(info);
        }
        config
    }

    /// Registration parameters for a disk over a store `info` describes (its block size; EXT_COPY_REMAP
    /// where the store copies, [`options_for_store`]).
    pub fn register_params(&self, info: &StoreInfo) -> RegisterParams {
        let mut params = RegisterParams::new(&self.name, info.block_size, options_for_store(info));
        params.version = version::resolve(&self.scst_version);
        params
    }

    /// Frontend tuning.
    pub fn frontend_config(&self) -> FrontendConfig {
        FrontendConfig {
            workers: self.workers,
            cmds_per_call: self.batch,
            ..FrontendConfig::default()
        }
    }
}

impl Default for DiskArgs {
    /// The command line's defaults (parsed from an empty command line, so they cannot drift).
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            disk: DiskArgs,
        }
        <Defaults as clap::Parser>::parse_from(["scst-accel"]).disk
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IdentitySpec;
    use scst_accel_handler::store::ram::RamStore;
    use scst_accel_handler::store::Store;

    /// WCE follows the store: on over a volatile cache (a file store), off without one.
    #[test]
    fn the_caching_page_reports_the_store_s_write_cache() {
        let args = DiskArgs::default();
        let identity =
            crate::identity::resolve("accel0", &IdentitySpec::default(), None, None).expect("identity");
        let mut info = RamStore::new(512, 64, 64).info();
        assert!(!args.disk_config(&info, &identity, false).write_cache);
        info.volatile_cache = true;
        assert!(args.disk_config(&info, &identity, false).write_cache);
    }

    /// `write_cache = false` over a store with a volatile cache (a file store's): the disk
    /// serves WCE 0 as the current and the default value (MODE SENSE PC 00b and 10b), V_SUP
    /// still 1, every write planned FUA; a LOGICAL UNIT RESET after an initiator turned the
    /// cache on brings WCE 0 back. `true` keeps the store's cache on, as before the setting.
    #[test]
    fn write_cache_false_serves_the_disk_written_through_and_a_reset_keeps_it_so() {
        use scst_accel_hal::locks::LockToken;
        use scst_accel_handler::scsi::Disk;
        use scst_accel_handler::scsi::Plan;
        use scst_accel_handler::store::StoreOp;

        let identity =
            crate::identity::resolve("accel0", &IdentitySpec::default(), None, None).expect("identity");
        let mut info = RamStore::new(512, 64, 64).info();
        info.volatile_cache = true; // a file store's page cache, a drive's write cache
        let run = |disk: &Disk, cdb: &[u8], data: &[u8]| disk.start(&mut LockToken::root(), cdb, &data);
        let wce = |disk: &Disk, pc: u8| match run(disk, &[0x1A, 0x08, (pc << 6) | 0x08, 0, 0xFF, 0], &[]) {
            Plan::Done(r) => r.data[6] & 0x04 != 0,
            Plan::Io(io) => panic!("MODE SENSE planned {io:?}"),
        };
        let write_fua = |disk: &Disk| match run(disk, &[0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0], &[0; 512]) {
            Plan::Io(io) => matches!(io.op, StoreOp::Write { fua: true, .. }),
            Plan::Done(r) => panic!("WRITE answered {r:?}"),
        };
        let on = DiskArgs::default();
        assert!(on.write_cache, "on by default");
        let disk = Disk::try_new(on.disk_config(&info, &identity, false)).expect("disk");
        assert!(wce(&disk, 0) && wce(&disk, 2) && !write_fua(&disk));

        let off = DiskArgs {
            write_cache: false,
            ..DiskArgs::default()
        };
        let disk = Disk::try_new(off.disk_config(&info, &identity, false)).expect("disk");
        assert!(!wce(&disk, 0), "current WCE");
        assert!(!wce(&disk, 2), "default WCE");
        assert!(wce(&disk, 1), "changeable");
        assert!(write_fua(&disk), "written through");
        let Plan::Done(r) = run(&disk, &[0x12, 1, 0x86, 0, 0xFF, 0], &[]) else {
            panic!("INQUIRY planned I/O")
        };
        assert_eq!(r.data[6] & 0x01, 0x01, "V_SUP: the cache is there");
        // An initiator turns the cache on (MODE SELECT(6) of the caching page, WCE 1), then a
        // LOGICAL UNIT RESET: the default again.
        let mut select = vec![0u8; 4];
        select.extend_from_slice(&[0x08, 0x12, 0x04]);
        select.resize(24, 0);
        let Plan::Done(r) = run(&disk, &[0x15, 0x10, 0, 0, 24, 0], &select) else {
            panic!("turning WCE on flushes nothing")
        };
        assert_eq!(r.status, 0, "{r:?}");
        assert!(wce(&disk, 0) && !write_fua(&disk));
        disk.reset(&mut LockToken::root());
        assert!(!wce(&disk, 0), "the reset restored WCE 0");
        assert!(write_fua(&disk));
    }

    /// READ CAPACITY(16) over a real file store of 512-byte blocks on this file system: the
    /// exponent is log2(st_blksize / 512) (3 on ext4 and XFS, 4096-byte blocks), and a thin
    /// disk claims LBPME and LBPRZ (a punched hole reads as zeroes), SBC-3 §5.16.2.
    #[test]
    fn read_capacity_16_of_a_file_store_is_exact() {
        use scst_accel_handler::scsi::Disk;
        use scst_accel_handler::scsi::Plan;
        use scst_accel_handler::store::file::FileStore;
        use scst_accel_handler::store::file::FileStoreConfig;
        use std::os::unix::fs::MetadataExt;

        let dir = std::env::temp_dir().join(format!("disk-rc16-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("disk.img");
        let store = FileStore::open(&FileStoreConfig {
            create_size: Some(1 << 20),
            block_size: Some(512),
            direct: false,
            workers: 1,
            ..FileStoreConfig::new(&path)
        })
        .expect("file store");
        let blksize = std::fs::metadata(&path).expect("stat").blksize();
        let info = store.info();
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        let expected: u8 = match blksize {
            4096 => 3,
            b if b > 512 && b.is_power_of_two() => u8::try_from(b.trailing_zeros() - 9).expect("small"),
            _ => 0,
        };
        assert_eq!(info.physical_block_size, 512 << expected, "st_blksize {blksize}");
        assert!(info.supports_unmap && info.unmapped_reads_zero);

        let identity =
            crate::identity::resolve("accel0", &IdentitySpec::default(), None, None).expect("identity");
        let mut config = DiskArgs::default().disk_config(&info, &identity, false);
        assert!(
            config.lba_status,
            "a file's holes are known: GET LBA STATUS is offered"
        );
        config.thin_provisioning = true; // what service.rs does when the spec asks and the store can
        let disk = Disk::try_new(config).expect("disk");
        let cdb = [0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
        let Plan::Done(r) = disk.start(&mut scst_accel_hal::locks::LockToken::root(), &cdb, &[0u8; 0]) else {
            panic!("READ CAPACITY is answered by the engine");
        };
        assert_eq!(&r.data[..8], &2047u64.to_be_bytes());
        assert_eq!(&r.data[8..12], &512u32.to_be_bytes());
        assert_eq!(r.data[13], expected, "LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT");
        assert_eq!(r.data[14], 0xC0, "LBPME and LBPRZ, lowest aligned LBA 0");
        // VPD B2h agrees: LBPRZ (byte 5, bit 2).
        let Plan::Done(r) = disk.start(
            &mut scst_accel_hal::locks::LockToken::root(),
            &[0x12, 1, 0xB2, 0, 0xFF, 0],
            &[0u8; 0],
        ) else {
            panic!("INQUIRY is answered by the engine");
        };
        assert_eq!(r.data[5] & 0x04, 0x04);
    }

    /// The physical block size and LBPRZ come from the store, exactly.
    #[test]
    fn geometry_and_lbprz_follow_the_store() {
        let args = DiskArgs::default();
        let identity =
            crate::identity::resolve("accel0", &IdentitySpec::default(), None, None).expect("identity");
        let mut info = RamStore::new(512, 64, 64).info();
        let config = args.disk_config(&info, &identity, false);
        assert_eq!(config.physical_block_exponent, 0);
        assert!(config.unmapped_reads_zero, "the RAM store zeroes what it unmaps");
        assert!(config.lba_status, "the RAM store reports every block mapped");
        info.physical_block_size = 4096;
        info.unmapped_reads_zero = false;
        let config = args.disk_config(&info, &identity, false);
        assert_eq!(config.physical_block_exponent, 3);
        assert!(!config.unmapped_reads_zero);
    }
}
