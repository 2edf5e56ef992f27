//! Virtio 1.x devices. A device (block.rs, rng.rs) only turns one
//! descriptor chain at a time into work; the PCI transport (pci.rs) does
//! the register dance with the driver, and the queue worker here serves
//! the queues on a thread of its own, woken by ioeventfds, raising
//! interrupts through irqfds: a guest's kick never stops a vCPU in user
//! space.

pub mod block;
#[cfg(any(test, fuzzing))]
pub mod fuzz;
pub mod net;
pub mod pci;
pub mod rng;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemory;
use crate::pci::msix::Msix;
use crate::x86::irqchip::GsiRouter;

/// "No MSI-X vector" in the common configuration.
pub const NO_VECTOR: u16 = 0xffff;
/// ISR status bits, for INTx.
pub const ISR_QUEUE: u8 = 1;
pub const ISR_CONFIG: u8 = 2;

pub type Chain<'a> = DescriptorChain<&'a GuestMemory>;

/// What a virtio device model provides; the transport does the rest.
pub trait VirtioDevice: Send + 'static {
    /// VIRTIO_ID_*.
    fn device_type(&self) -> u32;
    /// For thread names and messages.
    fn name(&self) -> &str;
    /// Every feature the device offers, transport features included.
    fn features(&self) -> u64;
    fn queue_max_sizes(&self) -> &[u16];
    /// The device-specific configuration, read-only for the driver.
    fn config(&self) -> &[u8];
    /// Serves one chain from queue `queue`; returns how many bytes it
    /// wrote into the chain's device-writable buffers.
    fn handle(&mut self, queue: usize, chain: Chain<'_>, mem: &GuestMemory) -> u32;

    /// A host fd whose readability is work for the device (a NIC's tap).
    fn host_fd(&self) -> Option<RawFd> {
        None
    }
    /// Queues whose chains the device takes when it has something for
    /// them (a NIC's receive queue), not on every kick.
    fn on_demand(&self, _queue: usize) -> bool {
        false
    }
    /// The host fd is readable, or a kick came: fill what on-demand
    /// buffers the device can. Returns whether it used any, and whether it
    /// wants the host fd polled (not while it has no buffers to fill).
    fn host_ready(&mut self, _queues: &mut [ActiveQueue], _mem: &GuestMemory) -> HostWork {
        HostWork::default()
    }
}

#[derive(Default)]
pub struct HostWork {
    /// Indexes into the queues slice of those that got used entries.
    pub used: Vec<usize>,
    pub poll_host: bool,
}

/// How a device tells the driver that it used buffers: MSI-X when the
/// driver enabled it, INTx with the ISR register otherwise.
///
/// INTx is level-triggered: the line is up exactly while the ISR is not
/// zero, set with KVM_IRQ_LINE by whoever changes the ISR. (An irqfd
/// with a resample fd would do it without the ioctl, but INTx is the
/// slow path of guests without MSI, and this needs no resample fd to
/// watch.)
pub struct Interrupt {
    /// The ISR, and the lock that keeps it and the line in step.
    isr: Mutex<u8>,
    router: Arc<GsiRouter>,
    gsi: u32,
    msix: Mutex<Msix>,
}

impl Interrupt {
    pub fn new(router: Arc<GsiRouter>, gsi: u32, msix: Msix) -> Self {
        Interrupt {
            isr: Mutex::new(0),
            router,
            gsi,
            msix: Mutex::new(msix),
        }
    }

    pub fn msix(&self) -> std::sync::MutexGuard<'_, Msix> {
        self.msix.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn isr(&self) -> std::sync::MutexGuard<'_, u8> {
        self.isr.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_line(&self, level: bool) {
        if let Err(e) = self.router.vm().set_irq_line(self.gsi, level) {
            eprintln!("vm-run: KVM_IRQ_LINE {}: {e}", self.gsi);
        }
    }

    pub fn signal(&self, vector: u16, isr_bit: u8) {
        let mut msix = self.msix();
        if msix.enabled() {
            if vector != NO_VECTOR {
                msix.trigger(vector);
            }
            return;
        }
        drop(msix);
        let mut isr = self.isr();
        if *isr == 0 {
            self.set_line(true);
        }
        *isr |= isr_bit;
    }

    /// The guest read the ISR, which acknowledges INTx.
    pub fn read_isr(&self) -> u8 {
        let mut isr = self.isr();
        let was = std::mem::take(&mut *isr);
        if was != 0 {
            self.set_line(false);
        }
        was
    }

    pub fn reset(&self) {
        self.read_isr();
    }

    /// The ISR, for a snapshot.
    pub fn isr_value(&self) -> u8 {
        *self.isr()
    }

    /// Puts back a snapshot's ISR, and the INTx line with it.
    pub fn set_isr(&self, v: u8) {
        let mut isr = self.isr();
        *isr = v;
        if !self.msix().enabled() {
            self.set_line(v != 0);
        }
    }
}

/// One queue as the worker serves it.
pub struct ActiveQueue {
    pub index: usize,
    pub queue: Queue,
    pub kick: Arc<EventFd>,
    pub vector: u16,
}

/// A device's worker thread; dropping it does not stop it, stop() does.
pub struct Worker {
    stop: Arc<EventFd>,
    thread: std::thread::JoinHandle<(Box<dyn VirtioDevice>, Vec<ActiveQueue>)>,
}

/// What the worker shares with the transport.
pub struct Shared {
    pub interrupt: Arc<Interrupt>,
    pub needs_reset: Arc<AtomicBool>,
    pub config_vector: u16,
}

impl Worker {
    /// Starts serving `queues`. The eventfds come from the transport,
    /// made before the sandbox, which allows no new ones.
    pub fn spawn(
        mut dev: Box<dyn VirtioDevice>,
        mut queues: Vec<ActiveQueue>,
        shared: Shared,
        stop: Arc<EventFd>,
        mem: &'static GuestMemory,
    ) -> std::io::Result<Self> {
        let stop_rx = stop.clone();
        let thread = std::thread::Builder::new()
            .name(dev.name().to_string())
            .spawn(move || {
                serve(dev.as_mut(), &mut queues, &shared, &stop_rx, mem);
                (dev, queues)
            })?;
        Ok(Worker { stop, thread })
    }

    /// Stops the thread after the chain it is on, and returns the device
    /// and its queues (where the rings are and how far it got in them).
    pub fn stop(self) -> Option<(Box<dyn VirtioDevice>, Vec<ActiveQueue>)> {
        let _ = self.stop.write(1);
        self.thread.join().ok()
    }
}

fn serve(
    dev: &mut dyn VirtioDevice,
    queues: &mut [ActiveQueue],
    shared: &Shared,
    stop: &EventFd,
    mem: &'static GuestMemory,
) {
    let mut broken = vec![false; queues.len()];
    // The driver may have queued buffers before it set DRIVER_OK.
    for (i, q) in queues.iter_mut().enumerate() {
        if !dev.on_demand(q.index) {
            broken[i] = !serve_queue(dev, q, shared, mem);
        }
    }
    let mut fds: Vec<libc::pollfd> = std::iter::once(stop.as_raw_fd())
        .chain(queues.iter().map(|q| q.kick.as_raw_fd()))
        .chain(dev.host_fd())
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let host = dev.host_fd().map(|_| fds.len() - 1);
    let mut host_work = host.is_some();
    loop {
        if let Some(h) = host {
            if host_work {
                let work = dev.host_ready(queues, mem);
                for i in work.used {
                    if let Some(q) = queues.get_mut(i) {
                        if q.queue.needs_notification(mem).unwrap_or(true) {
                            shared.interrupt.signal(q.vector, ISR_QUEUE);
                        }
                    }
                }
                fds[h].events = if work.poll_host { libc::POLLIN } else { 0 };
                host_work = false;
            }
        }
        // SAFETY: fds is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            continue; // EINTR; poll has no other transient error here.
        }
        if fds[0].revents != 0 {
            let _ = stop.read();
            return;
        }
        for (i, q) in queues.iter_mut().enumerate() {
            if fds[1 + i].revents == 0 {
                continue;
            }
            let _ = q.kick.read();
            if dev.on_demand(q.index) {
                host_work = true;
            } else if !broken[i] && !serve_queue(dev, q, shared, mem) {
                broken[i] = true;
            }
            // What a queue served may have made work for the host side
            // (a NIC answering the guest itself).
            host_work |= host.is_some();
        }
        if host.is_some_and(|h| fds[h].revents != 0) {
            host_work = true;
        }
    }
}

/// Serves every chain the driver made available; false when the queue is
/// unusable (its rings are not where they should be), after telling the
/// driver the device needs a reset.
fn serve_queue(
    dev: &mut dyn VirtioDevice,
    q: &mut ActiveQueue,
    shared: &Shared,
    mem: &'static GuestMemory,
) -> bool {
    match drain_queue(dev, q.index, &mut q.queue, mem) {
        Ok(false) => true,
        Ok(true) => {
            if q.queue.needs_notification(mem).unwrap_or(true) {
                shared.interrupt.signal(q.vector, ISR_QUEUE);
            }
            true
        }
        Err(e) => {
            eprintln!("vm-run: {}: queue {}: {e}", dev.name(), q.index);
            shared.needs_reset.store(true, Ordering::SeqCst);
            shared.interrupt.signal(shared.config_vector, ISR_CONFIG);
            false
        }
    }
}

/// Pops and serves chains until the ring is empty with notifications on
/// (so a kick racing the last pop is not lost); true if any was used.
pub fn drain_queue(
    dev: &mut dyn VirtioDevice,
    index: usize,
    queue: &mut Queue,
    mem: &GuestMemory,
) -> Result<bool, virtio_queue::Error> {
    let mut used = false;
    loop {
        queue.disable_notification(mem)?;
        loop {
            // Bound to a local so that the iterator's borrow of the queue
            // ends before add_used.
            let next = queue.iter(mem)?.next();
            let Some(chain) = next else { break };
            let head = chain.head_index();
            let len = dev.handle(index, chain, mem);
            queue.add_used(mem, head, len)?;
            used = true;
        }
        if !queue.enable_notification(mem)? {
            return Ok(used);
        }
    }
}
