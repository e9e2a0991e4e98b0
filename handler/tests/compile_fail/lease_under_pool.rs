//! The device lease table taken while holding the real SGV pool's lock: a buffer's return to the
//! pool must never wait for the lease table. Expected: `SgvPool: LockBefore<TeardownLeases>` is
//! not satisfied.
use scst_accel_dma::SgvPool;
use scst_accel_hal::locks::LockToken;
use scst_accel_handler::teardown::LeaseTable;

fn main() {
    let pool = SgvPool::new(None, None, 1 << 20);
    let leases = LeaseTable::<u32>::new();
    let mut token = LockToken::root();
    let (_idle, mut under_pool) = pool.idle_lists(&mut token);
    let _ = leases.grant(&mut under_pool, 7, 70);
}
