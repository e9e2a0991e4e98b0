//! AFL++ binary of the `loopback` target (built by `fuzz/run.sh` with `cargo afl build --features afl`).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        scst_accel_fuzz::loopback::target(data);
    });
}
