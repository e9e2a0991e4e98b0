//! LIO's configfs, written directly (no targetcli): the user backstore a TCMU handler serves,
//! the tcm_loop target that gives it a local `/dev/sdX`, optionally an iSCSI target on a
//! portal, and their removal in reverse order.
//!
//! Under `<root>` (normally `/sys/kernel/config/target`) a setup creates, in this order:
//!
//! 1. `core/user_<hba>/<name>`, then writes its `control` one key per write (`dev_size=`,
//!    `hw_block_size=`, `dev_config=<subtype>/<config>`: the UIO name the handler looks for),
//!    then `1` to `enable`: the kernel creates the UIO device here; then
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
    /// mkdir, write, link, unlink, rmdir.
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

/// The objects created for one backstore; remove them with [`Setup::remove`]. Dropping it
/// without removing leaves them in configfs (a restarted handler can attach to the same
/// backstore; see docs/tcmu.md).
#[must_use = "the configfs objects stay until Setup::remove"]
pub struct Setup<F: ConfigfsFs> {
    fs: F,
    root: PathBuf,
    backstore: PathBuf,
    created: Vec<Created>,
    /// How many of `created` are the backstore's (the rest are targets).
    backstore_objects: usize,
    /// Objects that exist already are taken over ([`Setup::adopt`]).
    adopt: bool,
}

impl<F: ConfigfsFs> fmt::Debug for Setup<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Setup")
            .field("root", &self.root)
            .field("backstore", &self.backstore)
            .field("created", &self.created)
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
        (io::ErrorKind::NotFound, _) if action == "write" => format!(
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
            fs,
            root: root.to_owned(),
            backstore: backstore.clone(),
            created: Vec::new(),
            backstore_objects: 0,
            adopt,
        };
        match setup.build_backstore(spec, &hba) {
            Ok(()) => {
                setup.backstore_objects = setup.created.len();
                Ok(setup)
            }
            Err(e) => {
                if let Err(undo) = setup.remove_created() {
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

    fn err(&self, action: &'static str, path: &Path, source: io::Error) -> ConfigfsError {
        ConfigfsError {
            action,
            path: path.to_owned(),
            hint: hint_for(action, path, &source, &self.root),
            source,
        }
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

    fn build_backstore(&mut self, spec: &SetupSpec, hba: &Path) -> Result<(), ConfigfsError> {
        if !self.fs.exists(&self.root) {
            return Err(self.err(
                "open",
                &self.root.clone(),
                io::Error::from(io::ErrorKind::NotFound),
            ));
        }
        self.mkdir_shared(hba.to_owned())?;
        let backstore = self.backstore.clone();
        if self.mkdir(backstore.clone())? {
            // Adopted: configured and enabled by the earlier run; the kernel refuses most keys
            // of an enabled device anyway.
            log::info!("configfs: adopting backstore {}", backstore.display());
            return Ok(());
        }
        let control = backstore.join("control");
        // One key per write: the kernel parses a comma list too, but one per write names the
        // key it refused.
        self.write(&control, &format!("dev_size={}", spec.size))?;
        self.write(&control, &format!("hw_block_size={}", spec.block_size))?;
        self.write(&control, &format!("dev_config={}", spec.dev_config))?;
        if let Some(mb) = spec.ring_mb {
            self.write(&control, &format!("cmd_ring_size_mb={mb}"))?;
        }
        self.write(&backstore.join("enable"), "1")?;
        // Task management notices on the ring (`TCMU_OP_TMR`, kernel 5.9 and later): without
        // them the kernel aborts commands silently and waits for their answers, which the
        // executor then gives only when the store completes them. An older kernel lacks the
        // attribute: served all the same, without the notices.
        let tmr = backstore.join("attrib").join("tmr_notification");
        if self.fs.exists(&tmr) {
            self.write(&tmr, "1")?;
        } else {
            log::warn!(
                "configfs: {} is missing (kernel before 5.9): no task management notices",
                tmr.display()
            );
        }
        Ok(())
    }

    /// Create the targets of `spec` (tcm_loop, iSCSI) and link their LUNs to the backstore.
    /// Call it once the backstore is being served: linking a LUN makes the kernel scan it
    /// (INQUIRY, READ CAPACITY) through the ring, and an unserved ring costs that scan the
    /// kernel's command timeout. On a failure the objects created so far stay recorded:
    /// [`Setup::remove`] removes them with the backstore.
    ///
    /// # Errors
    /// [`ConfigfsError`] naming the file that failed.
    pub fn export(&mut self, spec: &SetupSpec) -> Result<(), ConfigfsError> {
        let backstore = self.backstore.clone();
        if let Some((wwn, initiator)) = &spec.loopback {
            // The fabric's directory first: its mkdir is what registers tcm_loop's fabric.
            self.mkdir_shared(self.root.join("loopback"))?;
            let target = self.root.join("loopback").join(wwn);
            self.mkdir_shared(target.clone())?;
            let tpg = target.join("tpgt_1");
            if !self.mkdir(tpg.clone())? {
                self.write(&tpg.join("nexus"), initiator)?;
            }
            let lun = tpg.join("lun/lun_0");
            self.mkdir(lun.clone())?;
            self.link(&backstore, lun.join(&spec.name))?;
        }
        if let Some(iscsi) = &spec.iscsi {
            self.mkdir_shared(self.root.join("iscsi"))?;
            let target = self.root.join("iscsi").join(&iscsi.iqn);
            self.mkdir_shared(target.clone())?;
            let tpg = target.join("tpgt_1");
            self.mkdir(tpg.clone())?;
            let lun = tpg.join("lun/lun_0");
            self.mkdir(lun.clone())?;
            self.link(&backstore, lun.join(&spec.name))?;
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
            let enable = tpg.join("enable");
            self.write(&enable, "1")?;
            self.created.push(Created::Disable(enable));
        }
        Ok(())
    }

    /// Remove the targets (their LUNs first), keeping the backstore: the kernel takes no new
    /// command for it from an initiator once this returns. Goes on past a failure. The
    /// handler still serves the ring meanwhile: removing a LUN waits for its commands, and
    /// the SCSI disk's removal may send a SYNCHRONIZE CACHE.
    ///
    /// # Errors
    /// The first failure; the objects after it in the order were still tried.
    pub fn unexport(&mut self) -> Result<(), ConfigfsError> {
        self.remove_down_to(self.backstore_objects)
    }

    /// Remove every object created, newest first. Goes on past a failure.
    ///
    /// # Errors
    /// The first failure; the objects after it in the order were still tried.
    pub fn remove(mut self) -> Result<(), ConfigfsError> {
        self.remove_created()
    }

    fn remove_created(&mut self) -> Result<(), ConfigfsError> {
        self.remove_down_to(0)
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
            if let Err(e) = result {
                log::error!("configfs teardown: {e}");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

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
                    "attrib/tmr_notification",
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
            let attrib = path.join("attrib");
            if attrib.is_dir() {
                let _ = std::fs::remove_dir(&attrib);
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
        // control got one key per write, in order; enable came after; the nexus was written.
        let writes: Vec<(String, String)> = setup
            .fs
            .writes
            .borrow()
            .iter()
            .map(|(p, v)| {
                (
                    p.strip_prefix(&root).expect("rel").display().to_string(),
                    v.clone(),
                )
            })
            .collect();
        assert_eq!(
            writes,
            [
                ("core/user_3/disk0/control", "dev_size=67108864"),
                ("core/user_3/disk0/control", "hw_block_size=4096"),
                ("core/user_3/disk0/control", "dev_config=scstaccel/ram"),
                ("core/user_3/disk0/control", "cmd_ring_size_mb=2"),
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
    fn a_killed_handlers_objects_are_adopted_untouched_and_removed_at_the_end() {
        let (_dir, root) = scratch();
        let before = tree(&root);
        let killed = full_setup(MimicFs::new(), &root, &spec()).expect("first run");
        let left = tree(&root);
        drop(killed); // a kill -9: nothing removed
                      // A plain create refuses the leftover backstore.
        let err = Setup::create(MimicFs::new(), &root, &spec()).expect_err("exists");
        assert_eq!(err.action, "mkdir");
        let mut adopted = Setup::adopt(MimicFs::new(), &root, &spec()).expect("adopt");
        adopted.export(&spec()).expect("export");
        assert!(
            adopted.fs.writes.borrow().is_empty(),
            "nothing written to an enabled backstore or an existing TPG: {:?}",
            adopted.fs.writes.borrow()
        );
        assert_eq!(tree(&root), left, "the tree is as the killed run left it");
        adopted.remove_created().expect("remove");
        assert_eq!(tree(&root), before, "and all of it removed at the end");
        // Adopting where nothing is left creates everything, as create does.
        let fresh = Setup::adopt(MimicFs::new(), &root, &spec()).expect("adopt nothing");
        assert_eq!(
            fresh.fs.writes.borrow().len(),
            6,
            "backstore configured, enabled, task management notices on"
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
        let writes = setup.fs.writes.borrow().clone();
        assert_eq!(writes.last(), Some(&(tpg.join("enable"), "1".to_owned())));
        assert!(writes.contains(&(tpg.join("attrib/generate_node_acls"), "1".to_owned())));
        // Removal needs the fs back to read the writes: drive it through remove_created.
        let mut setup = setup;
        setup.remove_created().expect("remove");
        let writes = setup.fs.writes.borrow().clone();
        assert_eq!(writes.last(), Some(&(tpg.join("enable"), "0".to_owned())));
        assert_eq!(tree(&root), before);
    }
}
