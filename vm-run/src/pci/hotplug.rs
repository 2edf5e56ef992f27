//! ACPI PCI hotplug of the root bus, as QEMU's PIIX4 board does it and
//! Linux's acpiphp drives it: how a received guest's NIC gets a new MAC.
//! A running virtio-net driver never reads its MAC again, so vm-run asks
//! the guest to eject the NIC, and once it has, plugs the same function
//! back as a new one, with the new MAC.
//!
//! Each slot that may be unplugged is `\_SB.PCI0.Sxx` in the DSDT (_ADR,
//! _SUN, _EJ0), and three dwords at [`PORT_BASE`] say what changed:
//! `UP` (slots plugged in, cleared by reading it), `DOWN` (slots vm-run
//! asks the guest to eject) and `EJ` (the guest writes a slot's bit there
//! from _EJ0, once it has let go of it). The Generic Event Device's
//! interrupt [`GSI`] makes the guest run `\_SB.PCI0.PCNT`, which notifies
//! each slot: 1 (device check) for UP, 3 (eject request) for DOWN.

use std::sync::{Arc, Mutex};

use acpi_tables::aml::{
    And, Device, Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, If, Local,
    Method, Name, Notify, OpRegion, OpRegionSpace, Path, Store, Zero,
};
use acpi_tables::Aml;

use super::root::PciRoot;
use crate::devices::BusDevice;

/// Where the registers are: QEMU's ports, free on this board too.
pub const PORT_BASE: u16 = 0xae00;
pub const PORT_LEN: u16 = 12;
const UP: u64 = 0;
const DOWN: u64 = 4;
const EJ: u64 = 8;
/// The GED's interrupt for hotplug events (vmgenid has 11).
pub const GSI: u32 = 10;
const NOTIFY_DEVICE_CHECK: u8 = 1;
const NOTIFY_EJECT_REQUEST: u8 = 3;

/// The slots' objects, the register region and PCNT, for `\_SB.PCI0`.
pub fn aml(slots: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let (base, len) = (u64::from(PORT_BASE), u64::from(PORT_LEN));
    OpRegion::new("PCHP".into(), OpRegionSpace::SystemIO, &base, &len).to_aml_bytes(&mut out);
    Field::new(
        "PCHP".into(),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![
            FieldEntry::Named(*b"PCIU", 32),
            FieldEntry::Named(*b"PCID", 32),
            FieldEntry::Named(*b"PCEJ", 32),
        ],
    )
    .to_aml_bytes(&mut out);
    let (pciu, pcid, pcej) = (Path::new("PCIU"), Path::new("PCID"), Path::new("PCEJ"));
    for &slot in slots {
        let (adr, sun, bit) = ((slot as u32) << 16, slot as u32, 1u32 << slot);
        let eject = Store::new(&pcej, &bit);
        let ej0 = Method::new("_EJ0".into(), 1, false, vec![&eject]);
        let (n_adr, n_sun) = (
            Name::new("_ADR".into(), &adr),
            Name::new("_SUN".into(), &sun),
        );
        Device::new(slot_name(slot).as_str().into(), vec![&n_adr, &n_sun, &ej0])
            .to_aml_bytes(&mut out);
    }
    // PCNT: Local0 = PCIU, Local1 = PCID, then per slot
    // If (Local0 & bit) Notify (Sxx, 1); If (Local1 & bit) Notify (Sxx, 3).
    let (up, down) = (Local(0), Local(1));
    let read_up = Store::new(&up, &pciu);
    let read_down = Store::new(&down, &pcid);
    let names: Vec<Path> = slots
        .iter()
        .map(|&s| Path::new(slot_name(s).as_str()))
        .collect();
    let bits: Vec<u32> = slots.iter().map(|&s| 1u32 << s).collect();
    let (check, eject) = (NOTIFY_DEVICE_CHECK, NOTIFY_EJECT_REQUEST);
    // Zero as the target: the result is only tested.
    let none = Zero {};
    let tests: Vec<(And, And)> = bits
        .iter()
        .map(|b| (And::new(&none, &up, b), And::new(&none, &down, b)))
        .collect();
    let notifies: Vec<(Notify, Notify)> = names
        .iter()
        .map(|n| (Notify::new(n, &check), Notify::new(n, &eject)))
        .collect();
    let ifs: Vec<(If, If)> = tests
        .iter()
        .zip(&notifies)
        .map(|((t_up, t_down), (n_up, n_down))| {
            (If::new(t_up, vec![n_up]), If::new(t_down, vec![n_down]))
        })
        .collect();
    let mut body: Vec<&dyn Aml> = vec![&read_up, &read_down];
    for (a, b) in &ifs {
        body.push(a);
        body.push(b);
    }
    Method::new("PCNT".into(), 0, true, body).to_aml_bytes(&mut out);
    out
}

fn slot_name(slot: usize) -> String {
    format!("S{slot:02X}_")
}

/// The registers, and what an eject does: the function is plugged back
/// as new, and the guest told so if it was asked to let go of it.
pub struct Hotplug {
    root: Arc<Mutex<PciRoot>>,
    /// The slots the DSDT calls ejectable: the only ones an EJ write acts on.
    slots: u32,
    up: u32,
    down: u32,
    /// Pulses the GED's interrupt.
    raise: Box<dyn Fn() + Send>,
}

impl Hotplug {
    /// `slots` as given to [`aml`].
    pub fn new(root: Arc<Mutex<PciRoot>>, slots: &[usize], raise: Box<dyn Fn() + Send>) -> Self {
        Hotplug {
            root,
            slots: slots.iter().fold(0, |m, s| m | 1 << s),
            up: 0,
            down: 0,
            raise,
        }
    }

    /// Asks the guest to eject the function in `slot`; it comes back new.
    pub fn replug(&mut self, slot: usize) {
        self.down |= 1 << slot;
        (self.raise)();
    }

    /// Whether a replug has not gone all the way round: the guest has not
    /// ejected the function yet, or not yet read that it is back.
    pub fn pending(&self) -> bool {
        self.up | self.down != 0
    }

    fn ejected(&mut self, bits: u32) {
        // A guest that writes other bits does not get to reset its disks.
        let bits = bits & self.slots;
        let mut root = self.root.lock().unwrap_or_else(|e| e.into_inner());
        for slot in (0..32).filter(|s| bits & 1 << s != 0) {
            root.replug(slot);
        }
        drop(root);
        // A slot the guest let go of on its own stays as it is now: new,
        // and found again if the guest rescans the bus.
        let asked = bits & self.down;
        self.down &= !bits;
        if asked != 0 {
            self.up |= asked;
            (self.raise)();
        }
    }
}

impl BusDevice for Hotplug {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            UP => std::mem::take(&mut self.up),
            DOWN => self.down,
            _ => 0,
        };
        let b = v.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = b.get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (EJ, [a, b, c, d]) = (offset, data) {
            self.ejected(u32::from_le_bytes([*a, *b, *c, *d]));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::pci::{ConfigSpace, PciDevice};

    /// A function that counts its replugs.
    struct Counted(ConfigSpace, Arc<AtomicUsize>);

    impl PciDevice for Counted {
        fn config(&self) -> &ConfigSpace {
            &self.0
        }
        fn config_mut(&mut self) -> &mut ConfigSpace {
            &mut self.0
        }
        fn bar_read(&mut self, _: usize, _: u64, _: &mut [u8]) {}
        fn bar_write(&mut self, _: usize, _: u64, _: &[u8]) {}
        fn replug(&mut self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn reg(h: &mut Hotplug, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        h.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn an_eject_asked_for_comes_back_new_and_is_announced() {
        let (replugs, raised) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut root = PciRoot::new(0xc000_0000);
        let dev = ConfigSpace::new(0x1af4, 0x1041, (2, 0, 0), 1);
        root.insert(3, Box::new(Counted(dev, replugs.clone())));
        // A disk, say: not ejectable.
        let other = Arc::new(AtomicUsize::new(0));
        let disk = ConfigSpace::new(0x1af4, 0x1042, (1, 0, 0), 1);
        root.insert(9, Box::new(Counted(disk, other.clone())));
        let r = raised.clone();
        let mut h = Hotplug::new(
            Arc::new(Mutex::new(root)),
            &[3, 4],
            Box::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }),
        );
        assert!(!h.pending());
        h.replug(3);
        assert!(h.pending());
        assert_eq!((reg(&mut h, UP), reg(&mut h, DOWN)), (0, 1 << 3));
        assert_eq!(raised.load(Ordering::SeqCst), 1);
        // The guest's _EJ0: the function is made new, the guest told.
        h.write(EJ, &(1u32 << 3).to_le_bytes());
        assert_eq!(replugs.load(Ordering::SeqCst), 1);
        assert_eq!(raised.load(Ordering::SeqCst), 2);
        assert_eq!(reg(&mut h, DOWN), 0);
        assert!(h.pending(), "UP not read yet");
        assert_eq!(reg(&mut h, UP), 1 << 3);
        assert_eq!(reg(&mut h, UP), 0, "reading UP clears it");
        assert!(!h.pending());
        // An eject nobody asked for: made new, not announced; a slot
        // without a function, one not ejectable, and odd writes change
        // nothing.
        h.write(EJ, &(1u32 << 3 | 1 << 4 | 1 << 9).to_le_bytes());
        h.write(EJ, &[0xff]);
        h.write(UP, &u32::MAX.to_le_bytes());
        assert_eq!(replugs.load(Ordering::SeqCst), 2);
        assert_eq!(other.load(Ordering::SeqCst), 0);
        assert_eq!(raised.load(Ordering::SeqCst), 2);
        assert_eq!((reg(&mut h, UP), reg(&mut h, DOWN)), (0, 0));
    }

    #[test]
    fn aml_describes_only_the_slots_given() {
        let a = aml(&[2, 5]);
        let has = |s: &[u8]| a.windows(s.len()).any(|w| w == s);
        assert!(has(b"S02_") && has(b"S05_") && !has(b"S03_"));
        assert!(has(b"PCIU") && has(b"PCID") && has(b"PCEJ") && has(b"PCNT"));
        // The region: SystemIO (1) at PORT_BASE, PORT_LEN bytes.
        let mut region = b"PCHP\x01\x0b".to_vec();
        region.extend_from_slice(&PORT_BASE.to_le_bytes());
        region.extend_from_slice(&[0x0a, PORT_LEN as u8]);
        assert!(has(&region), "{a:x?}");
    }
}
