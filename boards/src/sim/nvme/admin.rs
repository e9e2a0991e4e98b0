//! Admin commands (NVMe 1.4 §5): queue creation and deletion with the specification's checks,
//! Identify, Get/Set Features, Get Log Page, Abort and Asynchronous Event Request.

use super::controller::Token;
use super::identify;
use super::prp;
use super::spec;
use super::spec::admin;
use super::spec::feature;
use super::spec::status;
use super::spec::Sqe;
use super::spec::PAGE_SIZE;
use super::state::CompQueue;
use super::state::QueueDeletion;
use super::state::SubQueue;
use super::worker::CmdResult;
use super::worker::Exec;
use super::worker::Failure;
use super::worker::Reply;

/// Queue size field (CDW10 31:16, 0's based) to entries, checked against CAP.MQES: 0 (one
/// entry) and anything above MQES + 1 entries are Invalid Queue Size (§5.3, §5.4).
fn queue_size(cdw10: u32) -> Result<u16, Failure> {
    let qsize = cdw10 >> 16;
    if qsize == 0 || u64::from(qsize) > spec::cap::MQES {
        return Err(status::INVALID_QUEUE_SIZE.into());
    }
    Ok(qsize as u16 + 1)
}

/// Execute admin command `sqe`.
pub(crate) fn execute(exec: &Exec<'_>, token: &mut Token<'_>, sqe: &Sqe) -> CmdResult {
    if sqe.psdt() != 0 {
        // SGLs are not supported (Identify SGLS = 0), and admin commands use PRPs anyway.
        return Err(status::INVALID_FIELD.into());
    }
    match sqe.opcode() {
        admin::CREATE_IO_CQ => create_cq(exec, token, sqe),
        admin::CREATE_IO_SQ => create_sq(exec, token, sqe),
        admin::DELETE_IO_CQ => delete_cq(exec, token, sqe),
        admin::DELETE_IO_SQ => delete_sq(exec, token, sqe),
        admin::IDENTIFY => identify(exec, token, sqe),
        admin::GET_FEATURES => get_features(exec, token, sqe),
        admin::SET_FEATURES => set_features(exec, token, sqe),
        admin::GET_LOG_PAGE => get_log_page(exec, token, sqe),
        // §5.1: the model never aborts; "not aborted" is dword 0 bit 0 = 1.
        admin::ABORT => Ok(Reply::Done(1)),
        admin::ASYNC_EVENT_REQUEST => async_event_request(exec, token, sqe),
        _ => Err(status::INVALID_OPCODE.into()),
    }
}

/// Create I/O Completion Queue (§5.3).
fn create_cq(exec: &Exec<'_>, token: &mut Token<'_>, sqe: &Sqe) -> CmdResult {
    let qid = sqe.cdw10 as u16;
    let pc = sqe.cdw11 & 1 != 0;
    let ien = sqe.cdw11 & 2 != 0;
    let vector = (sqe.cdw11 >> 16) as u16;
    let mut st = exec.lock_valid(token)?;
    if qid == 0 || qid > st.ncqa || st.cqs[usize::from(qid)].is_some() {
        return Err(status::INVALID_QUEUE_IDENTIFIER.into());
    }
    let size = queue_size(sqe.cdw10)?;
    if ien && u32::from(vector) >= exec.shared.config.interrupts {
        return Err(status::INVALID_INTERRUPT_VECTOR.into());
    }
    if !pc {
        // CAP.CQR = 1: queues must be physically contiguous.
        return Err(status::INVALID_FIELD.into());
    }
    if !sqe.prp1.is_multiple_of(PAGE_SIZE) {
        return Err(status::INVALID_PRP_OFFSET.into());
    }
    st.cqs[usize::from(qid)] = Some(CompQueue {
        base: sqe.prp1,
        size,
        head: 0,
        tail: 0,
        phase: true,
        vector,
        ien,
        reserved: 0,
    });
    log::debug!(
        "{}: created CQ {qid} ({size} entries, vector {vector}, IEN {ien})",
        exec.shared.id
    );
    Ok(Reply::Done(0))
}

/// Create I/O Submission Queue (§5.4).
fn create_sq(exec: &Exec<'_>, token: &mut Token<'_>, sqe: &Sqe) -> CmdResult {
    let qid = sqe.cdw10 as u16;
    let pc = sqe.cdw11 & 1 != 0;
    let cqid = (sqe.cdw11 >> 16) as u16;
    let mut st = exec.lock_valid(token)?;
    if qid == 0 || qid > st.nsqa || st.sqs[usize::from(qid)].is_some() {
        return Err(status::INVALID_QUEUE_IDENTIFIER.into());
    }
    if cqid == 0 || st.cqs.get(usize::from(cqid)).is_none_or(Option::is_none) {
        return Err(status::COMPLETION_QUEUE_INVALID.into());
    }
    let size = queue_size(sqe.cdw10)?;
    if !pc {
        return Err(status::INVALID_FIELD.into());
    }
    if !sqe.prp1.is_multiple_of(PAGE_SIZE) {
        return Err(status::INVALID_PRP_OFFSET.into());
    }
    st.sqs[usize::from(qid)] = Some(SubQueue {
        base: sqe.prp1,
        size,
        head: 0,
        tail: 0,
        cqid,
    });
    log::debug!("{}: created SQ {qid} ({size} entries, CQ {cqid})", exec.shared.id);
    Ok(Reply::Done(0))
}

/// Delete I/O Completion Queue (§5.5): refused while an SQ still posts to it.
fn delete_cq(exec: &Exec<'_>, token: &mut Token<'_>, sqe: &Sqe) -> CmdResult {
    let qid = sqe.cdw10 as u16;
    let mut st = exec.lock_valid(token)?;
    if qid == 0 || st.cqs.get(usize::from(qid)).is_none_or(Option::is_none) {
        return Err(status::INVALID_QUEUE_IDENTIFIER.into());
    }
    if st.sqs.iter().flatten().any(|sq| sq.cqid == qid) {
        return Err(status::INVALID_QUEUE_DELETION.into());
    }
    st.cqs[usize::from(qid)] = None;
    st.deleted(QueueDeletion::Cq(qid));
    Ok(Reply::Done(0))
}

/// Delete I/O Submission Queue (§5.6). The queue's worker executes its commands one at a
/// time as it fetches them, so at most one is outstanding: the deletion completes once that
/// one is complete (posted, or dropped by a reset), so the host may reclaim the queue's
/// buffers when it sees this completion. Commands dropped by a never-complete fault stay
/// unanswered, as on a controller that lost them.
fn delete_sq(exec: &Exec<'_>, token: &mut Token<'_>, sqe: &Sqe) -> CmdResult {
    let qid = sqe.cdw10 as u16;
    let mut st = exec.lock_valid(token)?;
    if qid == 0 || st.sqs.get(usize::from(qid)).is_none_or(Option::is_none) {
        return Err(status::INVALID_QUEUE_IDENTIFIER.into());
    }
    // No further fetch from it...
    st.sqs[usize::from(qid)] = None;
    // ...and the one its worker holds finishes first. Each wait is bounded and the job is
    // re-checked after it: a reset, device loss or shutdown abandons this command instead.
    while st.busy[usize::from(qid)] {
        st = exec.wait_valid(st)?;
    }
    st.deleted(QueueDeletion::Sq(qid));
    Ok(Reply::Done(0))
}

/// Identify (§5.15): CNS 00h namespace 1, 01h controller, 02h active namespace list, and 06h
/// the I/O Command Set specific controller data of the command set in CDW11 bits 31:24 (CSI,
/// NVMe 2.0 Base Specification §5.17.1), of which only the NVM Command Set (00h) exists here.
fn identify(exec: &Exec<'_>, token: &mut Token<'_>, sqe: &Sqe) -> CmdResult {
    let cns = sqe.cdw10 as u8;
    let csi = (sqe.cdw11 >> 24) as u8;
    let config = &exec.shared.config;
    let data = match cns {
        0x00 if sqe.nsid == 1 => identify::namespace(config),
        0x00 => return Err(status::INVALID_NAMESPACE.into()),
        0x01 => identify::controller(&exec.shared.id, config),
        0x02 if sqe.nsid >= 0xFFFF_FFFE => return Err(status::INVALID_NAMESPACE.into()),
        0x02 => identify::active_namespaces(sqe.nsid),
        0x06 if csi == 0x00 && config.identify_io_command_set => identify::controller_nvm(config),
        _ => return Err(status::INVALID_FIELD.into()),
    };
    prp::send(exec, token, sqe.prp1, sqe.prp2, &data)?;
    Ok(Reply::Done(0))
}

/// Get Features (§5.14).
fn get_features(exec: &Exec<'_>, token: &mut Token<'_>, sqe: &Sqe) -> CmdResult {
    let fid = sqe.cdw10 as u8;
    let st = exec.lock_valid(token)?;
    let dw0 = match fid {
        feature::NUMBER_OF_QUEUES => (u32::from(st.ncqa - 1) << 16) | u32::from(st.nsqa - 1),
        feature::VOLATILE_WRITE_CACHE => u32::from(st.wce),
        f if feature::STORED.contains(&f) => st.features.get(&f).copied().unwrap_or(0),
        _ => return Err(status::INVALID_FIELD.into()),
    };
    Ok(Reply::Done(dw0))
}

/// Set Features (§5.21). Number of Queues grants at most the configured queue pairs and is
/// refused once an I/O queue exists (§5.21.1.7).
fn set_features(exec: &Exec<'_>, token: &mut Token<'_>, sqe: &Sqe) -> CmdResult {
    let fid = sqe.cdw10 as u8;
    if sqe.cdw10 & (1 << 31) != 0 {
        // SV: nothing is saveable (ONCS bit 4 = 0).
        return Err(status::INVALID_FIELD.into());
    }
    let mut st = exec.lock_valid(token)?;
    match fid {
        feature::NUMBER_OF_QUEUES => {
            let nsqr = sqe.cdw11 & 0xFFFF;
            let ncqr = sqe.cdw11 >> 16;
            if nsqr == 0xFFFF || ncqr == 0xFFFF {
                return Err(status::INVALID_FIELD.into());
            }
            if st.any_io_queue() {
                return Err(status::COMMAND_SEQUENCE_ERROR.into());
            }
            let max = exec.shared.config.queues;
            st.nsqa = (nsqr as u16 + 1).min(max);
            st.ncqa = (ncqr as u16 + 1).min(max);
            Ok(Reply::Done(
                (u32::from(st.ncqa - 1) << 16) | u32::from(st.nsqa - 1),
            ))
        }
        feature::VOLATILE_WRITE_CACHE => {
            st.wce = sqe.cdw11 & 1 != 0;
            Ok(Reply::Done(0))
        }
        f if feature::STORED.contains(&f) => {
            st.features.insert(f, sqe.cdw11);
            Ok(Reply::Done(0))
        }
        _ => Err(status::INVALID_FIELD.into()),
    }
}

/// Get Log Page (§5.14): only the Error Information log (01h), which is always empty (all
/// zeroes: an entry with Error Count 0 is unused). Reading it without RAE unmasks error
/// events (§5.2).
fn get_log_page(exec: &Exec<'_>, token: &mut Token<'_>, sqe: &Sqe) -> CmdResult {
    let lid = sqe.cdw10 as u8;
    let rae = sqe.cdw10 & (1 << 15) != 0;
    let numd = (u64::from(sqe.cdw11 & 0xFFFF) << 16 | u64::from(sqe.cdw10 >> 16)) + 1;
    let offset = u64::from(sqe.cdw12) | (u64::from(sqe.cdw13) << 32);
    let len = numd * 4;
    if lid != spec::LOG_ERROR_INFORMATION {
        return Err(status::INVALID_LOG_PAGE.into());
    }
    if offset >= spec::ERROR_LOG_ENTRY_BYTES || !offset.is_multiple_of(4) {
        return Err(status::INVALID_FIELD.into());
    }
    if len > exec.shared.config.max_transfer_bytes() {
        return Err(status::INVALID_FIELD.into());
    }
    prp::send(exec, token, sqe.prp1, sqe.prp2, &vec![0u8; len as usize])?;
    if !rae {
        exec.lock_valid(token)?.error_event_masked = false;
    }
    Ok(Reply::Done(0))
}

/// Asynchronous Event Request (§5.2): held until an event; at most AERL + 1 outstanding.
fn async_event_request(exec: &Exec<'_>, token: &mut Token<'_>, sqe: &Sqe) -> CmdResult {
    let mut st = exec.lock_valid(token)?;
    if st.aers.len() > usize::from(spec::AERL) {
        return Err(status::AER_LIMIT_EXCEEDED.into());
    }
    st.aers.push(sqe.cid());
    Ok(Reply::Held)
}
