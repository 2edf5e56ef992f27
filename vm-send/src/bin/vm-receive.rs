//! vm-receive: continues a guest from a snapshot stream on the standard
//! input (see vm-receive(1)): reads and checks the whole stream, builds
//! the VM it describes, and runs it as vm-run would.

use std::ffi::OsString;
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;

use vm_run::config::{self, Config, Console};
use vm_run::disk::DiskSpec;
use vm_run::error::Error;
use vm_run::nic::{self, NicSpec};
use vm_run::outcome::Outcome;
use vm_run::snapshot::stream::{Reader, Tag};
use vm_run::snapshot::GuestConfig;
use vm_run::virtio::net::default_mac;
use vm_run::vm::{self, Incoming};
use vm_run::{console, control, exit, sandbox};

#[path = "../progress.rs"]
mod progress;

const USAGE: &str = "usage: vm-receive [-Dpv] [-d [raw:|qcow2:]disk[,ro]] ... [-n fd] ... \
[-N name [-o user[:group]]] [-r iso] < stream";

struct Args {
    disks: Vec<DiskSpec>,
    /// -r: the CD-ROM's image, for a guest that had one.
    cdrom: Option<PathBuf>,
    /// -D: open the disks at the paths the stream names. The stream then
    /// picks host files, so only for a sender trusted as much as root.
    stream_disks: bool,
    /// VM_NET_FDS's (vm-net), then -n's: one for each NIC of the guest.
    nics: Vec<NicSpec>,
    name: Option<String>,
    owner: Option<(nix::unistd::Uid, Option<nix::unistd::Gid>)>,
    pty: bool,
    verbose: bool,
}

fn usage(e: impl ToString) -> Error {
    Error::Usage(e.to_string())
}

fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Option<Args>, Error> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_iter(args);
    let mut a = Args {
        disks: Vec::new(),
        cdrom: None,
        stream_disks: false,
        nics: nic::from_env(|k| std::env::var(k).ok()).map_err(usage)?,
        name: None,
        owner: None,
        pty: false,
        verbose: false,
    };
    let text = |v: OsString, opt: &str| {
        v.into_string()
            .map_err(|_| usage(format!("{opt}: not valid UTF-8")))
    };
    while let Some(arg) = p.next().map_err(usage)? {
        match arg {
            Short('d') => {
                let v = text(p.value().map_err(usage)?, "-d")?;
                a.disks
                    .push(v.parse().map_err(|e| usage(format!("-d {v}: {e}")))?);
            }
            Short('n') => {
                let v = text(p.value().map_err(usage)?, "-n")?;
                a.nics
                    .push(nic::parse_option(&v).map_err(|e| usage(format!("-n {e}")))?);
            }
            Short('N') => {
                let v = text(p.value().map_err(usage)?, "-N")?;
                config::check_name(&v).map_err(|e| usage(format!("-N {v}: {e}")))?;
                a.name = Some(v);
            }
            Short('o') => {
                a.owner = Some(config::parse_owner(&text(
                    p.value().map_err(usage)?,
                    "-o",
                )?)?)
            }
            Short('D') => a.stream_disks = true,
            Short('r') => a.cdrom = Some(PathBuf::from(p.value().map_err(usage)?)),
            Short('p') => a.pty = true,
            Short('v') => a.verbose = true,
            Short('h') | Long("help") => return Ok(None),
            _ => return Err(usage(arg.unexpected())),
        }
    }
    nic::check(&a.nics).map_err(usage)?;
    if a.stream_disks && (!a.disks.is_empty() || a.cdrom.is_some()) {
        return Err(usage(
            "-D with -d or -r: the images come from one or the other",
        ));
    }
    if a.owner.is_some() && a.name.is_none() {
        return Err(usage("-o: only a named guest (-N) has a control socket"));
    }
    Ok(Some(a))
}

/// Reads the CONF section and makes the configuration the guest ran with,
/// changed as the options say.
fn incoming(a: Args) -> Result<(Config, Incoming), Error> {
    let stream = |e: vm_run::snapshot::stream::StreamError| Error::Snapshot(e.to_string());
    // A regular file is read without a buffer, through a descriptor that
    // shares its offset: a memory image in it is mapped, not read, and
    // skipped with a seek (docs/SNAPSHOT.md, "Receiving from a file").
    let file = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .ok()
        .filter(|f| f.metadata().is_ok_and(|m| m.file_type().is_file()));
    let mut reader = match file {
        Some(f) => {
            let input = f
                .try_clone()
                .map_err(|e| Error::Os("standard input".into(), e))?;
            let input: Box<dyn io::Read> = Box::new(input);
            Reader::new(input).map_err(stream)?.with_file(f)
        }
        None => {
            let input: Box<dyn io::Read> = match progress::meter("vm-receive") {
                Some(m) => Box::new(progress::Counting::new(io::stdin().lock(), m)),
                None => Box::new(io::stdin().lock()),
            };
            Reader::new(input).map_err(stream)?
        }
    };
    let conf = match reader.next(1 << 20).map_err(stream)? {
        Some((Tag::Config, payload)) => GuestConfig::decode(payload).map_err(stream)?,
        _ => return Err(Error::Snapshot("no CONF section first".into())),
    };
    // The stream is read no further, and no file opened, until the disks
    // are settled: a stream must never pick a host file unless told to.
    let disks = if a.stream_disks {
        conf.disks
            .iter()
            .map(|d| DiskSpec {
                path: PathBuf::from(&d.path),
                format: None,
                read_only: d.read_only,
                serial: d.serial.clone(),
                // The stream says how many the guest had.
                queues: None,
            })
            .collect()
    } else if a.disks.len() == conf.disks.len() {
        a.disks
    } else if a.disks.is_empty() {
        let paths: Vec<&str> = conf.disks.iter().map(|d| d.path.as_str()).collect();
        return Err(usage(format!(
            "the guest had {} disks ({}): name them with -d, or take the stream's paths with -D",
            conf.disks.len(),
            paths.join(" ")
        )));
    } else {
        return Err(usage(format!(
            "the guest had {} disks, -d gives {}",
            conf.disks.len(),
            a.disks.len()
        )));
    };
    let cdrom = match (&conf.cdrom, a.cdrom) {
        (None, None) => None,
        (None, Some(_)) => return Err(usage("-r: the guest had no CD-ROM")),
        (Some(_), Some(iso)) => Some(iso),
        (Some(path), None) if a.stream_disks => Some(PathBuf::from(path)),
        (Some(path), None) => {
            return Err(usage(format!(
            "the guest had a CD-ROM ({path}): name it with -r, or take the stream's path with -D"
        )))
        }
    };
    if a.nics.len() != conf.nics.len() {
        return Err(usage(format!(
            "the guest had {} NICs, VM_NET_FDS and -n give {}",
            conf.nics.len(),
            a.nics.len()
        )));
    }
    // Each NIC gets the MAC vm-run would give it: vm-net's lladdr, or the
    // one of the guest's (new) name, or a random one for a guest without
    // a name. The device shows the guest the MAC its driver read, and one
    // that is to change is replugged with the new one once the guest runs.
    // Guests of version 3 streams cannot be (their ACPI tables have no
    // hotplug slots): they keep their MACs, and another lladdr is refused.
    let mut nics = a.nics;
    let replugs = reader.version() >= 4;
    for (i, (nic, record)) in nics.iter_mut().zip(&conf.nics).enumerate() {
        match nic.lladdr {
            Some(mac) if mac != record.mac && !replugs => {
                return Err(usage(format!(
                    "fd {}: the guest keeps its MAC {} (a version {} stream)",
                    nic.fd,
                    nic::format_mac(&record.mac),
                    reader.version()
                )))
            }
            _ if !replugs => {}
            Some(mac) => nic.renew = Some(mac),
            None => nic.renew = Some(default_mac(a.name.as_deref(), i)),
        }
        nic.renew = nic.renew.filter(|&mac| mac != record.mac);
        nic.lladdr = Some(record.mac);
    }
    let cfg = Config {
        kernel: PathBuf::new(),
        firmware: Default::default(),
        initrd: None,
        disks,
        // Snapshots do not record a CD-ROM yet.
        cdrom,
        nics,
        cmdline: String::new(),
        vcpus: conf.vcpus,
        mem_size: conf.mem_size,
        console: if a.pty {
            Console::Pty
        } else {
            Console::StdoutOnly
        },
        verbose: a.verbose,
        // The stream says whether the guest had a PIT (x86/state.rs).
        pit: None,
        received: true,
        name: a.name,
        owner: a.owner,
    };
    Ok((
        cfg,
        Incoming {
            config: conf,
            reader,
        },
    ))
}

fn main() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        console::restore_terminal();
        control::remove_socket();
        default_hook(info);
    }));
    let run = || -> Result<Option<Outcome>, Error> {
        let Some(a) = parse(std::env::args_os())? else {
            return Ok(None);
        };
        // Nothing inherited but stdio and the taps stays open, as in vm-run.
        let taps: Vec<_> = a.nics.iter().map(|n| n.fd).collect();
        sandbox::close_inherited(&taps)
            .map_err(|e| Error::Os("closing inherited descriptors".into(), e))?;
        let (cfg, inc) = incoming(a)?;
        vm::receive(&cfg, inc).map(Some)
    };
    let code = match run() {
        Ok(None) => {
            println!("{USAGE}");
            exit::OK
        }
        Ok(Some(Outcome::Failed(why))) => {
            eprintln!("vm-receive: {why}");
            exit::SOFTWARE
        }
        Ok(Some(o)) => o.exit_status(),
        Err(e) => {
            eprintln!("vm-receive: {e}");
            if matches!(e, Error::Usage(_)) {
                eprintln!("{USAGE}");
            }
            e.exit_status()
        }
    };
    std::process::exit(code);
}
