//! The virtio 1.x PCI transport ("modern" only, as Linux has supported
//! since 4.0): the vendor capabilities that point into BAR 0, the common
//! configuration registers, the ISR, the notification area (ioeventfds)
//! and the MSI-X table, all in one 32 KiB memory BAR.
//!
//! BAR 0 layout:
//!   0x0000 common configuration    0x3000 notifications, 4 bytes a queue
//!   0x1000 ISR status              0x4000 MSI-X table
//!   0x2000 device configuration    0x5000 MSI-X pending bits

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kvm_ioctls::{IoEventAddress, NoDatamatch};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::{ActiveQueue, Interrupt, Shared, VirtioDevice, Worker, NO_VECTOR};
use crate::error::{Error, Result};
use crate::irq::GsiRouter;
use crate::memory::GuestMemory;
use crate::pci::msix::{self, Msix};
use crate::pci::{BarMove, ConfigSpace, PciDevice};
use crate::snapshot::stream::{Dec, Enc, StreamError};

pub const BAR_SIZE: u32 = 0x8000;
const COMMON: u64 = 0x0000;
const COMMON_LEN: u64 = 0x40;
const ISR: u64 = 0x1000;
const DEVICE: u64 = 0x2000;
const DEVICE_LEN: u64 = 0x1000;
const NOTIFY: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE: u64 = 0x4000;
const MSIX_PBA: u64 = 0x5000;

/// Virtio vendor capability types.
const CAP_VENDOR: u8 = 0x09;
const CAP_COMMON_CFG: u8 = 1;
const CAP_NOTIFY_CFG: u8 = 2;
const CAP_ISR_CFG: u8 = 3;
const CAP_DEVICE_CFG: u8 = 4;
const CAP_PCI_CFG: u8 = 5;
/// In the PCI configuration access capability: bar, offset, length and
/// the data window, from the capability's start.
const PCI_CFG_BAR: usize = 4;
const PCI_CFG_OFFSET: usize = 8;
const PCI_CFG_LENGTH: usize = 12;
const PCI_CFG_DATA: usize = 16;
const VIRTIO_VENDOR: u16 = 0x1af4;
/// Modern device IDs are 0x1040 + the virtio device type.
const DEVICE_ID_BASE: u16 = 0x1040;

#[derive(Clone, Copy)]
struct QueueConfig {
    max: u16,
    size: u16,
    ready: bool,
    vector: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

impl QueueConfig {
    fn new(max: u16) -> Self {
        QueueConfig {
            max,
            size: max,
            ready: false,
            vector: NO_VECTOR,
            desc: 0,
            avail: 0,
            used: 0,
        }
    }
}

enum State {
    Idle(Box<dyn VirtioDevice>),
    Running(Worker),
    /// Stopped for a snapshot, to run on from the same queue positions.
    Quiesced(Box<dyn VirtioDevice>, Vec<ActiveQueue>),
    /// The device's thread died; only a new vm-run brings it back.
    Lost,
}

/// Why the driver's DRIVER_OK could not start the device: the device
/// then asks for a reset (NEEDS_RESET), as the spec lets it.
#[derive(Debug)]
enum ActivateError {
    Running,
    NoFeaturesOk,
    Queue(usize, virtio_queue::Error),
    RingsOutside(usize),
    Thread(std::io::Error),
}

impl std::fmt::Display for ActivateError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            ActivateError::Running => f.write_str("device is already running"),
            ActivateError::NoFeaturesOk => f.write_str("driver set DRIVER_OK without FEATURES_OK"),
            ActivateError::Queue(i, e) => write!(f, "queue {i}: {e}"),
            ActivateError::RingsOutside(i) => write!(f, "queue {i}: rings outside guest memory"),
            ActivateError::Thread(e) => write!(f, "device thread: {e}"),
        }
    }
}

pub struct VirtioPci {
    pci: ConfigSpace,
    msix_cap: usize,
    /// The capability through which firmware reaches BAR 0 by config
    /// cycles alone (the spec requires it; Linux does not use it).
    pci_cfg_cap: usize,
    state: State,
    name: String,
    features: u64,
    device_config: Vec<u8>,
    /// Configuration space at power-on, for a replug.
    fresh: Vec<u8>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    config_vector: u16,
    queue_select: u16,
    queues: Vec<QueueConfig>,
    kicks: Vec<Arc<EventFd>>,
    /// Where the kicks' ioeventfds are registered: BAR 0's address.
    kick_base: Option<u64>,
    interrupt: Arc<Interrupt>,
    stop: Arc<EventFd>,
    needs_reset: Arc<AtomicBool>,
    router: Arc<GsiRouter>,
    mem: &'static GuestMemory,
}

/// Where the board puts the function and how its INTx is wired.
pub struct Placement {
    pub bar0: u32,
    pub gsi: u32,
}

impl VirtioPci {
    pub fn new(
        dev: Box<dyn VirtioDevice>,
        at: Placement,
        router: Arc<GsiRouter>,
        mem: &'static GuestMemory,
    ) -> Result<Self> {
        let eventfd =
            || EventFd::new(libc::EFD_NONBLOCK).map_err(|e| Error::Os("eventfd".into(), e));
        let queues: Vec<_> = dev
            .queue_max_sizes()
            .iter()
            .map(|&m| QueueConfig::new(m))
            .collect();
        let msix = Msix::new(queues.len() as u16 + 1, router.clone())?;

        let class = match dev.device_type() {
            virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK => (0x01, 0x00, 0x00),
            virtio_bindings::virtio_ids::VIRTIO_ID_NET => (0x02, 0x00, 0x00),
            _ => (0xff, 0x00, 0x00),
        };
        let mut pci = ConfigSpace::new(
            VIRTIO_VENDOR,
            DEVICE_ID_BASE + dev.device_type() as u16,
            class,
            1,
        );
        pci.set_subsystem(VIRTIO_VENDOR, 0x1100);
        pci.set_bar(0, at.bar0, BAR_SIZE);
        pci.set_interrupt(at.gsi as u8);
        let cap = |cfg_type: u8, offset: u64, len: u64, extra: &[u8]| {
            let mut body = vec![16 + extra.len() as u8, cfg_type, 0, 0, 0, 0];
            body.extend_from_slice(&(offset as u32).to_le_bytes());
            body.extend_from_slice(&(len as u32).to_le_bytes());
            body.extend_from_slice(extra);
            body
        };
        let notify_len = u64::from(NOTIFY_MULTIPLIER) * queues.len() as u64;
        pci.add_capability(
            CAP_VENDOR,
            &cap(CAP_COMMON_CFG, COMMON, COMMON_LEN, &[]),
            &[],
        );
        pci.add_capability(
            CAP_VENDOR,
            &cap(
                CAP_NOTIFY_CFG,
                NOTIFY,
                notify_len,
                &NOTIFY_MULTIPLIER.to_le_bytes(),
            ),
            &[],
        );
        pci.add_capability(CAP_VENDOR, &cap(CAP_ISR_CFG, ISR, 1, &[]), &[]);
        let config_len = (dev.config().len() as u64).max(1);
        pci.add_capability(
            CAP_VENDOR,
            &cap(CAP_DEVICE_CFG, DEVICE, config_len, &[]),
            &[],
        );
        let (body, writable) = msix.capability(0, MSIX_TABLE as u32, MSIX_PBA as u32);
        let msix_cap = pci.add_capability(msix::CAP_ID, &body, &writable);
        // bar, offset, length and data are the driver's to write.
        let access = cap(CAP_PCI_CFG, 0, 0, &[0; 4]);
        let mut writable = [0u8; 18];
        writable[PCI_CFG_BAR - 2] = 0xff;
        writable[PCI_CFG_OFFSET - 2..].fill(0xff);
        let pci_cfg_cap = pci.add_capability(CAP_VENDOR, &access, &writable);

        let kicks = (0..queues.len())
            .map(|_| eventfd().map(Arc::new))
            .collect::<Result<Vec<_>>>()?;

        let fresh = pci.raw().to_vec();
        Ok(VirtioPci {
            pci,
            msix_cap,
            pci_cfg_cap,
            name: dev.name().to_string(),
            features: dev.features() | 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX,
            device_config: dev.config().to_vec(),
            fresh,
            state: State::Idle(dev),
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            config_vector: NO_VECTOR,
            queue_select: 0,
            queues,
            kicks,
            kick_base: None,
            interrupt: Arc::new(Interrupt::new(router.clone(), at.gsi, msix)),
            stop: Arc::new(eventfd()?),
            needs_reset: Arc::new(AtomicBool::new(false)),
            router,
            mem,
        })
    }

    fn selected(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn status(&self) -> u8 {
        let lost = matches!(self.state, State::Lost) || self.needs_reset.load(Ordering::SeqCst);
        self.status
            | if lost {
                VIRTIO_CONFIG_S_NEEDS_RESET as u8
            } else {
                0
            }
    }

    /// The common configuration as the driver sees it, for reads of any
    /// width at any offset.
    fn common(&self) -> [u8; COMMON_LEN as usize] {
        let mut b = [0u8; COMMON_LEN as usize];
        let features = match self.device_feature_select {
            0 => self.features as u32,
            1 => (self.features >> 32) as u32,
            _ => 0,
        };
        let driver = match self.driver_feature_select {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        };
        let q = self
            .queues
            .get(usize::from(self.queue_select))
            .copied()
            .unwrap_or(QueueConfig {
                size: 0,
                ..QueueConfig::new(0)
            });
        b[0x00..0x04].copy_from_slice(&self.device_feature_select.to_le_bytes());
        b[0x04..0x08].copy_from_slice(&features.to_le_bytes());
        b[0x08..0x0c].copy_from_slice(&self.driver_feature_select.to_le_bytes());
        b[0x0c..0x10].copy_from_slice(&driver.to_le_bytes());
        b[0x10..0x12].copy_from_slice(&self.config_vector.to_le_bytes());
        b[0x12..0x14].copy_from_slice(&(self.queues.len() as u16).to_le_bytes());
        b[0x14] = self.status();
        b[0x15] = 0; // config generation: the configuration never changes
        b[0x16..0x18].copy_from_slice(&self.queue_select.to_le_bytes());
        b[0x18..0x1a].copy_from_slice(&q.size.to_le_bytes());
        b[0x1a..0x1c].copy_from_slice(&q.vector.to_le_bytes());
        b[0x1c..0x1e].copy_from_slice(&u16::from(q.ready).to_le_bytes());
        b[0x1e..0x20].copy_from_slice(&self.queue_select.to_le_bytes()); // notify_off
        b[0x20..0x28].copy_from_slice(&q.desc.to_le_bytes());
        b[0x28..0x30].copy_from_slice(&q.avail.to_le_bytes());
        b[0x30..0x38].copy_from_slice(&q.used.to_le_bytes());
        b
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let mut v = [0u8; 8];
        v[..data.len().min(8)].copy_from_slice(&data[..data.len().min(8)]);
        let v = u64::from_le_bytes(v);
        let (v16, v32) = (v as u16, v as u32);
        let vectors = self.queues.len() as u16 + 1;
        let valid_vector = |x: u16| if x < vectors { x } else { NO_VECTOR };
        let setup = self.status & VIRTIO_CONFIG_S_DRIVER_OK as u8 == 0;
        match (offset, data.len()) {
            (0x00, 4) => self.device_feature_select = v32,
            (0x08, 4) => self.driver_feature_select = v32,
            (0x0c, 4) if self.status & VIRTIO_CONFIG_S_FEATURES_OK as u8 == 0 => {
                match self.driver_feature_select {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | v << 32,
                    _ => {}
                }
            }
            (0x10, 2) => self.config_vector = valid_vector(v16),
            (0x14, 1) => self.set_status(v as u8),
            (0x16, 2) => self.queue_select = v16,
            (0x18, 2) if setup => {
                if let Some(q) = self.selected().filter(|q| !q.ready) {
                    q.size = v16;
                }
            }
            (0x1a, 2) => {
                let vector = valid_vector(v16);
                if let Some(q) = self.selected() {
                    q.vector = vector;
                }
            }
            (0x1c, 2) if setup && v16 == 1 => {
                if let Some(q) = self.selected() {
                    q.ready = true;
                }
            }
            (0x20..=0x37, 4) if setup && offset.is_multiple_of(4) => {
                if let Some(q) = self.selected().filter(|q| !q.ready) {
                    let field = match offset {
                        0x20..=0x27 => &mut q.desc,
                        0x28..=0x2f => &mut q.avail,
                        _ => &mut q.used,
                    };
                    *field = if offset.is_multiple_of(8) {
                        (*field & !0xffff_ffff) | v
                    } else {
                        (*field & 0xffff_ffff) | v << 32
                    };
                }
            }
            _ => {}
        }
    }

    fn set_status(&mut self, v: u8) {
        if v == 0 {
            self.reset();
            return;
        }
        let mut v = v;
        let new = v & !self.status;
        if new & VIRTIO_CONFIG_S_FEATURES_OK as u8 != 0 {
            let ok = self.driver_features & !self.features == 0
                && self.driver_features & 1 << VIRTIO_F_VERSION_1 != 0;
            if !ok {
                // The driver reads FEATURES_OK back and gives up.
                v &= !(VIRTIO_CONFIG_S_FEATURES_OK as u8);
            }
        }
        self.status = v;
        if new & VIRTIO_CONFIG_S_DRIVER_OK as u8 != 0 {
            if let Err(e) = self.activate() {
                crate::ratelimit::warn(format_args!("{}: {e}", self.name));
                self.needs_reset.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Starts the device's thread.
    fn activate(&mut self) -> std::result::Result<(), ActivateError> {
        let active = self.active_queues(&[])?;
        let State::Idle(dev) = std::mem::replace(&mut self.state, State::Lost) else {
            return Err(ActivateError::Running);
        };
        self.spawn(dev, active)
    }

    /// The queues the driver set up; `positions` (a snapshot's
    /// next_avail, next_used per queue) put them back where they were.
    fn active_queues(
        &self,
        positions: &[(u16, u16)],
    ) -> std::result::Result<Vec<ActiveQueue>, ActivateError> {
        if self.status & VIRTIO_CONFIG_S_FEATURES_OK as u8 == 0 {
            return Err(ActivateError::NoFeaturesOk);
        }
        let event_idx = self.driver_features & 1 << VIRTIO_RING_F_EVENT_IDX != 0;
        let mut active = Vec::new();
        for (index, c) in self.queues.iter().enumerate() {
            if !c.ready {
                continue;
            }
            let bad = |e| ActivateError::Queue(index, e);
            let mut q = Queue::new(c.max).map_err(bad)?;
            q.try_set_size(c.size)
                .and_then(|_| q.try_set_desc_table_address(GuestAddress(c.desc)))
                .and_then(|_| q.try_set_avail_ring_address(GuestAddress(c.avail)))
                .and_then(|_| q.try_set_used_ring_address(GuestAddress(c.used)))
                .map_err(bad)?;
            q.set_event_idx(event_idx);
            q.set_ready(true);
            if let Some(&(avail, used)) = positions.get(index) {
                q.set_next_avail(avail);
                q.set_next_used(used);
            }
            if !q.is_valid(self.mem) {
                return Err(ActivateError::RingsOutside(index));
            }
            let kick = self.kicks[index].clone();
            active.push(
                ActiveQueue::new(index, q, kick, c.vector).with_interrupt(self.interrupt.clone()),
            );
        }
        Ok(active)
    }

    fn spawn(
        &mut self,
        mut dev: Box<dyn VirtioDevice>,
        active: Vec<ActiveQueue>,
    ) -> std::result::Result<(), ActivateError> {
        dev.activate(self.driver_features);
        let shared = Shared {
            interrupt: self.interrupt.clone(),
            needs_reset: self.needs_reset.clone(),
            config_vector: self.config_vector,
        };
        match Worker::spawn(dev, active, shared, self.stop.clone(), self.mem) {
            Ok(w) => self.state = State::Running(w),
            Err(e) => return Err(ActivateError::Thread(e)),
        }
        Ok(())
    }

    /// Device reset (status 0): the queues and features are forgotten; the
    /// MSI-X table belongs to PCI and stays.
    fn reset(&mut self) {
        match std::mem::replace(&mut self.state, State::Lost) {
            State::Running(w) => {
                if let Some((dev, _)) = w.stop() {
                    self.state = State::Idle(dev);
                }
            }
            State::Quiesced(dev, _) | State::Idle(dev) => self.state = State::Idle(dev),
            State::Lost => {}
        }
        for q in &mut self.queues {
            *q = QueueConfig::new(q.max);
        }
        for k in &self.kicks {
            let _ = k.read();
        }
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        self.config_vector = NO_VECTOR;
        self.status = 0;
        self.interrupt.reset();
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    /// Moves the kick ioeventfds to where BAR 0 now is.
    fn place_kicks(&mut self, base: Option<u64>) {
        let vm = self.router.vm();
        if let Some(old) = self.kick_base.take() {
            for (i, k) in self.kicks.iter().enumerate() {
                let addr =
                    IoEventAddress::Mmio(old + NOTIFY + u64::from(NOTIFY_MULTIPLIER) * i as u64);
                let _ = vm.unregister_ioevent(k, &addr, NoDatamatch);
            }
        }
        let Some(new) = base else { return };
        for (i, k) in self.kicks.iter().enumerate() {
            let addr = IoEventAddress::Mmio(new + NOTIFY + u64::from(NOTIFY_MULTIPLIER) * i as u64);
            if let Err(e) = vm.register_ioevent(k, &addr, NoDatamatch) {
                // Kicks then come through bar_write: slower, still right.
                crate::ratelimit::warn(format_args!("{}: KVM_IOEVENTFD: {e}", self.name));
            }
        }
        self.kick_base = Some(new);
    }
}

impl VirtioPci {
    /// The BAR 0 access the configuration access capability names, if
    /// it names one: BAR 0, a length of 1, 2 or 4, aligned.
    fn pci_cfg_access(&self) -> Option<(u64, usize)> {
        let cap = self.pci_cfg_cap;
        let mut bar = [0u8];
        self.pci.read(cap + PCI_CFG_BAR, &mut bar);
        let offset = self.pci.u32_at(cap + PCI_CFG_OFFSET);
        let len = self.pci.u32_at(cap + PCI_CFG_LENGTH);
        let ok = bar[0] == 0 && matches!(len, 1 | 2 | 4) && offset.is_multiple_of(len);
        ok.then_some((offset.into(), len as usize))
    }
}

impl PciDevice for VirtioPci {
    fn quiesce(&mut self) {
        if !matches!(self.state, State::Running(_)) {
            return;
        }
        if let State::Running(w) = std::mem::replace(&mut self.state, State::Lost) {
            if let Some((dev, queues)) = w.stop() {
                self.state = State::Quiesced(dev, queues);
            }
        }
    }

    fn replug(&mut self) {
        self.reset();
        if let State::Idle(dev) = &mut self.state {
            dev.replugged();
            self.device_config = dev.config().to_vec();
        }
        // The same function's own bytes: set_raw cannot refuse them.
        let _ = self.pci.set_raw(&self.fresh);
        self.interrupt.msix().reset();
        self.place_kicks(None);
    }

    fn resume(&mut self) {
        if !matches!(self.state, State::Quiesced(..)) {
            return;
        }
        if let State::Quiesced(dev, queues) = std::mem::replace(&mut self.state, State::Lost) {
            if let Err(e) = self.spawn(dev, queues) {
                crate::ratelimit::warn(format_args!("{}: {e}", self.name));
                self.needs_reset.store(true, Ordering::SeqCst);
            }
        }
    }

    fn save_device(&self, e: &mut Enc) {
        if let State::Idle(dev) | State::Quiesced(dev, _) = &self.state {
            dev.save(e);
        }
    }

    fn restore_device(&mut self, d: &mut Dec) -> std::result::Result<(), StreamError> {
        match &mut self.state {
            State::Idle(dev) | State::Quiesced(dev, _) => dev.restore(d),
            _ => Err(d.bad(format!("{}: not quiesced", self.name))),
        }
    }

    fn save(&self, e: &mut Enc) {
        e.bytes(self.pci.raw())
            .u32(self.device_feature_select)
            .u32(self.driver_feature_select)
            .u64(self.driver_features)
            .u8(self.status)
            .u16(self.config_vector)
            .u16(self.queue_select)
            .u8(self.needs_reset.load(Ordering::SeqCst).into())
            .u8(self.interrupt.isr_value())
            .u16(self.queues.len() as u16);
        let positions = |i: usize| match &self.state {
            State::Quiesced(_, active) => active
                .iter()
                .find(|a| a.index == i)
                .map_or((0, 0), |a| (a.queue.next_avail(), a.queue.next_used())),
            _ => (0, 0),
        };
        for (i, q) in self.queues.iter().enumerate() {
            let (avail, used) = positions(i);
            e.u16(q.size)
                .u8(q.ready.into())
                .u16(q.vector)
                .u64(q.desc)
                .u64(q.avail)
                .u64(q.used)
                .u16(avail)
                .u16(used);
        }
        self.interrupt.msix().save(e);
    }

    fn restore(&mut self, d: &mut Dec) -> std::result::Result<(), StreamError> {
        let raw = d.bytes()?;
        self.pci
            .set_raw(raw)
            .map_err(|e| d.bad(format!("{}: {e}", self.name)))?;
        self.device_feature_select = d.u32()?;
        self.driver_feature_select = d.u32()?;
        self.driver_features = d.u64()?;
        self.status = d.u8()?;
        self.config_vector = d.u16()?;
        self.queue_select = d.u16()?;
        self.needs_reset.store(d.u8()? != 0, Ordering::SeqCst);
        let isr = d.u8()?;
        if usize::from(d.u16()?) != self.queues.len() {
            return Err(d.bad(format!("{}: queue count differs", self.name)));
        }
        let mut positions = Vec::with_capacity(self.queues.len());
        for q in &mut self.queues {
            q.size = d.u16()?;
            q.ready = d.u8()? != 0;
            q.vector = d.u16()?;
            q.desc = d.u64()?;
            q.avail = d.u64()?;
            q.used = d.u64()?;
            positions.push((d.u16()?, d.u16()?));
        }
        let control = self.pci.u16_at(self.msix_cap + 2);
        self.interrupt.msix().restore(d, control)?;
        self.interrupt.set_isr(isr);
        self.place_kicks(self.pci.bar_range(0).map(|(addr, _)| addr));
        // Quiesced, not running: the thread starts (resume) once the vCPUs
        // and the irqchip are restored, whose state would wipe an
        // interrupt it raised before. A NIC's first frame on the new tap
        // would be used without the guest ever hearing of it, and with
        // EVENT_IDX it would hear of no later one either.
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK as u8 != 0 {
            let active = self.active_queues(&positions);
            match (active, std::mem::replace(&mut self.state, State::Lost)) {
                (Ok(active), State::Idle(dev)) => self.state = State::Quiesced(dev, active),
                (Err(e), state) => {
                    // As a guest would see it on the source: the device
                    // wants a reset, the rest of the guest runs on.
                    self.state = state;
                    crate::ratelimit::warn(format_args!("{}: {e}", self.name));
                    self.needs_reset.store(true, Ordering::SeqCst);
                }
                (_, state) => self.state = state,
            }
        }
        Ok(())
    }

    fn config(&self) -> &ConfigSpace {
        &self.pci
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.pci
    }

    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        let window = self.pci_cfg_cap + PCI_CFG_DATA;
        if offset < window + 4 && window < offset + data.len() {
            if let Some((bar_offset, len)) = self.pci_cfg_access() {
                let mut v = [0u8; 4];
                self.bar_read(0, bar_offset, &mut v[..len]);
                self.pci.set_u32(window, u32::from_le_bytes(v));
            }
        }
        self.pci.read(offset, data)
    }

    fn config_written(&mut self, offset: usize, len: usize, moved: &[BarMove]) {
        let window = self.pci_cfg_cap + PCI_CFG_DATA;
        if offset < window + 4 && window < offset + len {
            if let Some((bar_offset, n)) = self.pci_cfg_access() {
                let v = self.pci.u32_at(window).to_le_bytes();
                self.bar_write(0, bar_offset, &v[..n]);
            }
        }
        let control = self.msix_cap + 2;
        if offset < control + 2 && control < offset + len {
            let v = self.pci.u16_at(control);
            self.interrupt.msix().set_control(v);
        }
        if let Some(m) = moved.iter().find(|m| m.bar == 0) {
            self.place_kicks(m.new);
        }
    }

    fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
        let len = data.len() as u64;
        let copy = |src: &[u8], at: u64, data: &mut [u8]| {
            for (i, b) in data.iter_mut().enumerate() {
                *b = src.get(at as usize + i).copied().unwrap_or(0);
            }
        };
        match offset {
            COMMON..0x40 => copy(&self.common(), offset - COMMON, data),
            ISR => {
                data.fill(0);
                data[0] = self.interrupt.read_isr();
            }
            DEVICE..0x3000 if offset + len <= DEVICE + DEVICE_LEN => {
                copy(&self.device_config, offset - DEVICE, data)
            }
            MSIX_TABLE..MSIX_PBA => self.interrupt.msix().read_table(offset - MSIX_TABLE, data),
            MSIX_PBA..0x6000 => self.interrupt.msix().read_pba(offset - MSIX_PBA, data),
            _ => data.fill(0),
        }
    }

    fn bar_write(&mut self, _bar: usize, offset: u64, data: &[u8]) {
        match offset {
            COMMON..0x40 => self.common_write(offset - COMMON, data),
            NOTIFY..MSIX_TABLE => {
                // Only when the ioeventfd is not registered.
                let q = ((offset - NOTIFY) / u64::from(NOTIFY_MULTIPLIER)) as usize;
                if let Some(k) = self.kicks.get(q) {
                    let _ = k.write(1);
                }
            }
            MSIX_TABLE..MSIX_PBA => self.interrupt.msix().write_table(offset - MSIX_TABLE, data),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::rng::Rng;
    use kvm_ioctls::Kvm;
    use virtio_bindings::virtio_config::{
        VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_FAILED,
    };
    use vm_memory::GuestMemoryMmap;

    /// An RNG function on a real VM (KVM is needed for its irqfds), and
    /// a driver that talks to its common configuration.
    fn rng() -> VirtioPci {
        let kvm = Kvm::new().expect("/dev/kvm");
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        let router = Arc::new(GsiRouter::new(vm));
        let mem: &'static GuestMemory = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap(),
        ));
        let at = Placement {
            bar0: 0xc000_0000,
            gsi: 17,
        };
        VirtioPci::new(Box::<Rng>::default(), at, router, mem).unwrap()
    }

    fn w16(d: &mut VirtioPci, off: u64, v: u16) {
        d.bar_write(0, off, &v.to_le_bytes());
    }
    fn w32(d: &mut VirtioPci, off: u64, v: u32) {
        d.bar_write(0, off, &v.to_le_bytes());
    }
    fn status(d: &mut VirtioPci) -> u8 {
        let mut b = [0u8];
        d.bar_read(0, 0x14, &mut b);
        b[0]
    }

    /// Negotiates version 1, then sets up queue 0 as asked and sets
    /// DRIVER_OK; returns the status the device then shows.
    fn start(d: &mut VirtioPci, size: u16, desc: u64) -> u8 {
        let s = (VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER) as u8;
        d.bar_write(0, 0x14, &[s]);
        w32(d, 0x08, 1);
        w32(d, 0x0c, 1); // VIRTIO_F_VERSION_1 is bit 32
        let s = s | VIRTIO_CONFIG_S_FEATURES_OK as u8;
        d.bar_write(0, 0x14, &[s]);
        assert_ne!(status(d) & VIRTIO_CONFIG_S_FEATURES_OK as u8, 0);
        w16(d, 0x16, 0);
        w16(d, 0x18, size);
        w32(d, 0x20, desc as u32);
        w32(d, 0x24, (desc >> 32) as u32);
        w32(d, 0x28, 0x1000);
        w32(d, 0x30, 0x2000);
        w16(d, 0x1c, 1);
        d.bar_write(0, 0x14, &[s | VIRTIO_CONFIG_S_DRIVER_OK as u8]);
        status(d)
    }

    const NEEDS_RESET: u8 = VIRTIO_CONFIG_S_NEEDS_RESET as u8;

    #[test]
    fn a_good_driver_gets_a_running_device_and_reset_stops_it() {
        let mut d = rng();
        let mut b = [0u8; 2];
        d.bar_read(0, 0x12, &mut b);
        assert_eq!(u16::from_le_bytes(b), 1, "num_queues");
        assert_eq!(start(&mut d, 64, 0) & NEEDS_RESET, 0);
        assert!(matches!(d.state, State::Running(_)));
        d.bar_write(0, 0x14, &[0]);
        assert_eq!(status(&mut d), 0);
        assert!(matches!(d.state, State::Idle(_)));
        // And it starts again after the reset.
        assert_eq!(start(&mut d, 16, 0) & NEEDS_RESET, 0);
        d.bar_write(0, 0x14, &[0]);
    }

    #[test]
    fn bad_queues_make_the_device_need_a_reset_not_crash() {
        // Size 0, too large, not a power of two; rings outside memory.
        for (size, desc) in [
            (0, 0),
            (1024, 0),
            (48, 0),
            (64, 1 << 40),
            (64, u64::MAX - 64),
        ] {
            let mut d = rng();
            let s = start(&mut d, size, desc);
            assert_ne!(s & NEEDS_RESET, 0, "size {size} desc {desc:#x}");
            assert!(matches!(d.state, State::Idle(_)));
            // The driver resets; the device comes back.
            d.bar_write(0, 0x14, &[0]);
            assert_eq!(status(&mut d), 0);
            assert_eq!(start(&mut d, 64, 0) & NEEDS_RESET, 0);
            d.bar_write(0, 0x14, &[0]);
        }
    }

    #[test]
    fn a_running_device_survives_save_and_restore() {
        let mut d = rng();
        assert_eq!(start(&mut d, 32, 0x3000) & NEEDS_RESET, 0);
        w16(&mut d, 0x1a, 1); // queue 0 on MSI-X vector 1
        d.quiesce();
        assert!(matches!(d.state, State::Quiesced(..)));
        let mut e = Enc::default();
        d.save(&mut e);
        let mut common = [0u8; 0x38];
        d.bar_read(0, 0, &mut common);
        d.resume();
        assert!(matches!(d.state, State::Running(_)));

        let mut copy = rng();
        let mut dec = Dec::new(crate::snapshot::stream::Tag::Devices, &e.0);
        copy.restore(&mut dec).unwrap();
        dec.end().unwrap();
        // Held until the vCPUs are back, then running.
        assert!(matches!(copy.state, State::Quiesced(..)));
        copy.resume();
        assert!(matches!(copy.state, State::Running(_)));
        let mut again = [0u8; 0x38];
        copy.bar_read(0, 0, &mut again);
        assert_eq!(common, again, "common configuration");
        // A stream from another kind of function is refused.
        let mut blk_like = e.0.clone();
        blk_like[4 + 2] ^= 1; // device ID, in config space
        assert!(rng()
            .restore(&mut Dec::new(
                crate::snapshot::stream::Tag::Devices,
                &blk_like
            ))
            .is_err());
        d.bar_write(0, 0x14, &[0]);
        copy.bar_write(0, 0x14, &[0]);
    }

    #[test]
    fn features_the_device_lacks_are_refused() {
        let mut d = rng();
        d.bar_write(
            0,
            0x14,
            &[(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER) as u8],
        );
        w32(&mut d, 0x08, 0);
        w32(&mut d, 0x0c, 1 << 5); // a block feature, not the RNG's
        d.bar_write(0, 0x14, &[VIRTIO_CONFIG_S_FEATURES_OK as u8 | 3]);
        assert_eq!(status(&mut d) & VIRTIO_CONFIG_S_FEATURES_OK as u8, 0);
        // DRIVER_OK without FEATURES_OK does not start the device.
        d.bar_write(0, 0x14, &[VIRTIO_CONFIG_S_DRIVER_OK as u8 | 3]);
        assert!(matches!(d.state, State::Idle(_)));
        d.bar_write(0, 0x14, &[VIRTIO_CONFIG_S_FAILED as u8]);
    }

    #[test]
    fn config_cycles_reach_bar0_through_the_access_capability() {
        let mut d = rng();
        let cap = d.pci_cfg_cap;
        // num_queues (common config 0x12, 2 bytes) through the window.
        d.pci.write(cap + PCI_CFG_OFFSET, &0x12u32.to_le_bytes());
        d.pci.write(cap + PCI_CFG_LENGTH, &2u32.to_le_bytes());
        let mut v = [0u8; 4];
        d.config_read(cap + PCI_CFG_DATA, &mut v);
        assert_eq!(u16::from_le_bytes([v[0], v[1]]), 1);
        // A write of queue_select = 7, read back directly.
        d.pci.write(cap + PCI_CFG_OFFSET, &0x16u32.to_le_bytes());
        d.pci.write(cap + PCI_CFG_DATA, &7u32.to_le_bytes());
        d.config_written(cap + PCI_CFG_DATA, 4, &[]);
        let mut b = [0u8; 2];
        d.bar_read(0, 0x16, &mut b);
        assert_eq!(u16::from_le_bytes(b), 7);
        // Misaligned or other BARs: nothing happens.
        d.pci.write(cap + PCI_CFG_OFFSET, &0x17u32.to_le_bytes());
        assert_eq!(d.pci_cfg_access(), None);
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let mut d = rng();
        let mut big = [0u8; 8];
        for off in [
            0u64, 0x3f, 0x1000, 0x2000, 0x2fff, 0x4000, 0x4ffc, 0x5000, 0x7ff8,
        ] {
            d.bar_read(0, off, &mut big);
            d.bar_write(0, off, &[0xff; 8]);
            d.bar_write(0, off, &[0xff; 3]);
        }
        // Queue select past the last queue reads as size 0.
        w16(&mut d, 0x16, 9);
        let mut b = [0u8; 2];
        d.bar_read(0, 0x18, &mut b);
        assert_eq!(b, [0, 0]);
    }
}
