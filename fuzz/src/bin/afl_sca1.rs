//! AFL++ binary of the `sca1` target (built by `fuzz/run.sh` with `cargo afl build --features afl`).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        scst_accel_fuzz::sca1::target(data);
    });
}
