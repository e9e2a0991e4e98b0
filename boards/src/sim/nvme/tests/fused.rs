//! Compare (§6.2) and the fused Compare and Write (§4.12): atomic compare-then-write, the
//! statuses of both commands on a match, a mismatch and malformed pairs, and the limit ACWU.

use super::super::spec::nvm;
use super::super::spec::status as st;
use super::io::rw_contiguous;
use super::*;

/// FUSE field values in CDW0 bits 9:8.
const FIRST: u32 = 1 << 8;
const SECOND: u32 = 2 << 8;

/// A Compare (FUSE 01b) of the data in `expected` and a Write (FUSE 10b) of the data in
/// `data`, both `blocks` blocks at `slba`.
fn fused_pair(rig: &mut Rig, slba: u64, blocks: u32, expected: usize, data: usize) -> [Sqe; 2] {
    let mut compare = rw_contiguous(rig, nvm::COMPARE, slba, blocks, expected);
    compare.cdw0 |= FIRST;
    let mut write = rw_contiguous(rig, nvm::WRITE, slba, blocks, data);
    write.cdw0 |= SECOND;
    [compare, write]
}

/// The completions of the commands `cids`, in CID order (the controller may post them in
/// either order).
fn completions(rig: &mut Rig, cids: &[u16]) -> Vec<Cqe> {
    let mut out: Vec<Cqe> = cids.iter().map(|_| rig.next_completion(1)).collect();
    out.sort_by_key(|c| cids.iter().position(|&cid| cid == c.cid));
    let got: Vec<u16> = out.iter().map(|c| c.cid).collect();
    assert_eq!(got, cids, "one completion per command");
    out
}

/// Two blocks written with `seed`'s pattern at `slba`, and a buffer holding them.
fn written(rig: &mut Rig, slba: u64, seed: u8) -> (Vec<u8>, usize) {
    let data = pattern(1024, seed);
    assert_eq!(rig.write_blocks(slba, &data), Status::SUCCESS);
    let buf = rig.alloc(data.len());
    rig.region(buf).write_at(0, &data);
    (data, buf)
}

fn buffer_of(rig: &mut Rig, data: &[u8]) -> usize {
    let buf = rig.alloc(data.len());
    rig.region(buf).write_at(0, data);
    buf
}

#[test]
fn a_match_writes_and_both_commands_succeed() {
    let mut rig = Rig::with_io_queue(8);
    let (_, expected) = written(&mut rig, 10, 1);
    let new = pattern(1024, 2);
    let data = buffer_of(&mut rig, &new);
    let pair = fused_pair(&mut rig, 10, 2, expected, data);
    let cids = rig.submit_together(1, &pair);
    let c = completions(&mut rig, &cids);
    assert_eq!((status(&c[0]), status(&c[1])), (Status::SUCCESS, Status::SUCCESS));
    assert_eq!(rig.read_blocks(10, 2), (Status::SUCCESS, new));
}

#[test]
fn a_mismatch_writes_nothing_and_aborts_the_write() {
    let mut rig = Rig::with_io_queue(8);
    let (old, _) = written(&mut rig, 10, 1);
    let mut other = old.clone();
    other[700] ^= 0x5A;
    let expected = buffer_of(&mut rig, &other);
    let data = buffer_of(&mut rig, &pattern(1024, 3));
    let pair = fused_pair(&mut rig, 10, 2, expected, data);
    let cids = rig.submit_together(1, &pair);
    let c = completions(&mut rig, &cids);
    assert_eq!(
        (status(&c[0]), status(&c[1])),
        (st::COMPARE_FAILURE, st::ABORTED_FAILED_FUSED)
    );
    assert_eq!(rig.read_blocks(10, 2), (Status::SUCCESS, old), "nothing written");
}

#[test]
fn a_first_without_its_second_and_a_second_alone_are_missing_fused_commands() {
    let mut rig = Rig::with_io_queue(8);
    let (old, expected) = written(&mut rig, 10, 1);
    let data = buffer_of(&mut rig, &pattern(1024, 4));
    let [compare, write] = fused_pair(&mut rig, 10, 2, expected, data);
    // The doorbell made only the first available.
    let c = rig.command(1, compare);
    assert_eq!(status(&c), st::ABORTED_MISSING_FUSED);
    let c = rig.command(1, write);
    assert_eq!(status(&c), st::ABORTED_MISSING_FUSED);
    // A first followed by an ordinary command: the first is missing its second, the other
    // command runs as it is.
    let read_buf = rig.alloc(1024);
    let read = rw_contiguous(&mut rig, nvm::READ, 10, 2, read_buf);
    let cids = rig.submit_together(1, &[compare, read]);
    let c = completions(&mut rig, &cids);
    assert_eq!(
        (status(&c[0]), status(&c[1])),
        (st::ABORTED_MISSING_FUSED, Status::SUCCESS)
    );
    assert_eq!(rig.read_mem(read_buf, 0, 1024), old, "nothing written meanwhile");
}

#[test]
fn the_two_commands_must_name_the_same_blocks_within_acwu() {
    let mut rig = Rig::with_io_queue(8);
    let (old, expected) = written(&mut rig, 10, 1);
    let data = buffer_of(&mut rig, &pattern(1024, 5));
    let [compare, mut write] = fused_pair(&mut rig, 10, 2, expected, data);
    write.cdw10 = 11;
    let cids = rig.submit_together(1, &[compare, write]);
    let c = completions(&mut rig, &cids);
    assert_eq!(
        (status(&c[0]), status(&c[1])),
        (st::INVALID_FIELD, st::ABORTED_FAILED_FUSED)
    );
    // ACWU is 16 blocks here: 17 are refused.
    let big = rig.alloc(17 * 512);
    let pair = fused_pair(&mut rig, 0, 17, big, big);
    let cids = rig.submit_together(1, &pair);
    let c = completions(&mut rig, &cids);
    assert_eq!(
        (status(&c[0]), status(&c[1])),
        (st::INVALID_FIELD, st::ABORTED_FAILED_FUSED)
    );
    assert_eq!(rig.read_blocks(10, 2), (Status::SUCCESS, old));
}

#[test]
fn compare_alone_reports_the_mismatch_and_writes_nothing() {
    let mut rig = Rig::with_io_queue(8);
    let (old, expected) = written(&mut rig, 20, 6);
    let compare = rw_contiguous(&mut rig, nvm::COMPARE, 20, 2, expected);
    let c = rig.command(1, compare);
    assert_eq!(status(&c), Status::SUCCESS);
    let mut other = old.clone();
    other[0] ^= 1;
    let differing = buffer_of(&mut rig, &other);
    let compare = rw_contiguous(&mut rig, nvm::COMPARE, 20, 2, differing);
    let c = rig.command(1, compare);
    assert_eq!(status(&c), st::COMPARE_FAILURE);
    assert_eq!(rig.read_blocks(20, 2), (Status::SUCCESS, old));
}

#[test]
fn without_fused_support_compare_and_fused_commands_are_refused() {
    let mut rig = Rig::new(NvmeSimConfig {
        compare_write_max_blocks: 0,
        ..small_config()
    });
    rig.enable();
    rig.create_io_queue(1, 8);
    let buf = rig.alloc(4096);
    let id = rig.admin(identify(1, 0, rig.iova(buf), 0));
    assert_eq!(status(&id), Status::SUCCESS);
    let ident = rig.read_mem(buf, 0, 4096);
    assert_eq!(ident[520] & 1, 0, "ONCS: no Compare");
    assert_eq!((ident[522], ident[532]), (0, 0), "FUSES, ACWU");
    let data = rig.alloc(1024);
    let compare = rw_contiguous(&mut rig, nvm::COMPARE, 0, 2, data);
    let c = rig.command(1, compare);
    assert_eq!(status(&c), st::INVALID_OPCODE);
    let pair = fused_pair(&mut rig, 0, 2, data, data);
    let cids = rig.submit_together(1, &pair);
    let c = completions(&mut rig, &cids);
    assert_eq!(
        (status(&c[0]), status(&c[1])),
        (st::INVALID_FIELD, st::INVALID_FIELD)
    );
}
