//! A guest's frame to the DHCP responder; the first byte picks whether
//! the host has a DNS server (vm_run::nic::dhcp::fuzz::frame).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vm_run::nic::dhcp::fuzz::frame(data);
});
