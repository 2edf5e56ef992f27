//! COM1, a 16550A UART (rust-vmm's vm-superio model) at port 0x3f8 on
//! IRQ 4. Its interrupt is an eventfd that KVM injects (irqfd); its output
//! goes to the console, and the console's input thread fills its receive
//! FIFO, told by `room` when the guest has drained it.

use std::io::{self, Write};

use vm_superio::serial::{SerialEvents, SerialState};
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;
use crate::snapshot::stream::{Dec, Enc, StreamError};

pub const COM1_BASE: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const PORT_LEN: u16 = 8;
/// The 16550A's receive FIFO.
const FIFO_SIZE: usize = 64;

/// Raises the UART's interrupt line through KVM's irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Tells the input thread that the receive FIFO has room again.
pub struct Room(pub EventFd);

impl SerialEvents for Room {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        // A failed write leaves the counter non-zero or the reader gone:
        // either way nobody waits in vain.
        let _ = self.0.write(1);
    }
}

pub type Output = Box<dyn Write + Send>;

pub struct Serial(vm_superio::Serial<IrqTrigger, Room, Output>);

impl Serial {
    pub fn new(irq: EventFd, room: EventFd, out: Output) -> Self {
        Serial(vm_superio::Serial::with_events(
            IrqTrigger(irq),
            Room(room),
            out,
        ))
    }

    /// A UART in the state a snapshot recorded (`load`), which fits: the
    /// UART takes what `load` lets through.
    pub fn from_state(irq: EventFd, room: EventFd, out: Output, state: &SerialState) -> Self {
        match vm_superio::Serial::from_state(state, IrqTrigger(irq), Room(room), out) {
            Ok(s) => Serial(s),
            Err(e) => unreachable!("load checked the UART state: {e:?}"),
        }
    }

    /// The registers and the receive FIFO, as the stream's DEVS section
    /// begins (docs/SNAPSHOT.md).
    pub fn save(&self, e: &mut Enc) {
        let s = self.0.state();
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
    }

    /// What `save` wrote, checked so that `from_state` takes it.
    pub fn load(d: &mut Dec) -> Result<SerialState, StreamError> {
        let mut r = [0u8; 9];
        for b in &mut r {
            *b = d.u8()?;
        }
        let in_buffer = d.bytes()?.to_vec();
        if in_buffer.len() > FIFO_SIZE {
            return Err(d.bad("UART FIFO over 64 bytes"));
        }
        Ok(SerialState {
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
        })
    }

    /// Queues console input for the guest; returns how much fit.
    pub fn enqueue(&mut self, bytes: &[u8]) -> usize {
        self.0.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(b) = data.first_mut() {
            *b = self.0.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(b) = data.first() {
            // A console that cannot take a byte loses it; the guest goes on.
            let _ = self.0.write(offset as u8, *b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn eventfd() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).unwrap()
    }

    #[test]
    fn output_and_input() {
        let sink = Sink::default();
        let (irq, room) = (eventfd(), eventfd());
        let room_reader = room.try_clone().unwrap();
        let mut s = Serial::new(irq, room, Box::new(sink.clone()));
        for b in b"hi" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");

        assert_eq!(s.enqueue(&[b'x'; 100]), 64, "the FIFO holds 64 bytes");
        assert_eq!(s.enqueue(b"y"), 0);
        let mut got = 0;
        let mut lsr = [0u8];
        loop {
            s.read(5, &mut lsr);
            if lsr[0] & 1 == 0 {
                break;
            }
            let mut b = [0u8];
            s.read(0, &mut b);
            assert_eq!(b[0], b'x');
            got += 1;
        }
        assert_eq!(got, 64);
        assert_eq!(room_reader.read().unwrap(), 1, "drained FIFO signals room");
    }

    #[test]
    fn save_and_load_round_trip() {
        let mut s = Serial::new(eventfd(), eventfd(), Box::new(Sink::default()));
        s.write(3, &[0x80]); // DLAB, to set the divisor
        s.write(0, &[0x0c]);
        s.write(3, &[0x03]);
        s.write(7, &[0x5a]);
        s.write(1, &[0x01]);
        s.enqueue(b"queued");
        let mut e = Enc::default();
        s.save(&mut e);
        let mut d = Dec::new(crate::snapshot::stream::Tag::Devices, &e.0);
        let state = Serial::load(&mut d).unwrap();
        d.end().unwrap();
        let fresh = Serial::from_state(eventfd(), eventfd(), Box::new(Sink::default()), &state);
        let mut again = Enc::default();
        fresh.save(&mut again);
        assert_eq!(again.0, e.0);
        assert_eq!(fresh.0.state().in_buffer, b"queued");

        let mut long = Enc::default();
        for _ in 0..9 {
            long.u8(0);
        }
        long.bytes(&[b'x'; 65]);
        let mut d = Dec::new(crate::snapshot::stream::Tag::Devices, &long.0);
        assert!(Serial::load(&mut d).is_err(), "a FIFO over 64 bytes");
    }
}
