//! Registration, options, handles and sessions (spec §1.2, §1.4, §3.1, §7.3).

use super::*;
use crate::abi;
use crate::abi::Opt;
use crate::abi::ReplyCmd;
use crate::transport::Errno;
use crate::transport::ScstUserFd;
use std::time::Duration;

#[test]
fn register_checks_license_then_version_and_names() {
    let kernel = LoopbackKernel::new(KernelConfig::default());
    let v = crate::transport::version::default_version_string();
    let fd = kernel.open(true);
    assert_eq!(fd.get_options().err(), Some(Errno::ENODEV), "no device yet");
    assert_eq!(fd.flush_cache().err(), Some(Errno::ENODEV));
    let bad_license = strings("wrong version", "Proprietary");
    assert_eq!(
        fd.register_device(&desc(&bad_license, "d", default_opt(), BS))
            .err(),
        Some(Errno::EPERM),
        "license is checked before the version"
    );
    let bad_version = strings("wrong version", "Dual BSD/GPL");
    assert_eq!(
        fd.register_device(&desc(&bad_version, "d", default_opt(), BS))
            .err(),
        Some(Errno::EINVAL)
    );
    let good = strings(&v, "GPL v2");
    let mut unreadable = desc(&good, "d", default_opt(), BS);
    unreadable.version_str = 8;
    assert_eq!(fd.register_device(&unreadable).err(), Some(Errno::EFAULT));
    assert_eq!(
        fd.register_device(&desc(&good, "d", default_opt(), 1000)).err(),
        Some(Errno::EINVAL),
        "DISK block size must be a power of two"
    );
    let mut qerr2 = default_opt();
    qerr2.qerr = 2;
    assert_eq!(
        fd.register_device(&desc(&good, "d", qerr2, BS)).err(),
        Some(Errno::EINVAL)
    );
    let long = "n".repeat(49);
    fd.register_device(&desc(&good, &long, default_opt(), BS))
        .unwrap();
    assert_eq!(kernel.registered_devices(), vec!["n".repeat(48)]);
    assert_eq!(
        fd.register_device(&desc(&good, "other", default_opt(), BS)).err(),
        Some(Errno::EINVAL),
        "one device per fd"
    );
    let fd2 = kernel.open(true);
    assert_eq!(
        fd2.register_device(&desc(&good, &"n".repeat(48), default_opt(), BS))
            .err(),
        Some(Errno::EEXIST)
    );
    let report = fd.close();
    assert!(report.released);
    assert!(kernel.registered_devices().is_empty());
}

#[test]
fn set_and_get_options_validate_ranges() {
    let r = rig(default_opt());
    let mut o = default_opt();
    o.d_sense = 1;
    r.fd.set_options(&o).unwrap();
    assert_eq!(r.fd.get_options().unwrap(), o);
    for bad in [
        Opt { qerr: 2, ..o },
        Opt { parse_type: 3, ..o },
        Opt {
            memory_reuse_type: 4,
            ..o
        },
        Opt {
            on_free_cmd_type: 2,
            ..o
        },
        Opt { tst: 2, ..o },
    ] {
        assert_eq!(r.fd.set_options(&bad).err(), Some(Errno::EINVAL), "{bad:?}");
    }
    let _s = attach(&r, false);
    assert_eq!(
        r.fd.set_options(&Opt { tst: 0, ..o }).err(),
        Some(Errno::EINVAL),
        "tst cannot change while sessions exist"
    );
}

#[test]
fn handles_start_at_zero_and_unknown_handles_are_esrch() {
    let r = rig(default_opt());
    let k = r.kernel.clone();
    let t = std::thread::spawn(move || k.attach_session("disk0", spec(false)));
    let c = wait_cmd(&r.fd);
    assert_eq!(c.cmd_h, 0, "the first ucmd gets handle 0, and 0 is valid");
    assert_eq!(
        r.fd.reply_cmd(&ReplyCmd::with_result(77, abi::SCST_USER_ATTACH_SESS, 0))
            .err(),
        Some(Errno::ESRCH)
    );
    r.fd.reply_cmd(&ReplyCmd::with_result(0, abi::SCST_USER_ATTACH_SESS, 0))
        .unwrap();
    let s = t.join().unwrap().unwrap();
    s.submit(tur(1)).unwrap();
    assert_eq!(wait_cmd(&r.fd).cmd_h, 1);
}

#[test]
fn attach_refused_and_attach_timeout() {
    let r = rig_with(
        default_opt(),
        KernelConfig {
            attach_timeout: Duration::from_millis(100),
            ..Default::default()
        },
    );
    assert!(matches!(
        r.kernel.attach_session("disk0", spec(false)),
        Err(AttachError::Timeout(_))
    ));
    // The timed-out ATTACH is still queued; a late reply is accepted and dropped.
    let late = wait_cmd(&r.fd);
    assert_eq!(late.subcode, abi::SCST_USER_ATTACH_SESS);
    r.fd.reply_cmd(&ReplyCmd::with_result(late.cmd_h, abi::SCST_USER_ATTACH_SESS, 0))
        .unwrap();
    assert_eq!(stats(&r).sessions, 0);
    let k = r.kernel.clone();
    let t = std::thread::spawn(move || k.attach_session("disk0", spec(false)));
    let c = wait_cmd(&r.fd);
    r.fd.reply_cmd(&ReplyCmd::with_result(
        c.cmd_h,
        abi::SCST_USER_ATTACH_SESS,
        libc::EEXIST,
    ))
    .unwrap();
    assert_eq!(t.join().unwrap().err(), Some(AttachError::Refused(libc::EEXIST)));
    assert!(matches!(
        r.kernel.attach_session("nope", spec(false)),
        Err(AttachError::NoDevice(_))
    ));
}

#[test]
fn register_reads_a_fixed_91_bytes_of_both_strings() {
    // spec §1.4: max(sizeof(DEV_USER_VERSION), 20) = 91 bytes are copied, even though the
    // string with its NUL is shorter; a string ending right before unreadable memory faults.
    let kernel = LoopbackKernel::new(KernelConfig::default());
    let v = crate::transport::version::default_version_string();
    let guard = crate::loopback::uaccess::GuardedPage::new();
    let fd = kernel.open(true);
    let s = strings(&v, "GPL");
    let mut d = desc(&s, "d", default_opt(), BS);
    d.license_str = guard.place_at_end(b"GPL\0");
    assert_eq!(
        fd.register_device(&d).err(),
        Some(Errno::EFAULT),
        "license read is fixed-size"
    );
    let d = desc(&s, "d", default_opt(), BS);
    let mut exact = v.clone().into_bytes();
    exact.push(0);
    let mut d2 = d;
    d2.version_str = guard.place_at_end(&exact);
    assert_eq!(exact.len(), 91);
    fd.register_device(&d2).unwrap();
    let fd2 = kernel.open(true);
    let mut d3 = desc(&s, "e", default_opt(), BS);
    let mut short = v.into_bytes();
    short.truncate(80);
    short.push(0);
    d3.version_str = guard.place_at_end(&short);
    assert_eq!(
        fd2.register_device(&d3).err(),
        Some(Errno::EFAULT),
        "fewer than 91 readable bytes"
    );
}
