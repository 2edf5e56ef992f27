//! A guest that controls every byte of a small memory and both queues'
//! configuration, against virtio-net with a socket pair as its tap: frames
//! sent (with checksum and TSO offloads, to the DHCP responder) and
//! frames received (mergeable buffers or not). The input's layout is in
//! vm_run::virtio::fuzz::net_queues.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vm_run::virtio::fuzz::net_queues(data);
});
