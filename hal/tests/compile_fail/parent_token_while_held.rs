//! While a guard taken with a token lives, the parent token stays borrowed: it cannot be used
//! to take a lower lock behind the guard's back.
use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::locks::OrderedMutex;

fn main() {
    let pool = OrderedMutex::<u32, levels::SgvPool>::new(0);
    let table = OrderedMutex::<u32, levels::CmdTable>::new(0);
    let mut token = LockToken::root();
    let (free_lists, _) = pool.lock(&mut token);
    let (_entries, _) = table.lock(&mut token);
    drop(free_lists);
}
