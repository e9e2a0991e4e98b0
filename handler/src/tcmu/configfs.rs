//! LIO's configfs, written directly (no targetcli): the user backstore a TCMU handler serves,
//! the tcm_loop target that gives it a local `/dev/sdX`, optionally an iSCSI target on a
//! portal, and their removal in reverse order.
//!
//! Under `<root>` (normally `/sys/kernel/config/target`) a setup creates, in this order:
//!
//! 1. `core/user_<hba>/<name>`, then writes its `control` one key per write (`dev_size=`,
//!    `hw_block_size=`, `dev_config=<subtype>/<config>`: the UIO name the handler looks for,
//!    `nl_reply_supported=-1`: the kernel is not to wait for netlink replies to this device's
//!    events), then `1` to `enable`: the kernel creates the UIO device here; then
//!    `attrib/tmr_notification=1` (task management notices on the ring) where the kernel has it.
//! 2. tcm_loop: `loopback/<wwn>/tpgt_1`, `nexus` (the I_T nexus; tcm_loop adds its SCSI host
//!    device only once one exists), `lun/lun_0`, and a link from the LUN to the backstore.
//! 3. Optionally iSCSI: `iscsi/<iqn>/tpgt_1`, `lun/lun_0` linked likewise, `np/<ip>:<port>`,
//!    demo-mode attributes (any initiator, no authentication, writable), `enable`.
//!
//! [`Setup::remove`] undoes what was created, newest first, and goes on past a failure so as
//! much as possible is removed; the first failure is returned. Every error names the file and
//! says what to do.
//!
//! The file system is a parameter ([`ConfigfsFs`]): the kernel's configfs through `std::fs`
//! ([`KernelFs`]), or in tests a scratch tree that mimics it (a `mkdir` there creates the
//! attribute files the kernel would).

use std::fmt;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

/// The usual configfs root of LIO.
pub const TARGET_ROOT: &str = "/sys/kernel/config/target";

/// The file-system operations a setup needs, as configfs offers them.
pub trait ConfigfsFs {
    /// Create a directory (configfs creates the object and its attribute files).
    fn mkdir(&self, path: &Path) -> io::Result<()>;
    /// Write an existing attribute (configfs attributes cannot be created).
    fn write_attr(&self, path: &Path, value: &str) -> io::Result<()>;
    /// Link `link` to `target`.
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    /// Remove a link.
    fn unlink(&self, link: &Path) -> io::Result<()>;
    /// Remove a directory (configfs removes its attribute files with it).
    fn rmdir(&self, path: &Path) -> io::Result<()>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    /// Read an attribute (configfs answers a read with the attribute's value and a newline).
    fn read_attr(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// The kernel's configfs, through `std::fs`.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelFs;

impl ConfigfsFs for KernelFs {
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn write_attr(&self, path: &Path, value: &str) -> io::Result<()> {
        use std::io::Write;
        // No create, no append: configfs attributes exist once their object does, and one
        // write(2) is one store to the kernel.
        let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.write_all(value.as_bytes())
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn unlink(&self, link: &Path) -> io::Result<()> {
        std::fs::remove_file(link)
    }

    fn rmdir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }
}

/// An iSCSI target on one portal, exporting the backstore in demo mode (any initiator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IscsiSpec {
    /// The target's IQN.
    pub iqn: String,
    /// The portal, e.g. `127.0.0.1:3260`.
    pub portal: String,
}

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupSpec {
    /// The HBA number (`core/user_<hba>`).
    pub hba: u32,
    /// The backstore's name (`core/user_<hba>/<name>`), also in the UIO device's name.
    pub name: String,
    /// Medium size in bytes.
    pub size: u64,
    /// Logical block size.
    pub block_size: u32,
    /// `dev_config`: `<subtype>/<config>`, the rest of the UIO name.
    pub dev_config: String,
    /// The command ring's size in MiB (`cmd_ring_size_mb`); `None` keeps the kernel's default.
    pub ring_mb: Option<u32>,
    /// A tcm_loop target's WWN (`naa.` + 16 hex digits) and its initiator's for the nexus;
    /// `None` for no tcm_loop target.
    pub loopback: Option<(String, String)>,
    /// An iSCSI target; `None` for none.
    pub iscsi: Option<IscsiSpec>,
}

impl SetupSpec {
    /// The UIO device's HBA and device names, as [`super::uio::find_backstore`] takes them.
    pub fn uio_names(&self) -> (String, String) {
        (self.hba.to_string(), self.name.clone())
    }
}

/// What could not be done, with the file and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {hint}")]
pub struct ConfigfsError {
    /// mkdir, write, read, link, unlink, rmdir.
    pub action: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What to do about it.
    pub hint: String,
    /// The system's error.
    #[source]
    pub source: io::Error,
}

/// One object a setup created, undone by [`Setup::remove`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Created {
    Dir(PathBuf),
    /// A directory other objects may share (an HBA, a fabric, a target) that an earlier run
    /// made and this one adopted: removed if it can be, left (and said so) if it is in use.
    SharedDir(PathBuf),
    Link(PathBuf),
    /// An attribute to write at removal before what is under it goes (`enable` = 0 of an
    /// iSCSI TPG, so no new login arrives while its LUN is removed).
    Disable(PathBuf),
}

/// The configfs objects one owner created, in creation order, and the operations that record
/// them: the common part of [`Setup`] (a backstore and its LUNs) and [`Targets`] (targets
/// several backstores share).
struct Objects<F: ConfigfsFs> {
    fs: F,
    root: PathBuf,
    created: Vec<Created>,
    /// Objects that exist already are taken over ([`Setup::adopt`]).
    adopt: bool,
}

impl<F: ConfigfsFs> Objects<F> {
    fn err(&self, action: &'static str, path: &Path, source: io::Error) -> ConfigfsError {
        ConfigfsError {
            action,
            path: path.to_owned(),
            hint: hint_for(action, path, &source, &self.root),
            source,
        }
    }

    fn check_root(&self) -> Result<(), ConfigfsError> {
        if self.fs.exists(&self.root) {
            return Ok(());
        }
        Err(self.err("open", &self.root, io::Error::from(io::ErrorKind::NotFound)))
    }

    /// Make a directory (or, adopting, take over an existing one); `true` if it existed.
    fn mkdir(&mut self, path: PathBuf) -> Result<bool, ConfigfsError> {
        let existed = self.adopt && self.fs.exists(&path);
        if !existed {
            self.fs.mkdir(&path).map_err(|e| self.err("mkdir", &path, e))?;
        }
        self.created.push(Created::Dir(path));
        Ok(existed)
    }

    /// A directory shared with other objects (an HBA, a fabric, a target): created if absent,
    /// and then removed at the end only if this setup created (or adopted) it.
    fn mkdir_shared(&mut self, path: PathBuf) -> Result<(), ConfigfsError> {
        if self.fs.exists(&path) {
            if self.adopt {
                self.created.push(Created::SharedDir(path));
            }
            return Ok(());
        }
        self.mkdir(path).map(|_| ())
    }

    fn write(&self, path: &Path, value: &str) -> Result<(), ConfigfsError> {
        self.fs
            .write_attr(path, value)
            .map_err(|e| self.err("write", path, e))
    }

    fn link(&mut self, target: &Path, link: PathBuf) -> Result<(), ConfigfsError> {
        let existed = self.adopt && self.fs.exists(&link);
        if !existed {
            self.fs
                .symlink(target, &link)
                .map_err(|e| self.err("link", &link, e))?;
        }
        self.created.push(Created::Link(link));
        Ok(())
    }

    /// The TPGs of `spec` (fabric, target, TPG; tcm_loop's nexus; iSCSI's portal and demo-mode
    /// attributes, not yet enabled), in that order; returns them (loop first).
    fn build_tpgs(&mut self, spec: &TargetSpec) -> Result<Vec<PathBuf>, ConfigfsError> {
        let mut tpgs = Vec::new();
        if let Some(hba) = spec.hba {
            self.mkdir_shared(self.root.join(format!("core/user_{hba}")))?;
        }
        if let Some((wwn, initiator)) = &spec.loopback {
            // The fabric's directory first: its mkdir is what registers tcm_loop's fabric.
            self.mkdir_shared(self.root.join("loopback"))?;
            let target = self.root.join("loopback").join(wwn);
            self.mkdir_shared(target.clone())?;
            let tpg = target.join("tpgt_1");
            if !self.mkdir(tpg.clone())? {
                self.write(&tpg.join("nexus"), initiator)?;
            }
            tpgs.push(tpg);
        }
        if let Some(iscsi) = &spec.iscsi {
            self.mkdir_shared(self.root.join("iscsi"))?;
            let target = self.root.join("iscsi").join(&iscsi.iqn);
            self.mkdir_shared(target.clone())?;
            let tpg = target.join("tpgt_1");
            self.mkdir(tpg.clone())?;
            self.mkdir(tpg.join("np").join(&iscsi.portal))?;
            let attrib = tpg.join("attrib");
            for (name, value) in [
                ("authentication", "0"),
                ("generate_node_acls", "1"),
                ("demo_mode_write_protect", "0"),
                ("cache_dynamic_acls", "1"),
            ] {
                self.write(&attrib.join(name), value)?;
            }
            tpgs.push(tpg);
        }
        Ok(tpgs)
    }

    /// LUN `lun` of each TPG, linked to `backstore` as `name`.
    fn link_luns(
        &mut self,
        tpgs: &[PathBuf],
        lun: u32,
        backstore: &Path,
        name: &str,
    ) -> Result<(), ConfigfsError> {
        for tpg in tpgs {
            let dir = tpg.join(format!("lun/lun_{lun}"));
            self.mkdir(dir.clone())?;
            self.link(backstore, dir.join(name))?;
        }
        Ok(())
    }

    /// `enable` = 1 of the iSCSI TPGs among `tpgs` (after their LUNs, so the first login sees
    /// them), recorded so the removal disables them first.
    fn enable_iscsi(&mut self, tpgs: &[PathBuf]) -> Result<(), ConfigfsError> {
        for tpg in tpgs.iter().filter(|t| t.starts_with(self.root.join("iscsi"))) {
            let enable = tpg.join("enable");
            self.write(&enable, "1")?;
            self.created.push(Created::Disable(enable));
        }
        Ok(())
    }

    fn remove_down_to(&mut self, keep: usize) -> Result<(), ConfigfsError> {
        let mut first = None;
        while self.created.len() > keep {
            let Some(object) = self.created.pop() else {
                break;
            };
            let result = match &object {
                Created::Dir(p) => self.fs.rmdir(p).map_err(|e| self.err("rmdir", p, e)),
                Created::SharedDir(p) => {
                    if let Err(e) = self.fs.rmdir(p) {
                        log::info!("configfs: {} adopted and still in use, left: {e}", p.display());
                    }
                    Ok(())
                }
                Created::Link(p) => self.fs.unlink(p).map_err(|e| self.err("unlink", p, e)),
                Created::Disable(p) => self.write(p, "0"),
            };
            match result {
                Ok(()) => {}
                // Gone already: the kernel destroyed the backstore (an operator's rmdir, seen as
                // a REMOVED_DEVICE event) and its LUNs with it. What is wanted, absence, holds.
                Err(e) if e.source.kind() == io::ErrorKind::NotFound => {
                    log::info!("configfs teardown: {} was gone already", e.path.display());
                }
                Err(e) => {
                    log::error!("configfs teardown: {e}");
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// How [`Setup::reset_ring`] completes the commands still in the ring
/// (`tcmu_reset_ring_store`'s `err_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingReset {
    /// `1`: SAM BUSY, which initiators retry (tcmu-runner's choice when it reopens a ring).
    Busy,
    /// `2`: CHECK CONDITION, a hard failure.
    Fail,
}

/// The objects created for one backstore; remove them with [`Setup::remove`]. Dropping it
/// without removing leaves them in configfs (a restarted handler can attach to the same
/// backstore; see docs/tcmu.md).
#[must_use = "the configfs objects stay until Setup::remove"]
pub struct Setup<F: ConfigfsFs> {
    objects: Objects<F>,
    backstore: PathBuf,
    /// How many of `objects.created` are the backstore's (the rest are targets and LUNs).
    backstore_objects: usize,
    /// The backstore existed and was taken over ([`Setup::adopt`]): its ring may hold the
    /// earlier run's commands.
    adopted: bool,
}

impl<F: ConfigfsFs> fmt::Debug for Setup<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Setup")
            .field("root", &self.objects.root)
            .field("backstore", &self.backstore)
            .field("created", &self.objects.created)
            .finish_non_exhaustive()
    }
}

fn hint_for(action: &str, path: &Path, e: &io::Error, root: &Path) -> String {
    // The kernel loads a fabric's or backstore's module on the mkdir of its directory
    // (`loopback`, `iscsi`, `core/user_N`) and fails that mkdir (EINVAL, ENOENT) without it.
    let module = if path == root.join("loopback") {
        Some("tcm_loop")
    } else if path == root.join("iscsi") {
        Some("iscsi_target_mod")
    } else if path.parent() == Some(&root.join("core")) {
        Some("target_core_user")
    } else {
        None
    };
    match (e.kind(), module) {
        (io::ErrorKind::PermissionDenied, _) => "run as root (configfs objects belong to root)".into(),
        (io::ErrorKind::AlreadyExists, _) => {
            "an object of that name exists (left by an earlier run?): remove it with rmdir, or \
             choose another name"
                .into()
        }
        (io::ErrorKind::NotFound, _) if !root.exists() => format!(
            "{} does not exist: mount configfs (mount -t configfs none /sys/kernel/config) and \
             load target_core_mod",
            root.display()
        ),
        (_, Some(module)) if action == "mkdir" => format!("load {module} (modprobe {module})"),
        (io::ErrorKind::NotFound, _) if action == "write" || action == "read" => format!(
            "no such attribute: is {} LIO's configfs (configfs mounted, target_core_mod \
             loaded)? An older kernel may lack this attribute",
            root.display()
        ),
        _ if action == "rmdir" || action == "unlink" => {
            "the object is in use (an initiator or another target holds it); remove its users \
             first, then this by hand"
                .into()
        }
        _ => format!("the kernel refused it ({e}); see dmesg"),
    }
}

impl<F: ConfigfsFs> Setup<F> {
    /// Create the backstore of `spec` under `root` and enable it (the kernel creates its UIO
    /// device); the targets follow with [`Setup::export`]. On a failure, what was created so
    /// far is removed again before the error is returned.
    ///
    /// # Errors
    /// [`ConfigfsError`] naming the file that failed.
    pub fn create(fs: F, root: &Path, spec: &SetupSpec) -> Result<Self, ConfigfsError> {
        Self::open(fs, root, spec, false)
    }

    /// As [`Setup::create`], but every object of `spec` that exists already (left by a handler
    /// that was killed: the backstore still enabled, its ring and UIO device kept by the
    /// kernel, its targets still linked) is taken over as it is instead of refused: nothing is
    /// written to an existing backstore or TPG, and at the end it is removed as if created
    /// here. Missing objects are created. [`Setup::export`] adopts the targets likewise.
    ///
    /// # Errors
    /// [`ConfigfsError`] naming the file that failed.
    pub fn adopt(fs: F, root: &Path, spec: &SetupSpec) -> Result<Self, ConfigfsError> {
        Self::open(fs, root, spec, true)
    }

    fn open(fs: F, root: &Path, spec: &SetupSpec, adopt: bool) -> Result<Self, ConfigfsError> {
        let hba = root.join(format!("core/user_{}", spec.hba));
        let backstore = hba.join(&spec.name);
        let mut setup = Self {
            objects: Objects {
                fs,
                root: root.to_owned(),
                created: Vec::new(),
                adopt,
            },
            backstore,
            backstore_objects: 0,
            adopted: false,
        };
        match setup.build_backstore(spec, &hba) {
            Ok(()) => {
                setup.backstore_objects = setup.objects.created.len();
                Ok(setup)
            }
            Err(e) => {
                if let Err(undo) = setup.objects.remove_down_to(0) {
                    log::error!("after a failed configfs setup, removing it failed too: {undo}");
                }
                Err(e)
            }
        }
    }

    /// The backstore's directory.
    pub fn backstore(&self) -> &Path {
        &self.backstore
    }

    fn build_backstore(&mut self, spec: &SetupSpec, hba: &Path) -> Result<(), ConfigfsError> {
        let objects = &mut self.objects;
        objects.check_root()?;
        // Several backstores (several disks of one service) share the HBA: the first makes it,
        // the last to go removes it (a rmdir of a shared directory in use is left, and said).
        objects.mkdir_shared(hba.to_owned())?;
        let backstore = self.backstore.clone();
        if objects.mkdir(backstore.clone())? {
            // Adopted: configured and enabled by the earlier run; the kernel refuses most keys
            // of an enabled device anyway. Not two flags it takes at any time, which a backstore
            // made by someone else (targetcli) may have the other way: `nl_reply_supported`
            // (`tcmu_nl_reply_supported_store`; see below) and `tmr_notification`
            // (`tcmu_tmr_notification_store`: the executor's task management needs the notices).
            log::info!("configfs: adopting backstore {}", backstore.display());
            self.adopted = true;
            Self::refuse_replies_of_enabled(objects, &backstore)?;
            return Self::notify_task_management(objects, &backstore);
        }
        let control = backstore.join("control");
        // One key per write: the kernel parses a comma list too, but one per write names the
        // key it refused.
        objects.write(&control, &format!("dev_size={}", spec.size))?;
        objects.write(&control, &format!("hw_block_size={}", spec.block_size))?;
        objects.write(&control, &format!("dev_config={}", spec.dev_config))?;
        if let Some(mb) = spec.ring_mb {
            objects.write(&control, &format!("cmd_ring_size_mb={mb}"))?;
        }
        // No netlink replies for this device, and before `enable`: tcmu_configure_device (which
        // `enable` runs) replaces a device's nl_reply_supported that is not negative with the
        // module-wide tcmu_kern_cmd_reply_supported, which any process's TCMU_CMD_SET_FEATURES
        // turns on (tcmu-runner does at start and never turns it off). The kernel then waits for
        // a `*_DONE` reply to each of the device's events in tcmu_wait_genl_cmd_reply,
        // uninterruptibly and with no timeout: ADDED_DEVICE in this `enable` (waited for even
        // when nobody listens), RECONFIG_DEVICE in a dev_size write, REMOVED_DEVICE in the
        // rmdir. We answer none, and a running tcmu-runner answers ADDED_DEVICE -ENOENT for a
        // device it does not handle, which fails the enable. -1 is kept at enable; a kernel
        // without the key ignores it (tcmu_set_configfs_dev_params skips unknown keys).
        objects.write(&control, "nl_reply_supported=-1")?;
        objects.write(&backstore.join("enable"), "1")?;
        Self::notify_task_management(objects, &backstore)
    }

    /// An adopted backstore is enabled already, so `control`'s `nl_reply_supported=` came too
    /// late if the earlier run did not write it (or someone else made the backstore):
    /// `attrib/nl_reply_supported`, which the kernel takes at any time
    /// (`tcmu_nl_reply_supported_store`), opts it out of netlink replies for its later events
    /// (the dev_size write of a resize, the rmdir at the end). Without the attribute an enabled
    /// device cannot be opted out: said, with what to do.
    fn refuse_replies_of_enabled(objects: &mut Objects<F>, backstore: &Path) -> Result<(), ConfigfsError> {
        let attr = backstore.join("attrib").join("nl_reply_supported");
        if objects.fs.exists(&attr) {
            objects.write(&attr, "-1")?;
        } else {
            log::warn!(
                "configfs: {} is missing, so this enabled backstore cannot be opted out of \
                 netlink replies: if a daemon (tcmu-runner) has turned reply support on since \
                 target_core_user was loaded, the kernel waits without a timeout for a reply to \
                 each of its events (a resize's dev_size write, the removal's rmdir), which this \
                 service never sends; resize or remove it only while that daemon runs (it \
                 answers), or with netlink off here (--tcmu-no-netlink: with nobody listening \
                 the kernel does not wait, and keeps its own dev_size at a resize)",
                attr.display()
            );
        }
        Ok(())
    }

    /// Task management notices on the ring (`TCMU_OP_TMR`, kernel 5.9 and later): without
    /// them the kernel aborts commands silently and waits for their answers, which the
    /// executor then gives only when the store completes them. An older kernel lacks the
    /// attribute: served all the same, without the notices.
    fn notify_task_management(objects: &mut Objects<F>, backstore: &Path) -> Result<(), ConfigfsError> {
        let tmr = backstore.join("attrib").join("tmr_notification");
        if objects.fs.exists(&tmr) {
            objects.write(&tmr, "1")?;
        } else {
            log::warn!(
                "configfs: {} is missing (kernel before 5.9): no task management notices",
                tmr.display()
            );
        }
        Ok(())
    }

    /// Tell the kernel the enabled backstore's new size, as a resize does: `attrib/dev_size`
    /// (`control`'s `dev_size=` only counts before `enable`). target_core_user broadcasts it
    /// as a RECONFIG_DEVICE event, then takes the size.
    ///
    /// # Errors
    /// [`ConfigfsError`] naming the file.
    pub fn set_dev_size(&self, bytes: u64) -> Result<(), ConfigfsError> {
        self.objects
            .write(&self.backstore.join("attrib/dev_size"), &bytes.to_string())
    }

    /// Whether the backstore existed and was taken over ([`Setup::adopt`]) rather than made:
    /// its ring may hold commands of the earlier run ([`Setup::reset_ring`]).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The kernel's command timeout of this backstore (`attrib/cmd_time_out`, whole seconds):
    /// a command the handler has not completed that long after it was queued is failed to the
    /// initiator by the kernel (`tcmu_check_expired_ring_cmd`, NOT READY / LOGICAL UNIT
    /// COMMUNICATION FAILURE) while its entry stays in the ring. `None`: 0, no timeout.
    ///
    /// # Errors
    /// [`ConfigfsError`] naming the file: unreadable, or not a number of seconds.
    pub fn cmd_time_out(&self) -> Result<Option<Duration>, ConfigfsError> {
        let path = self.backstore.join("attrib/cmd_time_out");
        let text = self
            .objects
            .fs
            .read_attr(&path)
            .map_err(|e| self.objects.err("read", &path, e))?;
        let seconds: u64 = text.trim().parse().map_err(|_| {
            let e = io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{:?} is not a number of seconds", text.trim()),
            );
            self.objects.err("read", &path, e)
        })?;
        Ok((seconds != 0).then(|| Duration::from_secs(seconds)))
    }

    /// Block (`true`) or unblock the backstore (`action/block_dev`). Blocked, the kernel fails
    /// every new command at once with BUSY instead of queueing it to the ring (`queue_cmd_ring`:
    /// `TCM_LUN_BUSY`), and blocking first completes what the handler answered already and
    /// fails what waited for ring space (`tcmu_block_dev`).
    ///
    /// # Errors
    /// [`ConfigfsError`] naming the file (an older kernel has no `action/`; the kernel refuses
    /// a backstore that is not enabled).
    pub fn block(&self, blocked: bool) -> Result<(), ConfigfsError> {
        self.objects.write(
            &self.backstore.join("action/block_dev"),
            if blocked { "1" } else { "0" },
        )
    }

    /// Empty the ring (`action/reset_ring`): the kernel completes every command still in it
    /// with `how`'s status (`tcmu_reset_ring`: 1 BUSY, 2 CHECK CONDITION), drops those it had
    /// timed out already, and sets `cmd_head`, `cmd_tail` and its own cleaned index to 0.
    /// Only while no handler uses the ring: one that still read it would see its indices
    /// jump. Block first ([`Setup::block`]), as tcmu-runner does (libtcmu.c `device_add`): an
    /// unblocked device queues new commands into the emptied ring at once, and a check
    /// proposed on linux-scsi makes `tcmu_reset_ring` refuse an unblocked device (EINVAL).
    ///
    /// # Errors
    /// [`ConfigfsError`] naming the file.
    pub fn reset_ring(&self, how: RingReset) -> Result<(), ConfigfsError> {
        let value = match how {
            RingReset::Busy => "1",
            RingReset::Fail => "2",
        };
        self.objects
            .write(&self.backstore.join("action/reset_ring"), value)
    }

    /// Create the targets of `spec` (tcm_loop, iSCSI) and link their LUN 0 to the backstore:
    /// one disk with targets of its own (several disks share theirs with [`Targets`] and
    /// [`Setup::export_lun`]). Call it once the backstore is being served: linking a LUN
    /// makes the kernel scan it (INQUIRY, READ CAPACITY) through the ring, and an unserved
    /// ring costs that scan the kernel's command timeout. On a failure the objects created so
    /// far stay recorded: [`Setup::remove`] removes them with the backstore.
    ///
    /// # Errors
    /// [`ConfigfsError`] naming the file that failed.
    pub fn export(&mut self, spec: &SetupSpec) -> Result<(), ConfigfsError> {
        let targets = TargetSpec {
            hba: None,
            loopback: spec.loopback.clone(),
            iscsi: spec.iscsi.clone(),
        };
        let tpgs = self.objects.build_tpgs(&targets)?;
        let backstore = self.backstore.clone();
        self.objects.link_luns(&tpgs, 0, &backstore, &spec.name)?;
        self.objects.enable_iscsi(&tpgs)
    }

    /// Link LUN `lun` of every TPG of `targets` to this backstore (named `name` in the LUN, as
    /// the backstore is). The LUN and link belong to this setup: [`Setup::unexport`] removes
    /// them and nothing of the shared targets. As with [`Setup::export`], call it once the
    /// backstore is served.
    ///
    /// # Errors
    /// [`ConfigfsError`] naming the file that failed; what was made stays recorded.
    pub fn export_lun<G: ConfigfsFs>(
        &mut self,
        targets: &Targets<G>,
        lun: u32,
        name: &str,
    ) -> Result<(), ConfigfsError> {
        let backstore = self.backstore.clone();
        self.objects.link_luns(&targets.tpgs, lun, &backstore, name)
    }

    /// Remove the targets (their LUNs first), keeping the backstore: the kernel takes no new
    /// command for it from an initiator once this returns. Goes on past a failure. The
    /// handler still serves the ring meanwhile: removing a LUN waits for its commands, and
    /// the SCSI disk's removal may send a SYNCHRONIZE CACHE.
    ///
    /// # Errors
    /// The first failure; the objects after it in the order were still tried.
    pub fn unexport(&mut self) -> Result<(), ConfigfsError> {
        self.objects.remove_down_to(self.backstore_objects)
    }

    /// Remove every object created, newest first. Goes on past a failure.
    ///
    /// # Errors
    /// The first failure; the objects after it in the order were still tried.
    pub fn remove(mut self) -> Result<(), ConfigfsError> {
        self.remove_created()
    }

    fn remove_created(&mut self) -> Result<(), ConfigfsError> {
        self.objects.remove_down_to(0)
    }
}

/// The targets several backstores share: one tcm_loop target (one SCSI host, one `/dev/sdX`
/// per LUN) and optionally one iSCSI target, each with its TPG; each disk links its own LUN
/// ([`Setup::export_lun`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetSpec {
    /// The user HBA the disks' backstores share (`core/user_<hba>`), made first so that it
    /// belongs to the service, not to whichever disk came first (a disk removed while the
    /// others serve would otherwise take it, or fail to); `None`: each setup makes its own.
    pub hba: Option<u32>,
    /// A tcm_loop target's WWN and its initiator's for the nexus; `None` for none.
    pub loopback: Option<(String, String)>,
    /// An iSCSI target; `None` for none.
    pub iscsi: Option<IscsiSpec>,
}

/// The shared targets, created once before the first disk's LUN and removed after the last
/// disk's LUN went ([`Targets::remove`]).
#[must_use = "the configfs objects stay until Targets::remove"]
pub struct Targets<F: ConfigfsFs> {
    objects: Objects<F>,
    tpgs: Vec<PathBuf>,
}

impl<F: ConfigfsFs> fmt::Debug for Targets<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Targets")
            .field("tpgs", &self.tpgs)
            .field("created", &self.objects.created)
            .finish_non_exhaustive()
    }
}

impl<F: ConfigfsFs> Targets<F> {
    /// Create the targets and TPGs of `spec` (an iSCSI TPG is enabled later, by
    /// [`Targets::enable`], once LUNs are linked). With `adopt`, existing ones are taken over
    /// untouched, as [`Setup::adopt`] does. On a failure what was made is removed again.
    ///
    /// # Errors
    /// [`ConfigfsError`] naming the file that failed.
    pub fn create(fs: F, root: &Path, spec: &TargetSpec, adopt: bool) -> Result<Self, ConfigfsError> {
        let mut objects = Objects {
            fs,
            root: root.to_owned(),
            created: Vec::new(),
            adopt,
        };
        match objects.check_root().and_then(|()| objects.build_tpgs(spec)) {
            Ok(tpgs) => Ok(Self { objects, tpgs }),
            Err(e) => {
                if let Err(undo) = objects.remove_down_to(0) {
                    log::error!("after a failed configfs setup, removing it failed too: {undo}");
                }
                Err(e)
            }
        }
    }

    /// The TPG directories (tcm_loop's first).
    pub fn tpgs(&self) -> &[PathBuf] {
        &self.tpgs
    }

    /// Enable the iSCSI TPG (logins accepted from now on).
    ///
    /// # Errors
    /// [`ConfigfsError`] naming the file.
    pub fn enable(&mut self) -> Result<(), ConfigfsError> {
        let tpgs = self.tpgs.clone();
        self.objects.enable_iscsi(&tpgs)
    }

    /// Disable the iSCSI TPG ahead of the LUNs' removal (no new login meanwhile); the rest
    /// stays for [`Targets::remove`].
    ///
    /// # Errors
    /// [`ConfigfsError`] naming the file.
    pub fn disable(&mut self) -> Result<(), ConfigfsError> {
        let mut first = None;
        while let Some(Created::Disable(_)) = self.objects.created.last() {
            let keep = self.objects.created.len() - 1;
            if let Err(e) = self.objects.remove_down_to(keep) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Remove the targets, newest first, going on past a failure (call it after every disk's
    /// [`Setup::unexport`]: a TPG with a LUN left cannot go).
    ///
    /// # Errors
    /// The first failure.
    pub fn remove(mut self) -> Result<(), ConfigfsError> {
        self.objects.remove_down_to(0)
    }
}

/// A [`ConfigfsFs`] for a pointer to one: every call goes to the file system it points at.
macro_rules! forward_configfs {
    ($pointer:ty) => {
        impl<T: ConfigfsFs + ?Sized> ConfigfsFs for $pointer {
            fn mkdir(&self, path: &Path) -> io::Result<()> {
                (**self).mkdir(path)
            }
            fn write_attr(&self, path: &Path, value: &str) -> io::Result<()> {
                (**self).write_attr(path, value)
            }
            fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
                (**self).symlink(target, link)
            }
            fn unlink(&self, link: &Path) -> io::Result<()> {
                (**self).unlink(link)
            }
            fn rmdir(&self, path: &Path) -> io::Result<()> {
                (**self).rmdir(path)
            }
            fn exists(&self, path: &Path) -> bool {
                (**self).exists(path)
            }
            fn read_attr(&self, path: &Path) -> io::Result<String> {
                (**self).read_attr(path)
            }
        }
    };
}

// A shared file system serves several owners (the targets and each disk's setup).
forward_configfs!(&T);
// A shared file system a thread can own: a service's disks each hold one (a disk's stop may
// run on a thread of its own) and a test can stand in for the kernel's.
forward_configfs!(std::sync::Arc<T>);

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A scratch tree that behaves like configfs where the setup can tell: a `mkdir` of a
    /// known object creates its attribute files, attributes cannot be created by a write, a
    /// directory holding only its attribute files can be removed, and writes are recorded.
    struct MimicFs {
        writes: RefCell<Vec<(PathBuf, String)>>,
        /// A write to a path ending so fails with EINVAL, as the kernel refuses a bad value.
        refuse: Option<&'static str>,
        /// Fabric modules present: the mkdir of another fabric's directory fails with EINVAL,
        /// as the kernel's does when it cannot load the module.
        fabrics: &'static [&'static str],
    }

    impl MimicFs {
        fn new() -> Self {
            Self {
                writes: RefCell::new(Vec::new()),
                refuse: None,
                fabrics: &["loopback", "iscsi"],
            }
        }

        /// The attribute writes so far, in order, each path relative to `root`.
        fn writes_under(&self, root: &Path) -> Vec<(String, String)> {
            self.writes
                .borrow()
                .iter()
                .map(|(p, v)| {
                    (
                        p.strip_prefix(root).expect("rel").display().to_string(),
                        v.clone(),
                    )
                })
                .collect()
        }

        fn attributes(path: &Path) -> &'static [&'static str] {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let parent = path
                .parent()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .unwrap_or("");
            if parent.starts_with("user_") {
                &[
                    "control",
                    "enable",
                    "attrib/hw_block_size",
                    "attrib/dev_size",
                    "attrib/tmr_notification",
                    "attrib/nl_reply_supported",
                    "attrib/cmd_time_out",
                    "action/block_dev",
                    "action/reset_ring",
                ]
            } else if name.starts_with("tpgt_") {
                &[
                    "nexus",
                    "enable",
                    "lun/",
                    "np/",
                    "attrib/authentication",
                    "attrib/generate_node_acls",
                    "attrib/demo_mode_write_protect",
                    "attrib/cache_dynamic_acls",
                ]
            } else {
                &[]
            }
        }
    }

    impl ConfigfsFs for MimicFs {
        fn mkdir(&self, path: &Path) -> io::Result<()> {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let is_fabric = path.parent().and_then(|p| p.file_name()) == Some("target".as_ref());
            if is_fabric && !self.fabrics.contains(&name) {
                return Err(io::Error::from_raw_os_error(22));
            }
            std::fs::create_dir(path)?;
            for attr in Self::attributes(path) {
                let p = path.join(attr);
                if let Some(dir) = attr.strip_suffix('/') {
                    std::fs::create_dir_all(path.join(dir))?;
                } else {
                    std::fs::create_dir_all(p.parent().expect("parent"))?;
                    std::fs::write(&p, "")?;
                }
            }
            Ok(())
        }

        fn write_attr(&self, path: &Path, value: &str) -> io::Result<()> {
            if self.refuse.is_some_and(|r| path.ends_with(r)) {
                return Err(io::Error::from_raw_os_error(22));
            }
            KernelFs.write_attr(path, value)?;
            self.writes.borrow_mut().push((path.to_owned(), value.to_owned()));
            Ok(())
        }

        fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
            KernelFs.symlink(target, link)
        }

        fn unlink(&self, link: &Path) -> io::Result<()> {
            KernelFs.unlink(link)
        }

        fn rmdir(&self, path: &Path) -> io::Result<()> {
            // configfs: the attribute files and default groups go with the object; anything
            // else (a child object, a link) keeps it busy.
            for attr in Self::attributes(path) {
                let p = path.join(attr.trim_end_matches('/'));
                if attr.ends_with('/') {
                    let _ = std::fs::remove_dir(&p);
                } else {
                    let _ = std::fs::remove_file(&p);
                }
            }
            for group in ["attrib", "action"] {
                let dir = path.join(group);
                if dir.is_dir() {
                    let _ = std::fs::remove_dir(&dir);
                }
            }
            let lun = path.join("lun");
            let _ = std::fs::remove_dir(&lun);
            std::fs::remove_dir(path)
        }
    }

    /// The backstore, then its targets, as a handler does it; a failed export removes all.
    fn full_setup(fs: MimicFs, root: &Path, spec: &SetupSpec) -> Result<Setup<MimicFs>, ConfigfsError> {
        let mut setup = Setup::create(fs, root, spec)?;
        match setup.export(spec) {
            Ok(()) => Ok(setup),
            Err(e) => {
                setup.remove().expect("undo");
                Err(e)
            }
        }
    }

    fn spec() -> SetupSpec {
        SetupSpec {
            hba: 3,
            name: "disk0".into(),
            size: 64 << 20,
            block_size: 4096,
            dev_config: "scstaccel/ram".into(),
            ring_mb: Some(2),
            loopback: Some(("naa.5001405000000001".into(), "naa.5001405000000002".into())),
            iscsi: None,
        }
    }

    /// A scratch directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Self {
            use std::sync::atomic::AtomicU32;
            use std::sync::atomic::Ordering;
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "scst-accel-configfs-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("scratch");
            Self(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch() -> (Scratch, PathBuf) {
        let dir = Scratch::new();
        let root = dir.path().join("target");
        // core/ exists once target_core_mod is loaded; fabric directories are made on demand.
        std::fs::create_dir_all(root.join("core")).expect("mkdir");
        (dir, root)
    }

    fn tree(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).expect("read_dir") {
                let e = e.expect("entry");
                let rel = e.path().strip_prefix(base).expect("rel").display().to_string();
                let ft = e.file_type().expect("type");
                if ft.is_symlink() {
                    out.push(format!(
                        "{rel} -> {}",
                        std::fs::read_link(e.path()).expect("link").display()
                    ));
                } else if ft.is_dir() {
                    out.push(format!("{rel}/"));
                    walk(base, &e.path(), out);
                } else {
                    out.push(rel);
                }
            }
        }
        walk(root, root, &mut out);
        out.sort();
        out
    }

    #[test]
    fn creates_the_backstore_and_the_loop_lun_and_removes_them_all() {
        let (_dir, root) = scratch();
        let before = tree(&root);
        let setup = full_setup(MimicFs::new(), &root, &spec()).expect("create");
        let bs = root.join("core/user_3/disk0");
        assert_eq!(setup.backstore(), bs);
        let lun = root.join("loopback/naa.5001405000000001/tpgt_1/lun/lun_0");
        assert_eq!(std::fs::read_link(lun.join("disk0")).expect("link"), bs);
        // control got one key per write, in order, the opt-out of netlink replies among them
        // (it counts only before enable); enable came after; the nexus was written.
        let writes = setup.objects.fs.writes_under(&root);
        assert_eq!(
            writes,
            [
                ("core/user_3/disk0/control", "dev_size=67108864"),
                ("core/user_3/disk0/control", "hw_block_size=4096"),
                ("core/user_3/disk0/control", "dev_config=scstaccel/ram"),
                ("core/user_3/disk0/control", "cmd_ring_size_mb=2"),
                ("core/user_3/disk0/control", "nl_reply_supported=-1"),
                ("core/user_3/disk0/enable", "1"),
                ("core/user_3/disk0/attrib/tmr_notification", "1"),
                (
                    "loopback/naa.5001405000000001/tpgt_1/nexus",
                    "naa.5001405000000002"
                ),
            ]
            .map(|(p, v)| (p.to_owned(), v.to_owned()))
        );
        assert_eq!(spec().uio_names(), ("3".to_owned(), "disk0".to_owned()));
        // Unexport: the target goes, the backstore stays (still enabled, still served).
        let mut setup = setup;
        setup.unexport().expect("unexport");
        assert!(!root.join("loopback/naa.5001405000000001").exists());
        assert!(bs.join("enable").exists());
        setup.unexport().expect("a second unexport has nothing to do");
        setup.remove().expect("remove");
        assert_eq!(tree(&root), before, "everything created is gone, nothing else");
    }

    #[test]
    fn a_shared_hba_and_target_that_existed_before_are_left_in_place() {
        let (_dir, root) = scratch();
        let fs = MimicFs::new();
        fs.mkdir(&root.join("core/user_3")).expect("hba");
        fs.mkdir(&root.join("loopback")).expect("fabric");
        fs.mkdir(&root.join("loopback/naa.5001405000000001"))
            .expect("target");
        let before = tree(&root);
        let setup = full_setup(fs, &root, &spec()).expect("create");
        setup.remove().expect("remove");
        assert_eq!(tree(&root), before);
    }

    #[test]
    fn a_killed_handlers_objects_are_adopted_with_replies_off_notices_on_and_removed_at_the_end() {
        let (_dir, root) = scratch();
        let before = tree(&root);
        let killed = full_setup(MimicFs::new(), &root, &spec()).expect("first run");
        let left = tree(&root);
        // A kill -9: nothing removed.
        drop(killed);
        // A plain create refuses the leftover backstore.
        let err = Setup::create(MimicFs::new(), &root, &spec()).expect_err("exists");
        assert_eq!(err.action, "mkdir");
        let mut adopted = Setup::adopt(MimicFs::new(), &root, &spec()).expect("adopt");
        adopted.export(&spec()).expect("export");
        let writes = adopted.objects.fs.writes_under(&root);
        assert_eq!(
            writes,
            [
                ("core/user_3/disk0/attrib/nl_reply_supported", "-1"),
                ("core/user_3/disk0/attrib/tmr_notification", "1"),
            ]
            .map(|(p, v)| (p.to_owned(), v.to_owned())),
            "nothing written to an enabled backstore or an existing TPG but the two flags the \
             kernel takes on an enabled device: no netlink replies, task management notices"
        );
        assert_eq!(tree(&root), left, "the tree is as the killed run left it");
        adopted.remove_created().expect("remove");
        assert_eq!(tree(&root), before, "and all of it removed at the end");
        // Adopting where nothing is left creates everything, as create does.
        let fresh = Setup::adopt(MimicFs::new(), &root, &spec()).expect("adopt nothing");
        assert_eq!(
            fresh.objects.fs.writes.borrow().len(),
            7,
            "backstore configured, opted out of netlink replies, enabled, task management \
             notices on"
        );
        fresh.remove().expect("remove");
        assert_eq!(tree(&root), before);
    }

    #[test]
    fn a_refused_write_names_the_file_and_undoes_what_was_made() {
        let (_dir, root) = scratch();
        let before = tree(&root);
        let mut fs = MimicFs::new();
        fs.refuse = Some("nexus");
        let err = full_setup(fs, &root, &spec()).expect_err("refused");
        assert_eq!(err.action, "write");
        assert!(err.path.ends_with("tpgt_1/nexus"), "{}", err.path.display());
        assert!(err.to_string().contains("dmesg"), "{err}");
        assert_eq!(
            tree(&root),
            before,
            "the backstore and the TPG were removed again"
        );
    }

    #[test]
    fn a_missing_module_or_root_is_said_so() {
        let dir = Scratch::new();
        let root = dir.path().join("target");
        let err = full_setup(MimicFs::new(), &root, &spec()).expect_err("no root");
        assert!(err.to_string().contains("mount configfs"), "{err}");
        std::fs::create_dir_all(root.join("core")).expect("core");
        let mut no_loop = MimicFs::new();
        no_loop.fabrics = &["iscsi"];
        let err = full_setup(no_loop, &root, &spec()).expect_err("no tcm_loop");
        assert!(err.path.ends_with("target/loopback"), "{}", err.path.display());
        assert!(err.to_string().contains("modprobe tcm_loop"), "{err}");
        assert_eq!(tree(&root), ["core/"], "the backstore was removed again");
        // An earlier run's backstore is not taken over silently.
        MimicFs::new().mkdir(&root.join("core/user_3")).expect("hba");
        MimicFs::new()
            .mkdir(&root.join("core/user_3/disk0"))
            .expect("old");
        let err = full_setup(MimicFs::new(), &root, &spec()).expect_err("exists");
        assert!(err.to_string().contains("exists"), "{err}");
    }

    #[test]
    fn iscsi_gets_a_portal_demo_mode_and_is_disabled_before_its_removal() {
        let (_dir, root) = scratch();
        let before = tree(&root);
        let mut s = spec();
        s.loopback = None;
        s.iscsi = Some(IscsiSpec {
            iqn: "iqn.2026-12.org.example:disk0".into(),
            portal: "127.0.0.1:3260".into(),
        });
        let setup = full_setup(MimicFs::new(), &root, &s).expect("create");
        let tpg = root.join("iscsi/iqn.2026-12.org.example:disk0/tpgt_1");
        assert!(tpg.join("np/127.0.0.1:3260").is_dir());
        assert!(tpg.join("lun/lun_0/disk0").is_symlink());
        let writes = setup.objects.fs.writes.borrow().clone();
        assert_eq!(writes.last(), Some(&(tpg.join("enable"), "1".to_owned())));
        assert!(writes.contains(&(tpg.join("attrib/generate_node_acls"), "1".to_owned())));
        // Removal needs the fs back to read the writes: drive it through remove_created.
        let mut setup = setup;
        setup.remove_created().expect("remove");
        let writes = setup.objects.fs.writes.borrow().clone();
        assert_eq!(writes.last(), Some(&(tpg.join("enable"), "0".to_owned())));
        assert_eq!(tree(&root), before);
    }

    fn disk(i: u32) -> SetupSpec {
        SetupSpec {
            name: format!("disk{i}"),
            loopback: None,
            iscsi: None,
            ..spec()
        }
    }

    fn shared() -> TargetSpec {
        TargetSpec {
            hba: Some(3),
            loopback: Some(("naa.5001405000000001".into(), "naa.5001405000000002".into())),
            iscsi: Some(IscsiSpec {
                iqn: "iqn.2026-12.org.example:svc".into(),
                portal: "127.0.0.1:3260".into(),
            }),
        }
    }

    /// The service's start: shared targets, then each disk's backstore and LUN.
    fn start_disks<'f>(
        fs: &'f MimicFs,
        root: &Path,
        n: u32,
    ) -> (
        Targets<&'f MimicFs>,
        Vec<Result<Setup<&'f MimicFs>, ConfigfsError>>,
    ) {
        let targets = Targets::create(fs, root, &shared(), false).expect("targets");
        let setups = (0..n)
            .map(|i| {
                let mut setup = Setup::create(fs, root, &disk(i))?;
                setup.export_lun(&targets, i, &format!("disk{i}"))?;
                Ok(setup)
            })
            .collect();
        (targets, setups)
    }

    #[test]
    fn several_disks_share_the_targets_each_on_its_lun_and_all_go_newest_first() {
        let (_dir, root) = scratch();
        let before = tree(&root);
        let fs = MimicFs::new();
        let (mut targets, setups) = start_disks(&fs, &root, 3);
        let mut setups: Vec<_> = setups.into_iter().map(|s| s.expect("disk")).collect();
        targets.enable().expect("enable");
        let loop_tpg = root.join("loopback/naa.5001405000000001/tpgt_1");
        let iscsi_tpg = root.join("iscsi/iqn.2026-12.org.example:svc/tpgt_1");
        assert_eq!(targets.tpgs(), [loop_tpg.clone(), iscsi_tpg.clone()]);
        for i in 0..3 {
            let bs = root.join(format!("core/user_3/disk{i}"));
            for tpg in [&loop_tpg, &iscsi_tpg] {
                let link = tpg.join(format!("lun/lun_{i}/disk{i}"));
                assert_eq!(std::fs::read_link(&link).expect("link"), bs);
            }
        }
        let nexus_writes = fs
            .writes
            .borrow()
            .iter()
            .filter(|(p, _)| p.ends_with("nexus"))
            .count();
        assert_eq!(nexus_writes, 1, "one target, one nexus");
        assert_eq!(
            fs.writes.borrow().last(),
            Some(&(iscsi_tpg.join("enable"), "1".to_owned())),
            "iSCSI enabled once every LUN is there"
        );
        // The kernel removed disk1 while the others serve: its LUNs and backstore go, the
        // shared HBA and targets stay.
        let mut gone = setups.remove(1);
        gone.unexport().expect("unexport disk1");
        gone.remove().expect("remove disk1");
        assert!(!root.join("core/user_3/disk1").exists());
        assert!(!loop_tpg.join("lun/lun_1").exists());
        assert!(root.join("core/user_3/disk0/enable").exists());
        assert!(loop_tpg.join("lun/lun_2/disk2").is_symlink());
        // The stop: iSCSI disabled first, every LUN, every backstore (newest first), the
        // targets and the HBA last.
        targets.disable().expect("disable");
        assert_eq!(
            fs.writes.borrow().last(),
            Some(&(iscsi_tpg.join("enable"), "0".to_owned()))
        );
        for setup in setups.iter_mut().rev() {
            setup.unexport().expect("unexport");
        }
        for setup in setups.into_iter().rev() {
            setup.remove().expect("remove");
        }
        targets.remove().expect("targets");
        assert_eq!(tree(&root), before, "nothing left behind");
    }

    #[test]
    fn a_disk_that_fails_to_start_leaves_nothing_of_its_own_and_the_stop_leaves_nothing() {
        let (_dir, root) = scratch();
        let before = tree(&root);
        let mut fs = MimicFs::new();
        // The kernel refuses the third disk's size.
        fs.refuse = Some("disk2/control");
        let (targets, setups) = start_disks(&fs, &root, 4);
        let mut started = Vec::new();
        for (i, setup) in setups.into_iter().enumerate() {
            match setup {
                Ok(s) => started.push(s),
                Err(e) => {
                    assert_eq!(i, 2);
                    assert_eq!(e.action, "write");
                    assert!(
                        e.path.ends_with("core/user_3/disk2/control"),
                        "{}",
                        e.path.display()
                    );
                }
            }
        }
        assert_eq!(started.len(), 3, "the disks before and after it started");
        assert!(
            !root.join("core/user_3/disk2").exists(),
            "its backstore was removed again"
        );
        assert!(root.join("core/user_3/disk3/enable").exists());
        for setup in started.iter_mut().rev() {
            setup.unexport().expect("unexport");
        }
        for setup in started.into_iter().rev() {
            setup.remove().expect("remove");
        }
        targets.remove().expect("targets");
        assert_eq!(tree(&root), before);
    }

    #[test]
    fn a_failing_removal_goes_on_and_reports_the_first_failure() {
        let (_dir, root) = scratch();
        let before = tree(&root);
        let fs = MimicFs::new();
        let (targets, setups) = start_disks(&fs, &root, 2);
        let mut setups: Vec<_> = setups.into_iter().map(|s| s.expect("disk")).collect();
        // The targets removed while disk1's LUN is still linked: that TPG is busy, the error
        // names it, and the rest of the removal still ran.
        setups[0].unexport().expect("unexport disk0");
        let err = targets.remove().expect_err("a LUN still holds the TPG");
        assert_eq!(err.action, "rmdir");
        assert!(root.join("core/user_3").exists());
        for setup in setups.into_iter().rev() {
            setup.remove().expect("remove");
        }
        // What the failed removal left: the TPGs with disk1's LUN gone now, removed by hand.
        for dir in [
            "iscsi/iqn.2026-12.org.example:svc/tpgt_1/np/127.0.0.1:3260",
            "iscsi/iqn.2026-12.org.example:svc/tpgt_1",
            "iscsi/iqn.2026-12.org.example:svc",
            "iscsi",
            "loopback/naa.5001405000000001/tpgt_1",
            "loopback/naa.5001405000000001",
            "loopback",
            "core/user_3",
        ] {
            let _ = fs.rmdir(&root.join(dir));
        }
        assert_eq!(tree(&root), before);
    }

    #[test]
    fn a_new_size_of_an_enabled_backstore_goes_to_its_dev_size_attribute() {
        let (_dir, root) = scratch();
        let fs = MimicFs::new();
        let setup = Setup::create(&fs, &root, &disk(0)).expect("create");
        setup.set_dev_size(128 << 20).expect("resize");
        assert_eq!(
            fs.writes.borrow().last(),
            Some(&(
                root.join("core/user_3/disk0/attrib/dev_size"),
                "134217728".to_owned()
            ))
        );
        setup.remove().expect("remove");
    }

    /// The kernel's command timeout is read from `attrib/cmd_time_out` (0: none; a value that
    /// is not a number is an error naming the file); block and reset write the action files
    /// as tcmu-runner does; a made backstore is not adopted, a taken-over one is.
    #[test]
    fn the_command_timeout_is_read_and_block_and_reset_write_the_actions() {
        let (_dir, root) = scratch();
        let fs = MimicFs::new();
        let setup = Setup::create(&fs, &root, &disk(0)).expect("create");
        assert!(!setup.adopted());
        let timeout = root.join("core/user_3/disk0/attrib/cmd_time_out");
        std::fs::write(&timeout, "30\n").expect("the kernel's value");
        assert_eq!(setup.cmd_time_out().expect("read"), Some(Duration::from_secs(30)));
        std::fs::write(&timeout, "0\n").expect("no timeout");
        assert_eq!(setup.cmd_time_out().expect("read"), None);
        std::fs::write(&timeout, "soon\n").expect("garbage");
        let e = setup.cmd_time_out().expect_err("not seconds");
        assert_eq!((e.action, e.path.clone()), ("read", timeout.clone()));
        setup.block(true).expect("block");
        setup.reset_ring(RingReset::Busy).expect("reset");
        setup.reset_ring(RingReset::Fail).expect("reset");
        setup.block(false).expect("unblock");
        let writes = fs.writes_under(&root);
        assert_eq!(
            writes[writes.len() - 4..],
            [
                ("core/user_3/disk0/action/block_dev".to_owned(), "1".to_owned()),
                ("core/user_3/disk0/action/reset_ring".to_owned(), "1".to_owned()),
                ("core/user_3/disk0/action/reset_ring".to_owned(), "2".to_owned()),
                ("core/user_3/disk0/action/block_dev".to_owned(), "0".to_owned()),
            ]
        );
        let again = Setup::adopt(&fs, &root, &disk(0)).expect("adopt");
        assert!(again.adopted());
        again.remove().expect("remove");
        setup.remove().expect("gone already: nothing to report");
    }

    #[test]
    fn objects_the_kernel_removed_already_count_as_removed() {
        let (_dir, root) = scratch();
        let before = tree(&root);
        let fs = MimicFs::new();
        let (targets, setups) = start_disks(&fs, &root, 2);
        let mut setups: Vec<_> = setups.into_iter().map(|s| s.expect("disk")).collect();
        // disk1's LUNs and backstore destroyed behind the setup's back.
        for tpg in targets.tpgs() {
            let lun = tpg.join("lun/lun_1");
            fs.unlink(&lun.join("disk1")).expect("unlink");
            fs.rmdir(&lun).expect("rmdir lun");
        }
        fs.rmdir(&root.join("core/user_3/disk1"))
            .expect("rmdir backstore");
        let mut gone = setups.pop().expect("disk1");
        gone.unexport().expect("the LUNs were gone: nothing to report");
        gone.remove().expect("the backstore was gone: nothing to report");
        let mut last = setups.pop().expect("disk0");
        last.unexport().expect("unexport");
        last.remove().expect("remove");
        targets.remove().expect("targets");
        assert_eq!(tree(&root), before);
    }
}
