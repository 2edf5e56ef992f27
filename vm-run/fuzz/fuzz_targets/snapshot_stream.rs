//! The snapshot stream as vm-receive reads it: header, CONF, and every
//! section after it into a small guest memory. The input is the stream
//! (vm_run::board::snapshot::fuzz::stream).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vm_run::board::snapshot::fuzz::stream(data);
});
