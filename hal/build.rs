//! `cfg(lock_check)`: the runtime half of the lock checker (src/locks/runtime.rs) is compiled
//! in debug and test builds, and in release builds with the `lock-check` feature.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(lock_check)");
    println!("cargo::rerun-if-changed=build.rs");
    let debug = std::env::var_os("CARGO_CFG_DEBUG_ASSERTIONS").is_some();
    let feature = std::env::var_os("CARGO_FEATURE_LOCK_CHECK").is_some();
    if debug || feature {
        println!("cargo::rustc-cfg=lock_check");
    }
}
