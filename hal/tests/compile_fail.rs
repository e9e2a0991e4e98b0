//! The lock hierarchy is enforced by the compiler: each file under `compile_fail/` must fail to
//! build, for the reason its `.stderr` records (a missing `LockBefore` bound, or a moved
//! token). Regenerate the expected output with `TRYBUILD=overwrite cargo test -p
//! scst-accel-hal --test compile_fail` after a deliberate change, and read the diff.

#[test]
fn lock_order_violations_do_not_compile() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/compile_fail/*.rs");
}
