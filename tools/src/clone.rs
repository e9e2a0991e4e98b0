//! `demo --clone SIZE` and `bench --clone SIZE` (issue 15 item 4, docs/xcopy.md): clone a
//! range twice through the loopback kernel model, once by EXTENDED COPY (SCST's copy manager,
//! EXT_COPY_REMAP to the handler, which copies in the store where it can) and once by READ +
//! WRITE through the initiator, and report the elapsed time and the process's CPU time of
//! each, in one run.
//!
//! Layout on the disk: the source at LBA 0, the EXTENDED COPY's destination right after it,
//! the READ + WRITE destination after that (the disk must hold three times SIZE). The source is
//! written first with a pattern naming each block (not timed); both destinations are read back
//! and compared with it afterwards (not timed). The READ + WRITE clone moves 1 MiB per command
//! (less where the disk's maximum transfer is smaller),
//! one command at a time, as the copy manager handles one segment at a time; the EXTENDED
//! COPY is one command of as many block-to-block segments as the 16-bit block count needs.

use crate::cpu::process_cpu_time;
use crate::cpu::simulated_device_cpu_time;
use crate::cpu::threads_cpu_time_precise;
use crate::demo::DemoArgs;
use scst_accel_handler::abi::queue_type;
use scst_accel_handler::abi::sam_status;
use scst_accel_handler::frontend::Frontend;
use scst_accel_handler::loopback::decode_sense;
use scst_accel_handler::loopback::KernelConfig;
use scst_accel_handler::loopback::LoopbackKernel;
use scst_accel_handler::loopback::ScsiRequest;
use scst_accel_handler::loopback::Session;
use scst_accel_handler::store::CopyPath;
use scst_accel_handler::transport::version;
use serde_json::json;
use serde_json::Value;
use std::time::Duration;
use std::time::Instant;

/// Bytes per READ / WRITE of the initiator's clone and of the source fill.
const CHUNK: u64 = 1 << 20;
/// Most blocks one block-to-block segment descriptor names (a 16-bit count).
const SEGMENT_BLOCKS: u64 = 0xFFFF;
/// Bound of one command's wait.
const COMMAND_WAIT: Duration = Duration::from_secs(300);

/// One SCSI command at a time on a session.
struct Initiator<'a> {
    session: &'a Session,
    tag: u64,
}

impl Initiator<'_> {
    fn run(&mut self, cdb: Vec<u8>, data_out: Vec<u8>, data_in: u32) -> Result<Vec<u8>, String> {
        self.tag += 1;
        let opcode = cdb[0];
        self.session
            .submit(ScsiRequest {
                tag: self.tag,
                cdb,
                data_out,
                expected_data_in: data_in,
                queue_type: queue_type::SIMPLE,
                timeout_secs: 300,
            })
            .map_err(|e| e.to_string())?;
        let done = self
            .session
            .completions()
            .recv_timeout(COMMAND_WAIT)
            .map_err(|_| format!("command {opcode:#04x} not completed within {COMMAND_WAIT:?}"))?;
        if done.status != sam_status::GOOD {
            return Err(format!(
                "command {opcode:#04x} ended with status {:#x}, sense {:?}",
                done.status,
                decode_sense(&done.sense)
            ));
        }
        Ok(done.data_in)
    }
}

fn cdb16(opcode: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = opcode;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// The source's content: every 8 bytes of block `lba` name the block and their offset.
fn pattern(lba: u64, blocks: u64, bs: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity((blocks * bs) as usize);
    for b in lba..lba + blocks {
        for word in 0..bs / 8 {
            out.extend_from_slice(&(b.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ word).to_le_bytes());
        }
    }
    out
}

/// EXTENDED COPY(LID1) of `blocks` from `src` to `dst`: one CSCD (this disk, by the designator
/// the copy manager registered), block-to-block segments of at most 65535 blocks.
fn extended_copy(desig: &[u8], bs: u32, src: u64, dst: u64, blocks: u64) -> (Vec<u8>, Vec<u8>) {
    let segments = blocks.div_ceil(SEGMENT_BLOCKS);
    let mut list = vec![0u8; 16];
    list[1] = 3 << 3; // LIST ID USAGE 11b: no list identifier
    list[2..4].copy_from_slice(&32u16.to_be_bytes());
    list[8..12].copy_from_slice(&((28 * segments) as u32).to_be_bytes());
    let mut cscd = [0u8; 32];
    cscd[0] = 0xE4;
    let n = desig.len().min(24);
    cscd[4..4 + n].copy_from_slice(&desig[..n]);
    cscd[29..32].copy_from_slice(&bs.to_be_bytes()[1..]);
    list.extend_from_slice(&cscd);
    let mut done = 0;
    while done < blocks {
        let n = (blocks - done).min(SEGMENT_BLOCKS);
        let mut seg = [0u8; 28];
        seg[0] = 0x02;
        seg[2..4].copy_from_slice(&0x18u16.to_be_bytes());
        seg[10..12].copy_from_slice(&(n as u16).to_be_bytes());
        seg[12..20].copy_from_slice(&(src + done).to_be_bytes());
        seg[20..28].copy_from_slice(&(dst + done).to_be_bytes());
        list.extend_from_slice(&seg);
        done += n;
    }
    let mut cdb = vec![0u8; 16];
    cdb[0] = 0x83;
    cdb[10..14].copy_from_slice(&(list.len() as u32).to_be_bytes());
    (cdb, list)
}

/// What one clone cost.
struct Cost {
    elapsed: Duration,
    /// Process CPU time (/proc/self/stat: 10 ms ticks).
    cpu: Option<Duration>,
    /// CPU time of the process's threads in nanoseconds (schedstat; every thread of the run
    /// lives through the measurement: workers, I/O and simulator threads).
    threads_cpu: Option<Duration>,
    /// Of that, the simulated device's own threads (`sim0-q*`, `nvme-sim0-nvme*`): on a real
    /// board that work is the device's, not the host's.
    device_cpu: Option<Duration>,
}

/// Elapsed time and CPU time of `f`.
fn timed<T>(f: impl FnOnce() -> Result<T, String>) -> Result<(T, Cost), String> {
    let cpu = process_cpu_time();
    let threads = threads_cpu_time_precise("");
    let device = simulated_device_cpu_time();
    let start = Instant::now();
    let out = f()?;
    let elapsed = start.elapsed();
    let cost = Cost {
        elapsed,
        cpu: cpu.zip(process_cpu_time()).map(|(a, b)| b.saturating_sub(a)),
        threads_cpu: threads
            .zip(threads_cpu_time_precise(""))
            .map(|(a, b)| b.saturating_sub(a)),
        device_cpu: device
            .zip(simulated_device_cpu_time())
            .map(|(a, b)| b.saturating_sub(a)),
    };
    Ok((out, cost))
}

fn figures(bytes: u64, c: &Cost) -> Value {
    json!({
        "elapsed_s": c.elapsed.as_secs_f64(),
        "cpu_s": c.cpu.map(|c| c.as_secs_f64()),
        "threads_cpu_s": c.threads_cpu.map(|c| c.as_secs_f64()),
        "simulated_device_cpu_s": c.device_cpu.map(|c| c.as_secs_f64()),
        "host_cpu_s": c.threads_cpu.zip(c.device_cpu).map(|(t, d)| t.saturating_sub(d).as_secs_f64()),
        "mb_per_s": bytes as f64 / 1e6 / c.elapsed.as_secs_f64().max(1e-9),
    })
}

/// Clone `bytes` by EXTENDED COPY and by READ + WRITE on the board `args` names; the JSON
/// result.
///
/// # Errors
/// A message when the disk cannot be served, is too small, or a command fails.
pub fn measure(args: &DemoArgs, bytes: u64) -> Result<Value, String> {
    let blocks = crate::demo::validate(args)?;
    let bs = u64::from(args.disk.block_size);
    if bytes == 0 || !bytes.is_multiple_of(CHUNK) || 3 * bytes > blocks * bs {
        return Err(format!(
            "--clone must be a positive multiple of 1M and the disk (--size) hold three times it: {bytes} bytes, disk {} bytes",
            blocks * bs
        ));
    }
    let err = |e: &dyn std::error::Error| crate::backend::error_chain(e);
    let kernel = LoopbackKernel::new(KernelConfig {
        version: version::resolve(&args.disk.scst_version),
        ..KernelConfig::default()
    });
    let backend = crate::backend::build(args.board, &args.disk, blocks, args.pci.as_deref(), &args.inject)
        .map_err(|e| err(&e))?;
    let info = backend.store.info();
    let bs = u64::from(info.block_size);
    let frontend = crate::demo::start_loopback_disk(&kernel, &args.disk, &backend, true, false)
        .map_err(|e| err(e.as_ref()))?;
    let mut sessions = crate::demo::attach(&kernel, &args.disk.name, 1).map_err(|e| e.to_string())?;
    let session = sessions.remove(0);
    let result = clone_on(&kernel, &frontend, &session, &args.disk.name, bytes, bs);
    session.detach();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !frontend.sessions().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut report = frontend.shutdown();
    let _ = backend.shutdown(report.unmap.take());
    let mut v = result?;
    v["board"] = json!(crate::service::board_name(args.board));
    Ok(v)
}

fn clone_on(
    kernel: &LoopbackKernel,
    frontend: &Frontend,
    session: &Session,
    device: &str,
    bytes: u64,
    bs: u64,
) -> Result<Value, String> {
    let mut ini = Initiator { session, tag: 0 };
    let blocks = bytes / bs;
    // 1 MiB, or the disk's maximum transfer where it is smaller (an NVMe board's MDTS).
    let chunk_blocks = (CHUNK / bs).min(u64::from(
        frontend.disk().capabilities().limits.max_transfer_blocks.max(1),
    ));
    let (xcopy_dst, rw_dst) = (blocks, 2 * blocks);
    // The source (not timed).
    let mut lba = 0;
    while lba < blocks {
        let n = chunk_blocks.min(blocks - lba);
        ini.run(cdb16(0x8A, lba, n as u32), pattern(lba, n, bs), 0)?;
        lba += n;
    }
    // The operator's `add DEVICE LUN` to copy_manager_tgt (not timed).
    let cm = kernel
        .add_copy_manager_lun(device, 1)
        .map_err(|e| e.to_string())?;
    let desig = cm
        .designators
        .first()
        .cloned()
        .ok_or("the copy manager registered no designator from VPD 83h")?;
    let stats_before = frontend.stats();
    let cm_before = kernel.copy_manager_stats(device).unwrap_or_default();
    let (cdb, list) = extended_copy(&desig, bs as u32, 0, xcopy_dst, blocks);
    let ((), xcopy) = timed(|| ini.run(cdb, list, 0).map(drop))?;
    let stats_after = frontend.stats();
    let cm_after = kernel.copy_manager_stats(device).unwrap_or_default();
    let ((), rw) = timed(|| {
        let mut lba = 0;
        while lba < blocks {
            let n = chunk_blocks.min(blocks - lba);
            let data = ini.run(cdb16(0x88, lba, n as u32), Vec::new(), (n * bs) as u32)?;
            ini.run(cdb16(0x8A, rw_dst + lba, n as u32), data, 0)?;
            lba += n;
        }
        Ok(())
    })?;
    // Both clones read back equal to the source (not timed).
    for dst in [xcopy_dst, rw_dst] {
        let mut lba = 0;
        while lba < blocks {
            let n = chunk_blocks.min(blocks - lba);
            let got = ini.run(cdb16(0x88, dst + lba, n as u32), Vec::new(), (n * bs) as u32)?;
            if got != pattern(lba, n, bs) {
                return Err(format!(
                    "the clone at LBA {dst} differs from the source in blocks {lba}..{}",
                    lba + n
                ));
            }
            lba += n;
        }
    }
    cm.session.detach();
    let path = match frontend.store_info().copy {
        CopyPath::Store => "store copy",
        CopyPath::Device => "device copy",
        CopyPath::None => "leftovers (the copy manager's READ/WRITE)",
    };
    let ratio = |x: Option<Duration>, r: Option<Duration>| {
        x.zip(r).map(|(x, r)| x.as_secs_f64() / r.as_secs_f64().max(1e-9))
    };
    Ok(json!({
        "clone_bytes": bytes,
        "block_size": bs,
        "xcopy": {
            "path": path,
            "segments": blocks.div_ceil(SEGMENT_BLOCKS),
            "ext_copy_remaps": stats_after.ext_copy_remap - stats_before.ext_copy_remap,
            "remap_leftovers": stats_after.remap_leftovers - stats_before.remap_leftovers,
            "copy_manager_bytes": cm_after.1 - cm_before.1,
            "figures": figures(bytes, &xcopy),
        },
        "advertised": format!("{:?}", frontend.disk().capabilities().copy_offload),
        "read_write": {
            "chunk_bytes": chunk_blocks * bs,
            "queue_depth": 1,
            "figures": figures(bytes, &rw),
        },
        "xcopy_to_read_write": {
            "time": xcopy.elapsed.as_secs_f64() / rw.elapsed.as_secs_f64().max(1e-9),
            "cpu": ratio(xcopy.cpu, rw.cpu),
            "threads_cpu": ratio(xcopy.threads_cpu, rw.threads_cpu),
            "host_cpu": ratio(
                xcopy.threads_cpu.zip(xcopy.device_cpu).map(|(t, d)| t.saturating_sub(d)),
                rw.threads_cpu.zip(rw.device_cpu).map(|(t, d)| t.saturating_sub(d)),
            ),
        },
        "verified": true,
    }))
}
