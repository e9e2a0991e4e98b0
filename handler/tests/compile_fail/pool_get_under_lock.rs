//! A blocking call under a lock, on the real types: a pool `get` may map a new buffer (a VFIO
//! ioctl), so it takes the root token, the proof that nothing is held; while the pool's lists
//! are held that token is borrowed by their guard. Expected: E0499 (the root token borrowed
//! twice). The scst_user ioctls are not typed this way (their transports take no token): the
//! runtime check covers them (every ioctl asserts that no lock is held).
use scst_accel_dma::SgvPool;
use scst_accel_hal::locks::LockToken;

fn main() {
    let pool = SgvPool::new(None, None, 1 << 20);
    let mut token = LockToken::root();
    let (idle, _under_pool) = pool.idle_lists(&mut token);
    let _buffer = pool.get(&mut token, 4096);
    drop(idle);
}
