//! SCST's AB-BA deadlock (scst_user.md §5.5): its cleanup held the SGV pool's lock and then took
//! the command list. Here with the real types: the command-buffer table looked up while holding
//! the real SGV pool's lock. Expected: `SgvPool: LockBefore<CmdTable>` is not satisfied.
use scst_accel_dma::SgvPool;
use scst_accel_hal::locks::LockToken;
use scst_accel_handler::frontend::BufferTable;
use std::sync::Arc;

fn main() {
    let pool = Arc::new(SgvPool::new(None, None, 1 << 20));
    let table = BufferTable::new(Arc::clone(&pool));
    let mut token = LockToken::root();
    let (_idle, mut under_pool) = pool.idle_lists(&mut token);
    let _ = table.get(&mut under_pool, 0x1000);
}
