//! The driver's PRP construction against the simulator's PRP walking, two readings of NVMe 1.4
//! §4.3 written independently: random valid scatter layouts written through the driver, read
//! back contiguously and scattered again, compared byte for byte, with the bytes between the
//! segments checked untouched (no stray DMA).

use super::buffer;
use super::config;
use super::pattern;
use super::req;
use super::run;
use super::Rig;
use crate::engine::DeviceOp;
use crate::engine::DeviceStatus;
use crate::sim::nvme::NvmeSimConfig;
use proptest::prelude::*;
use proptest::test_runner::Config;
use proptest::test_runner::TestRunner;
use std::cell::RefCell;

const PAGE: u64 = 4096;
const BLOCK: u64 = 512;
/// Pages of each scatter buffer: room for the largest layout generated, gaps included.
const BUFFER_PAGES: u64 = 64;

/// One segment as generated: a gap of whole pages before it, and its pages (or, for the last,
/// its blocks).
type Shape = (u64, u64);

/// A layout the PRP rules allow, as (byte offset into the buffer, length) pairs: the first
/// segment at a dword offset into its page and ending on a page boundary, whole-page middles,
/// a last segment that makes the total a multiple of the block size. At most 80 KiB, under
/// the simulator's 128 KiB MDTS.
fn layout() -> impl Strategy<Value = Vec<(u64, u32)>> {
    (
        prop::collection::vec((0u64..3, 1u64..=4), 0..=4),
        0..PAGE / 4,
        (0u64..3, 1u64..=16),
        any::<bool>(),
    )
        .prop_map(
            |(middles, dwords, (last_gap, last_blocks), single): (Vec<Shape>, u64, Shape, bool)| {
                let offset = dwords * 4;
                if single {
                    // One segment from the offset, 1 to 128 blocks: PRP1 alone, PRP1 + PRP2, or a
                    // list.
                    let len = (last_blocks * 8 - dwords % 8) * BLOCK;
                    return vec![(offset, len as u32)];
                }
                let mut segs = vec![(offset, (PAGE - offset) as u32)];
                let mut page = 1;
                for (gap, pages) in middles {
                    page += gap;
                    segs.push((page * PAGE, (pages * PAGE) as u32));
                    page += pages;
                }
                let before: u64 = segs.iter().map(|s| u64::from(s.1)).sum();
                let last = (BLOCK - before % BLOCK) % BLOCK + last_blocks * BLOCK;
                segs.push(((page + last_gap) * PAGE, last as u32));
                segs
            },
        )
}

#[test]
fn random_prp_layouts_round_trip_through_the_simulator() {
    let rig = RefCell::new(Rig::up("drv-layouts", NvmeSimConfig::default(), &config()));
    let len = (BUFFER_PAGES * PAGE) as usize;
    let (source, flat, scatter) = {
        let r = rig.borrow();
        (buffer(&r.ctrl, len), buffer(&r.ctrl, len), buffer(&r.ctrl, len))
    };
    let mut runner = TestRunner::new(Config {
        // Three commands per case: 48 cases keep the test near a second in a debug build.
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    let case = RefCell::new(0u64);
    let result = runner.run(&layout(), |segs| {
        let mut n = case.borrow_mut();
        *n += 1;
        let seed = *n as u8;
        let total: u32 = segs.iter().map(|s| s.1).sum();
        let at = |iova: u64, segs: &[(u64, u32)]| -> Vec<(u64, u32)> {
            segs.iter().map(|&(o, l)| (iova + o, l)).collect()
        };
        let data = pattern(len, seed);
        source.region().write_at(0, &data);
        scatter.region().fill(0, len, 0);
        let lba = 8 * (*n % 64);
        let tag = 10 * *n;
        let mut rig = rig.borrow_mut();
        let q = &mut rig.queues[(*n % 2) as usize];
        let w = run(
            q,
            &[req(tag, DeviceOp::Write, lba, total, &at(source.iova(), &segs))],
        );
        prop_assert_eq!(w[0].status, DeviceStatus::Ok);
        let r = run(
            q,
            &[req(tag + 1, DeviceOp::Read, lba, total, &[(flat.iova(), total)])],
        );
        prop_assert_eq!(r[0].status, DeviceStatus::Ok);
        let r = run(
            q,
            &[req(
                tag + 2,
                DeviceOp::Read,
                lba,
                total,
                &at(scatter.iova(), &segs),
            )],
        );
        prop_assert_eq!(r[0].status, DeviceStatus::Ok);

        // The medium holds the segments in order.
        let mut got = vec![0u8; total as usize];
        flat.region().read_at(0, &mut got);
        let want: Vec<u8> = segs
            .iter()
            .flat_map(|&(o, l)| data[o as usize..(o + u64::from(l)) as usize].iter().copied())
            .collect();
        prop_assert!(got == want, "written data differs for {:x?}", segs);
        // Read back scattered: every segment's bytes, and nothing between them.
        let mut back = vec![0u8; len];
        scatter.region().read_at(0, &mut back);
        let mut expect = vec![0u8; len];
        for &(o, l) in &segs {
            let r = o as usize..(o + u64::from(l)) as usize;
            expect[r.clone()].copy_from_slice(&data[r]);
        }
        prop_assert!(back == expect, "scattered read differs for {:x?}", segs);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    drop((source, flat, scatter));
    rig.into_inner().finish();
}
