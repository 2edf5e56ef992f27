//! ACPI tables: enough for Linux to find every vCPU (MADT), to power off
//! through the PM1 control register (FADT + \_S5 in the DSDT), and later
//! to learn of devices. Built with rust-vmm's acpi_tables, written where a
//! PC's firmware leaves them so a kernel that scans for the RSDP finds it.

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Arg, Device, EISAName, Equal, If, Interrupt, Method,
    MethodCall, Name, Notify, Package, Path, ResourceTemplate, Scope, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress};

use crate::devices::acpi_pm::{
    PM1_CNT_BLK, PM1_CNT_LEN, PM1_EVT_BLK, PM1_EVT_LEN, SCI_IRQ, SLP_TYP_S5,
};
use crate::devices::{rtc, vmgenid};
use crate::error::{Error, Result};
use crate::memory::{
    GuestMemory, ACPI_START, BIOS_END, IOAPIC_ADDR, LAPIC_ADDR, PCI_MMIO_END, PCI_MMIO_START,
};
use crate::pci::hotplug;
use crate::pci::root::{self, CONFIG_PORT, CONFIG_PORT_LEN};

const OEM_ID: [u8; 6] = *b"VMRUN ";
const OEM_TABLE_ID: [u8; 8] = *b"VMRUNTBL";
const OEM_REVISION: u32 = 1;
/// FADT IA-PC boot architecture flags: no VGA; the 8042 bit stays clear
/// so Linux does not spend time probing a keyboard. The CMOS RTC is there
/// (devices/rtc.rs): IAPC_CMOS_RTC_NOT_PRESENT (bit 5) stays clear, or
/// Linux would not register rtc_cmos.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;

const MADT_LAPIC: u8 = 0;
const MADT_IOAPIC: u8 = 1;
const MADT_INT_OVERRIDE: u8 = 2;
/// MPS INTI flags: active high, level triggered. The SCI is a level
/// interrupt, and vm-run drives it active high as QEMU does.
const INTI_ACTIVE_HIGH_LEVEL: u16 = 0b1101;
const MADT_PCAT_COMPAT: u32 = 1;

/// The tables laid out one after another from `base`: DSDT, FADT, MADT,
/// XSDT, each 16-byte aligned, and where each landed (offsets into `blob`).
struct Laid {
    blob: Vec<u8>,
    fadt: usize,
    xsdt: usize,
    /// The XSDT's entries: offsets of the FADT and the MADT.
    entries: Vec<usize>,
}

/// Offsets of the FADT's DSDT pointers, and where an SDT keeps its
/// checksum and length.
const FADT_DSDT: usize = 40;
const FADT_X_DSDT: usize = 140;
const SDT_CHECKSUM: usize = 9;
const SDT_HEADER_LEN: usize = 36;
const RSDP_XSDT: usize = 24;
const RSDP_CHECKSUM: usize = 8;
const RSDP_EXT_CHECKSUM: usize = 32;
/// The ACPI 1.0 part of the RSDP, which its first checksum covers.
const RSDP_V1_LEN: usize = 20;

fn lay_out(vcpus: u8, hotplug: &[usize], base: u64) -> Laid {
    let mut blob = Vec::new();
    let mut place = |bytes: &[u8]| -> usize {
        let at = blob.len();
        blob.extend_from_slice(bytes);
        blob.resize(align(blob.len() as u64) as usize, 0);
        at
    };
    let dsdt = place(dsdt(hotplug).as_slice());
    let fadt = place(&bytes(&fadt(base + dsdt as u64)));
    let madt = place(madt(vcpus).as_slice());
    let mut x = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    x.add_entry(base + fadt as u64);
    x.add_entry(base + madt as u64);
    let xsdt = place(&bytes(&x));
    Laid {
        blob,
        fadt,
        xsdt,
        entries: vec![fadt, madt],
    }
}

/// Builds the tables and writes them at ACPI_START; returns the RSDP's
/// address. The functions in `hotplug` slots may be unplugged.
pub fn write_tables(mem: &GuestMemory, vcpus: u8, hotplug: &[usize]) -> Result<u64> {
    let rsdp_addr = ACPI_START;
    let base = align(rsdp_addr + Rsdp::len() as u64);
    let laid = lay_out(vcpus, hotplug, base);
    if base + laid.blob.len() as u64 > BIOS_END {
        return Err(Error::Setup("ACPI tables do not fit below 1 MiB".into()));
    }
    mem.write_slice(&laid.blob, GuestAddress(base))
        .map_err(|e| Error::Setup(format!("ACPI tables: {e}")))?;
    mem.write_slice(
        &bytes(&Rsdp::new(OEM_ID, base + laid.xsdt as u64)),
        GuestAddress(rsdp_addr),
    )
    .map_err(|e| Error::Setup(format!("ACPI RSDP: {e}")))?;
    Ok(rsdp_addr)
}

/// The same tables as fw_cfg files for a BIOS to install (QEMU's way):
/// `etc/acpi/tables` with every pointer an offset into itself,
/// `etc/acpi/rsdp`, and `etc/table-loader`, the commands that place both
/// in guest memory (the RSDP in the F segment, where an OS scans for it),
/// add the tables' address to each pointer and fix the checksums.
pub struct FirmwareTables {
    pub tables: Vec<u8>,
    pub rsdp: Vec<u8>,
    pub loader: Vec<u8>,
}

pub const FILE_TABLES: &str = "etc/acpi/tables";
pub const FILE_RSDP: &str = "etc/acpi/rsdp";
pub const FILE_LOADER: &str = "etc/table-loader";

pub fn firmware_tables(vcpus: u8, hotplug: &[usize]) -> FirmwareTables {
    use crate::devices::fw_cfg::loader;
    let laid = lay_out(vcpus, hotplug, 0);
    let rsdp = bytes(&Rsdp::new(OEM_ID, laid.xsdt as u64));
    let mut cmds = vec![
        loader::allocate(FILE_RSDP, 16, loader::ZONE_FSEG),
        loader::allocate(FILE_TABLES, 64, loader::ZONE_HIGH),
    ];
    let ptr = |dest: &str, offset: usize, size: u8| {
        loader::add_pointer(dest, FILE_TABLES, offset as u32, size)
    };
    cmds.push(ptr(FILE_TABLES, laid.fadt + FADT_DSDT, 4));
    cmds.push(ptr(FILE_TABLES, laid.fadt + FADT_X_DSDT, 8));
    for (i, _) in laid.entries.iter().enumerate() {
        cmds.push(ptr(FILE_TABLES, laid.xsdt + SDT_HEADER_LEN + 8 * i, 8));
    }
    cmds.push(ptr(FILE_RSDP, RSDP_XSDT, 8));
    // Checksums last, over the patched pointers.
    for t in [laid.fadt, laid.xsdt] {
        let len = sdt_len(&laid.blob, t);
        cmds.push(loader::add_checksum(
            FILE_TABLES,
            (t + SDT_CHECKSUM) as u32,
            t as u32,
            len as u32,
        ));
    }
    cmds.push(loader::add_checksum(
        FILE_RSDP,
        RSDP_CHECKSUM as u32,
        0,
        RSDP_V1_LEN as u32,
    ));
    cmds.push(loader::add_checksum(
        FILE_RSDP,
        RSDP_EXT_CHECKSUM as u32,
        0,
        rsdp.len() as u32,
    ));
    FirmwareTables {
        tables: laid.blob,
        rsdp,
        loader: cmds.concat(),
    }
}

/// The length field of the SDT at `at` in `blob`.
fn sdt_len(blob: &[u8], at: usize) -> usize {
    blob.get(at + 4..at + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, |b| u32::from_le_bytes(b) as usize)
}

fn align(addr: u64) -> u64 {
    (addr + 15) & !15
}

fn bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// AML already encoded, to nest in a scope.
struct Encoded(Vec<u8>);

impl Aml for Encoded {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

fn dsdt(hotplug: &[usize]) -> Sdt {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    // \_S5: the sleep type value the kernel writes to PM1_CNT to power off.
    let s5 = Name::new(
        Path::new("_S5_"),
        &Package::new(vec![&SLP_TYP_S5, &0u8, &0u8, &0u8]),
    );
    dsdt.append_slice(&bytes(&s5));
    let pci0 = Encoded(pci_root(hotplug));
    let vmgenid = Encoded(vmgenid::aml());
    let ged = Encoded(ged());
    dsdt.append_slice(&bytes(&Scope::new(
        "_SB_".into(),
        vec![&pci0, &vmgenid, &ged],
    )));
    dsdt
}

/// The Generic Event Device (ACPI0013, Linux's evged.c): an edge on one
/// of its interrupts makes the kernel run `_EVT` with its number, with no
/// register or SCI handshake. Its events: a new VM generation ID
/// (vmgenid.rs), and PCI hotplug (hotplug.rs).
fn ged() -> Vec<u8> {
    let hid = Name::new("_HID".into(), &"ACPI0013");
    let uid = Name::new("_UID".into(), &0u8);
    let id_irq = Interrupt::new(true, true, false, false, vmgenid::GSI);
    let hp_irq = Interrupt::new(true, true, false, false, hotplug::GSI);
    let crs = Name::new(
        "_CRS".into(),
        &ResourceTemplate::new(vec![&id_irq, &hp_irq]),
    );
    let (vgen, changed) = (Path::new("\\_SB_.VGEN"), vmgenid::NOTIFY_CHANGED);
    let notify = Notify::new(&vgen, &changed);
    let (id_gsi, hp_gsi) = (vmgenid::GSI, hotplug::GSI);
    let is_id = Equal::new(&Arg(0), &id_gsi);
    let on_id = If::new(&is_id, vec![&notify]);
    let pcnt = MethodCall::new(Path::new("\\_SB_.PCI0.PCNT"), vec![]);
    let is_hp = Equal::new(&Arg(0), &hp_gsi);
    let on_hp = If::new(&is_hp, vec![&pcnt]);
    let evt = Method::new("_EVT".into(), 1, false, vec![&on_id, &on_hp]);
    bytes(&Device::new("GED_".into(), vec![&hid, &uid, &crs, &evt]))
}

/// The PCI root bridge: without it an ACPI kernel never scans bus 0. Its
/// resources are the bus, the config ports and the windows BARs may use;
/// its _PRT wires each slot's INTA# to an IOAPIC pin of its own
/// (root::intx_gsi), level-triggered and active low as PCI wants; the
/// hotplug slots and registers follow (hotplug.rs).
fn pci_root(hotplug: &[usize]) -> Vec<u8> {
    let bus = AddressSpace::<u16>::new_bus_number(0, 0);
    let cfg = IO::new(CONFIG_PORT, CONFIG_PORT, 1, CONFIG_PORT_LEN as u8);
    let io_low = AddressSpace::<u16>::new_io(0, CONFIG_PORT - 1, None);
    let io_high = AddressSpace::<u16>::new_io(CONFIG_PORT + CONFIG_PORT_LEN, 0xffff, None);
    let mmio = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO_START as u32,
        (PCI_MMIO_END - 1) as u32,
        None,
    );
    let crs = ResourceTemplate::new(vec![&bus, &cfg, &io_low, &io_high, &mmio]);
    let routes: Vec<(u32, u8, u8, u32)> = (1..root::SLOTS)
        .map(|slot| ((slot as u32) << 16 | 0xffff, 0, 0, root::intx_gsi(slot)))
        .collect();
    let entries: Vec<Package> = routes
        .iter()
        .map(|(addr, pin, source, gsi)| Package::new(vec![addr, pin, source, gsi]))
        .collect();
    let prt = Package::new(entries.iter().map(|p| p as &dyn Aml).collect());
    let (hid, zero) = (EISAName::new("PNP0A03"), 0u8);
    let (n_hid, n_adr, n_seg, n_uid, n_bbn) = (
        Name::new("_HID".into(), &hid),
        Name::new("_ADR".into(), &zero),
        Name::new("_SEG".into(), &zero),
        Name::new("_UID".into(), &zero),
        Name::new("_BBN".into(), &zero),
    );
    let n_crs = Name::new("_CRS".into(), &crs);
    let n_prt = Name::new("_PRT".into(), &prt);
    let slots = Encoded(hotplug::aml(hotplug));
    bytes(&Device::new(
        "PCI0".into(),
        vec![
            &n_hid, &n_adr, &n_seg, &n_uid, &n_bbn, &n_crs, &n_prt, &slots,
        ],
    ))
}

fn fadt(dsdt_addr: u64) -> acpi_tables::fadt::FADT {
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::Wbinvd)
        // PwrButton stays clear: the power button is the fixed-feature
        // one in PM1 (vm-ctl stop presses it).
        .flag(Flags::SlpButton)
        .flag(Flags::Headless);
    // No SMI command port: the platform is in ACPI mode from the start.
    // The 32-bit DSDT pointer too (the same address; the tables are below
    // 4 GiB): SeaBIOS reads only this one, and without the DSDT it probes
    // for a PS/2 keyboard that is not there, for seconds.
    b.dsdt = u32::try_from(dsdt_addr).unwrap_or(0).into();
    b.sci_int = (SCI_IRQ as u16).into();
    b.pm1a_evt_blk = u32::from(PM1_EVT_BLK).into();
    b.pm1a_cnt_blk = u32::from(PM1_CNT_BLK).into();
    b.pm1_evt_len = PM1_EVT_LEN;
    b.pm1_cnt_len = PM1_CNT_LEN;
    b.iapc_boot_arch = IAPC_VGA_NOT_PRESENT.into();
    // Where the RTC keeps the century: Linux's rtc_cmos reads it from here.
    b.century = rtc::CENTURY;
    b.finalize()
}

fn madt(vcpus: u8) -> Sdt {
    let mut madt = Sdt::new(*b"APIC", 44, 4, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    madt.write_u32(36, LAPIC_ADDR);
    madt.write_u32(40, MADT_PCAT_COMPAT);
    for id in 0..vcpus {
        // type, length, ACPI processor UID, APIC ID, flags (enabled)
        madt.append_slice(&[MADT_LAPIC, 8, id, id, 1, 0, 0, 0]);
    }
    let mut ioapic = vec![MADT_IOAPIC, 12, 0, 0];
    ioapic.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    ioapic.extend_from_slice(&0u32.to_le_bytes());
    madt.append_slice(&ioapic);
    // type, length, bus (ISA), source IRQ, GSI, flags
    let mut sci = vec![MADT_INT_OVERRIDE, 10, 0, SCI_IRQ as u8];
    sci.extend_from_slice(&SCI_IRQ.to_le_bytes());
    sci.extend_from_slice(&INTI_ACTIVE_HIGH_LEVEL.to_le_bytes());
    madt.append_slice(&sci);
    madt
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn checksum_ok(t: &[u8]) -> bool {
        t.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    fn read(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    #[test]
    fn tables_are_found_from_the_rsdp() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let rsdp = write_tables(&mem, 3, &[2]).unwrap();
        let r = read(&mem, rsdp, 36);
        assert_eq!(&r[..8], b"RSD PTR ");
        assert!(checksum_ok(&r[..20]) && checksum_ok(&r));
        let xsdt_addr = u64::from_le_bytes(r[24..32].try_into().unwrap());
        let x = read(
            &mem,
            xsdt_addr,
            u32_at(&read(&mem, xsdt_addr, 8), 4) as usize,
        );
        assert_eq!(&x[..4], b"XSDT");
        assert!(checksum_ok(&x));
        let mut sigs = Vec::new();
        for e in x[36..].chunks(8) {
            let addr = u64::from_le_bytes(e.try_into().unwrap());
            let len = u32_at(&read(&mem, addr, 8), 4) as usize;
            let t = read(&mem, addr, len);
            assert!(checksum_ok(&t), "{:?}", &t[..4]);
            sigs.push(String::from_utf8_lossy(&t[..4]).to_string());
            if &t[..4] == b"FACP" {
                // The century register, and no "CMOS RTC not present".
                assert_eq!(t[108], rtc::CENTURY);
                assert_eq!(u16::from_le_bytes([t[109], t[110]]) & 1 << 5, 0);
            }
            if &t[..4] == b"APIC" {
                let (mut at, mut kinds) = (44, Vec::new());
                while at < t.len() {
                    kinds.push(t[at]);
                    at += t[at + 1] as usize;
                }
                assert_eq!(
                    kinds,
                    [
                        MADT_LAPIC,
                        MADT_LAPIC,
                        MADT_LAPIC,
                        MADT_IOAPIC,
                        MADT_INT_OVERRIDE
                    ]
                );
            }
        }
        assert_eq!(sigs, ["FACP", "APIC"]);
    }

    #[test]
    fn dsdt_names_s5() {
        let d = dsdt(&[3]);
        let s = d.as_slice();
        let has = |n: &[u8]| s.windows(n.len()).any(|w| w == n);
        assert!(has(b"_S5_") && has(b"PCI0") && has(b"_PRT") && has(b"VGEN"));
        // Slot 3 may be ejected, and is named as acpiphp looks for it.
        assert!(has(b"S03_") && has(b"_EJ0") && has(b"PCNT") && has(b"ACPI0013\0"));
        assert!(!has(b"S02_"));
        // The GED's extended interrupt descriptors: consumer, edge, high.
        for gsi in [vmgenid::GSI, hotplug::GSI] {
            let mut irq = vec![0x89, 6, 0, 0b0011, 1];
            irq.extend_from_slice(&gsi.to_le_bytes());
            assert!(has(&irq), "{gsi}");
        }
        assert!(checksum_ok(s));
    }

    /// Runs `etc/table-loader` as SeaBIOS's romfile_loader.c does, with
    /// the RSDP put at `rsdp_at` and the tables at `tables_at`.
    fn run_loader(ft: &FirmwareTables, rsdp_at: u64, tables_at: u64) -> (Vec<u8>, Vec<u8>) {
        let (mut rsdp, mut tables) = (ft.rsdp.clone(), ft.tables.clone());
        let name =
            |b: &[u8]| String::from_utf8(b.split(|c| *c == 0).next().unwrap().to_vec()).unwrap();
        assert_eq!(ft.loader.len() % 128, 0);
        for e in ft.loader.chunks(128) {
            match u32_at(e, 0) {
                1 => {
                    let zone = e[64];
                    match name(&e[4..60]).as_str() {
                        FILE_RSDP => assert_eq!(zone, 2, "the RSDP goes in the F segment"),
                        FILE_TABLES => assert_eq!(zone, 1),
                        n => panic!("allocate {n}"),
                    }
                }
                2 => {
                    assert_eq!(name(&e[60..116]), FILE_TABLES);
                    let (off, size) = (u32_at(e, 116) as usize, e[120] as usize);
                    let dest = match name(&e[4..60]).as_str() {
                        FILE_RSDP => &mut rsdp,
                        _ => &mut tables,
                    };
                    let mut v = [0u8; 8];
                    v[..size].copy_from_slice(&dest[off..off + size]);
                    let v = (u64::from_le_bytes(v) + tables_at).to_le_bytes();
                    dest[off..off + size].copy_from_slice(&v[..size]);
                }
                3 => {
                    let (off, start, len) = (
                        u32_at(e, 60) as usize,
                        u32_at(e, 64) as usize,
                        u32_at(e, 68) as usize,
                    );
                    let file = match name(&e[4..60]).as_str() {
                        FILE_RSDP => &mut rsdp,
                        _ => &mut tables,
                    };
                    let sum = file[start..start + len]
                        .iter()
                        .fold(0u8, |a, b| a.wrapping_add(*b));
                    file[off] = file[off].wrapping_sub(sum);
                }
                c => panic!("command {c}"),
            }
        }
        let _ = rsdp_at;
        (rsdp, tables)
    }

    #[test]
    fn the_table_loader_installs_the_same_tables() {
        let ft = firmware_tables(2, &[3]);
        let tables_at = 0x1fe0_0000u64;
        let (rsdp, tables) = run_loader(&ft, 0xf5a40, tables_at);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(checksum_ok(&rsdp[..20]) && checksum_ok(&rsdp));
        let at = |addr: u64| (addr - tables_at) as usize;
        let xsdt = at(u64::from_le_bytes(rsdp[24..32].try_into().unwrap()));
        let table = |o: usize| &tables[o..o + u32_at(&tables, o + 4) as usize];
        assert_eq!(&table(xsdt)[..4], b"XSDT");
        assert!(checksum_ok(table(xsdt)));
        let mut sigs = Vec::new();
        for e in table(xsdt)[36..].chunks(8) {
            let t = table(at(u64::from_le_bytes(e.try_into().unwrap())));
            assert!(checksum_ok(t));
            sigs.push(t[..4].to_vec());
            if &t[..4] == b"FACP" {
                // Both DSDT pointers, the 32-bit one being SeaBIOS's.
                let x_dsdt = u64::from_le_bytes(t[140..148].try_into().unwrap());
                assert_eq!(u64::from(u32_at(t, 40)), x_dsdt);
                let dsdt = table(at(x_dsdt));
                assert_eq!(&dsdt[..4], b"DSDT");
                assert!(checksum_ok(dsdt));
                assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
            }
            if &t[..4] == b"APIC" {
                // Both vCPUs.
                assert_eq!(t.len(), 44 + 2 * 8 + 12 + 10);
            }
        }
        assert_eq!(sigs, [b"FACP".to_vec(), b"APIC".to_vec()]);
    }
}
