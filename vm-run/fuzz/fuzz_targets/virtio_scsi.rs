//! A guest that controls every byte of a small memory and the queue's
//! configuration, against virtio-scsi's CD-ROM on an in-memory image: the
//! control and request queues, every command the drive knows and the
//! ones it does not. The input's layout is in
//! vm_run::virtio::fuzz::scsi_queue.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vm_run::virtio::fuzz::scsi_queue(data);
});
