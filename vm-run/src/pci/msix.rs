//! MSI-X: the vector table and pending bits a function exposes in one of
//! its BARs, and the capability that switches them on. Each vector has
//! an irqfd on a GSI of its own; programming an entry routes that GSI to
//! the message the guest wrote, so a device thread raises it with one
//! eventfd write and the vCPU threads never see it.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::error::{Error, Result};
use crate::irq::GsiRouter;
use crate::snapshot::stream::{Dec, Enc, StreamError};

pub const CAP_ID: u8 = 0x11;
pub const ENTRY_SIZE: u64 = 16;
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_MASK: u16 = 1 << 14;
const VECTOR_MASKED: u32 = 1;

#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Entry {
    addr: u64,
    data: u32,
    control: u32,
}

impl Entry {
    fn masked(&self) -> bool {
        self.control & VECTOR_MASKED != 0
    }
}

pub struct Msix {
    entries: Vec<Entry>,
    /// What KVM routes each vector's GSI to, to skip needless updates.
    routed: Vec<Option<(u64, u32)>>,
    pending: Vec<bool>,
    enabled: bool,
    function_masked: bool,
    irqfds: Vec<EventFd>,
    gsis: Vec<u32>,
    router: Arc<GsiRouter>,
}

impl Msix {
    /// `vectors` vectors, each with a GSI and an irqfd of its own.
    pub fn new(vectors: u16, router: Arc<GsiRouter>) -> Result<Self> {
        let n = usize::from(vectors);
        let mut irqfds = Vec::with_capacity(n);
        let mut gsis = Vec::with_capacity(n);
        for _ in 0..n {
            let fd =
                EventFd::new(libc::EFD_NONBLOCK).map_err(|e| Error::Os("eventfd".into(), e))?;
            let gsi = router.allocate()?;
            router
                .vm()
                .register_irqfd(&fd, gsi)
                .map_err(|e| Error::Kvm("KVM_IRQFD".into(), e))?;
            irqfds.push(fd);
            gsis.push(gsi);
        }
        Ok(Msix {
            entries: vec![
                Entry {
                    control: VECTOR_MASKED,
                    ..Default::default()
                };
                n
            ],
            routed: vec![None; n],
            pending: vec![false; n],
            enabled: false,
            function_masked: false,
            irqfds,
            gsis,
            router,
        })
    }

    pub fn vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    /// The capability body (after ID and next): message control, table
    /// and PBA locations (offset | BIR); and which of its bits are
    /// writable (enable and function mask).
    pub fn capability(&self, bar: u8, table: u32, pba: u32) -> ([u8; 10], [u8; 2]) {
        let mut body = [0u8; 10];
        body[0..2].copy_from_slice(&(self.vectors() - 1).to_le_bytes());
        body[2..6].copy_from_slice(&(table | u32::from(bar)).to_le_bytes());
        body[6..10].copy_from_slice(&(pba | u32::from(bar)).to_le_bytes());
        (body, (CONTROL_ENABLE | CONTROL_MASK).to_le_bytes())
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The guest wrote the capability's message control register.
    pub fn set_control(&mut self, control: u16) {
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_MASK != 0;
        self.flush_pending();
    }

    /// Back to the power-on state (all vectors masked, MSI-X off).
    pub fn reset(&mut self) {
        for e in &mut self.entries {
            *e = Entry {
                control: VECTOR_MASKED,
                ..Default::default()
            };
        }
        self.pending.fill(false);
        self.enabled = false;
        self.function_masked = false;
    }

    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        let v = self.table_dword(offset).unwrap_or(0);
        match data.len() {
            4 => data.copy_from_slice(&v.to_le_bytes()),
            8 => {
                let hi = self.table_dword(offset + 4).unwrap_or(0);
                data.copy_from_slice(&(u64::from(v) | u64::from(hi) << 32).to_le_bytes());
            }
            _ => data.fill(0),
        }
    }

    fn table_dword(&self, offset: u64) -> Option<u32> {
        let e = self.entries.get((offset / ENTRY_SIZE) as usize)?;
        Some(match offset % ENTRY_SIZE {
            0 => e.addr as u32,
            4 => (e.addr >> 32) as u32,
            8 => e.data,
            12 => e.control,
            _ => return None,
        })
    }

    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        match *data {
            [a, b, c, d] => self.write_dword(offset, u32::from_le_bytes([a, b, c, d])),
            [a, b, c, d, e, f, g, h] => {
                self.write_dword(offset, u32::from_le_bytes([a, b, c, d]));
                self.write_dword(offset + 4, u32::from_le_bytes([e, f, g, h]));
            }
            // The spec allows only dword and qword accesses.
            _ => {}
        }
    }

    fn write_dword(&mut self, offset: u64, v: u32) {
        let i = (offset / ENTRY_SIZE) as usize;
        let Some(e) = self.entries.get_mut(i) else {
            return;
        };
        match offset % ENTRY_SIZE {
            0 => e.addr = (e.addr & !0xffff_ffff) | u64::from(v),
            4 => e.addr = (e.addr & 0xffff_ffff) | (u64::from(v) << 32),
            8 => e.data = v,
            12 => e.control = v & VECTOR_MASKED,
            _ => return,
        }
        if !e.masked() {
            self.route(i);
        }
        self.flush_pending();
    }

    /// Points vector `i`'s GSI at its message, if that changed.
    fn route(&mut self, i: usize) {
        let e = self.entries[i];
        if self.routed[i] == Some((e.addr, e.data)) {
            return;
        }
        match self.router.set_msi(self.gsis[i], e.addr, e.data) {
            Ok(()) => self.routed[i] = Some((e.addr, e.data)),
            Err(err) => crate::ratelimit::warn(format_args!("MSI-X vector {i}: {err}")),
        }
    }

    /// Raises `vector`, or marks it pending while it is masked.
    pub fn trigger(&mut self, vector: u16) {
        let i = usize::from(vector);
        let Some(e) = self.entries.get(i) else {
            return;
        };
        if self.function_masked || e.masked() {
            self.pending[i] = true;
        } else {
            // A full eventfd counter still means "raised": nothing lost.
            let _ = self.irqfds[i].write(1);
        }
    }

    fn flush_pending(&mut self) {
        if !self.enabled || self.function_masked {
            return;
        }
        for i in 0..self.entries.len() {
            if self.pending[i] && !self.entries[i].masked() {
                self.pending[i] = false;
                self.route(i);
                let _ = self.irqfds[i].write(1);
            }
        }
    }

    /// The table and pending bits, for a snapshot; enable and mask live in
    /// the capability, in configuration space.
    pub fn save(&self, e: &mut Enc) {
        e.u16(self.vectors());
        for (x, p) in self.entries.iter().zip(&self.pending) {
            e.u64(x.addr).u32(x.data).u32(x.control).u8((*p).into());
        }
    }

    /// Puts back a snapshot's table and the capability's `control`,
    /// routing every unmasked vector anew.
    pub fn restore(&mut self, d: &mut Dec, control: u16) -> std::result::Result<(), StreamError> {
        if d.u16()? != self.vectors() {
            return Err(d.bad("MSI-X vector count differs"));
        }
        for i in 0..self.entries.len() {
            self.entries[i] = Entry {
                addr: d.u64()?,
                data: d.u32()?,
                control: d.u32()? & VECTOR_MASKED,
            };
            self.pending[i] = d.u8()? != 0;
            self.routed[i] = None;
            if !self.entries[i].masked() {
                self.route(i);
            }
        }
        self.set_control(control);
        Ok(())
    }

    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let first = (offset as usize + i) * 8;
            *b = (0..8)
                .filter(|bit| self.pending.get(first + bit).copied().unwrap_or(false))
                .fold(0u8, |acc, bit| acc | 1 << bit);
        }
    }
}
