//! A guest that controls every byte of a small memory and the queue's
//! configuration, against a virtio-blk device on an in-memory disk. The
//! input's layout is in vm_run::virtio::fuzz::block_queue.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vm_run::virtio::fuzz::block_queue(data);
});
