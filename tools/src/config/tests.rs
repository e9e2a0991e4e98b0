//! The configuration file: a full file read back, the defaults, and every error with its line.

use super::load::parse;
use super::load::ConfigError;
use super::load::ConfigErrors;
use super::ServiceSettings;
use super::TargetDriver;
use crate::backend::BoardArg;
use crate::disk::Premap;
use std::time::Duration;

/// A minimal valid disk on lines 1-3; tests append lines 4 and on.
const DISK: &str = "[[disk]]\nname = \"a\"\nboard = \"sim\"\n";

fn errors(text: &str) -> Vec<ConfigError> {
    match parse(text, "t.toml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.errors,
    }
}

/// The file has exactly one error, on `line`, whose message contains `what`; it has a hint.
fn assert_one(text: &str, line: Option<usize>, what: &str) -> ConfigError {
    let found = errors(text);
    assert_eq!(found.len(), 1, "{found:#?}\n{text}");
    let e = found.into_iter().next().unwrap_or_else(|| unreachable!());
    assert_eq!(e.line, line, "{e:?}");
    assert!(e.message.contains(what), "{:?} should say {what:?}", e.message);
    assert!(!e.hint.is_empty(), "{e:?}");
    e
}

fn disk_with(lines: &str) -> String {
    format!("{DISK}{lines}")
}

const FULL: &str = r#"[service]
state_dir = "/srv/state"
control_socket = "/run/x/control.sock"
scst_device = "/dev/scst_user2"
scst_sysfs = "/sys/kernel/scst_tgt2"
metrics_listen = "127.0.0.1:9490"
stop_timeout = "30s"

[[disk]]
name = "accel0"
board = "sca1"
pci = "0000:03:00.0"
size = "16G"
block_size = 4096
workers = 4
batch = 32
buffer_memory = "2G"
scst_version = "3.10"
command_timeout = "7s"
max_transfer_blocks = 1024
read_only = true
thin_provisioning = true
write_cache = false
prealloc = 8
prealloc_size = "256k"
premap = ["4k:4096", "128k:16"]

[disk.identity]
vendor = "ACME"
product = "FastDisk"
serial = "A1B2"
naa = "6001405a1b2c3d4e5f60718293a4b5c6"

[[disk.export]]
driver = "scst_local"
target = "scst_local_tgt"
lun = 3
enable = false

[[disk.export]]
driver = "iscsi"
target = "iqn.2024-01.com.example:accel0"
lun = 0

[[disk]]
name = "sim0"
board = "nvme-sim"
size = 1048576
inject = ["latency:1ms", "error:every=5"]
"#;

#[test]
fn a_full_file_reads_back_every_field() {
    let config = parse(FULL, "full.toml").unwrap_or_else(|e| panic!("{e}"));
    let s = &config.service;
    assert_eq!(s.state_dir.to_str(), Some("/srv/state"));
    assert_eq!(s.control_socket.to_str(), Some("/run/x/control.sock"));
    assert_eq!(s.scst_device.to_str(), Some("/dev/scst_user2"));
    assert_eq!(s.scst_sysfs.to_str(), Some("/sys/kernel/scst_tgt2"));
    assert_eq!(
        s.metrics_listen,
        Some("127.0.0.1:9490".parse().unwrap_or_else(|_| unreachable!()))
    );
    assert_eq!(s.stop_timeout, Duration::from_secs(30));
    assert_eq!(config.disks.len(), 2);
    let d = &config.disks[0];
    assert_eq!(d.args.name, "accel0");
    assert_eq!(d.board, BoardArg::Sca1);
    assert_eq!(d.pci.as_deref(), Some("0000:03:00.0"));
    assert_eq!(d.args.size, 16 << 30);
    assert_eq!(d.args.block_size, 4096);
    // Given, so a block device must have them (backend::open_file).
    assert!(d.args.size_given && d.args.block_size_given);
    assert_eq!(d.args.workers, 4);
    assert_eq!(d.args.batch, 32);
    assert_eq!(d.args.buffer_memory, 2 << 30);
    assert_eq!(d.args.scst_version, "3.10");
    assert_eq!(d.args.command_timeout, Duration::from_secs(7));
    assert_eq!(d.args.max_transfer_blocks, 1024);
    assert!(d.read_only);
    assert!(d.thin_provisioning);
    assert!(!d.args.write_cache);
    assert_eq!(d.prealloc, 8);
    assert_eq!(d.prealloc_size, 256 << 10);
    assert_eq!(
        d.args.premap,
        [
            Premap {
                buffer_size: 4 << 10,
                buffers: 4096
            },
            Premap {
                buffer_size: 128 << 10,
                buffers: 16
            }
        ]
    );
    assert_eq!(d.identity.vendor.as_deref(), Some("ACME"));
    assert_eq!(d.identity.product.as_deref(), Some("FastDisk"));
    assert_eq!(d.identity.serial.as_deref(), Some("A1B2"));
    assert_eq!(
        d.identity.naa.as_deref(),
        Some("6001405a1b2c3d4e5f60718293a4b5c6")
    );
    assert_eq!(d.exports.len(), 2);
    assert_eq!(d.exports[0].driver, TargetDriver::ScstLocal);
    assert_eq!(d.exports[0].target, "scst_local_tgt");
    assert_eq!(d.exports[0].lun, 3);
    assert!(!d.exports[0].enable);
    assert_eq!(d.exports[1].driver, TargetDriver::Iscsi);
    assert_eq!(d.exports[1].target, "iqn.2024-01.com.example:accel0");
    assert!(d.exports[1].enable, "enable defaults to true");
    let sim = &config.disks[1];
    assert_eq!(sim.board, BoardArg::NvmeSim);
    assert_eq!(sim.args.size, 1 << 20);
    assert_eq!(sim.inject, ["latency:1ms", "error:every=5"]);
}

#[test]
fn absent_fields_take_the_command_line_defaults() {
    let config = parse(DISK, "min.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.service, ServiceSettings::default());
    let d = &config.disks[0];
    assert_eq!(d.args.name, "a");
    assert_eq!(d.board, BoardArg::Sim);
    assert_eq!(d.pci, None);
    assert_eq!(d.args.size, 256 << 20);
    assert_eq!(d.args.block_size, 512);
    // Defaults, which a block device's own size and block size replace.
    assert!(!d.args.size_given && !d.args.block_size_given);
    assert_eq!(d.args.workers, 2);
    assert_eq!(d.args.batch, 16);
    assert_eq!(d.args.buffer_memory, 1 << 30);
    assert_eq!(d.args.scst_version, "3.11");
    assert_eq!(d.args.command_timeout, Duration::from_secs(5));
    assert_eq!(d.args.max_transfer_blocks, 2048);
    assert!(!d.read_only && !d.thin_provisioning);
    assert!(
        d.args.write_cache,
        "the store's write cache, as before the key existed"
    );
    assert!(d.inject.is_empty() && d.exports.is_empty());
    assert_eq!(d.identity, Default::default());
    assert_eq!(d.prealloc, 0);
    assert_eq!(d.prealloc_size, 128 << 10);
    assert!(d.args.premap.is_empty());
}

#[test]
fn bad_premap_entries_are_reported_each_on_its_line() {
    assert_one(
        &disk_with("premap = \"4k:1\"\n"),
        Some(4),
        "`premap` must be an array",
    );
    assert_one(
        &disk_with("premap = [4096]\n"),
        Some(4),
        "`premap` must be an array",
    );
    assert_one(&disk_with("premap = [\"4k\"]\n"), Some(4), "not SIZE:COUNT");
    assert_one(&disk_with("premap = [\"8M:1\"]\n"), Some(4), "1 byte to 4M");
    assert_one(&disk_with("premap = [\"4k:0\"]\n"), Some(4), "at least 1");
    assert_one(&disk_with("premap = [\"4k:many\"]\n"), Some(4), "at least 1");
    let found = errors(&disk_with("premap = [\"4k:1\",\n  \"0:1\",\n  \"1x:2\"]\n"));
    let lines: Vec<_> = found.iter().map(|e| e.line).collect();
    assert_eq!(lines, [Some(5), Some(6)], "{found:#?}");
}

#[test]
fn a_syntax_error_reports_its_line() {
    assert_one(&disk_with("size = 16G\n"), Some(4), "syntax");
}

#[test]
fn a_duplicate_key_is_a_syntax_error_on_its_line() {
    assert_one(&disk_with("\nname = \"b\"\n"), Some(5), "syntax");
}

#[test]
fn unknown_keys_are_reported_everywhere_with_the_accepted_keys() {
    let e = assert_one(&format!("colour = 1\n{DISK}"), Some(1), "unknown key `colour`");
    assert!(e.hint.contains("service, disk"), "{}", e.hint);
    let e = assert_one(
        &format!("[service]\nstate = \"/x\"\n{DISK}"),
        Some(2),
        "`state` in [service]",
    );
    assert!(e.hint.contains("state_dir"), "{}", e.hint);
    let e = assert_one(
        &disk_with("blocksize = 512\n"),
        Some(4),
        "`blocksize` in [[disk]]",
    );
    assert!(e.hint.contains("block_size"), "{}", e.hint);
    assert_one(&disk_with("[disk.identity]\nvendr = \"X\"\n"), Some(5), "`vendr`");
    let text = disk_with("[[disk.export]]\ndriver = \"scst_local\"\ntarget = \"t\"\nlun = 0\nlum = 1\n");
    assert_one(&text, Some(8), "`lum` in [[disk.export]]");
}

#[test]
fn a_value_of_the_wrong_type_is_reported() {
    assert_one(
        &disk_with("workers = \"2\"\n"),
        Some(4),
        "`workers` must be an integer, not a string",
    );
    assert_one(
        &disk_with("read_only = \"yes\"\n"),
        Some(4),
        "`read_only` must be true or false",
    );
    assert_one(
        &disk_with("write_cache = \"off\"\n"),
        Some(4),
        "`write_cache` must be true or false",
    );
    assert_one(
        &disk_with("size = 1.5\n"),
        Some(4),
        "`size` must be a size, not a float",
    );
    assert_one(
        &disk_with("inject = \"hang\"\n"),
        Some(4),
        "must be an array of strings",
    );
    assert_one(
        "[[disk]]\nname = 7\nboard = \"ram\"\n",
        Some(2),
        "`name` must be a string",
    );
    assert_one(
        &format!("service = 1\n{DISK}"),
        Some(1),
        "`service` must be a table",
    );
    assert_one(
        "[disk]\nname = \"a\"\nboard = \"ram\"\n",
        Some(1),
        "array of tables",
    );
}

#[test]
fn a_disk_without_name_or_board_is_reported_at_its_header() {
    assert_one("\n[[disk]]\nboard = \"ram\"\n", Some(2), "no `name`");
    assert_one("\n[[disk]]\nname = \"a\"\n", Some(2), "no `board`");
    assert_one(
        &disk_with("").replace("\"sim\"", "\"fpga\""),
        Some(3),
        "unknown board",
    );
    assert_one(
        &disk_with("").replace("\"a\"", "\"a b\""),
        Some(2),
        "cannot name an SCST device",
    );
    assert_one(
        &disk_with("").replace("\"a\"", &format!("\"{}\"", "x".repeat(49))),
        Some(2),
        "SCST",
    );
}

#[test]
fn a_duplicate_disk_name_is_reported_at_the_second() {
    let e = assert_one(
        &format!("{DISK}{DISK}"),
        Some(5),
        "already used by the disk at line 2",
    );
    assert!(e.message.contains("\"a\""), "{}", e.message);
}

/// `serve` keeps each disk's identity in `STATE_DIR/identity/<name>.toml`, so a name it cannot
/// use there is refused by the check too, and any name the check accepts has a state file.
#[test]
fn a_disk_name_serve_cannot_use_for_its_state_file_is_refused() {
    let dir = std::path::Path::new("/var/lib/scst-accel");
    for bad in [".", "..", ".hidden", "..x"] {
        let e = assert_one(
            &disk_with("").replace("\"a\"", &format!("{bad:?}")),
            Some(2),
            "cannot name an SCST device and its identity state file",
        );
        assert!(e.hint.contains("not starting with '.'"), "{e:?}");
        assert!(crate::identity::state_path(dir, bad).is_err(), "{bad}");
    }
    for good in ["a.b", "a..", "accel-0_x.1", &"x".repeat(48)] {
        let text = disk_with("").replace("\"a\"", &format!("{good:?}"));
        assert!(parse(&text, "t").is_ok(), "{good}");
        assert!(crate::identity::state_path(dir, good).is_ok(), "{good}");
    }
}

/// A copied [[disk]] block with its identity: two LUNs with one serial or one designator would
/// be merged by multipath, so the second is refused, naming both disks.
#[test]
fn two_disks_with_one_configured_serial_or_designator_are_refused() {
    let with_identity = |name: &str, identity: &str| {
        format!("[[disk]]\nname = \"{name}\"\nboard = \"ram\"\n[disk.identity]\n{identity}\n")
    };
    let serial = format!(
        "{}{}",
        with_identity("a", "serial = \"SN1\""),
        with_identity("b", "serial = \"SN1\"")
    );
    let e = assert_one(&serial, Some(10), "already the serial of disk \"a\" (line 5)");
    assert!(e.message.contains("disk \"b\""), "{}", e.message);
    let naa = "6001405a1b2c3d4e5f60718293a4b5c6";
    let designator = format!(
        "{}{}",
        with_identity("a", &format!("naa = \"{naa}\"")),
        with_identity("b", &format!("naa = \"{}\"", naa.to_ascii_uppercase()))
    );
    let e = assert_one(
        &designator,
        Some(10),
        "already the designator of disk \"a\" (line 5)",
    );
    assert!(e.message.contains("disk \"b\""), "{}", e.message);
    // Distinct identities, and serials that differ only in case (printable text, not hex),
    // are fine.
    let distinct = format!(
        "{}{}",
        with_identity("a", &format!("serial = \"sn1\"\nnaa = \"{naa}\"")),
        with_identity("b", "serial = \"SN1\"\nnaa = \"3001405a1b2c3d4e\"")
    );
    assert!(parse(&distinct, "t").is_ok());
}

#[test]
fn two_disks_on_one_pci_function_are_refused() {
    let text = "[[disk]]\nname = \"a\"\nboard = \"nvme\"\npci = \"0000:03:00.0\"\n\
                [[disk]]\nname = \"b\"\nboard = \"sca1\"\npci = \"0000:03:00.0\"\n";
    assert_one(text, Some(8), "already used by disk \"a\" (line 4)");
}

#[test]
fn bad_sizes_are_reported() {
    assert_one(
        &disk_with("size = \"1000\"\n"),
        Some(4),
        "not a multiple of the block size 512",
    );
    assert_one(
        &disk_with("block_size = 4096\nsize = 6144\n"),
        Some(5),
        "not a multiple",
    );
    assert_one(&disk_with("size = 0\n"), Some(4), "must not be zero");
    assert_one(&disk_with("size = \"lots\"\n"), Some(4), "bad `size`");
    assert_one(&disk_with("size = -4096\n"), Some(4), "bad `size`");
    assert_one(
        &disk_with("buffer_memory = \"1X\"\n"),
        Some(4),
        "bad `buffer_memory`",
    );
    assert_one(&disk_with("prealloc_size = \"0\"\n"), Some(4), "must not be zero");
}

#[test]
fn bad_block_sizes_are_reported() {
    assert_one(&disk_with("block_size = 1000\n"), Some(4), "not a power of two");
    assert_one(&disk_with("block_size = 8192\n"), Some(4), "out of range");
    assert_one(&disk_with("block_size = 256\n"), Some(4), "out of range");
}

#[test]
fn other_integers_out_of_range_are_reported() {
    assert_one(
        &disk_with("workers = 0\n"),
        Some(4),
        "`workers` = 0 is out of range",
    );
    assert_one(&disk_with("batch = -1\n"), Some(4), "`batch`");
    assert_one(
        &disk_with("max_transfer_blocks = 0\n"),
        Some(4),
        "`max_transfer_blocks`",
    );
    assert_one(&disk_with("prealloc = -2\n"), Some(4), "`prealloc`");
}

#[test]
fn pci_is_required_by_hardware_boards_and_refused_by_the_others() {
    assert_one(
        "\n[[disk]]\nname = \"a\"\nboard = \"qemu-nvme\"\n",
        Some(2),
        "needs `pci`",
    );
    assert_one(
        &disk_with("pci = \"0000:03:00.0\"\n"),
        Some(4),
        "only for hardware boards",
    );
    let bad = "[[disk]]\nname = \"a\"\nboard = \"nvme\"\npci = \"03:00.0\"\n";
    assert_one(bad, Some(4), "not a PCI address");
    let bad = "[[disk]]\nname = \"a\"\nboard = \"nvme\"\npci = \"0000:03:20.0\"\n";
    assert_one(bad, Some(4), "not a PCI address");
    let bad = "[[disk]]\nname = \"a\"\nboard = \"nvme\"\npci = \"0000:03:00.8\"\n";
    assert_one(bad, Some(4), "not a PCI address");
}

#[test]
fn bad_durations_are_reported() {
    assert_one(
        &disk_with("command_timeout = \"5 parsecs\"\n"),
        Some(4),
        "bad `command_timeout`",
    );
    // Past u64::MAX seconds: an error on its line, not a panic (found by the fuzz target
    // `config`; the input is fuzz/corpus/config/crash-huge-duration).
    assert_one(
        &disk_with("command_timeout = \"77777777777777777777777777777777s\"\n"),
        Some(4),
        "out of range",
    );
    assert_one(
        &disk_with("command_timeout = \"0s\"\n"),
        Some(4),
        "must not be zero",
    );
    assert_one(
        &format!("[service]\nstop_timeout = \"soon\"\n{DISK}"),
        Some(2),
        "bad `stop_timeout`",
    );
    assert_one(&disk_with("command_timeout = 5\n"), Some(4), "must be a string");
}

#[test]
fn inject_needs_a_simulated_board_and_a_fault_that_parses() {
    let ram = "[[disk]]\nname = \"a\"\nboard = \"ram\"\ninject = [\"hang\"]\n";
    assert_one(ram, Some(4), "needs a simulated board");
    let text = disk_with("inject = [\n  \"latency:1ms\",\n  \"latency:soon\",\n]\n");
    assert_one(&text, Some(6), "latency:soon");
}

#[test]
fn bad_identity_fields_are_reported() {
    let text = disk_with(
        "[disk.identity]\nvendor = \"TOO LONG VENDOR\"\nproduct = \"\"\nserial = \"caf\u{e9}\"\nnaa = \"5001\"\n",
    );
    let found = errors(&text);
    let lines: Vec<_> = found.iter().map(|e| e.line).collect();
    assert_eq!(lines, [Some(5), Some(6), Some(7), Some(8)], "{found:#?}");
    assert!(found[0].message.contains("vendor") && found[0].message.contains("1 to 8"));
    assert!(found[1].message.contains("product") && found[1].message.contains("1 to 16"));
    assert!(found[2].message.contains("serial") && found[2].message.contains("1 to 32"));
    assert!(found[3].message.contains("naa"));
    let local = disk_with("[disk.identity]\nnaa = \"3001405a1b2c3d4e\"\n");
    assert!(parse(&local, "t").is_ok(), "16 digits from 3 is a local NAA");
    assert_one(
        &disk_with("[disk.identity]\nnaa = \"6001405a1b2c3d4e\"\n"),
        Some(5),
        "naa",
    );
}

fn export(driver: &str, target: &str, lun: &str) -> String {
    format!("[[disk.export]]\ndriver = \"{driver}\"\ntarget = \"{target}\"\nlun = {lun}\n")
}

#[test]
fn an_export_to_the_copy_manager_parses() {
    let cfg = parse(&disk_with(&export("copy_manager", "copy_manager_tgt", "3")), "t").expect("parses");
    let e = &cfg.disks[0].exports[0];
    assert_eq!(
        (e.driver, e.target.as_str(), e.lun),
        (TargetDriver::CopyManager, "copy_manager_tgt", 3)
    );
}

/// The copy manager takes LUN 16383 (SCST_MAX_LUN) for "not one of my LUNs": refused there,
/// accepted for the other drivers.
#[test]
fn a_copy_manager_export_at_scst_max_lun_is_refused() {
    let e = assert_one(
        &disk_with(&export("copy_manager", "copy_manager_tgt", "16383")),
        Some(7),
        "copy_manager LUN 16383 is SCST_MAX_LUN",
    );
    assert!(e.hint.contains("16382"), "{e:?}");
    parse(&disk_with(&export("scst_local", "scst_local_tgt", "16383")), "t").expect("scst_local may use it");
    parse(
        &disk_with(&export("copy_manager", "copy_manager_tgt", "16382")),
        "t",
    )
    .expect("the LUN below");
}

#[test]
fn an_export_with_an_unknown_driver_is_reported() {
    assert_one(
        &disk_with(&export("fc", "t", "0")),
        Some(5),
        "unknown target driver \"fc\"",
    );
}

#[test]
fn an_iscsi_target_must_be_an_iqn_or_eui() {
    for good in [
        "iqn.2024-01.com.example",
        "iqn.2024-01.com.example:accel0",
        "eui.02004567a425678d",
    ] {
        let text = disk_with(&export("iscsi", good, "0"));
        assert!(parse(&text, "t").is_ok(), "{good}");
    }
    for bad in [
        "accel0",
        "iqn.24-01.com.example",
        "iqn.2024-13.com.example",
        "iqn.2024-01.Com",
        "eui.12",
    ] {
        assert_one(
            &disk_with(&export("iscsi", bad, "0")),
            Some(6),
            "not a valid target name",
        );
    }
}

#[test]
fn a_lun_out_of_range_or_missing_is_reported() {
    assert_one(
        &disk_with(&export("scst_local", "t", "16384")),
        Some(7),
        "`lun` = 16384 is out of range",
    );
    assert_one(
        &disk_with(&export("scst_local", "t", "-1")),
        Some(7),
        "out of range",
    );
    assert_one(
        &disk_with("[[disk.export]]\ndriver = \"scst_local\"\ntarget = \"t\"\n"),
        Some(4),
        "no `lun`",
    );
    assert_one(
        &disk_with("[[disk.export]]\ndriver = \"iscsi\"\nlun = 1\n"),
        Some(4),
        "no `target`",
    );
}

#[test]
fn the_same_lun_of_the_same_target_twice_is_refused() {
    let first = disk_with(&export("scst_local", "scst_local_tgt", "0"));
    let second =
        "[[disk]]\nname = \"b\"\nboard = \"ram\"\n".to_owned() + &export("scst_local", "scst_local_tgt", "0");
    assert_one(
        &(first.clone() + &second),
        Some(11),
        "already exported by disk \"a\" (line 4)",
    );
    let other_lun =
        "[[disk]]\nname = \"b\"\nboard = \"ram\"\n".to_owned() + &export("scst_local", "scst_local_tgt", "1");
    assert!(parse(&(first + &other_lun), "t").is_ok());
}

#[test]
fn metrics_must_listen_on_a_loopback_socket_address() {
    assert_one(
        &format!("[service]\nmetrics_listen = \"0.0.0.0:9490\"\n{DISK}"),
        Some(2),
        "not a loopback",
    );
    assert_one(
        &format!("[service]\nmetrics_listen = \"localhost\"\n{DISK}"),
        Some(2),
        "not a socket address",
    );
    let v6 = format!("[service]\nmetrics_listen = \"[::1]:9490\"\n{DISK}");
    assert!(parse(&v6, "t").is_ok());
    assert_one(
        &format!("[service]\nstate_dir = \"var/lib\"\n{DISK}"),
        Some(2),
        "not an absolute path",
    );
}

#[test]
fn a_file_without_disks_is_refused() {
    assert_one("[service]\nstate_dir = \"/x\"\n", None, "no [[disk]]");
    assert_one("", None, "no [[disk]]");
}

#[test]
fn every_error_in_the_file_is_reported_in_line_order() {
    let text = format!(
        "[service]\nmetrics_listen = \"10.0.0.1:1\"\n{DISK}size = \"1x\"\nworkers = 0\n\
         [[disk]]\nname = \"a\"\nboard = \"nvme\"\n"
    );
    let lines: Vec<_> = errors(&text).iter().map(|e| e.line).collect();
    assert_eq!(lines, [Some(2), Some(6), Some(7), Some(8), Some(9)]);
}

#[test]
fn errors_print_one_line_each_with_origin_line_and_hint() {
    let e = ConfigErrors {
        origin: "/etc/x.toml".into(),
        errors: vec![
            ConfigError {
                line: Some(3),
                message: "bad".into(),
                hint: "fix it".into(),
            },
            ConfigError {
                line: None,
                message: "worse".into(),
                hint: "fix that".into(),
            },
        ],
    };
    assert_eq!(
        e.to_string(),
        "/etc/x.toml:3: bad (fix it)\n/etc/x.toml: worse (fix that)"
    );
}

#[test]
fn an_unreadable_file_is_one_error_without_a_line() {
    let e = super::load::load(std::path::Path::new("/nonexistent/scst-accel.toml"))
        .err()
        .unwrap_or_else(|| unreachable!());
    assert_eq!(e.errors.len(), 1);
    assert_eq!(e.errors[0].line, None);
    assert!(e
        .to_string()
        .starts_with("/nonexistent/scst-accel.toml: cannot read"));
}

#[test]
fn the_format_documented_in_load_rs_is_valid() {
    let source = include_str!("load.rs");
    let doc: String = source
        .lines()
        .map_while(|l| l.strip_prefix("//!"))
        .map(|l| format!("{}\n", l.strip_prefix(' ').unwrap_or(l)))
        .collect();
    let start = doc.find("```toml\n").map(|i| i + "```toml\n".len());
    let example = start.and_then(|s| doc[s..].find("```").map(|e| &doc[s..s + e]));
    let example = example.unwrap_or_else(|| panic!("no toml example in load.rs's doc"));
    let config = parse(example, "load.rs").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.disks[0].exports.len(), 1);
}

#[test]
fn a_file_disk_reads_its_path_and_buffered() {
    let text = "[[disk]]\nname = \"f\"\nboard = \"file\"\npath = \"/srv/disk0.img\"\nbuffered = true\n";
    let config = parse(text, "t.toml").expect("valid");
    let d = &config.disks[0];
    assert_eq!(d.board, BoardArg::File);
    assert_eq!(
        d.args.path.as_deref(),
        Some(std::path::Path::new("/srv/disk0.img"))
    );
    assert!(d.args.buffered);
    let text = "[[disk]]\nname = \"b\"\nboard = \"blockdev\"\npath = \"/dev/sdb\"\n";
    let d = &parse(text, "t.toml").expect("valid").disks[0];
    assert_eq!(d.board, BoardArg::Blockdev);
    assert!(!d.args.buffered, "O_DIRECT by default");
}

#[test]
fn path_and_buffered_belong_to_file_boards() {
    assert_one(
        "[[disk]]\nname = \"f\"\nboard = \"blockdev\"\n",
        Some(1),
        "needs `path`",
    );
    assert_one(
        &disk_with("path = \"/srv/x.img\"\n"),
        Some(4),
        "only for the file and blockdev",
    );
    assert_one(
        &disk_with("buffered = true\n"),
        Some(4),
        "only for the file and blockdev",
    );
    assert_one(
        "[[disk]]\nname = \"f\"\nboard = \"file\"\npath = \"disk.img\"\n",
        Some(4),
        "not absolute",
    );
    assert_one(
        "[[disk]]\nname = \"f\"\nboard = \"file\"\npath = \"/srv/a.img\"\n\n\
         [[disk]]\nname = \"g\"\nboard = \"file\"\npath = \"/srv/a.img\"\n",
        Some(9),
        "already the medium of disk \"f\" (line 4)",
    );
}

/// Two disks on one image under two names (a hard link, a symlink) are refused like two on
/// one path: the file store's lock would not keep them apart on NFS, where flock is a POSIX
/// lock of the process and both disks of the one service would get it.
#[test]
fn two_disks_on_one_image_under_two_names_are_refused() {
    let dir = std::env::temp_dir().join(format!("config-medium-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let a = dir.join("a.img");
    std::fs::write(&a, [0u8; 512]).expect("write");
    let hard = dir.join("hard.img");
    let soft = dir.join("soft.img");
    let _ = std::fs::remove_file(&hard);
    let _ = std::fs::remove_file(&soft);
    std::fs::hard_link(&a, &hard).expect("link");
    std::os::unix::fs::symlink(&a, &soft).expect("symlink");
    let two = |second: &std::path::Path| {
        format!(
            "[[disk]]\nname = \"f\"\nboard = \"file\"\npath = {:?}\n\n\
             [[disk]]\nname = \"g\"\nboard = \"file\"\npath = {:?}\n",
            a.display().to_string(),
            second.display().to_string()
        )
    };
    for second in [&hard, &soft] {
        assert_one(&two(second), Some(9), "already the medium of disk \"f\" (line 4)");
    }
    let other = dir.join("other.img");
    std::fs::write(&other, [0u8; 512]).expect("write");
    parse(&two(&other), "t.toml").expect("two images");
    // A file not created yet, named through `..` or through a dangling symlink: the same.
    let fresh = dir.join("fresh.img");
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir sub");
    let dotdot = dir.join("sub").join("..").join("fresh.img");
    let dangling = dir.join("dangling.img");
    let _ = std::fs::remove_file(&dangling);
    std::os::unix::fs::symlink("fresh.img", &dangling).expect("symlink");
    let two_new = |first: &std::path::Path, second: &std::path::Path| {
        format!(
            "[[disk]]\nname = \"f\"\nboard = \"file\"\npath = {:?}\nsize = \"1M\"\n\n\
             [[disk]]\nname = \"g\"\nboard = \"file\"\npath = {:?}\nsize = \"1M\"\n",
            first.display().to_string(),
            second.display().to_string()
        )
    };
    for second in [&dotdot, &dangling] {
        assert_one(
            &two_new(&fresh, second),
            Some(10),
            "already the medium of disk \"f\" (line 4)",
        );
    }
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn io_engine_is_read_and_checked_on_its_line() {
    use scst_accel_handler::store::file::IoEngine;
    let file = "[[disk]]\nname = \"f\"\nboard = \"file\"\npath = \"/srv/disk0.img\"\n";
    let d = &parse(file, "t.toml").expect("valid").disks[0];
    assert_eq!(d.args.io_engine, IoEngine::Auto, "auto by default");
    for (name, engine) in [
        ("auto", IoEngine::Auto),
        ("uring", IoEngine::Uring),
        ("threads", IoEngine::Threads),
    ] {
        let text = format!("{file}io_engine = \"{name}\"\n");
        let d = &parse(&text, "t.toml").expect("valid").disks[0];
        assert_eq!(d.args.io_engine, engine, "{name}");
    }
    let e = assert_one(
        &format!("{file}io_engine = \"aio\"\n"),
        Some(5),
        "unknown I/O engine",
    );
    assert!(
        e.message.contains("threads") && e.hint.contains("threads"),
        "{e:?}"
    );
    assert_one(&format!("{file}io_engine = 1\n"), Some(5), "io_engine");
    assert_one(
        &disk_with("io_engine = \"uring\"\n"),
        Some(4),
        "only for the file and blockdev",
    );
}

#[test]
fn a_tcmu_service_reads_its_frontend_and_its_tcmu_table() {
    let text = "[service]\nfrontend = \"tcmu\"\n[service.tcmu]\nconfigfs_root = \"/tmp/cfs\"\nhba = 9\n\
                ring_mb = 4\nloopback = false\niscsi_portal = \"127.0.0.1:3261\"\nadopt = true\n\
                drain = \"2s\"\nnetlink = false\n[[disk]]\nname = \"a\"\nboard = \"ram\"\n\
                [[disk]]\nname = \"b\"\nboard = \"ram\"\n";
    let config = parse(text, "t.toml").expect("valid");
    let s = &config.service;
    assert_eq!(s.frontend, super::Frontend::Tcmu);
    assert_eq!(
        s.tcmu,
        super::TcmuSettings {
            configfs_root: "/tmp/cfs".into(),
            hba: 9,
            ring_mb: Some(4),
            loopback: false,
            iscsi_portal: Some("127.0.0.1:3261".into()),
            adopt: true,
            drain: Duration::from_secs(2),
            netlink: false,
        }
    );
    assert_eq!(config.disks.len(), 2);
    // Absent: SCST and the TCMU defaults.
    let plain = parse(DISK, "t.toml").expect("valid");
    assert_eq!(plain.service.frontend, super::Frontend::Scst);
    assert_eq!(plain.service.tcmu, super::TcmuSettings::default());
}

#[test]
fn tcmu_settings_errors_have_their_lines() {
    assert_one(
        &format!("[service]\nfrontend = \"lio\"\n{DISK}"),
        Some(2),
        "not a kernel target",
    );
    assert_one(
        &format!("[service.tcmu]\niscsi_portal = \"localhost\"\n{DISK}"),
        Some(2),
        "not IP:PORT",
    );
    assert_one(
        &format!("[service.tcmu]\nring_mb = 0\n{DISK}"),
        Some(2),
        "out of range",
    );
    assert_one(&format!("[service.tcmu]\nlun = 1\n{DISK}"), Some(2), "lun");
    // An SCST export block under TCMU is refused at the block.
    assert_one(
        &format!(
            "[service]\nfrontend = \"tcmu\"\n{DISK}[[disk.export]]\ndriver = \"iscsi\"\n\
             target = \"iqn.2024-01.com.example:a\"\nlun = 0\n"
        ),
        Some(6),
        "SCST target",
    );
}
