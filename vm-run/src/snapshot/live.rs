//! Live migration (`vm-send -l`): the pages written while the guest runs,
//! as KVM's dirty log (the vCPUs' writes) and the guest memory bitmaps
//! (the devices' writes, memory.rs) tell them, so that pre-copy rounds
//! send memory while the guest goes on and the final pause sends only
//! what changed since.

use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::error::KvmError;
use crate::memory::{self, GuestMemory};

/// Dirty pages, one bitmap (bit n = page n, in u64 words) per region.
pub type Dirty = Vec<Vec<u64>>;

pub fn pages(d: &Dirty) -> usize {
    d.iter()
        .flat_map(|r| r.iter())
        .map(|w| w.count_ones() as usize)
        .sum()
}

pub fn merge(into: &mut Dirty, more: &Dirty) {
    for (a, b) in into.iter_mut().zip(more) {
        for (x, y) in a.iter_mut().zip(b) {
            *x |= y;
        }
    }
}

/// Dirty-page logging, on while this lives.
pub struct DirtyLog<'a> {
    vm: &'a VmFd,
    mem: &'static GuestMemory,
}

impl<'a> DirtyLog<'a> {
    /// Turns logging on; what was written before counts as sent by the
    /// first round, which sends everything.
    pub fn start(vm: &'a VmFd, mem: &'static GuestMemory) -> Result<Self, KvmError> {
        for region in mem.iter() {
            // MmapRegion's whole bitmap, not the region trait's slice of it.
            (**region).bitmap().reset();
        }
        memory::register(vm, mem, true)
            .map_err(|e| KvmError("KVM_SET_USER_MEMORY_REGION (dirty-page logging)", e))?;
        Ok(DirtyLog { vm, mem })
    }

    /// The pages written since the last call (or since `start`).
    pub fn take(&self) -> Result<Dirty, KvmError> {
        let mut all = Vec::new();
        for (slot, region) in self.mem.iter().enumerate() {
            let mut kvm = self
                .vm
                .get_dirty_log(slot as u32, region.len() as usize)
                .map_err(|e| KvmError("KVM_GET_DIRTY_LOG", e))?;
            let devices = (**region).bitmap().get_and_reset();
            for (k, d) in kvm.iter_mut().zip(devices) {
                *k |= d;
            }
            all.push(kvm);
        }
        Ok(all)
    }
}

impl Drop for DirtyLog<'_> {
    fn drop(&mut self) {
        // Logging costs the guest a write fault per page and round; a
        // guest that goes on (a failed send) should not pay it. Should it
        // fail, logging just stays on.
        let _ = memory::register(self.vm, self.mem, false);
    }
}
