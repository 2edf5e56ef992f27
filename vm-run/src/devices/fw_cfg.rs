//! QEMU's firmware configuration interface (fw_cfg), which SeaBIOS reads
//! to learn the machine: the CPU count, the memory map, the boot order,
//! the serial console, and the ACPI tables it installs for the OS. Items
//! are selected by a 16-bit key at port 0x510 and read a byte at a time
//! from 0x511, or by DMA: the guest writes the address of an access
//! structure to 0x514/0x518 (big-endian) and the transfer is done before
//! the write returns. Items are fixed once the guest runs; the guest can
//! write none of them.

use vm_memory::{Bytes, GuestAddress};

use super::BusDevice;
use crate::memory::GuestMemory;
use crate::snapshot::stream::{Dec, Enc, StreamError};

pub const PORT_BASE: u16 = 0x510;
/// Selector (0x510), data (0x511), DMA address high (0x514) and low (0x518).
pub const PORT_LEN: u16 = 0x0c;
const OFF_SELECTOR: u64 = 0;
const OFF_DATA: u64 = 1;
const OFF_DMA_HIGH: u64 = 4;
const OFF_DMA_LOW: u64 = 8;

pub const KEY_SIGNATURE: u16 = 0x00;
pub const KEY_ID: u16 = 0x01;
pub const KEY_RAM_SIZE: u16 = 0x03;
pub const KEY_NB_CPUS: u16 = 0x05;
pub const KEY_MAX_CPUS: u16 = 0x0f;
pub const KEY_FILE_DIR: u16 = 0x19;
/// Files get keys from here up, in the order of their names (as QEMU's).
const FIRST_FILE_KEY: u16 = 0x20;
/// ID bits: the port interface, and DMA.
const ID_TRADITIONAL: u32 = 1;
const ID_DMA: u32 = 2;
/// A directory entry: size (u32), select (u16), reserved (u16), name.
pub const FILE_NAME_LEN: usize = 56;
const DIR_ENTRY_LEN: usize = 64;

/// DMA control bits (QEMU's docs/specs/fw_cfg.rst).
const DMA_ERROR: u32 = 0x01;
const DMA_READ: u32 = 0x02;
const DMA_SKIP: u32 = 0x04;
const DMA_SELECT: u32 = 0x08;
const DMA_WRITE: u32 = 0x10;
/// The access structure: control, length (both u32), address (u64).
const DMA_ACCESS_LEN: usize = 16;
/// One transfer is at most the largest item; more is the guest's mistake,
/// and is refused rather than looped over.
const DMA_MAX: u32 = 64 << 20;

pub struct FwCfg {
    /// (key, contents); files are also named in the directory.
    items: Vec<(u16, Vec<u8>)>,
    files: Vec<(String, u16)>,
    selected: u16,
    offset: u32,
    dma_high: u32,
    mem: Option<&'static GuestMemory>,
}

impl FwCfg {
    /// The fixed items; `mem` is where DMA goes (None: no DMA offered).
    pub fn new(vcpus: u8, ram_size: u64, mem: Option<&'static GuestMemory>) -> Self {
        let id = ID_TRADITIONAL | if mem.is_some() { ID_DMA } else { 0 };
        let mut f = FwCfg {
            items: Vec::new(),
            files: Vec::new(),
            selected: 0,
            offset: 0,
            dma_high: 0,
            mem,
        };
        f.items.push((KEY_SIGNATURE, b"QEMU".to_vec()));
        f.items.push((KEY_ID, id.to_le_bytes().to_vec()));
        f.items
            .push((KEY_RAM_SIZE, ram_size.to_le_bytes().to_vec()));
        f.items
            .push((KEY_NB_CPUS, u16::from(vcpus).to_le_bytes().to_vec()));
        f.items
            .push((KEY_MAX_CPUS, u16::from(vcpus).to_le_bytes().to_vec()));
        f.rebuild_dir();
        f
    }

    /// Adds (or replaces) a named file. Names longer than 55 bytes do not
    /// fit the directory and are a programming error.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) {
        debug_assert!(name.len() < FILE_NAME_LEN);
        self.files.retain(|(n, _)| n != name);
        self.files.push((name.to_string(), 0));
        self.files.sort();
        // Keys follow the sorted names; contents move with them.
        let mut contents: Vec<(String, Vec<u8>)> = Vec::new();
        for (n, key) in &self.files {
            let data = if n == name {
                data.clone()
            } else {
                self.item(*key).map(<[u8]>::to_vec).unwrap_or_default()
            };
            contents.push((n.clone(), data));
        }
        self.items.retain(|(k, _)| *k < FIRST_FILE_KEY);
        for (i, (n, data)) in contents.into_iter().enumerate() {
            let key = FIRST_FILE_KEY + i as u16;
            self.files[i] = (n, key);
            self.items.push((key, data));
        }
        self.rebuild_dir();
    }

    fn rebuild_dir(&mut self) {
        let mut dir = (self.files.len() as u32).to_be_bytes().to_vec();
        for (name, key) in &self.files {
            let size = self.item(*key).map_or(0, <[u8]>::len) as u32;
            dir.extend_from_slice(&size.to_be_bytes());
            dir.extend_from_slice(&key.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut n = [0u8; FILE_NAME_LEN];
            n[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend_from_slice(&n);
        }
        debug_assert_eq!(dir.len(), 4 + self.files.len() * DIR_ENTRY_LEN);
        self.items.retain(|(k, _)| *k != KEY_FILE_DIR);
        self.items.push((KEY_FILE_DIR, dir));
    }

    fn item(&self, key: u16) -> Option<&[u8]> {
        self.items
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_slice())
    }

    fn select(&mut self, key: u16) {
        self.selected = key;
        self.offset = 0;
    }

    /// The next byte of the selected item; past its end, or of a key
    /// that holds nothing, 0.
    fn next_byte(&mut self) -> u8 {
        let b = self
            .item(self.selected)
            .and_then(|v| v.get(self.offset as usize).copied())
            .unwrap_or(0);
        self.offset = self.offset.saturating_add(1);
        b
    }

    /// Runs the DMA transfer described at guest address `addr`, and
    /// writes its status back there: 0 when done, the error bit when not.
    fn dma(&mut self, addr: u64) {
        let Some(mem) = self.mem else { return };
        let mut access = [0u8; DMA_ACCESS_LEN];
        if mem.read_slice(&mut access, GuestAddress(addr)).is_err() {
            return;
        }
        let be32 =
            |o: usize| u32::from_be_bytes([access[o], access[o + 1], access[o + 2], access[o + 3]]);
        let control = be32(0);
        let len = be32(4);
        let mut buf_addr = [0u8; 8];
        buf_addr.copy_from_slice(&access[8..16]);
        let buf_addr = u64::from_be_bytes(buf_addr);
        if control & DMA_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let ok = if control & DMA_WRITE != 0 || len > DMA_MAX {
            // Every item is read-only.
            false
        } else if control & DMA_READ != 0 {
            let start = self.offset as usize;
            let data = self.item(self.selected).unwrap_or(&[]);
            let mut out = vec![0u8; len as usize];
            if start < data.len() {
                let n = (data.len() - start).min(out.len());
                out[..n].copy_from_slice(&data[start..start + n]);
            }
            self.offset = self.offset.saturating_add(len);
            mem.write_slice(&out, GuestAddress(buf_addr)).is_ok()
        } else {
            if control & DMA_SKIP != 0 {
                self.offset = self.offset.saturating_add(len);
            }
            true
        };
        let status: u32 = if ok { 0 } else { DMA_ERROR };
        let _ = mem.write_slice(&status.to_be_bytes(), GuestAddress(addr));
    }

    /// The selected key, the offset into it and the DMA address's high
    /// half: all a snapshot needs, the items being rebuilt from the
    /// configuration.
    pub fn save(&self, e: &mut Enc) {
        e.u16(self.selected).u32(self.offset).u32(self.dma_high);
    }

    pub fn restore(&mut self, d: &mut Dec) -> Result<(), StreamError> {
        self.selected = d.u16()?;
        self.offset = d.u32()?;
        self.dma_high = d.u32()?;
        Ok(())
    }
}

impl BusDevice for FwCfg {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            // String I/O (`rep insb`) comes here one element at a time;
            // a wider read of the data port takes as many bytes.
            OFF_DATA => data.iter_mut().for_each(|b| *b = self.next_byte()),
            // The DMA registers read as 0 (QEMU's signature is for 64-bit
            // reads, which ports cannot do).
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (OFF_SELECTOR, 2) => self.select(u16::from_le_bytes([data[0], data[1]])),
            (OFF_DMA_HIGH, 4) => {
                self.dma_high = u32::from_be_bytes([data[0], data[1], data[2], data[3]])
            }
            (OFF_DMA_LOW, 4) => {
                let low = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                let addr = u64::from(self.dma_high) << 32 | u64::from(low);
                self.dma_high = 0;
                self.dma(addr);
            }
            _ => {}
        }
    }
}

/// The commands of `etc/table-loader` (SeaBIOS's romfile_loader.h): each
/// 128 bytes, little-endian, names NUL-padded to 56 bytes.
pub mod loader {
    use super::FILE_NAME_LEN;

    pub const ENTRY_LEN: usize = 128;
    const ALLOCATE: u32 = 1;
    const ADD_POINTER: u32 = 2;
    const ADD_CHECKSUM: u32 = 3;
    pub const ZONE_HIGH: u8 = 1;
    pub const ZONE_FSEG: u8 = 2;

    fn entry(command: u32) -> Vec<u8> {
        let mut e = Vec::with_capacity(ENTRY_LEN);
        e.extend_from_slice(&command.to_le_bytes());
        e
    }

    fn name(e: &mut Vec<u8>, n: &str) {
        let mut b = [0u8; FILE_NAME_LEN];
        b[..n.len()].copy_from_slice(n.as_bytes());
        e.extend_from_slice(&b);
    }

    fn finish(mut e: Vec<u8>) -> Vec<u8> {
        e.resize(ENTRY_LEN, 0);
        e
    }

    /// Copy `file` into guest memory of `zone`, aligned to `align`.
    pub fn allocate(file: &str, align: u32, zone: u8) -> Vec<u8> {
        let mut e = entry(ALLOCATE);
        name(&mut e, file);
        e.extend_from_slice(&align.to_le_bytes());
        e.push(zone);
        finish(e)
    }

    /// Add the address `src` was put at to the `size`-byte value at
    /// `offset` in `dest`.
    pub fn add_pointer(dest: &str, src: &str, offset: u32, size: u8) -> Vec<u8> {
        let mut e = entry(ADD_POINTER);
        name(&mut e, dest);
        name(&mut e, src);
        e.extend_from_slice(&offset.to_le_bytes());
        e.push(size);
        finish(e)
    }

    /// Make the bytes [start, start + len) of `file` sum to 0 by changing
    /// the byte at `offset`.
    pub fn add_checksum(file: &str, offset: u32, start: u32, len: u32) -> Vec<u8> {
        let mut e = entry(ADD_CHECKSUM);
        name(&mut e, file);
        e.extend_from_slice(&offset.to_le_bytes());
        e.extend_from_slice(&start.to_le_bytes());
        e.extend_from_slice(&len.to_le_bytes());
        finish(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn read_item(f: &mut FwCfg, key: u16, len: usize) -> Vec<u8> {
        f.write(OFF_SELECTOR, &key.to_le_bytes());
        let mut v = vec![0u8; len];
        for b in v.iter_mut() {
            let mut one = [0u8];
            f.read(OFF_DATA, &mut one);
            *b = one[0];
        }
        v
    }

    /// The directory as (name, key, size).
    fn dir(f: &mut FwCfg) -> Vec<(String, u16, u32)> {
        let n = u32::from_be_bytes(read_item(f, KEY_FILE_DIR, 4).try_into().unwrap());
        let all = read_item(f, KEY_FILE_DIR, 4 + n as usize * 64);
        all[4..]
            .chunks(64)
            .map(|e| {
                let name = e[8..].split(|b| *b == 0).next().unwrap();
                (
                    String::from_utf8(name.to_vec()).unwrap(),
                    u16::from_be_bytes([e[4], e[5]]),
                    u32::from_be_bytes([e[0], e[1], e[2], e[3]]),
                )
            })
            .collect()
    }

    #[test]
    fn signature_id_and_cpus() {
        let mem: &'static GuestMemory = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap(),
        ));
        let mut f = FwCfg::new(3, 64 << 20, Some(mem));
        assert_eq!(read_item(&mut f, KEY_SIGNATURE, 4), b"QEMU");
        assert_eq!(read_item(&mut f, KEY_ID, 4), [3, 0, 0, 0]);
        assert_eq!(read_item(&mut f, KEY_NB_CPUS, 2), [3, 0]);
        assert_eq!(
            read_item(&mut f, KEY_RAM_SIZE, 8),
            (64u64 << 20).to_le_bytes()
        );
        // Without DMA the ID says so.
        let mut f = FwCfg::new(1, 1 << 20, None);
        assert_eq!(read_item(&mut f, KEY_ID, 4), [1, 0, 0, 0]);
    }

    #[test]
    fn unknown_keys_and_reads_past_the_end_give_0() {
        let mut f = FwCfg::new(1, 1 << 20, None);
        assert_eq!(read_item(&mut f, 0x1234, 3), [0, 0, 0]);
        assert_eq!(read_item(&mut f, KEY_SIGNATURE, 6), b"QEMU\0\0");
        let mut b = [0xffu8; 4];
        f.read(OFF_DMA_HIGH, &mut b);
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn files_are_listed_sorted_and_read_by_port() {
        let mut f = FwCfg::new(1, 1 << 20, None);
        f.add_file("etc/sercon-port", 0x3f8u16.to_le_bytes().to_vec());
        f.add_file("bootorder", b"/pci@i0cf8/*@1\n".to_vec());
        f.add_file("etc/e820", vec![7; 40]);
        let d = dir(&mut f);
        let names: Vec<&str> = d.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["bootorder", "etc/e820", "etc/sercon-port"]);
        assert_eq!(d[1].2, 40);
        let (_, key, size) = d[2].clone();
        assert_eq!(read_item(&mut f, key, size as usize), [0xf8, 0x03]);
        let (_, key, size) = d[0].clone();
        assert_eq!(read_item(&mut f, key, size as usize), b"/pci@i0cf8/*@1\n");
        // A multi-byte read of the data port takes that many bytes.
        f.write(OFF_SELECTOR, &key.to_le_bytes());
        let mut two = [0u8; 2];
        f.read(OFF_DATA, &mut two);
        assert_eq!(&two, b"/p");
    }

    #[test]
    fn dma_reads_skips_and_refuses_writes() {
        let mem: &'static GuestMemory = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap(),
        ));
        let mut f = FwCfg::new(1, 1 << 20, Some(mem));
        f.add_file("etc/acpi/tables", (0..=255u8).collect());
        let key = dir(&mut f)[0].1;
        let access = |control: u32, len: u32, addr: u64| {
            let mut a = control.to_be_bytes().to_vec();
            a.extend_from_slice(&len.to_be_bytes());
            a.extend_from_slice(&addr.to_be_bytes());
            mem.write_slice(&a, GuestAddress(0x1000)).unwrap();
        };
        let status = || mem.read_obj::<[u8; 4]>(GuestAddress(0x1000)).unwrap();
        let go = |f: &mut FwCfg| {
            f.write(OFF_DMA_HIGH, &0u32.to_be_bytes());
            f.write(OFF_DMA_LOW, &0x1000u32.to_be_bytes());
        };
        // Select and skip 10 bytes, then read 8 of them.
        access(u32::from(key) << 16 | DMA_SELECT | DMA_SKIP, 10, 0);
        go(&mut f);
        assert_eq!(status(), [0; 4]);
        access(DMA_READ, 8, 0x2000);
        go(&mut f);
        assert_eq!(status(), [0; 4]);
        let got: [u8; 8] = mem.read_obj(GuestAddress(0x2000)).unwrap();
        assert_eq!(got, [10, 11, 12, 13, 14, 15, 16, 17]);
        // Past the end: zeros.
        access(u32::from(key) << 16 | DMA_SELECT | DMA_READ, 260, 0x3000);
        go(&mut f);
        let tail: [u8; 4] = mem.read_obj(GuestAddress(0x3000 + 256)).unwrap();
        assert_eq!(tail, [0; 4]);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x3000 + 255)).unwrap(), 255);
        // Writes are refused with the error bit.
        access(u32::from(key) << 16 | DMA_SELECT | DMA_WRITE, 4, 0x2000);
        go(&mut f);
        assert_eq!(status(), DMA_ERROR.to_be_bytes());
        // An access structure outside memory changes nothing and does not panic.
        f.write(OFF_DMA_LOW, &0xffff_fff0u32.to_be_bytes());
    }

    #[test]
    fn loader_commands_are_128_bytes() {
        let a = loader::allocate("etc/acpi/rsdp", 16, loader::ZONE_FSEG);
        let p = loader::add_pointer("etc/acpi/rsdp", "etc/acpi/tables", 24, 8);
        let c = loader::add_checksum("etc/acpi/rsdp", 8, 0, 20);
        for e in [&a, &p, &c] {
            assert_eq!(e.len(), loader::ENTRY_LEN);
        }
        assert_eq!(&a[..4], &[1, 0, 0, 0]);
        assert_eq!(&a[4..17], b"etc/acpi/rsdp");
        assert_eq!(&a[60..64], &16u32.to_le_bytes());
        assert_eq!(a[64], loader::ZONE_FSEG);
        assert_eq!(&p[60..75], b"etc/acpi/tables");
        assert_eq!(&p[116..120], &24u32.to_le_bytes());
        assert_eq!(p[120], 8);
        assert_eq!(&c[60..72], &[8, 0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0]);
    }

    #[test]
    fn state_round_trips() {
        let mut f = FwCfg::new(1, 1 << 20, None);
        f.add_file("bootorder", b"HALT".to_vec());
        let key = dir(&mut f)[0].1;
        read_item(&mut f, key, 2);
        f.write(OFF_DMA_HIGH, &7u32.to_be_bytes());
        let mut e = Enc::default();
        f.save(&mut e);
        let mut g = FwCfg::new(1, 1 << 20, None);
        g.add_file("bootorder", b"HALT".to_vec());
        let mut d = Dec::new(crate::snapshot::stream::Tag::Devices, &e.0);
        g.restore(&mut d).unwrap();
        d.end().unwrap();
        assert_eq!((g.selected, g.offset, g.dma_high), (key, 2, 7));
        let mut b = [0u8; 2];
        g.read(OFF_DATA, &mut b);
        assert_eq!(&b, b"LT");
        // A truncated state is an error, not a panic.
        let mut d = Dec::new(crate::snapshot::stream::Tag::Devices, &e.0[..3]);
        assert!(g.restore(&mut d).is_err());
    }
}

/// What the fuzz target `fw_cfg` runs: port accesses and DMA transfers
/// over a small guest memory. Byte 0 is the number of accesses, each 5
/// bytes: a kind, then 4 bytes of data (a key, a DMA address half, or an
/// offset and width); the rest is the guest's memory, access structures
/// and buffers alike.
#[cfg(any(test, fuzzing))]
pub mod fuzz {
    use std::sync::{Mutex, OnceLock};

    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    const MEM_SIZE: usize = 64 << 10;

    /// One memory for every run (FwCfg wants it for the life of the
    /// process), rewritten from each input; the lock keeps tests that
    /// run at once from sharing it.
    fn memory() -> &'static Mutex<GuestMemory> {
        static MEM: OnceLock<Mutex<GuestMemory>> = OnceLock::new();
        MEM.get_or_init(|| {
            Mutex::new(
                GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
                    .expect("64 KiB of anonymous memory"),
            )
        })
    }

    pub fn accesses(data: &[u8]) {
        run(data, |_| ());
    }

    /// Runs `data`, then `look` at the guest's memory.
    fn run(data: &[u8], look: impl FnOnce(&GuestMemory)) {
        let Some((&n, rest)) = data.split_first() else {
            return;
        };
        let (ops, image) = rest.split_at((usize::from(n) * 5).min(rest.len()));
        let guard = memory().lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the memory lives in a static for the rest of the
        // process, and the lock is held for as long as this reference is
        // used: FwCfg is dropped before the guard.
        let mem: &'static GuestMemory = unsafe { &*(&*guard as *const GuestMemory) };
        let zero = vec![0u8; MEM_SIZE];
        let n = image.len().min(MEM_SIZE);
        let _ = mem.write_slice(&zero, GuestAddress(0));
        let _ = mem.write_slice(&image[..n], GuestAddress(0));
        {
            let mut f = FwCfg::new(2, 1 << 30, Some(mem));
            f.add_file("bootorder", b"/pci@i0cf8/*@3\nHALT".to_vec());
            let mut loader = loader::allocate("etc/acpi/rsdp", 16, loader::ZONE_FSEG);
            loader.extend(loader::add_checksum("etc/acpi/rsdp", 8, 0, 20));
            f.add_file("etc/table-loader", loader);
            f.add_file(
                "etc/acpi/rsdp",
                b"RSD PTR \0BOCHS \0\0\0\0\0\0\0\0".to_vec(),
            );
            for op in ops.chunks_exact(5) {
                let v = [op[1], op[2], op[3], op[4]];
                let width = 1 << (op[2] % 3);
                match op[0] % 6 {
                    0 => f.write(OFF_SELECTOR, &v[..2]),
                    1 => f.read(OFF_DATA, &mut [0u8; 4][..width]),
                    2 => f.write(OFF_DMA_HIGH, &v),
                    3 => f.write(OFF_DMA_LOW, &v),
                    4 => f.write(u64::from(op[1] % 12), &v[..width]),
                    _ => f.read(u64::from(op[1] % 12), &mut [0u8; 4][..width]),
                }
            }
        }
        look(mem);
        drop(guard);
    }

    /// A DMA access structure at `at` (control, length, address, all
    /// big-endian), and the accesses that run it.
    fn dma(at: u32, control: u32, len: u32, addr: u64) -> (Vec<u8>, Vec<u8>) {
        let mut s = control.to_be_bytes().to_vec();
        s.extend_from_slice(&len.to_be_bytes());
        s.extend_from_slice(&addr.to_be_bytes());
        let mut ops = vec![2, 0, 0, 0, 0, 3];
        ops.extend_from_slice(&at.to_be_bytes());
        (s, ops)
    }

    /// An input of `ops` (5 bytes each) with `structs` at 0x100 on.
    fn input(ops: &[u8], structs: &[u8]) -> Vec<u8> {
        let mut data = vec![(ops.len() / 5) as u8];
        data.extend_from_slice(ops);
        let mut image = vec![0u8; 0x100];
        image.extend_from_slice(structs);
        data.extend_from_slice(&image);
        data
    }

    /// The seeds of vm-run/fuzz/corpus/fw_cfg: SeaBIOS's probes and
    /// reads, by port and by DMA, and the transfers that must fail.
    pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
        let select = |key: u16| {
            let k = key.to_le_bytes();
            vec![0, k[0], k[1], 0, 0]
        };
        let byte = [1u8, 0, 0, 0, 0];
        let mut signature = select(KEY_SIGNATURE);
        (0..4).for_each(|_| signature.extend_from_slice(&byte));
        let mut dir = select(KEY_FILE_DIR);
        (0..8).for_each(|_| dir.extend_from_slice(&[1, 0, 2, 0, 0]));
        let control = |key: u16, bits: u32| u32::from(key) << 16 | DMA_SELECT | bits;
        let (read_dir, ops) = dma(0x100, control(KEY_FILE_DIR, DMA_READ), 200, 0x400);
        let (read_ram, ops2) = dma(0x100, control(KEY_RAM_SIZE, DMA_READ), 8, 0x400);
        let (skip, skip_ops) = dma(0x100, control(0x20, DMA_SKIP), 4, 0);
        let (read_on, read_on_ops) = dma(0x110, DMA_READ, 16, 0x500);
        let (write, write_ops) = dma(0x100, control(0x20, DMA_WRITE), 4, 0x400);
        let (huge, huge_ops) = dma(0x100, control(0x20, DMA_READ), DMA_MAX + 1, 0x400);
        let (outside, outside_ops) = dma(0x100, control(0x20, DMA_READ), 64, 0xfff0);
        vec![
            ("signature", input(&signature, &[])),
            ("dir_by_port", input(&dir, &[])),
            ("dma_dir", input(&ops, &read_dir)),
            ("dma_ram_size", input(&ops2, &read_ram)),
            (
                "dma_skip_then_read",
                input(&[skip_ops, read_on_ops].concat(), &[skip, read_on].concat()),
            ),
            ("dma_write_refused", input(&write_ops, &write)),
            ("dma_too_long", input(&huge_ops, &huge)),
            ("dma_outside_memory", input(&outside_ops, &outside)),
        ]
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::virtio::fuzz::support;

        /// The status each DMA seed leaves in its access structure.
        #[test]
        fn dma_seeds_end_as_intended() {
            for (name, data) in seeds().into_iter().filter(|(n, _)| n.starts_with("dma")) {
                let fails = ["refused", "long", "outside"];
                let want = if fails.iter().any(|f| name.contains(f)) {
                    DMA_ERROR
                } else {
                    0
                };
                run(&data, |mem| {
                    let status: [u8; 4] = mem.read_obj(GuestAddress(0x100)).unwrap();
                    assert_eq!(u32::from_be_bytes(status), want, "{name}");
                    if name == "dma_ram_size" {
                        let ram: u64 = mem.read_obj(GuestAddress(0x400)).unwrap();
                        assert_eq!(ram, 1 << 30);
                    }
                });
            }
        }

        #[test]
        fn random_guests_do_not_crash_fw_cfg() {
            for data in support::inputs(0xbb67_ae85_84ca_a73b, 300, 2048, &seeds()) {
                accesses(&data);
            }
        }

        #[test]
        fn fw_cfg_corpus_is_current() {
            support::corpus_is_current("fw_cfg", &seeds());
        }

        #[test]
        #[ignore]
        fn write_seeds() {
            support::write_corpus("fw_cfg", &seeds());
        }
    }
}
