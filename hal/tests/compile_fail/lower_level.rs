//! A lock of a lower level while holding a higher one: the simulated board's state while
//! holding the IOMMU's page table (an RwLock: read guards are checked like write guards).
use scst_accel_hal::locks::levels;
use scst_accel_hal::locks::LockToken;
use scst_accel_hal::locks::OrderedMutex;
use scst_accel_hal::locks::OrderedRwLock;

fn main() {
    let table = OrderedRwLock::<u32, levels::IommuTable>::new(0);
    let state = OrderedMutex::<u32, levels::SimState>::new(0);
    let mut token = LockToken::root();
    let (_mappings, mut inner) = table.read(&mut token);
    let (_registers, _) = state.lock(&mut inner);
}
