//! The board's snapshot, in the stream's order (docs/SNAPSHOT.md), as vmd's
//! send_vm lists its devices' dumps:
//!
//! ```text
//! CONF                    what the receiver builds (snapshot/conf.rs)
//! [ROM]                   a BIOS-booted guest's BIOS image
//! [MEM ...]               a live migration's pre-copy rounds
//! DEVS                    COM1, the ACPI PM registers, the PCI bus
//! PCIX                    the PCI devices' own state (the CD-ROM's drive)
//! [FWCF]                  a BIOS-booted guest's fw_cfg
//! RTC                     the CMOS clock
//! VCPU x vCPUs            each vCPU's KVM state (x86/state.rs)
//! VMST                    irqchip, PIT, kvmclock (x86/state.rs)
//! MEM ... | MIMG image    memory (snapshot/memory.rs): runs, or into a
//!                         regular file one page-aligned image to map
//! END
//! ```
//!
//! `Board::write_snapshot` writes it from a paused guest; `read` reads
//! and checks all of it before anything is built, `Board::build` takes
//! the devices' part, and `Board::restore` the rest.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::time::Instant;

use vm_superio::serial::SerialState;

use super::{lock, Board, FlushError};
use crate::config::Config;
use crate::devices::acpi_pm::{AcpiPm, PmState};
use crate::devices::rtc::{Rtc, RtcState};
use crate::devices::serial::Serial;
use crate::devices::vmgenid;
use crate::error::{Error, KvmError};
use crate::memory::BIOS_IMAGE_MAX;
use crate::pci::root::PciRoot;
use crate::snapshot::live::{self, DirtyLog};
use crate::snapshot::memory::{
    image_target, load_image, load_run, write_dirty, write_image, write_memory, ImageLayout,
};
use crate::snapshot::stream::{Dec, Enc, Reader, StreamError, Tag, Writer};
use crate::snapshot::{GuestConfig, MEM_RUN_PAGES, PAGE};
use crate::vcpu::PauseError;
use crate::x86::state::{StateError, VcpuState, VmState};

/// What a stream holds besides CONF and memory (which `read` writes
/// straight into guest RAM), decoded and checked.
pub struct Saved {
    pub serial: SerialState,
    pub pm: PmState,
    /// The PCI bus as `PciRoot::save` wrote it: its functions are built
    /// from the configuration first, then take this; and their devices'
    /// own state (`PciRoot::save_devices`, none before version 5).
    pci: Vec<u8>,
    pci_devices: Option<Vec<u8>>,
    /// A BIOS-booted guest's BIOS image and fw_cfg state.
    firmware: Option<(Vec<u8>, Vec<u8>)>,
    /// None from streams before version 3: their guests had no RTC, and
    /// no vmgenid page either.
    pub rtc: Option<RtcState>,
    pub vcpus: Vec<VcpuState>,
    vm: VmState,
}

impl Saved {
    /// The own state PCIX keeps for the function in PCI slot `slot`, for
    /// what must be known before the function is built (a disk's queue
    /// count).
    pub fn device_state(&self, slot: usize) -> Result<Option<&[u8]>, StreamError> {
        let Some(own) = &self.pci_devices else {
            return Ok(None);
        };
        let mut d = Dec::new(Tag::PciDevices, own);
        for _ in 0..d.u8()? {
            let at = usize::from(d.u8()?);
            let state = d.bytes()?;
            if at == slot {
                return Ok(Some(state));
            }
        }
        Ok(None)
    }
}

/// Why a send failed; the guest goes on in any case.
#[derive(Debug)]
pub enum SendError {
    /// CONF must name the MAC a NIC has after its replug.
    Replugging,
    NotPaused,
    /// Pausing, or taking the vCPUs' state, failed.
    Pause(PauseError),
    /// Taking the VM's state (irqchip, PIT, clock) failed.
    State(StateError),
    /// The dirty-page log of a live migration.
    DirtyLog(KvmError),
    Flush(FlushError),
    /// The stream could not be written (the reader went away).
    Write(io::Error),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            SendError::Replugging => {
                f.write_str("a NIC is being plugged back with a new MAC: try again")
            }
            SendError::NotPaused => f.write_str("the guest is not paused"),
            SendError::Pause(e) => write!(f, "{e}"),
            SendError::State(e) => write!(f, "{e}"),
            SendError::DirtyLog(e) => write!(f, "{e}"),
            SendError::Flush(e) => write!(f, "{e}"),
            SendError::Write(e) => write!(f, "{}", crate::error::strip_os(e)),
        }
    }
}

impl From<io::Error> for SendError {
    fn from(e: io::Error) -> Self {
        SendError::Write(e)
    }
}

/// Pre-copy rounds that bound a live migration's final pause: at most
/// this many after the first, until a round finds at most `SMALL` pages.
const PRECOPY_ROUNDS: usize = 8;
const SMALL: usize = 256;

impl Board {
    /// Writes the guest's stream into `out`. `live`: the guest runs;
    /// memory goes in pre-copy rounds, and the guest is paused only for
    /// the last of it (vm-send -l). Otherwise the caller has paused it.
    /// Into a regular file, memory is one image a receiver can map, and a
    /// live migration pauses the guest first: nothing reads the file
    /// while it is written, so there is no one to overlap with.
    pub fn write_snapshot(&self, out: &mut File, live: bool) -> Result<(), SendError> {
        if lock(&self.hotplug).pending() {
            return Err(SendError::Replugging);
        }
        let image = image_target(out);
        if live && image.is_some() {
            self.pauser.pause().map_err(SendError::Pause)?;
        }
        let live = live && image.is_none();
        let mut w = Writer::new(out)?;
        w.section(Tag::Config, &[&self.conf.encode()])?;
        if let Some(rom) = &self.rom {
            w.section(Tag::Rom, &[rom])?;
        }
        let log = if live {
            let (log, rest) = self.precopy(&mut w)?;
            self.pauser.pause().map_err(SendError::Pause)?;
            Some((log, rest, Instant::now()))
        } else {
            None
        };
        // The device threads stop after their current request, so that
        // queues and memory hold still; they go on afterwards in any case
        // (a guest that ends after the send does not mind).
        let mut pci = lock(&self.pci);
        pci.quiesce(true);
        let written = self.write_state(&mut w, &pci).and_then(|()| match &log {
            Some((log, rest, paused)) => {
                let mut last = log.take().map_err(SendError::DirtyLog)?;
                live::merge(&mut last, rest);
                write_dirty(&mut w, self.mem, &last, true)?;
                if self.verbose {
                    // What a live migration is judged by (make bench reads it).
                    eprintln!(
                        "vm-run: migrated: paused {:.1} ms for the last {} pages and the devices",
                        paused.elapsed().as_secs_f64() * 1000.0,
                        live::pages(&last)
                    );
                }
                Ok(())
            }
            None => match image {
                Some(base) => Ok(write_image(&mut w, self.mem, self.skip_absent, base)?),
                None => Ok(write_memory(&mut w, self.mem, self.skip_absent, true)?),
            },
        });
        pci.quiesce(false);
        written?;
        w.finish()?;
        Ok(())
    }

    /// DEVS, RTC, every VCPU and VMST, from the paused guest.
    fn write_state<W: Write>(&self, w: &mut Writer<W>, pci: &PciRoot) -> Result<(), SendError> {
        let clock = self.pauser.clock().ok_or(SendError::NotPaused)?;
        // The receiving vm-run reopens the disks: what vm-run caches of a
        // qcow2 image must be in the file first.
        self.flush_disks().map_err(SendError::Flush)?;
        let mut devs = Enc::default();
        lock(&self.com1).save(&mut devs);
        lock(&self.pm).save(&mut devs);
        let mut bus = Enc::default();
        pci.save(&mut bus);
        devs.bytes(&bus.0);
        w.section(Tag::Devices, &[&devs.0])?;
        let mut own = Enc::default();
        pci.save_devices(&mut own);
        w.section(Tag::PciDevices, &[&own.0])?;
        if let Some(fw) = &self.fw_cfg {
            let mut e = Enc::default();
            lock(fw).save(&mut e);
            w.section(Tag::FwCfg, &[&e.0])?;
        }
        let mut rtc = Enc::default();
        lock(&self.rtc).save(&mut rtc);
        w.section(Tag::Rtc, &[&rtc.0])?;
        for vcpu in self.pauser.save_vcpus().map_err(SendError::Pause)? {
            w.section(Tag::Vcpu, &[&vcpu.encode()])?;
        }
        let vm =
            VmState::save(&self.vm, clock, self.pauser.paused_at()).map_err(SendError::State)?;
        w.section(Tag::Vm, &[&vm.encode()])?;
        Ok(())
    }

    /// A live migration's pre-copy: all of memory while the guest runs,
    /// then rounds of what it wrote meanwhile, until little is left.
    /// Returns the log (still on) and the pages written since the last
    /// round sent.
    fn precopy<W: Write>(
        &self,
        w: &mut Writer<W>,
    ) -> Result<(DirtyLog<'_>, live::Dirty), SendError> {
        let log = DirtyLog::start(&self.vm, self.mem).map_err(SendError::DirtyLog)?;
        write_memory(w, self.mem, self.skip_absent, false)?;
        for _ in 0..PRECOPY_ROUNDS {
            let dirty = log.take().map_err(SendError::DirtyLog)?;
            if live::pages(&dirty) <= SMALL {
                return Ok((log, dirty));
            }
            write_dirty(w, self.mem, &dirty, false)?;
        }
        let dirty = log.take().map_err(SendError::DirtyLog)?;
        Ok((log, dirty))
    }

    /// Puts what `read` found into a board that `build` made from it: the
    /// PCI functions' state, a new VM generation ID, and the in-kernel
    /// devices'. Before any vCPU exists; the devices stay quiet until
    /// `resume_restored`.
    pub fn restore(&mut self, cfg: &Config, saved: &Saved) -> crate::error::Result<()> {
        let stream = |e: StreamError| Error::Snapshot(e.to_string());
        let mut d = Dec::new(Tag::Devices, &saved.pci);
        let mut pci = lock(&self.pci);
        pci.restore(&mut d).and_then(|()| d.end()).map_err(stream)?;
        if let Some(own) = &saved.pci_devices {
            let mut d = Dec::new(Tag::PciDevices, own);
            pci.restore_devices(&mut d)
                .and_then(|()| d.end())
                .map_err(stream)?;
        }
        drop(pci);
        if let Some((rom, fw)) = &saved.firmware {
            self.restore_firmware(cfg, rom, fw)?;
        }
        if saved.rtc.is_some() {
            // This guest may be one of many clones of the snapshot (a
            // version 3 one: older guests have no vmgenid page).
            vmgenid::write_new_id(self.mem)?;
        }
        (saved.vm.restore(&self.vm)).map_err(|e| Error::Snapshot(e.to_string()))
    }

    /// The devices go on, and may interrupt, once the vCPUs and the
    /// irqchip hold their state: an interrupt raised before would be
    /// wiped by the vCPUs' restored LAPICs.
    pub fn resume_restored(&self, saved: &Saved) -> crate::error::Result<()> {
        lock(&self.pci).quiesce(false);
        if saved.rtc.is_some() {
            vmgenid::notify(&self.vm)?;
            lock(&self.rtc).resend_irq();
        }
        Ok(())
    }
}

/// Reads the rest of a stream whose CONF has been read, checking order,
/// sizes and checksums; memory runs are written into `mem` as they come.
pub fn read<R: Read>(
    r: &mut Reader<R>,
    mem: &crate::memory::GuestMemory,
    conf: &GuestConfig,
) -> Result<Saved, StreamError> {
    let vcpus = usize::from(conf.vcpus);
    let small = 1 << 20;
    fn expect(got: Option<(Tag, &[u8])>, want: Tag) -> Result<&[u8], StreamError> {
        match got {
            Some((t, p)) if t == want => Ok(p),
            Some((t, _)) => Err(StreamError::Order(t, "out of order")),
            None => Err(StreamError::Order(want, "missing")),
        }
    }
    let max_run = (8 + MEM_RUN_PAGES * PAGE) as u64;
    let rom = if conf.firmware {
        Some(expect(r.next(BIOS_IMAGE_MAX)?, Tag::Rom)?.to_vec())
    } else {
        None
    };
    // A live migration's pre-copied memory comes before DEVS.
    let mut runs = false;
    let devs = loop {
        match r.next(max_run.max(small))? {
            Some((Tag::Memory, payload)) => {
                runs = true;
                load_run(mem, payload)?
            }
            got => break expect(got, Tag::Devices)?.to_vec(),
        }
    };
    let mut d = Dec::new(Tag::Devices, &devs);
    let serial = Serial::load(&mut d)?;
    let pm = AcpiPm::load(&mut d)?;
    let pci = d.bytes()?.to_vec();
    d.end()?;
    let pci_devices = if r.version() >= 5 {
        Some(expect(r.next(small)?, Tag::PciDevices)?.to_vec())
    } else {
        None
    };
    let firmware = match rom {
        Some(rom) => Some((rom, expect(r.next(small)?, Tag::FwCfg)?.to_vec())),
        None => None,
    };
    let rtc = if r.version() >= 3 {
        let Some((Tag::Rtc, payload)) = r.next(small)? else {
            return Err(StreamError::Order(Tag::Rtc, "missing"));
        };
        let mut d = Dec::new(Tag::Rtc, payload);
        let rtc = Rtc::load(&mut d)?;
        d.end()?;
        Some(rtc)
    } else {
        None
    };
    let mut states = Vec::with_capacity(vcpus);
    for _ in 0..vcpus {
        states.push(VcpuState::decode(expect(r.next(small)?, Tag::Vcpu)?)?);
    }
    let vm = VmState::decode(expect(r.next(small)?, Tag::Vm)?)?;
    let images = r.version() >= 6;
    while let Some((tag, payload)) = r.next(max_run)? {
        match tag {
            Tag::Memory => {
                runs = true;
                load_run(mem, payload)?
            }
            // All of memory, so alone: runs before it would be lost where
            // it is mapped, and stay where it is read.
            Tag::Image if images && !runs => {
                let layout = ImageLayout::decode(payload)?;
                load_image(r, mem, &layout)?;
                if let Some((tag, _)) = r.next(small)? {
                    return Err(StreamError::Order(tag, "after the memory image"));
                }
                break;
            }
            _ => return Err(StreamError::Order(tag, "out of order")),
        }
    }
    Ok(Saved {
        serial,
        pm,
        pci,
        pci_devices,
        firmware,
        rtc,
        vcpus: states,
        vm,
    })
}

/// What the fuzz target `snapshot_stream` runs: the bytes as the stream
/// vm-receive reads, header, CONF and then all of `read` (every section,
/// memory into a small guest), as vm-receive and `vm::receive` do.
#[cfg(any(test, fuzzing))]
pub mod fuzz {
    use vm_memory::GuestAddress;

    use super::*;
    use crate::snapshot::conf::GuestConfig;

    const MEM_SIZE: usize = 64 << 10;

    pub fn stream(data: &[u8]) {
        let _ = receive(data);
    }

    fn receive(data: &[u8]) -> Result<Saved, StreamError> {
        let mut r = Reader::new(data)?;
        let conf = match r.next(1 << 20)? {
            Some((Tag::Config, payload)) => GuestConfig::decode(payload)?,
            _ => return Err(StreamError::Order(Tag::Config, "missing")),
        };
        let mem = crate::memory::GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
            .expect("64 KiB of anonymous memory");
        read(&mut r, &mem, &conf)
    }

    /// A well-formed stream of `version` with `vcpus` vCPUs (zeroed
    /// state, as KVM's structures allow) and memory runs before DEVS
    /// (`live`) and after VMST, or after VMST a memory image (`image`,
    /// version 6); `firmware` (version 5) adds a BIOS.
    fn well_formed(version: u32, vcpus: u8, live: bool, firmware: bool, image: bool) -> Vec<u8> {
        use kvm_bindings::*;
        use std::mem::size_of;
        let mut w = Writer::new(Vec::new()).expect("a Vec takes writes");
        let conf = GuestConfig {
            mem_size: MEM_SIZE as u64,
            vcpus,
            cpuid: vec![kvm_cpuid_entry2 {
                function: 1,
                eax: 0x806f8,
                ..Default::default()
            }],
            disks: vec![crate::snapshot::conf::DiskRecord {
                path: "/var/vm/web.qcow2".into(),
                read_only: false,
                serial: Some("web0".into()),
            }],
            nics: vec![crate::snapshot::conf::NicRecord {
                mac: [0xfe, 0xe1, 0xba, 0xd0, 0, 1],
            }],
            firmware,
            cdrom: None,
        };
        let mut conf = conf.encode();
        if version < 5 {
            conf.truncate(conf.len() - 5); // no firmware flag, no CD-ROM
        }
        if version < 3 {
            conf.truncate(conf.len() - 14); // no NICs
        }
        let mut run = 0x2000u64.to_le_bytes().to_vec();
        run.extend((0..2 * PAGE).map(|i| i as u8));
        let sections = |w: &mut Writer<Vec<u8>>| -> io::Result<()> {
            w.section(Tag::Config, &[&conf])?;
            if firmware {
                w.section(Tag::Rom, &[&[0xf4; 64 << 10]])?;
            }
            if live {
                w.section(Tag::Memory, &[&run])?;
            }
            let mut devs = Enc::default();
            devs.u8(12).u8(0).u8(1).u8(0xc1).u8(3).u8(0x60).u8(0xb);
            devs.u8(0xb0).u8(0).bytes(b"ab");
            devs.u16(0).u16(0x100).u16(1);
            let mut pci = Enc::default();
            pci.u32(0x8000_0800).u8(1).u8(0).bytes(&[0x36; 256]);
            devs.bytes(&pci.0);
            w.section(Tag::Devices, &[&devs.0])?;
            if version >= 5 {
                w.section(Tag::PciDevices, &[&[0]])?;
            }
            if firmware {
                let mut fw = Enc::default();
                fw.u16(0x19).u32(4).u32(0);
                w.section(Tag::FwCfg, &[&fw.0])?;
            }
            if version >= 3 {
                let mut rtc = Enc::default();
                rtc.u64(5_000_000_000).u8(0x0b).bytes(&[0x26; 128]);
                w.section(Tag::Rtc, &[&rtc.0])?;
            }
            for _ in 0..vcpus {
                let mut v = Enc::default();
                for n in [
                    size_of::<kvm_mp_state>(),
                    size_of::<kvm_regs>(),
                    size_of::<kvm_sregs>(),
                    size_of::<kvm_xsave>(),
                    size_of::<kvm_xcrs>(),
                    size_of::<kvm_debugregs>(),
                    size_of::<kvm_lapic_state>(),
                    size_of::<kvm_vcpu_events>(),
                ] {
                    v.bytes(&vec![0; n]);
                }
                v.u32(2).u32(0x10).u64(12345).u32(0x4b56_4d04).u64(0x3001);
                w.section(Tag::Vcpu, &[&v.0])?;
            }
            let mut vm = Enc::default();
            for id in 0..3u32 {
                let mut chip = vec![0; size_of::<kvm_irqchip>()];
                chip[..4].copy_from_slice(&id.to_le_bytes());
                vm.bytes(&chip);
            }
            vm.bytes(&vec![0; size_of::<kvm_pit_state2>()])
                .bytes(&vec![0; size_of::<kvm_clock_data>()])
                .u64(1_700_000_000_000_000_000);
            w.section(Tag::Vm, &[&vm.0])?;
            if !image {
                return w.section(Tag::Memory, &[&run]);
            }
            let mut layout = ImageLayout {
                offset: 0,
                regions: vec![(0, MEM_SIZE as u64)],
            };
            let end = w.position() + 16 + layout.encode().len() as u64;
            layout.offset = end.next_multiple_of(PAGE as u64);
            w.section(Tag::Image, &[&layout.encode()])?;
            let pad = layout.offset - w.position();
            let raw = w.raw(pad + MEM_SIZE as u64);
            raw.resize(raw.len() + pad as usize, 0);
            raw.extend((0..MEM_SIZE).map(|i| (i / PAGE) as u8));
            Ok(())
        };
        sections(&mut w).expect("a Vec takes writes");
        let mut out = w.finish().expect("a Vec takes writes");
        out[8..12].copy_from_slice(&version.to_le_bytes());
        out
    }

    /// The seeds of vm-run/fuzz/corpus/snapshot_stream.
    pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("v6", well_formed(6, 1, false, false, false)),
            ("v6_image", well_formed(6, 1, false, false, true)),
            ("v5", well_formed(5, 1, false, false, false)),
            (
                "v5_bios_live_two_vcpus",
                well_formed(5, 2, true, true, false),
            ),
            ("v4", well_formed(4, 1, false, false, false)),
            ("v4_live_two_vcpus", well_formed(4, 2, true, false, false)),
            ("v3", well_formed(3, 1, false, false, false)),
            ("v2", well_formed(2, 1, true, false, false)),
            ("v1", well_formed(1, 1, false, false, false)),
        ]
    }

    #[cfg(test)]
    mod tests {
        use crate::virtio::fuzz::support;

        #[test]
        fn seeds_are_read_whole() {
            for (name, data) in super::seeds() {
                let saved = super::receive(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(
                    saved.rtc.is_some(),
                    !name.starts_with("v1") && !name.starts_with("v2"),
                    "{name}"
                );
                assert_eq!(saved.vcpus.len(), if name.contains("two") { 2 } else { 1 });
            }
        }

        #[test]
        fn random_streams_do_not_crash_the_receiver() {
            for data in support::inputs(0x6a09_e667_f3bc_c909, 300, 4096, &super::seeds()) {
                super::stream(&data);
            }
        }

        #[test]
        fn snapshot_stream_corpus_is_current() {
            support::corpus_is_current("snapshot_stream", &super::seeds());
        }

        #[test]
        #[ignore]
        fn write_seeds() {
            support::write_corpus("snapshot_stream", &super::seeds());
        }
    }
}
