//! Two locks of one level are never nested (here: two threads' SGV stashes).
use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::locks::OrderedMutex;

fn main() {
    let mine = OrderedMutex::<(), levels::SgvStash>::new(());
    let other = OrderedMutex::<(), levels::SgvStash>::new(());
    let mut token = LockToken::root();
    let (_a, mut inner) = mine.lock(&mut token);
    let (_b, _) = other.lock(&mut inner);
}
