//! AFL++ binary of the `tcmu_netlink` target (built by `fuzz/run.sh` with `cargo afl build --features afl`).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        scst_accel_fuzz::tcmu_netlink::target(data);
    });
}
