//! How devices interrupt the guest: the handle they are given at build
//! time, so that a device never reaches into `x86/` for it. Edges on ISA
//! lines (RTC, GED), INTx levels, and MSI routes with their irqfds all go
//! through KVM's in-kernel irqchip, which `x86/irqchip.rs` creates.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_irqchip, kvm_irq_routing_msi, KvmIrqRouting,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
    KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;

use crate::error::{Error, Result};

/// An edge on an ISA interrupt line (the RTC's, the GED's): up, then
/// down. Fails only if the irqchip is gone, and then so is the guest.
pub fn pulse(vm: &VmFd, gsi: u32) -> std::result::Result<(), kvm_ioctls::Error> {
    vm.set_irq_line(gsi, true)?;
    vm.set_irq_line(gsi, false)
}

/// The KVM GSI routing table: the irqchip pins as KVM sets them up by
/// default (GSI 0-15 on both PICs and the IOAPIC, 16-23 on the IOAPIC),
/// plus one MSI route per MSI-X vector. KVM takes the table only whole.
pub struct GsiRouter {
    vm: Arc<VmFd>,
    routes: Mutex<Routes>,
}

struct Routes {
    table: BTreeMap<u32, Vec<kvm_irq_routing_entry>>,
    next: u32,
}

/// IOAPIC pins; GSIs from here on are ours to hand out for MSIs.
pub const IOAPIC_PINS: u32 = 24;
/// KVM's limit is 4096 routes; a guest with a few devices needs far fewer.
const MAX_GSI: u32 = 1024;

impl GsiRouter {
    pub fn new(vm: Arc<VmFd>) -> Self {
        let mut table = BTreeMap::new();
        for gsi in 0..IOAPIC_PINS {
            let pin = |chip, pin| {
                let mut e = kvm_irq_routing_entry {
                    gsi,
                    type_: KVM_IRQ_ROUTING_IRQCHIP,
                    ..Default::default()
                };
                e.u.irqchip = kvm_irq_routing_irqchip { irqchip: chip, pin };
                e
            };
            let mut v = vec![pin(KVM_IRQCHIP_IOAPIC, gsi)];
            if gsi < 16 {
                let pic = if gsi < 8 {
                    KVM_IRQCHIP_PIC_MASTER
                } else {
                    KVM_IRQCHIP_PIC_SLAVE
                };
                v.push(pin(pic, gsi % 8));
            }
            table.insert(gsi, v);
        }
        GsiRouter {
            vm,
            routes: Mutex::new(Routes {
                table,
                next: IOAPIC_PINS,
            }),
        }
    }

    pub fn vm(&self) -> &VmFd {
        &self.vm
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A GSI of our own, not routed anywhere until set_msi.
    pub fn allocate(&self) -> Result<u32> {
        let mut r = self.lock();
        if r.next >= MAX_GSI {
            return Err(Error::Unavailable(format!(
                "out of interrupt routes ({MAX_GSI})"
            )));
        }
        r.next += 1;
        Ok(r.next - 1)
    }

    /// Routes `gsi` to the MSI the guest programmed, and hands KVM the
    /// whole table.
    pub fn set_msi(&self, gsi: u32, address: u64, data: u32) -> Result<()> {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi = kvm_irq_routing_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        let mut r = self.lock();
        r.table.insert(gsi, vec![e]);
        self.commit(&r)
    }

    /// Installs the table; needed once at start when set_msi never runs.
    pub fn install(&self) -> Result<()> {
        self.commit(&self.lock())
    }

    fn commit(&self, r: &Routes) -> Result<()> {
        let entries: Vec<_> = r.table.values().flatten().copied().collect();
        let mut routing = KvmIrqRouting::new(entries.len())
            .map_err(|e| Error::Setup(format!("KVM_SET_GSI_ROUTING: {e:?}")))?;
        routing.as_mut_slice().copy_from_slice(&entries);
        self.vm
            .set_gsi_routing(&routing)
            .map_err(|e| Error::Kvm("KVM_SET_GSI_ROUTING".into(), e))
    }
}
