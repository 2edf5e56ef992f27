//! A whole qcow2 image file, through everything that reads it before and
//! after it is trusted: the probe, the header check, the refcount walk of
//! `vm-img check`, and imago's reads and writes (on a read-only open and
//! on a writable copy). What it does is in vm_img::qcow2::fuzz; the seeds
//! are in tests/qcow2-corpus.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vm_img::qcow2::fuzz::open_image(data);
});
