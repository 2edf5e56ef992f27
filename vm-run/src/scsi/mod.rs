//! SCSI devices as command sets, apart from any transport: a device takes
//! a CDB and answers with data or sense (virtio/scsi.rs carries them).

pub mod cdrom;
pub mod sense;
