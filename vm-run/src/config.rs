//! The command line, parsed once into one validated struct.

use std::ffi::OsString;
use std::path::PathBuf;

use nix::unistd::{Gid, Group, Uid, User};

use crate::disk::DiskSpec;
use crate::error::{Error, Result};
use crate::nic::{self, NicSpec};

pub const USAGE: &str =
    "usage: vm-run [-pv] [-a cmdline] [-c ncpus] [-d [raw:|qcow2:]disk[,ro]] ... \
[-i initrd] [-m size] [-P on|off] [-n fd[,lladdr=mac]] ... [-N name [-o user[:group]]] [-r iso] [-B disk|cdrom] [-b kernel|bios]";

/// The BIOS booted when there is no -b: Debian's seabios package's.
pub const DEFAULT_BIOS: &str = "/usr/share/seabios/bios-256k.bin";
/// Names another default BIOS.
pub const BIOS_ENV: &str = "VM_RUN_BIOS";

/// Disks a guest may have: vmd allows 4, PCI slots allow 30 with room
/// for the RNG and a NIC or two.
pub const MAX_DISKS: usize = 16;

/// vmd's default guest memory.
const DEFAULT_MEM: u64 = 512 << 20;
/// Below this not even a tiny Linux decompresses itself.
const MIN_MEM: u64 = 2 << 20;
const DEFAULT_CMDLINE: &str = "console=ttyS0";
const PAGE: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Console {
    /// COM1 on our stdin and stdout.
    Stdio,
    /// COM1 on a new pseudo-terminal whose name is printed on stdout.
    Pty,
    /// COM1's output on stdout, input only through the control socket
    /// (vm-receive, whose stdin is the snapshot stream).
    StdoutOnly,
}

/// The device a BIOS boots first (-B, vmctl's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootDevice {
    Disk,
    Cdrom,
}

/// What decides how a BIOS boots, and which kernel-only options were
/// given (they make no sense with a BIOS).
#[derive(Debug, Clone, Default)]
pub struct Firmware {
    /// No -b: `kernel` is the default BIOS (DEFAULT_BIOS or $VM_RUN_BIOS).
    pub default_bios: bool,
    /// -B; None boots as a PC does, disks first, then the CD-ROM.
    pub boot_device: Option<BootDevice>,
    /// -a was given.
    pub cmdline_given: bool,
}

#[derive(Debug)]
pub struct Config {
    /// -b's file, a kernel or a BIOS image; without -b the default BIOS.
    pub kernel: PathBuf,
    pub firmware: Firmware,
    pub initrd: Option<PathBuf>,
    pub disks: Vec<DiskSpec>,
    /// The ISO image in the CD-ROM drive (`-r`), read-only; a plain
    /// path, never a `-d` specification.
    pub cdrom: Option<PathBuf>,
    /// NICs: VM_NET_FDS's (vm-net) in order, then -n's.
    pub nics: Vec<NicSpec>,
    pub cmdline: String,
    pub vcpus: u8,
    pub mem_size: u64,
    pub console: Console,
    pub verbose: bool,
    /// -P: whether the guest has an i8254 PIT; None gives one to a BIOS
    /// and none to a kernel booted directly (vm.rs).
    pub pit: Option<bool>,
    /// The guest's name (vmctl's rule, see `check_name`); names the control
    /// socket and seeds stable per-guest identities such as MAC addresses.
    pub name: Option<String>,
    /// Who may use the control socket besides root and us (vm.conf's
    /// `owner user:group`).
    pub owner: Option<(Uid, Option<Gid>)>,
    /// The guest's size comes from a snapshot stream (vm-receive), not
    /// from options: messages about it must not name -m or -c.
    pub received: bool,
}

impl Config {
    /// The memory size as the user gave it, for messages.
    pub fn mem_words(&self) -> String {
        match self.received {
            false => format!("-m {}M", self.mem_size >> 20),
            true => format!("the stream's {}M of memory", self.mem_size >> 20),
        }
    }

    /// The vCPU count as the user gave it, for messages.
    pub fn vcpu_words(&self) -> String {
        match self.received {
            false => format!("-c {}", self.vcpus),
            true => format!("the stream's {} vCPUs", self.vcpus),
        }
    }
}

pub enum Parsed {
    Run(Config),
    Help,
}

pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Parsed> {
    use lexopt::prelude::*;

    let mut p = lexopt::Parser::from_iter(args);
    let mut kernel = None;
    let mut initrd = None;
    let mut disks = Vec::new();
    let mut cdrom: Option<PathBuf> = None;
    let mut nics = nic::from_env(|k| std::env::var(k).ok()).map_err(Error::Usage)?;
    let mut cmdline = None;
    let mut vcpus = 1u8;
    let mut mem_size = DEFAULT_MEM;
    let mut console = Console::Stdio;
    let mut verbose = false;
    let mut pit = None;
    let mut name = None;
    let mut owner = None;
    let mut boot_device = None;

    while let Some(arg) = p.next().map_err(usage)? {
        match arg {
            Short('b') => kernel = Some(PathBuf::from(p.value().map_err(usage)?)),
            Short('d') => {
                let v = string(p.value().map_err(usage)?, "-d")?;
                let spec = v
                    .parse::<DiskSpec>()
                    .map_err(|e| Error::Usage(format!("-d {v}: {e}")))?;
                if disks.len() == MAX_DISKS {
                    return Err(Error::Usage(format!("-d {v}: at most {MAX_DISKS} disks")));
                }
                disks.push(spec);
            }
            Short('i') => initrd = Some(PathBuf::from(p.value().map_err(usage)?)),
            Short('a') => cmdline = Some(string(p.value().map_err(usage)?, "-a")?),
            Short('B') => {
                boot_device = Some(match string(p.value().map_err(usage)?, "-B")?.as_str() {
                    "disk" => BootDevice::Disk,
                    "cdrom" => BootDevice::Cdrom,
                    "net" => return Err(Error::Usage("-B net: network boot is not done".into())),
                    v => return Err(Error::Usage(format!("-B {v}: not disk or cdrom"))),
                })
            }
            Short('c') => vcpus = parse_vcpus(&string(p.value().map_err(usage)?, "-c")?)?,
            Short('m') => mem_size = parse_size(&string(p.value().map_err(usage)?, "-m")?)?,
            Short('n') => {
                let v = string(p.value().map_err(usage)?, "-n")?;
                nics.push(nic::parse_option(&v).map_err(|e| Error::Usage(format!("-n {e}")))?);
            }
            Short('N') => {
                let v = string(p.value().map_err(usage)?, "-N")?;
                check_name(&v).map_err(|e| Error::Usage(format!("-N {v}: {e}")))?;
                name = Some(v);
            }
            Short('o') => owner = Some(parse_owner(&string(p.value().map_err(usage)?, "-o")?)?),
            Short('r') => {
                let v = PathBuf::from(p.value().map_err(usage)?);
                if cdrom.is_some() {
                    return Err(Error::Usage(format!(
                        "-r {}: a guest has one CD-ROM drive",
                        v.display()
                    )));
                }
                cdrom = Some(v);
            }
            Short('p') => console = Console::Pty,
            Short('P') => {
                pit = Some(match string(p.value().map_err(usage)?, "-P")?.as_str() {
                    "on" => true,
                    "off" => false,
                    v => return Err(Error::Usage(format!("-P {v}: not on or off"))),
                })
            }
            Short('v') => verbose = true,
            Short('h') | Long("help") => return Ok(Parsed::Help),
            _ => return Err(usage(arg.unexpected())),
        }
    }
    nic::check(&nics).map_err(Error::Usage)?;
    if let Some(iso) = cdrom
        .as_ref()
        .filter(|c| disks.iter().any(|d| d.path == **c))
    {
        return Err(Error::Usage(format!(
            "-r {}: also a disk (-d); an image is one or the other",
            iso.display()
        )));
    }
    let default_bios = kernel.is_none();
    let kernel = kernel.unwrap_or_else(|| {
        std::env::var_os(BIOS_ENV)
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_BIOS), PathBuf::from)
    });
    if owner.is_some() && name.is_none() {
        return Err(Error::Usage(
            "-o: only a named guest (-N) has a control socket".into(),
        ));
    }
    if !mem_size.is_multiple_of(PAGE) {
        return Err(Error::Usage(format!(
            "-m {}K: not a whole number of 4K pages",
            mem_size >> 10
        )));
    }
    if mem_size < MIN_MEM {
        return Err(Error::Usage(format!(
            "-m {}K: a guest needs at least {}M",
            mem_size >> 10,
            MIN_MEM >> 20
        )));
    }
    let firmware = Firmware {
        default_bios,
        boot_device,
        cmdline_given: cmdline.is_some(),
    };
    Ok(Parsed::Run(Config {
        kernel,
        firmware,
        initrd,
        disks,
        cdrom,
        nics,
        cmdline: cmdline.unwrap_or_else(|| DEFAULT_CMDLINE.into()),
        vcpus,
        mem_size,
        console,
        verbose,
        pit,
        received: false,
        name,
        owner,
    }))
}

/// `user[:group]`, by name or number.
pub fn parse_owner(s: &str) -> Result<(Uid, Option<Gid>)> {
    let bad = |what: &str| Error::Usage(format!("-o {s}: {what}"));
    let (user, group) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let uid = match user.parse::<u32>() {
        Ok(n) => Uid::from_raw(n),
        Err(_) => {
            User::from_name(user)
                .ok()
                .flatten()
                .ok_or_else(|| bad("no such user"))?
                .uid
        }
    };
    let gid = match group {
        None => None,
        Some(g) => Some(match g.parse::<u32>() {
            Ok(n) => Gid::from_raw(n),
            Err(_) => {
                Group::from_name(g)
                    .ok()
                    .flatten()
                    .ok_or_else(|| bad("no such group"))?
                    .gid
            }
        }),
    };
    Ok((uid, gid))
}

/// Longest guest name; vmd's VMM_MAX_NAME_LEN is 64 with the NUL.
pub const MAX_NAME: usize = 63;

/// vmctl's rule for guest names: alphanumerics, '.', '-' and '_', not
/// starting with one of the three punctuation marks. The name becomes a
/// file name, so the rule also keeps it free of '/' and of "..".
pub fn check_name(name: &str) -> std::result::Result<(), &'static str> {
    let first = name.chars().next().ok_or("empty name")?;
    if name.len() > MAX_NAME {
        return Err("name too long (at most 63 characters)");
    }
    if !first.is_ascii_alphanumeric() {
        return Err("a name starts with a letter or digit");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err("a name has only letters, digits, '.', '-' and '_'");
    }
    Ok(())
}

fn usage(e: lexopt::Error) -> Error {
    Error::Usage(e.to_string())
}

fn string(v: OsString, opt: &str) -> Result<String> {
    v.into_string()
        .map_err(|_| Error::Usage(format!("{opt}: argument is not valid UTF-8")))
}

fn parse_vcpus(s: &str) -> Result<u8> {
    match s.parse::<u8>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Error::Usage(format!(
            "-c {s}: not a vCPU count from 1 to 255"
        ))),
    }
}

/// A size in bytes with an optional K, M, G or T suffix (powers of 1024);
/// a bare number means megabytes, as vmctl's -m does.
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = || Error::Usage(format!("-m {s}: not a size (e.g. 512M, 2G)"));
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(bad()),
            };
            (&s[..i], shift)
        }
        _ => (s, 20),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn args(s: &str) -> Vec<OsString> {
        std::iter::once("vm-run")
            .chain(s.split_whitespace())
            .map(OsString::from)
            .collect()
    }

    fn config(s: &str) -> Config {
        match parse(args(s)) {
            Ok(Parsed::Run(c)) => c,
            Ok(Parsed::Help) => panic!("help"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("64").unwrap(), 64 << 20);
        assert_eq!(parse_size("4096K").unwrap(), 4 << 20);
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn defaults_follow_vmd() {
        let c = config("-b k");
        assert_eq!(c.mem_size, 512 << 20);
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.cmdline, "console=ttyS0");
        assert_eq!(c.console, Console::Stdio);
    }

    #[test]
    fn options() {
        let c = config("-v -p -c 4 -m 1G -b k -i rd -a quiet -d a.img -d raw:b.img,ro");
        assert_eq!(c.disks.len(), 2);
        assert!(c.disks[1].read_only && !c.disks[0].read_only);
        assert_eq!((c.vcpus, c.mem_size, c.verbose), (4, 1 << 30, true));
        assert_eq!(c.initrd, Some(PathBuf::from("rd")));
        assert_eq!(c.console, Console::Pty);
        assert_eq!(c.cmdline, "quiet");
        assert_eq!(c.name, None);
        assert_eq!(c.cdrom, None);
        let c = config("-b k -n 3 -n 4,lladdr=fe:e1:ba:d0:00:02");
        assert_eq!(c.nics.iter().map(|n| n.fd).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(
            config("-b k -N web-1.a_b").name.as_deref(),
            Some("web-1.a_b")
        );
    }

    #[test]
    fn pit_on_off_or_left_to_the_boot() {
        assert_eq!(config("-b k").pit, None);
        assert_eq!(config("-b k -P on").pit, Some(true));
        assert_eq!(config("-P off").pit, Some(false));
        let e = parse(args("-b k -P yes")).err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("-P yes: not on or off"));
    }

    #[test]
    fn a_cd_rom_is_a_plain_path_not_a_disk() {
        // What -d would parse (a format prefix, options) is part of the
        // file name here.
        let c = config("-b k -d d.img -r raw:x.iso,ro");
        assert_eq!(c.cdrom, Some(PathBuf::from("raw:x.iso,ro")));
        assert_eq!(c.disks.len(), 1);
        let c = config("-r cd.iso -b k");
        assert_eq!(c.cdrom, Some(PathBuf::from("cd.iso")));
        assert!(c.disks.is_empty());
    }

    #[test]
    fn without_b_the_default_bios_boots() {
        let c = config("-d disk.img");
        assert!(c.firmware.default_bios);
        assert_eq!(c.firmware.boot_device, None);
        assert!(!c.firmware.cmdline_given);
        // VM_RUN_BIOS may name another one; the environment is the
        // process's, so only check it is one of the two.
        let env = std::env::var_os(BIOS_ENV).map(PathBuf::from);
        assert!(c.kernel == Path::new(DEFAULT_BIOS) || Some(&c.kernel) == env.as_ref());
        let c = config("-b bios.bin -B cdrom -a x");
        assert!(!c.firmware.default_bios);
        assert_eq!(c.firmware.boot_device, Some(BootDevice::Cdrom));
        assert!(c.firmware.cmdline_given);
        assert_eq!(
            config("-B disk").firmware.boot_device,
            Some(BootDevice::Disk)
        );
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        for bad in [
            "-B",
            "-B floppy",
            "-B net",
            "-b k -c 0",
            "-b k -c x",
            "-b k -m 1K",
            "-b k -z",
            "-b k extra",
            "-b",
            "-b k -d",
            "-b k -d a,rw",
            "-b k -N .x",
            "-b k -N -x",
            "-b k -N a/b",
            "-b k -N é",
            "-b k -o root",
            "-b k -n",
            "-b k -n x",
            "-b k -n 3,lladdr=zz",
            "-b k -n 3 -n 3",
            "-b k -N w -o no-such-user-here",
            "-b k -N w -o root:no-such-group-here",
            "-b k -r",
            "-b k -r a.iso -r b.iso",
            "-b k -r a.iso -d a.iso",
            "-b k -d a.iso,ro -r a.iso",
        ] {
            match parse(args(bad)) {
                Err(e @ Error::Usage(_)) => assert_eq!(e.exit_status(), 64),
                _ => panic!("{bad:?} accepted"),
            }
        }
    }
}
