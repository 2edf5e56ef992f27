//! KVM's in-kernel interrupt controllers (PIC, IOAPIC, LAPICs) and PIT:
//! they are faster than anything in user space and save no state we would
//! have to keep ourselves.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_irqchip, kvm_irq_routing_msi, kvm_pit_config,
    KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{VcpuFd, VmFd};

use crate::error::{Error, Result};
use crate::memory::{KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

pub fn create(vm: &VmFd) -> Result<()> {
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
        .map_err(|e| Error::Kvm("KVM_SET_IDENTITY_MAP_ADDR".into(), e))?;
    vm.set_tss_address(KVM_TSS_ADDR)
        .map_err(|e| Error::Kvm("KVM_SET_TSS_ADDR".into(), e))?;
    vm.create_irq_chip()
        .map_err(|e| Error::Kvm("KVM_CREATE_IRQCHIP".into(), e))?;
    // The dummy speaker port keeps port 0x61 in the kernel as well.
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| Error::Kvm("KVM_CREATE_PIT2".into(), e))
}

/// An edge on an ISA interrupt line (the RTC's, the GED's): up, then
/// down. Fails only if the irqchip is gone, and then so is the guest.
pub fn pulse(vm: &VmFd, gsi: u32) -> std::result::Result<(), kvm_ioctls::Error> {
    vm.set_irq_line(gsi, true)?;
    vm.set_irq_line(gsi, false)
}

/// Wires LINT0 to the PIC (ExtINT) and LINT1 to NMI, as a PC's firmware
/// leaves them, so the guest gets PIC interrupts before it sets up the
/// IOAPIC.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<()> {
    let mut lapic = vcpu
        .get_lapic()
        .map_err(|e| Error::Kvm("KVM_GET_LAPIC".into(), e))?;
    let set_mode = |regs: &mut [std::os::raw::c_char], offset: usize, mode: u32| {
        let mut b = [0u8; 4];
        for (i, x) in b.iter_mut().enumerate() {
            *x = regs[offset + i] as u8;
        }
        let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
        for (i, x) in v.to_le_bytes().iter().enumerate() {
            regs[offset + i] = *x as std::os::raw::c_char;
        }
    };
    set_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic)
        .map_err(|e| Error::Kvm("KVM_SET_LAPIC".into(), e))
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
