//! A control socket's bytes as vm-run reads them: frames, requests, and
//! the replies vm-ctl decodes (vm_run::control::proto::fuzz::frames).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vm_run::control::proto::fuzz::frames(data);
});
