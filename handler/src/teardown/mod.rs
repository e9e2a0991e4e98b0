//! Teardown primitives: drain before unmap (architecture.md §5).
//!
//! The handler's shutdown runs one sequence, each step bounded and logged with counts. These
//! types carry the invariants the steps rest on; the sequence itself is the caller's:
//!
//! | step (architecture.md §5) | primitive |
//! |---|---|
//! | 1. stop intake: new commands answered BUSY, never dropped | [`Drain::close`], then [`DrainDoor::reserve`] and [`DrainDoor::admit`] (a worker's, per batch) or [`Drain::try_enter`] refusing |
//! | 2. quiesce: wait, bounded, for the commands inside | [`Drain::wait_idle`] → [`Remaining`] on timeout |
//! | 3. escalate: after a reset proved no more DMA, the device's leases end | [`LeaseTable::revoke_all`] |
//! | 4. answer everything: late completions are harmless | [`LeaseTable::release`] after revoke is a counted no-op |
//! | 5. release memory: unmap only with no lease outstanding | [`LeaseTable::wait_released`], [`LeaseTable::unmap_guard`] |
//!
//! Both are built on the crate's sync facade, so `tests/loom_teardown.rs` model-checks them
//! (`RUSTFLAGS="--cfg loom"`, see `.ci/run`).

mod drain;
mod lease;

pub use drain::Admitted;
pub use drain::Drain;
pub use drain::DrainDoor;
pub use drain::InFlight;
pub use drain::InFlightOwned;
pub use drain::Remaining;
pub use lease::Lease;
pub use lease::LeaseStats;
pub use lease::LeaseTable;
pub use lease::Outstanding;
pub use lease::Refused;
pub use lease::UnmapPermit;
