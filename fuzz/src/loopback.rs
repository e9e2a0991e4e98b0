//! Target `loopback`: the loopback kernel model (`handler::loopback`, the in-process stand-in
//! for SCST's scst_user module) driven as a hostile user-space handler would: every reply
//! field is arbitrary (handle, subcode, status, lengths, reply type, padding) and every pointer
//! field (`pbuf`, `psense_buffer`, `ws_descriptors`...) is one of: null, a low address, a
//! kernel or non-canonical address (never mapped), or an address inside a buffer of the
//! target, aligned or not. Replies may come for commands never fetched, twice, or late.
//!
//! Pointers never name memory of the process outside that buffer: the model writes data-out
//! through them (as `copy_to_user` would), and the target must not corrupt itself.
//!
//! Invariants beyond "no panic":
//! - a request completes at most once, and only one that was submitted;
//! - data-in never exceeds the request's expected data-in length; sense at most 252 bytes;
//! - once the fd is closed, every request submitted completes (nothing is left hanging).

use crate::check;
use arbitrary::Result;
use arbitrary::Unstructured;
use scst_accel_dma::PageBuffer;
use scst_accel_handler::abi;
use scst_accel_handler::abi::DevDesc;
use scst_accel_handler::abi::GetCmd;
use scst_accel_handler::abi::Opt;
use scst_accel_handler::abi::ReplyCmd;
use scst_accel_handler::loopback::KernelConfig;
use scst_accel_handler::loopback::LoopbackKernel;
use scst_accel_handler::loopback::ScsiRequest;
use scst_accel_handler::loopback::SessionSpec;
use scst_accel_handler::transport::ScstUserFd;
use std::collections::HashSet;
use std::time::Duration;
use std::time::Instant;

/// Operations per input.
const MAX_OPS: usize = 40;
/// The buffer replies may point into, and the most data-out a request carries (so the model's
/// copy of data-out through any such pointer stays inside the buffer).
const ARENA: usize = 256 << 10;
const MAX_DATA: usize = 64 << 10;
/// The lowest address a user mapping can have (Linux `mmap_min_addr` is at least 4 KiB; 64 KiB
/// by default): addresses below are never mapped.
const LOW: u64 = 0x1000;
/// User space ends at 2^47 on x86_64 (4-level paging): addresses from here to the kernel half
/// are non-canonical, never mapped.
const USER_END: u64 = 1 << 47;

/// Run one input.
pub fn target(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
}

/// A pointer a hostile handler might put in a reply.
fn pointer(u: &mut Unstructured<'_>, arena: u64) -> Result<u64> {
    Ok(match u.int_in_range(0..=7u8)? {
        0 => 0,
        1 => u.int_in_range(1..=LOW - 1)?,
        2 => 0xFFFF_8000_0000_0000 | u.arbitrary::<u64>()?,
        3 => USER_END + u.int_in_range(0..=u64::MAX / 4)?,
        4 => arena + u.int_in_range(0..=((ARENA - MAX_DATA) as u64 - 1))?,
        _ => arena + 4096 * u.int_in_range(0..=((ARENA - MAX_DATA) / 4096 - 1) as u64)?,
    })
}

/// An arbitrary word that is never a mappable user address (so it is safe wherever the model
/// reads it as a pointer): such values get a non-canonical bit.
fn word(u: &mut Unstructured<'_>) -> Result<u64> {
    let w: u64 = u.arbitrary()?;
    Ok(if (LOW..USER_END).contains(&w) {
        w | (1 << 62)
    } else {
        w
    })
}

fn reply(u: &mut Unstructured<'_>, arena: u64, fetched: &[GetCmd]) -> Result<ReplyCmd> {
    let known = if fetched.is_empty() || u.ratio(1, 8)? {
        None
    } else {
        Some(fetched[u.choose_index(fetched.len())?])
    };
    let cmd_h = match known {
        Some(c) if u.ratio(7, 8)? => c.cmd_h,
        _ => u.arbitrary()?,
    };
    let subcode = match known {
        Some(c) if u.ratio(7, 8)? => c.subcode,
        _ => {
            let any: u32 = u.arbitrary()?;
            *u.choose(&[
                abi::SCST_USER_PARSE,
                abi::SCST_USER_ALLOC_MEM,
                abi::SCST_USER_EXEC,
                abi::SCST_USER_ATTACH_SESS,
                abi::SCST_USER_DETACH_SESS,
                abi::SCST_USER_ON_FREE_CMD,
                abi::SCST_USER_ON_CACHED_MEM_FREE,
                abi::SCST_USER_TASK_MGMT_RECEIVED,
                any,
            ])?
        }
    };
    let mut r = ReplyCmd::new(cmd_h, subcode);
    // Every word is safe as a pointer; then, mostly, the fields of the subcode's view.
    for w in r.payload.iter_mut() {
        *w = if u.arbitrary()? {
            pointer(u, arena)?
        } else {
            word(u)?
        };
    }
    if u.ratio(3, 4)? {
        let small = |u: &mut Unstructured<'_>| -> Result<u64> {
            Ok(if u.ratio(3, 4)? {
                u64::from(u.int_in_range(0..=MAX_DATA as u32)?)
            } else {
                word(u)?
            })
        };
        match subcode {
            abi::SCST_USER_EXEC => {
                // resp_data_len, pbuf, reply_type/status, sense_len / ws_descriptors_len,
                // psense_buffer / ws_descriptors.
                r.payload[0] = small(u)?;
                r.payload[1] = pointer(u, arena)?;
                r.payload[2] = if u.ratio(3, 4)? {
                    u64::from(u.int_in_range(0..=3u8)?)
                        | (u64::from(*u.choose(&[0u8, 2, 8, 0x28, 0x18])?) << 8)
                } else {
                    word(u)?
                };
                r.payload[3] = if u.ratio(3, 4)? {
                    u64::from(u.int_in_range(0..=300u16)?)
                } else {
                    word(u)?
                };
                r.payload[4] = pointer(u, arena)?;
                r.payload[5] = 0;
            }
            abi::SCST_USER_ALLOC_MEM => r.payload[0] = pointer(u, arena)?,
            abi::SCST_USER_PARSE => {
                r.payload[0] = if u.ratio(3, 4)? {
                    u64::from(*u.choose(&[0u8, 2, 8])?)
                } else {
                    word(u)?
                };
                r.payload[1] = if u.ratio(1, 2)? {
                    u64::from(u.int_in_range(0..=300u16)?)
                } else {
                    word(u)?
                };
                r.payload[2] = pointer(u, arena)?;
                for w in &mut r.payload[3..] {
                    *w = small(u)?;
                }
            }
            _ => r.payload[0] = if u.ratio(3, 4)? { 0 } else { word(u)? },
        }
    }
    Ok(r)
}

fn request(u: &mut Unstructured<'_>, tag: u64) -> Result<ScsiRequest> {
    let mut cdb = vec![0u8; *u.choose(&[6usize, 10, 10, 16, 12, 0, 1, 32])?];
    if let Some(op) = cdb.first_mut() {
        *op = *u.choose(&[
            0x28, 0x2A, 0x00, 0x12, 0x25, 0x35, 0x41, 0x93, 0x8A, 0x88, 0x03, 0xA0,
        ])?;
    }
    for b in cdb.iter_mut().skip(1) {
        *b = if u.ratio(1, 3)? { u.arbitrary()? } else { 0 };
    }
    if cdb.len() >= 10 && u.arbitrary()? {
        cdb[8] = u.int_in_range(0..=8)?;
    }
    let data_len = if u.arbitrary()? {
        512 * u.int_in_range(0..=8usize)?
    } else {
        u.int_in_range(0..=MAX_DATA)?
    };
    Ok(ScsiRequest {
        tag,
        cdb,
        data_out: vec![0xA5; if u.arbitrary()? { data_len } else { 0 }],
        expected_data_in: u.int_in_range(0..=MAX_DATA as u32)?,
        queue_type: u.int_in_range(0..=4)?,
        timeout_secs: 30,
    })
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let arena = PageBuffer::new(ARENA).expect("the reply buffer");
    let base = arena.addr();
    let kernel = LoopbackKernel::new(KernelConfig::default());
    let fd = kernel.open(true);
    let mut version = [0u8; 128];
    let v = scst_accel_handler::transport::version::default_version_string();
    version[..v.len()].copy_from_slice(v.as_bytes());
    let license = *b"GPL\0";
    let mut d: DevDesc = zerocopy::FromZeros::new_zeroed();
    d.version_str = version.as_ptr() as u64;
    d.license_str = license.as_ptr() as u64;
    d.type_ = abi::TYPE_DISK;
    d.opt = Opt {
        parse_type: u.int_in_range(0..=2)?,
        on_free_cmd_type: u.int_in_range(0..=1)?,
        memory_reuse_type: u.int_in_range(0..=3)?,
        tst: 1,
        queue_alg: 1,
        ..Default::default()
    };
    d.block_size = *u.choose(&[512u32, 4096])?;
    d.name = abi::fill_c_name("fuzz0");
    check!(
        fd.register_device(&d).is_ok(),
        "registration of a valid device refused"
    );
    // Attach one session (the model asks the handler, which answers well here).
    let k = kernel.clone();
    let attach = std::thread::spawn(move || {
        k.attach_session(
            "fuzz0",
            SessionSpec {
                initiator_name: "iqn.fuzz:ini".into(),
                target_name: "tgt".into(),
                lun: 0,
                rd_only: false,
            },
        )
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let att = loop {
        let mut c = GetCmd::zeroed();
        match fd.reply_and_get_cmd(&mut c) {
            Ok(()) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_micros(50)),
            Err(e) => panic!("no ATTACH_SESS: {e:?}"),
        }
    };
    check!(
        att.subcode == abi::SCST_USER_ATTACH_SESS,
        "first message {:#x}",
        att.subcode
    );
    check!(
        fd.reply_cmd(&ReplyCmd::with_result(att.cmd_h, abi::SCST_USER_ATTACH_SESS, 0))
            .is_ok(),
        "ATTACH_SESS reply refused"
    );
    let session = match attach.join() {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => panic!("attach failed: {e:?}"),
        Err(_) => panic!("the attaching thread panicked"),
    };
    let mut submitted: HashSet<u64> = HashSet::new();
    let mut done: HashSet<u64> = HashSet::new();
    let mut expected_in = std::collections::HashMap::new();
    let mut fetched: Vec<GetCmd> = Vec::new();
    let mut next_tag = 1u64;
    let drain = |done: &mut HashSet<u64>,
                 submitted: &HashSet<u64>,
                 expected: &std::collections::HashMap<u64, u32>| {
        while let Ok(c) = session.completions().try_recv() {
            check!(
                submitted.contains(&c.tag),
                "completion of tag {} never submitted",
                c.tag
            );
            check!(done.insert(c.tag), "tag {} completed twice", c.tag);
            let limit = expected.get(&c.tag).copied().unwrap_or(0);
            check!(
                c.data_in.len() as u64 <= u64::from(limit),
                "{} bytes of data-in, expected {limit}",
                c.data_in.len()
            );
            check!(
                c.sense.len() <= abi::SCST_SENSE_BUFFERSIZE,
                "{} bytes of sense",
                c.sense.len()
            );
        }
    };
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0..=9u8)? {
            0..=2 => {
                let req = request(u, next_tag)?;
                let expected = req.expected_data_in;
                if session.submit(req).is_ok() {
                    submitted.insert(next_tag);
                    expected_in.insert(next_tag, expected);
                }
                next_tag += 1;
            }
            3 | 4 => {
                let mut c = GetCmd::zeroed();
                if fd.reply_and_get_cmd(&mut c).is_ok() {
                    fetched.push(c);
                    if fetched.len() > 16 {
                        fetched.remove(0);
                    }
                }
            }
            5..=7 => {
                let r = reply(u, base, &fetched)?;
                let _ = fd.reply_cmd(&r);
            }
            8 => {
                let function = u.int_in_range(0..=12)?;
                let tag = if u.arbitrary()? {
                    Some(u.int_in_range(0..=next_tag)?)
                } else {
                    None
                };
                let _ = session.task_mgmt(function, tag);
            }
            9 if u.ratio(1, 3)? => {
                // SET_OPTIONS: mostly valid values, sometimes not. Only with nothing in flight:
                // like SCST, the model suspends the device and waits (up to 90 s) for commands
                // in flight to finish, which this single thread would never do.
                drain(&mut done, &submitted, &expected_in);
                if done.len() != submitted.len() {
                    continue;
                }
                let small = |u: &mut Unstructured<'_>, max: u8| -> Result<u8> {
                    Ok(if u.ratio(7, 8)? {
                        u.int_in_range(0..=max)?
                    } else {
                        u.arbitrary()?
                    })
                };
                let opt = Opt {
                    parse_type: small(u, 2)?,
                    on_free_cmd_type: small(u, 1)?,
                    memory_reuse_type: small(u, 3)?,
                    partial_transfers_type: small(u, 1)?,
                    partial_len: u.arbitrary()?,
                    tst: small(u, 1)?,
                    tmf_only: small(u, 1)?,
                    queue_alg: small(u, 1)?,
                    qerr: small(u, 3)?,
                    tas: small(u, 1)?,
                    swp: small(u, 1)?,
                    d_sense: small(u, 1)?,
                    has_own_order_mgmt: small(u, 1)?,
                    ext_copy_remap_supported: small(u, 1)?,
                    ..Default::default()
                };
                let _ = fd.set_options(&opt);
            }
            _ => drain(&mut done, &submitted, &expected_in),
        }
    }
    // Close the fd: the model must complete everything still in flight.
    let _report = fd.close();
    let deadline = Instant::now() + Duration::from_secs(5);
    while done.len() < submitted.len() && Instant::now() < deadline {
        drain(&mut done, &submitted, &expected_in);
        std::thread::sleep(Duration::from_micros(100));
    }
    let left: Vec<_> = submitted.difference(&done).collect();
    check!(left.is_empty(), "requests {left:?} never completed after close");
    session.detach();
    drop(arena);
    Ok(())
}
