//! A guest's port accesses and DMA transfers to fw_cfg, over a small
//! memory that holds its access structures and buffers. The input's
//! layout is in vm_run::devices::fw_cfg::fuzz::accesses.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vm_run::devices::fw_cfg::fuzz::accesses(data);
});
