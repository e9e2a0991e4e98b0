//! The lock hierarchy on the product's own types, enforced by the compiler: each file under
//! `compile_fail/` takes the real `SgvPool`, `BufferTable` and `LeaseTable` (not stand-ins) in an
//! order docs/locking.md forbids and must fail to build, for the reason its `.stderr` records.
//!
//! The expected output depends on the compiler's wording, so the toolchain is pinned
//! (`rust-toolchain.toml`). After a deliberate change, or a toolchain bump, regenerate with
//! `TRYBUILD=overwrite cargo test -p scst-accel-handler --test compile_fail` and read the diff:
//! the error must still be the `LockBefore` bound (or the borrow of the token) named in each
//! file's comment.

#[test]
fn product_lock_order_violations_do_not_compile() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/compile_fail/*.rs");
}
