//! A token is not Copy: once moved (to a function that holds it), it cannot take a lock.
use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::locks::OrderedMutex;

fn keep(token: LockToken<'_, levels::Root>) -> LockToken<'_, levels::Root> {
    token
}

fn main() {
    let table = OrderedMutex::<u32, levels::CmdTable>::new(0);
    let mut token = LockToken::root();
    let _kept = keep(token);
    let (_entries, _) = table.lock(&mut token);
}
