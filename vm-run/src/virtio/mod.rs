//! Virtio 1.x devices. A device (block.rs, rng.rs) only turns one
//! descriptor chain at a time into work; the PCI transport (pci.rs) does
//! the register dance with the driver, and the queue worker here serves
//! the queues on a thread of its own (or, for a device that offers
//! lanes, a thread per queue), woken by ioeventfds, raising interrupts
//! through irqfds: a guest's kick never stops a vCPU in user space.

pub mod block;
pub mod buffers;
#[cfg(any(test, fuzzing))]
pub mod fuzz;
pub mod net;
pub mod pci;
pub mod rng;
pub mod scsi;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::irq::GsiRouter;
use crate::memory::GuestMemory;
use crate::pci::msix::Msix;
use crate::snapshot::stream::{Dec, Enc, StreamError};

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

    /// The features the driver accepted, told before the worker starts.
    fn activate(&mut self, _features: u64) {}

    /// The function was unplugged and is plugged back as new: the device
    /// takes on what it is to be from now on (a NIC its next MAC).
    fn replugged(&mut self) {}

    /// State the device keeps beyond its queues (the CD-ROM's drive), for
    /// a snapshot; nothing by default.
    fn save(&self, _e: &mut Enc) {}
    fn restore(&mut self, _d: &mut Dec) -> std::result::Result<(), StreamError> {
        Ok(())
    }

    /// A file the worker polls besides the kicks (a tap), while the
    /// device wants to hear from it; `None` stops polling it.
    fn poll_fd(&self) -> Option<RawFd> {
        None
    }

    /// Asked after each chain `handle` served: whether the driver should
    /// hear of it now, not once the queue is drained. Yes for a chain that
    /// took long to serve (a large disk request), so that the driver can
    /// queue the next one while the device works on the rest; no for
    /// short ones, which share one interrupt.
    fn signal_now(&self) -> bool {
        false
    }

    /// Another handle on this device, to serve some of its queues on a
    /// thread of its own while this one serves the others: for a device
    /// whose queues share nothing it does not guard itself (a disk's
    /// request queues). None, the default, serves all on one thread.
    fn lane(&self) -> Option<Box<dyn VirtioDevice>> {
        None
    }

    /// Serves queue `kicked` after its kick, or with `None` what came on
    /// `poll_fd`; returns the queues (by bit) that used buffers. Devices
    /// that move data between queues (net) override it; the others serve
    /// one chain at a time through `handle`.
    fn serve(
        &mut self,
        kicked: Option<usize>,
        queues: &mut [ActiveQueue],
        mem: &GuestMemory,
    ) -> std::result::Result<u64, (usize, virtio_queue::Error)> {
        let Some(q) = queues.iter_mut().find(|q| Some(q.index) == kicked) else {
            return Ok(0);
        };
        match drain_queue(self, q, mem) {
            Ok(used) => Ok(u64::from(used) << q.index),
            Err(e) => Err((q.index, e)),
        }
    }
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
            crate::ratelimit::warn(format_args!("KVM_IRQ_LINE {}: {e}", self.gsi));
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
    /// The used index when the driver was last considered for an
    /// interrupt: with EVENT_IDX it is owed one if its event index lies
    /// between this and the index now.
    signalled: u16,
    /// Where the queue's interrupts go; a queue without one (a unit
    /// test's) raises none.
    interrupt: Option<Arc<Interrupt>>,
}

impl ActiveQueue {
    pub fn new(index: usize, queue: Queue, kick: Arc<EventFd>, vector: u16) -> Self {
        let signalled = queue.next_used();
        ActiveQueue {
            index,
            queue,
            kick,
            vector,
            signalled,
            interrupt: None,
        }
    }

    pub fn with_interrupt(mut self, interrupt: Arc<Interrupt>) -> Self {
        self.interrupt = Some(interrupt);
        self
    }

    /// Interrupts the driver if it wants to hear of what was used since.
    fn signal(&mut self, mem: &GuestMemory) {
        let wanted = self.interrupt.is_some() && self.needs_interrupt(mem);
        if let (true, Some(i)) = (wanted, &self.interrupt) {
            i.signal(self.vector, ISR_QUEUE);
        }
    }

    /// Whether the driver wants an interrupt for what was used since the
    /// last call. virtio-queue's own check counts add_used calls, which
    /// publish_used bypasses; this one looks at the used index itself.
    fn needs_interrupt(&mut self, mem: &GuestMemory) -> bool {
        let new = self.queue.next_used();
        let old = std::mem::replace(&mut self.signalled, new);
        if !self.queue.event_idx_enabled() {
            return true;
        }
        // The used index must be visible before the event index is read,
        // or a driver that just re-armed would wait forever.
        fence(Ordering::SeqCst);
        let size = u64::from(self.queue.size());
        let event = GuestAddress(self.queue.avail_ring() + 4 + 2 * size);
        let Ok(event) = mem.load::<u16>(event, Ordering::Relaxed) else {
            return true;
        };
        // vring_need_event() of the spec (2.7.10).
        new.wrapping_sub(u16::from_le(event)).wrapping_sub(1) < new.wrapping_sub(old)
    }
}

/// Puts `used` (head, length) on the used ring and makes them visible to
/// the driver with one store of the index. add_used stores the index
/// every call, so a frame spanning several receive chains would be seen
/// in part: virtio_net counts that a length error and drops the frame.
pub fn publish_used(
    q: &mut Queue,
    mem: &GuestMemory,
    used: &[(u16, u32)],
) -> Result<(), virtio_queue::Error> {
    let size = q.size();
    let ring = q.used_ring();
    let mut next = q.next_used();
    for &(head, len) in used {
        if head >= size {
            return Err(virtio_queue::Error::InvalidDescriptorIndex);
        }
        let at = ring + 4 + u64::from(next % size) * 8;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&elem, GuestAddress(at))
            .map_err(virtio_queue::Error::GuestMemory)?;
        next = next.wrapping_add(1);
    }
    mem.store(next.to_le(), GuestAddress(ring + 2), Ordering::Release)
        .map_err(virtio_queue::Error::GuestMemory)?;
    q.set_next_used(next);
    Ok(())
}

type Served = (Box<dyn VirtioDevice>, Vec<ActiveQueue>);

/// A device's worker threads (one, or one per lane); dropping it does
/// not stop them, stop() does.
pub struct Worker {
    stop: Arc<EventFd>,
    threads: Vec<std::thread::JoinHandle<Served>>,
}

/// What the worker shares with the transport.
#[derive(Clone)]
pub struct Shared {
    pub interrupt: Arc<Interrupt>,
    pub needs_reset: Arc<AtomicBool>,
    pub config_vector: u16,
}

impl Worker {
    /// Starts serving `queues`: each on a thread of its own while the
    /// device gives lanes, the rest on the device's own thread. The
    /// eventfds come from the transport, made before the sandbox, which
    /// allows no new ones.
    pub fn spawn(
        dev: Box<dyn VirtioDevice>,
        mut queues: Vec<ActiveQueue>,
        shared: Shared,
        stop: Arc<EventFd>,
        mem: &'static GuestMemory,
    ) -> std::io::Result<Self> {
        let mut groups = Vec::new();
        while queues.len() > 1 {
            let Some(lane) = dev.lane() else { break };
            groups.extend(queues.pop().map(|q| (lane, vec![q])));
        }
        groups.push((dev, queues));
        let mut worker = Worker {
            stop,
            threads: Vec::new(),
        };
        for (mut dev, mut queues) in groups {
            let (stop_rx, shared) = (worker.stop.clone(), shared.clone());
            let thread = std::thread::Builder::new()
                .name(dev.name().to_string())
                .spawn(move || {
                    serve(dev.as_mut(), &mut queues, &shared, &stop_rx, mem);
                    (dev, queues)
                });
            match thread {
                Ok(t) => worker.threads.push(t),
                Err(e) => {
                    worker.stop();
                    return Err(e);
                }
            }
        }
        Ok(worker)
    }

    /// Stops the threads after the chain each is on, and returns the
    /// device and its queues (where the rings are and how far it got in
    /// them), in order; the lanes are dropped.
    pub fn stop(self) -> Option<Served> {
        // Every thread sees the stop; none reads it, or another might
        // never wake. It is cleared once all are gone.
        let _ = self.stop.write(1);
        let mut served: Vec<Served> = Vec::new();
        let mut lost = false;
        for t in self.threads {
            match t.join() {
                Ok(s) => served.push(s),
                Err(_) => lost = true,
            }
        }
        let _ = self.stop.read();
        // The device's own thread was spawned last.
        let (dev, mut queues) = served.pop().filter(|_| !lost)?;
        queues.extend(served.into_iter().flat_map(|(_, q)| q));
        queues.sort_by_key(|q| q.index);
        Some((dev, queues))
    }
}

fn serve(
    dev: &mut dyn VirtioDevice,
    queues: &mut [ActiveQueue],
    shared: &Shared,
    stop: &EventFd,
    mem: &'static GuestMemory,
) {
    let mut broken = 0u64;
    // The driver may have queued buffers before it set DRIVER_OK.
    for i in 0..queues.len() {
        let index = queues[i].index;
        let r = dev.serve(Some(index), queues, mem);
        notify(dev, r, queues, shared, mem, &mut broken);
    }
    let mut fds: Vec<libc::pollfd> = std::iter::once(stop.as_raw_fd())
        .chain(queues.iter().map(|q| q.kick.as_raw_fd()))
        .chain(std::iter::once(-1))
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let own = fds.len() - 1;
    loop {
        // A negative fd is skipped by poll: the device pauses its input
        // this way (a NIC whose guest has no receive buffers).
        fds[own].fd = dev.poll_fd().unwrap_or(-1);
        // SAFETY: fds is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            continue; // EINTR; poll has no other transient error here.
        }
        if fds[0].revents != 0 {
            return; // Worker::stop clears the eventfd.
        }
        for i in 0..queues.len() {
            if fds[1 + i].revents == 0 {
                continue;
            }
            let _ = queues[i].kick.read();
            let index = queues[i].index;
            if broken & 1 << index == 0 {
                let r = dev.serve(Some(index), queues, mem);
                notify(dev, r, queues, shared, mem, &mut broken);
            }
        }
        if fds[own].fd >= 0 && fds[own].revents != 0 {
            let r = dev.serve(None, queues, mem);
            notify(dev, r, queues, shared, mem, &mut broken);
        }
    }
}

/// Interrupts the driver for the queues that used buffers and wait for
/// it; a queue whose rings are not where they should be is marked broken
/// after telling the driver the device needs a reset.
fn notify(
    dev: &dyn VirtioDevice,
    r: std::result::Result<u64, (usize, virtio_queue::Error)>,
    queues: &mut [ActiveQueue],
    shared: &Shared,
    mem: &'static GuestMemory,
    broken: &mut u64,
) {
    match r {
        Ok(used) => {
            for q in queues.iter_mut().filter(|q| used & 1 << q.index != 0) {
                q.signal(mem);
            }
        }
        Err((index, e)) => {
            crate::ratelimit::warn(format_args!("{}: queue {index}: {e}", dev.name()));
            *broken |= 1 << index;
            shared.needs_reset.store(true, Ordering::SeqCst);
            shared.interrupt.signal(shared.config_vector, ISR_CONFIG);
        }
    }
}

/// Pops and serves chains until the ring is empty with notifications on
/// (so a kick racing the last pop is not lost); true if any was used.
pub fn drain_queue<D: VirtioDevice + ?Sized>(
    dev: &mut D,
    q: &mut ActiveQueue,
    mem: &GuestMemory,
) -> Result<bool, virtio_queue::Error> {
    let mut used = false;
    loop {
        q.queue.disable_notification(mem)?;
        loop {
            // Bound to a local so that the iterator's borrow of the queue
            // ends before add_used.
            let next = q.queue.iter(mem)?.next();
            let Some(chain) = next else { break };
            let head = chain.head_index();
            let len = dev.handle(q.index, chain, mem);
            q.queue.add_used(mem, head, len)?;
            used = true;
            if dev.signal_now() {
                q.signal(mem);
            }
        }
        if !q.queue.enable_notification(mem)? {
            return Ok(used);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::msix::Msix;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestMemoryMmap;

    /// Serves chains of one descriptor, each "long" if its length says so,
    /// and notes the ISR as each chain starts: whether the driver had
    /// been interrupted for the chains before it.
    struct Probe {
        interrupt: Arc<Interrupt>,
        long: bool,
        seen: Vec<u8>,
    }

    impl VirtioDevice for Probe {
        fn device_type(&self) -> u32 {
            0
        }
        fn name(&self) -> &str {
            "probe"
        }
        fn features(&self) -> u64 {
            0
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn config(&self) -> &[u8] {
            &[]
        }
        fn handle(&mut self, _: usize, chain: Chain<'_>, _: &GuestMemory) -> u32 {
            self.seen.push(self.interrupt.isr_value());
            self.long = chain.into_iter().map(|d| d.len()).sum::<u32>() > 1;
            0
        }
        fn signal_now(&self) -> bool {
            self.long
        }
    }

    /// Three chains of the given lengths, drained in one go; the ISR as
    /// each was served and after the drain.
    fn drain(lens: [u32; 3]) -> (Vec<u8>, u8) {
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        let router = Arc::new(GsiRouter::new(vm));
        // MSI-X stays disabled: signals set the ISR (INTx).
        let msix = Msix::new(1, router.clone()).unwrap();
        let interrupt = Arc::new(Interrupt::new(router, 17, msix));
        let mem: GuestMemory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mock = MockSplitQueue::new(&mem, 16);
        // Without NEXT flags, three chains of one descriptor each.
        let descs = lens.map(|len| RawDescriptor::from(SplitDescriptor::new(0x8000, len, 0, 0)));
        mock.add_desc_chains(&descs, 0).unwrap();
        let queue: Queue = mock.create_queue().unwrap();
        let kick = Arc::new(EventFd::new(0).unwrap());
        let mut q = ActiveQueue::new(0, queue, kick, 0).with_interrupt(interrupt.clone());
        let mut dev = Probe {
            interrupt: interrupt.clone(),
            long: false,
            seen: Vec::new(),
        };
        assert!(drain_queue(&mut dev, &mut q, &mem).unwrap());
        (dev.seen, interrupt.isr_value())
    }

    /// A device of three queues that offers lanes, noting on which
    /// thread it served each kick.
    struct Laned(Arc<Mutex<Vec<(usize, std::thread::ThreadId)>>>);

    impl VirtioDevice for Laned {
        fn device_type(&self) -> u32 {
            0
        }
        fn name(&self) -> &str {
            "laned"
        }
        fn features(&self) -> u64 {
            0
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16, 16]
        }
        fn config(&self) -> &[u8] {
            &[]
        }
        fn handle(&mut self, _: usize, _: Chain<'_>, _: &GuestMemory) -> u32 {
            0
        }
        fn serve(
            &mut self,
            kicked: Option<usize>,
            _: &mut [ActiveQueue],
            _: &GuestMemory,
        ) -> std::result::Result<u64, (usize, virtio_queue::Error)> {
            let mut seen = self.0.lock().unwrap();
            seen.extend(kicked.map(|q| (q, std::thread::current().id())));
            Ok(0)
        }
        fn lane(&self) -> Option<Box<dyn VirtioDevice>> {
            Some(Box::new(Laned(self.0.clone())))
        }
    }

    #[test]
    fn lanes_serve_each_queue_on_a_thread_and_stop_together() {
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        let router = Arc::new(GsiRouter::new(vm));
        let msix = Msix::new(4, router.clone()).unwrap();
        let shared = Shared {
            interrupt: Arc::new(Interrupt::new(router, 17, msix)),
            needs_reset: Arc::default(),
            config_vector: NO_VECTOR,
        };
        let mem: &'static GuestMemory = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap(),
        ));
        let queues = (0..3)
            .map(|i| {
                let mock = MockSplitQueue::create(mem, GuestAddress(i * 0x1000), 16);
                let kick = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
                ActiveQueue::new(i as usize, mock.create_queue().unwrap(), kick, 0)
            })
            .collect();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let w = Worker::spawn(
            Box::new(Laned(seen.clone())),
            queues,
            shared,
            stop.clone(),
            mem,
        )
        .unwrap();
        let (dev, queues) = w.stop().expect("every thread stopped");
        assert_eq!(dev.name(), "laned");
        let order: Vec<usize> = queues.iter().map(|q| q.index).collect();
        assert_eq!(order, [0, 1, 2], "every queue back, in order");
        // Each thread served its queue once as it started.
        let seen = seen.lock().unwrap();
        let threads: std::collections::HashSet<_> = seen.iter().map(|s| s.1).collect();
        assert_eq!(seen.len(), 3);
        assert_eq!(threads.len(), 3, "{seen:?}");
        // The stop is cleared for the next start.
        assert!(stop.read().is_err());
    }

    #[test]
    fn a_long_chain_is_signalled_before_the_next_is_served() {
        // Short ones wait for the end of the drain (notify, not here).
        assert_eq!(drain([1, 1, 1]), (vec![0, 0, 0], 0));
        assert_eq!(drain([1, 2, 1]), (vec![0, 0, ISR_QUEUE], ISR_QUEUE));
    }
}
