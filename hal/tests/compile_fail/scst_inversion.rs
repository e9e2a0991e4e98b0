//! SCST's AB-BA deadlock (scst_user.md §5.6): cleanup took the buffer-pool lock, then the
//! command list. Here: the command table while holding the SGV pool's lock.
use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::locks::OrderedMutex;

fn main() {
    let pool = OrderedMutex::<Vec<u64>, levels::SgvPool>::new(Vec::new());
    let table = OrderedMutex::<Vec<u64>, levels::CmdTable>::new(Vec::new());
    let mut token = LockToken::root();
    let (_free_lists, mut under_pool) = pool.lock(&mut token);
    let (_entries, _) = table.lock(&mut under_pool);
}
