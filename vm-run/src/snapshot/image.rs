//! A whole snapshot, in stream order: CONF, (a live migration's pre-copied
//! MEM runs,) DEVS, RTC, one VCPU per vCPU, VMST, the MEM runs, END. Written by
//! a paused vm-run (or, for the pre-copy, a running one), read by
//! vm-receive before its guest runs.

use std::io::{self, Read, Write};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vm_superio::serial::SerialState;

use super::live::Dirty;
use super::stream::{Dec, Enc, Reader, StreamError, Tag, Writer};
use super::{VcpuState, VmState, MEM_RUN_PAGES, PAGE};
use crate::devices::rtc::RtcState;
use crate::memory::GuestMemory;

/// The devices' state that lives in vm-run (the in-kernel ones are VMST).
pub struct DeviceState {
    pub serial: SerialState,
    pub acpi_pm: [u16; 3],
    /// The PCI bus as `PciRoot::save` wrote it.
    pub pci: Vec<u8>,
}

impl DeviceState {
    fn encode(&self) -> Vec<u8> {
        let s = &self.serial;
        let mut e = Enc::default();
        for b in [
            s.baud_divisor_low,
            s.baud_divisor_high,
            s.interrupt_enable,
            s.interrupt_identification,
            s.line_control,
            s.line_status,
            s.modem_control,
            s.modem_status,
            s.scratch,
        ] {
            e.u8(b);
        }
        e.bytes(&s.in_buffer);
        for r in self.acpi_pm {
            e.u16(r);
        }
        e.bytes(&self.pci);
        e.0
    }

    fn decode(payload: &[u8]) -> Result<DeviceState, StreamError> {
        let mut d = Dec::new(Tag::Devices, payload);
        let mut r = [0u8; 9];
        for b in &mut r {
            *b = d.u8()?;
        }
        let in_buffer = d.bytes()?.to_vec();
        if in_buffer.len() > 64 {
            return Err(d.bad("UART FIFO over 64 bytes"));
        }
        let acpi_pm = [d.u16()?, d.u16()?, d.u16()?];
        let pci = d.bytes()?.to_vec();
        d.end()?;
        Ok(DeviceState {
            serial: SerialState {
                baud_divisor_low: r[0],
                baud_divisor_high: r[1],
                interrupt_enable: r[2],
                interrupt_identification: r[3],
                line_control: r[4],
                line_status: r[5],
                modem_control: r[6],
                modem_status: r[7],
                scratch: r[8],
                in_buffer,
            },
            acpi_pm,
            pci,
        })
    }
}

/// The RTC section: the offset (i64 as u64), the index register (u8), the
/// 128 CMOS bytes (bytes).
fn encode_rtc(s: &RtcState) -> Vec<u8> {
    let mut e = Enc::default();
    e.u64(s.offset_ns as u64).u8(s.index).bytes(&s.cmos);
    e.0
}

fn decode_rtc(payload: &[u8]) -> Result<RtcState, StreamError> {
    let mut d = Dec::new(Tag::Rtc, payload);
    let offset_ns = d.u64()? as i64;
    let index = d.u8()?;
    let cmos = d.bytes()?.to_vec();
    d.end()?;
    if cmos.len() != 128 {
        return Err(d.bad(format!("{} CMOS bytes, not 128", cmos.len())));
    }
    Ok(RtcState {
        offset_ns,
        index,
        cmos,
    })
}

/// What a stream holds besides CONF and memory (which a receiver writes
/// straight into guest RAM).
pub struct Snapshot {
    pub devices: DeviceState,
    /// None from streams before version 3: their guests had no RTC, and
    /// no vmgenid page either.
    pub rtc: Option<RtcState>,
    pub vcpus: Vec<VcpuState>,
    pub vm: VmState,
}

impl Snapshot {
    /// DEVS, RTC, every VCPU and VMST: what follows CONF (and the
    /// pre-copied memory of a live migration).
    pub fn write_state<W: Write>(&self, w: &mut Writer<W>) -> io::Result<()> {
        w.section(Tag::Devices, &[&self.devices.encode()])?;
        if let Some(rtc) = &self.rtc {
            w.section(Tag::Rtc, &[&encode_rtc(rtc)])?;
        }
        for v in &self.vcpus {
            w.section(Tag::Vcpu, &[&v.encode()])?;
        }
        w.section(Tag::Vm, &[&self.vm.encode()])
    }
}

/// Every non-zero page of guest memory. `still`: the guest is paused.
/// While it runs (the first round of a live migration) a page may change
/// as it is read: the dirty log has it sent again.
pub fn write_memory<W: Write>(
    w: &mut Writer<W>,
    mem: &GuestMemory,
    skip_absent: bool,
    still: bool,
) -> io::Result<()> {
    for (base, bytes) in regions(mem)? {
        // In chunks, so that the residency vector stays small.
        const CHUNK: usize = 64 << 20;
        for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
            let present = if skip_absent {
                crate::memory::residency(chunk.as_ptr(), chunk.len())
            } else {
                None
            };
            // A zero page costs nothing in the stream, so its size
            // follows what the guest touched.
            let present = present.as_deref();
            let nonzero = |i: usize| {
                present.is_none_or(|p| p.get(i).is_none_or(|b| b & 1 != 0))
                    && !is_zero(&chunk[i * PAGE..(i + 1) * PAGE])
            };
            write_runs(w, base + (i * CHUNK) as u64, chunk, nonzero, still)?;
        }
    }
    Ok(())
}

/// Whether a page is all zeros. 64 bytes at a time, which the compiler
/// turns into vector ORs: byte by byte, this check took most of a send.
fn is_zero(page: &[u8]) -> bool {
    page.chunks(64).all(|c| c.iter().fold(0, |a, b| a | b) == 0)
}

/// The pages `dirty` names (a bitmap per region), zero or not: a page
/// sent before may have become zero since. `still` as for write_memory.
pub fn write_dirty<W: Write>(
    w: &mut Writer<W>,
    mem: &GuestMemory,
    dirty: &Dirty,
    still: bool,
) -> io::Result<()> {
    for ((base, bytes), bits) in regions(mem)?.into_iter().zip(dirty) {
        let is = |i: usize| bits.get(i / 64).is_some_and(|w| w >> (i % 64) & 1 == 1);
        write_runs(w, base, bytes, is, still)?;
    }
    Ok(())
}

/// One MEM section. Pages of a running guest are copied first (into
/// `copy`, one buffer for every run: a new one each time would cost an
/// mmap and its page faults in musl's malloc), so that the checksum is of
/// what is sent.
fn run<W: Write>(
    w: &mut Writer<W>,
    addr: u64,
    pages: &[u8],
    copy: Option<&mut Vec<u8>>,
) -> io::Result<()> {
    let addr = addr.to_le_bytes();
    match copy {
        None => w.section(Tag::Memory, &[&addr, pages]),
        Some(copy) => {
            // Not `pages` itself: the guest may change it between the
            // checksum and the write.
            copy.clear();
            copy.extend_from_slice(pages);
            w.section(Tag::Memory, &[&addr, copy])
        }
    }
}

/// Each RAM region: its guest address and its bytes.
fn regions(mem: &GuestMemory) -> io::Result<Vec<(u64, &[u8])>> {
    mem.iter()
        .map(|region| {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| io::Error::other(e.to_string()))?;
            // SAFETY: the region's mapping is len bytes at host and lives
            // as long as mem. The guest may write it meanwhile (a live
            // round); the bytes are only copied out, and whatever changed
            // is sent again.
            let bytes = unsafe { std::slice::from_raw_parts(host, region.len() as usize) };
            Ok((region.start_addr().0, bytes))
        })
        .collect()
}

/// MEM sections for the pages of `bytes` (at guest address `base`) that
/// `keep` picks, in runs of at most MEM_RUN_PAGES.
fn write_runs<W: Write>(
    w: &mut Writer<W>,
    base: u64,
    bytes: &[u8],
    keep: impl Fn(usize) -> bool,
    still: bool,
) -> io::Result<()> {
    let pages = bytes.len() / PAGE;
    let mut copy = (!still).then(|| Vec::with_capacity(MEM_RUN_PAGES * PAGE));
    let mut i = 0;
    while i < pages {
        if !keep(i) {
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        while i < pages && i - start < MEM_RUN_PAGES && keep(i) {
            i += 1;
        }
        run(
            w,
            base + (start * PAGE) as u64,
            &bytes[start * PAGE..i * PAGE],
            copy.as_mut(),
        )?;
    }
    Ok(())
}

/// Reads the rest of a stream whose CONF has been read, checking order,
/// sizes and checksums; memory runs are written into `mem` as they come.
pub fn load<R: Read>(
    r: &mut Reader<R>,
    mem: &GuestMemory,
    vcpus: usize,
) -> Result<Snapshot, StreamError> {
    let small = 1 << 20;
    fn expect(got: Option<(Tag, &[u8])>, want: Tag) -> Result<&[u8], StreamError> {
        match got {
            Some((t, p)) if t == want => Ok(p),
            Some((t, _)) => Err(StreamError::Order(t, "out of order")),
            None => Err(StreamError::Order(want, "missing")),
        }
    }
    let max_run = (8 + MEM_RUN_PAGES * PAGE) as u64;
    // A live migration's pre-copied memory comes before DEVS.
    let devices = loop {
        match r.next(max_run.max(small))? {
            Some((Tag::Memory, payload)) => load_run(mem, payload)?,
            got => break DeviceState::decode(expect(got, Tag::Devices)?)?,
        }
    };
    let rtc = if r.version() >= 3 {
        match r.next(small)? {
            Some((Tag::Rtc, payload)) => Some(decode_rtc(payload)?),
            _ => return Err(StreamError::Order(Tag::Rtc, "missing")),
        }
    } else {
        None
    };
    let mut states = Vec::with_capacity(vcpus);
    for _ in 0..vcpus {
        states.push(VcpuState::decode(expect(r.next(small)?, Tag::Vcpu)?)?);
    }
    let vm = VmState::decode(expect(r.next(small)?, Tag::Vm)?)?;
    while let Some((tag, payload)) = r.next(max_run)? {
        if tag != Tag::Memory {
            return Err(StreamError::Order(tag, "out of order"));
        }
        load_run(mem, payload)?;
    }
    Ok(Snapshot {
        devices,
        rtc,
        vcpus: states,
        vm,
    })
}

/// One MEM section: an address and whole pages, into guest RAM.
fn load_run(mem: &GuestMemory, payload: &[u8]) -> Result<(), StreamError> {
    let bad = |why: &str| StreamError::Bad(Tag::Memory, why.to_string());
    if payload.len() < 8 + PAGE || !(payload.len() - 8).is_multiple_of(PAGE) {
        return Err(bad("not whole pages"));
    }
    let addr = u64::from_le_bytes(payload[..8].try_into().unwrap_or_default());
    mem.write_slice(&payload[8..], GuestAddress(addr))
        .map_err(|_| bad(&format!("pages at {addr:#x} outside guest memory")))?;
    Ok(())
}
