use super::*;
use crate::abi::GetMultiHeader;
use crate::frontend::Frontend;
use crate::frontend::FrontendConfig;
use crate::scsi::Disk;
use crate::scsi::DiskConfig;
use crate::store::null::NullStore;
use crate::store::Store;
use scst_accel_dma::SgvPool;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

fn config(write: bool, on_free_cmd: bool) -> ReplayConfig {
    ReplayConfig {
        queue_depth: 4,
        block_size: 512,
        blocks_per_command: 8,
        region_blocks: 1024,
        write,
        random: true,
        seed: 7,
        on_free_cmd,
    }
}

/// One REPLY_AND_GET_MULTI as a worker makes it: `replies`, then room for `want` commands.
fn exchange(replay: &ReplayKernel, replies: &[ReplyCmd], want: usize) -> (IoctlResult, Vec<GetCmd>, i16) {
    let mut multi = MultiBuffer::new(8);
    multi.set_header(GetMultiHeader {
        preplies: if replies.is_empty() {
            0
        } else {
            replies.as_ptr() as u64
        },
        replies_cnt: replies.len() as i16,
        replies_done: -1,
        cmds_cnt: want as i16,
        _pad: 0,
    });
    let result = replay.reply_and_get_multi(&mut multi);
    let header = multi.header();
    let cmds = (0..header.cmds_cnt.max(0) as usize)
        .map(|i| *multi.cmd(i))
        .collect();
    (result, cmds, header.replies_done)
}

fn exec_reply(cmd: &GetCmd, pbuf: u64, resp_data_len: i32) -> ReplyCmd {
    ReplyCmd::with_payload(
        cmd.cmd_h,
        abi::SCST_USER_EXEC,
        &abi::ExecReply {
            resp_data_len,
            pbuf,
            reply_type: abi::exec_reply_type::COMPLETED,
            status: abi::sam_status::GOOD,
            ..Default::default()
        },
    )
}

#[test]
fn reads_miss_once_per_slot_then_hit_the_cached_buffer_and_the_flush_returns_them() {
    let replay = ReplayKernel::new(config(false, false)).unwrap();
    let (result, first, _) = exchange(&replay, &[], 8);
    assert_eq!(result, Ok(()));
    assert_eq!(first.len(), 4, "one command per slot");
    let mut replies = Vec::new();
    for (i, cmd) in first.iter().enumerate() {
        assert_eq!(cmd.subcode, abi::SCST_USER_EXEC);
        let exec: abi::ScsiCmdExec = cmd.read_payload();
        assert_eq!(
            (exec.pbuf, exec.alloc_len, exec.bufflen),
            (0, 4096, 4096),
            "a miss"
        );
        assert_eq!(exec.data_direction, abi::data_direction::READ);
        assert_eq!(exec.cdb[0], 0x28);
        assert_eq!(
            u64::from(u32::from_be_bytes(exec.cdb[2..6].try_into().unwrap())),
            exec.lba as u64
        );
        replies.push(exec_reply(cmd, 0x10_0000 + (i as u64) * 4096, 4096));
    }
    // Nothing is ready while every slot waits for its reply.
    let (result, none, _) = exchange(&replay, &[], 8);
    assert_eq!((result, none.len()), (Err(Errno::EAGAIN), 0));
    let (result, second, done) = exchange(&replay, &replies, 8);
    assert_eq!((result, done, second.len()), (Ok(()), 4, 4));
    let mut pbufs: Vec<u64> = second
        .iter()
        .map(|c| c.read_payload::<abi::ScsiCmdExec>().pbuf)
        .collect();
    pbufs.sort_unstable();
    assert_eq!(
        pbufs,
        [0x10_0000, 0x10_1000, 0x10_2000, 0x10_3000],
        "hits on the cached buffers"
    );
    assert!(
        second.iter().all(|c| first.iter().all(|f| f.cmd_h != c.cmd_h)),
        "new handles"
    );
    let hits: Vec<ReplyCmd> = second.iter().map(|c| exec_reply(c, 0, 4096)).collect();
    replay.stop();
    let (result, flushes, _) = exchange(&replay, &hits, 8);
    assert_eq!(result, Ok(()));
    assert_eq!(flushes.len(), 4);
    assert!(flushes
        .iter()
        .all(|c| c.subcode == abi::SCST_USER_ON_CACHED_MEM_FREE));
    assert_eq!(replay.cached_buffers(), 4);
    let answers: Vec<ReplyCmd> = flushes
        .iter()
        .map(|c| ReplyCmd::new(c.cmd_h, c.subcode))
        .collect();
    let (result, rest, _) = exchange(&replay, &answers, 8);
    assert_eq!((result, rest.len()), (Err(Errno::EAGAIN), 0));
    assert!(replay.finished());
    assert_eq!(replay.cached_buffers(), 0);
    let stats = replay.stats();
    assert_eq!((stats.commands, stats.cached_frees, stats.bad_replies), (8, 4, 0));
}

#[test]
fn a_write_miss_asks_alloc_mem_first_and_on_free_cmd_follows_each_exec_when_asked_for() {
    let replay = ReplayKernel::new(config(true, true)).unwrap();
    let (_, allocs, _) = exchange(&replay, &[], 1);
    assert_eq!(allocs.len(), 1);
    assert_eq!(allocs[0].subcode, abi::SCST_USER_ALLOC_MEM);
    let answer = ReplyCmd::with_payload(
        allocs[0].cmd_h,
        abi::SCST_USER_ALLOC_MEM,
        &abi::AllocMemReply { pbuf: 0x20_0000 },
    );
    // The EXEC of the same command follows, with the buffer: the other slots' ALLOC_MEMs may
    // come first.
    let (_, cmds, _) = exchange(&replay, &[answer], 8);
    let exec = cmds
        .iter()
        .find(|c| c.subcode == abi::SCST_USER_EXEC)
        .expect("the EXEC after its ALLOC_MEM");
    assert_eq!(exec.cmd_h, allocs[0].cmd_h, "same command, same handle");
    let payload: abi::ScsiCmdExec = exec.read_payload();
    assert_eq!(
        (payload.pbuf, payload.data_direction, payload.cdb[0]),
        (0x20_0000, abi::data_direction::WRITE, 0x2a)
    );
    let (_, next, _) = exchange(&replay, &[exec_reply(exec, 0, 0)], 8);
    let free = next
        .iter()
        .find(|c| c.subcode == abi::SCST_USER_ON_FREE_CMD)
        .expect("ON_FREE_CMD after the EXEC's reply");
    assert_eq!(free.cmd_h, exec.cmd_h);
    let on_free: abi::ScsiOnFreeCmd = free.read_payload();
    assert_eq!((on_free.pbuf, on_free.buffer_cached), (0x20_0000, 1));
    assert_eq!(replay.stats().bad_replies, 0);
}

#[test]
fn a_wrong_reply_is_refused_at_its_index_and_counted() {
    let replay = ReplayKernel::new(config(false, false)).unwrap();
    let (_, cmds, _) = exchange(&replay, &[], 2);
    let good = exec_reply(&cmds[0], 0x30_0000, 4096);
    let stale = exec_reply(&cmds[1], 0x31_0000, 4096);
    let mut stale = stale;
    stale.cmd_h ^= 1 << SLOT_BITS; // another sequence number: not the outstanding command
    let short = exec_reply(&cmds[1], 0x31_0000, 512);
    let (result, fetched, done) = exchange(&replay, &[good, stale], 8);
    assert_eq!((result, done, fetched.len()), (Err(Errno::ESRCH), 1, 0));
    let (result, _, done) = exchange(&replay, &[short], 0);
    assert_eq!(
        (result, done),
        (Err(Errno::ESRCH), 0),
        "a short READ is not GOOD data"
    );
    let stats = replay.stats();
    assert_eq!((stats.commands, stats.bad_replies), (1, 2));
}

#[test]
fn poll_fd_is_readable_while_a_slot_has_something_and_cleared_by_an_empty_fetch() {
    let replay = ReplayKernel::new(ReplayConfig {
        queue_depth: 2,
        ..config(false, false)
    })
    .unwrap();
    let readable = || crate::transport::fdio::poll_readable(&[replay.poll_fd()], Duration::ZERO).unwrap()[0];
    assert!(readable());
    let (_, cmds, _) = exchange(&replay, &[], 8);
    assert_eq!(cmds.len(), 2);
    assert!(readable(), "cleared lazily: no syscall per fetch");
    let (result, none, _) = exchange(&replay, &[], 8);
    assert_eq!((result, none.len()), (Err(Errno::EAGAIN), 0));
    assert!(!readable(), "the empty fetch cleared it");
    let reply = exec_reply(&cmds[0], 0x40_0000, 4096);
    assert!(replay.reply_cmd(&reply).is_ok());
    assert!(readable(), "a slot is free again");
    assert_eq!(replay.stats().readiness_changes, 3, "signal, clear, signal");
}

/// The replay drives the real frontend over the null store: every command answered GOOD, no
/// wrong reply, and at the stop every buffer comes back to the handler and is released.
#[test]
fn the_frontend_serves_a_replay_to_the_end_with_every_buffer_returned() {
    for (write, on_free_cmd) in [(false, false), (true, true)] {
        let store = Arc::new(NullStore::new(512, 4096, 256));
        let replay = Arc::new(
            ReplayKernel::new(ReplayConfig {
                queue_depth: 32,
                region_blocks: 4096,
                ..config(write, on_free_cmd)
            })
            .unwrap(),
        );
        let frontend = Frontend::start(
            Arc::clone(&replay) as Arc<dyn ScstUserFd>,
            Arc::new(Disk::new(DiskConfig::for_store(&store.info()))),
            store,
            Arc::new(SgvPool::new(None, None, 1 << 24)),
            FrontendConfig {
                workers: 2,
                ..FrontendConfig::default()
            },
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while replay.stats().commands < 5000 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        replay.stop();
        while !replay.finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let report = frontend.shutdown();
        let stats = replay.stats();
        assert!(
            stats.commands >= 5000,
            "write {write}: only {} commands",
            stats.commands
        );
        assert!(replay.finished(), "write {write}: the replay did not end");
        assert_eq!(stats.bad_replies, 0);
        assert_eq!(stats.cached_frees, 32, "one buffer per slot came back");
        assert_eq!(stats.alloc_mem, if write { 32 } else { 0 });
        assert_eq!(stats.on_free_cmd > 0, on_free_cmd);
        let buffers = report.stats.buffers;
        assert_eq!(
            (buffers.buffers, buffers.allocated, buffers.released),
            (0, 32, 32)
        );
        assert_eq!(report.stats.exec_errors, 0);
    }
}
