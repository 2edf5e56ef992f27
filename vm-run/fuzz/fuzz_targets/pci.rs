//! A guest's config cycles and BAR window accesses on the root bus: the
//! host bridge and a virtio function (BAR sizing and moves, MSI-X, the
//! configuration access window). The input's layout is in
//! vm_run::pci::root::fuzz::accesses.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vm_run::pci::root::fuzz::accesses(data);
});
