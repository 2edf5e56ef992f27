//! Once the guest is set up, vm-run needs no new files, no privileges and
//! only a handful of system calls: it drops the rest before any guest
//! code runs, as vmd's VM process pledges and unveils itself.
//!
//! - no_new_privs: nothing exec'd later gains privileges;
//! - capabilities: none left, not even in the bounding set, so that a
//!   vm-run started as root is an ordinary process once the guest runs;
//! - landlock: no file system access, no TCP, and no signal to a process
//!   outside the sandbox, where the kernel has landlock (signal scoping
//!   since Linux 6.12), best effort otherwise. No file may be removed,
//!   not even the control socket: a socket whose vm-run is gone refuses
//!   connections, and that is how vm-run and vm-ctl tell it is stale;
//! - seccomp: an allow-list of system calls, and of ioctls by request;
//!   signals only to this process's own threads, threads but no new
//!   processes. Anything else fails with EPERM, so that vm-run still
//!   reports it and restores the terminal rather than dying silently.
//!
//! Threads inherit all of it, so this runs before the first is started.
//! docs/SECURITY.md says which test shows what.

use std::collections::BTreeMap;
use std::mem::size_of;
use std::os::fd::RawFd;

use std::path::Path;

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_dirty_log, kvm_ioeventfd, kvm_irq_level, kvm_irq_routing,
    kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msrs, kvm_pit_state2, kvm_regs, kvm_sregs,
    kvm_userspace_memory_region, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use landlock::{Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetStatus, Scope, ABI};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::{Error, Result};

/// What the running VM needs: vCPU runs and register dumps (-v), console
/// I/O and terminal restore, eventfds, threads, memory for the allocator,
/// signals and timed waits.
const SYSCALLS: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_close,
    // The VM closed before the exit (vm.rs, close_vm).
    libc::SYS_dup3,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_gettid,
    libc::SYS_sigaltstack,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_munmap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_rt_sigreturn,
    libc::SYS_restart_syscall,
    libc::SYS_sched_yield,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rt_sigaction,
    // Disk and RNG devices.
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_getrandom,
    // qcow2 (imago): metadata in place, fsync for a guest's flush, the
    // file grown as clusters are allocated.
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_fsync,
    libc::SYS_ftruncate,
    // The control socket: connections, peer credentials, timeouts, the
    // console's non-blocking sends, curmem.
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_shutdown,
    libc::SYS_getpid,
    libc::SYS_geteuid,
    libc::SYS_mincore,
    // vm-send passes the fd to write the snapshot to; into a regular
    // file, its memory goes at page-aligned offsets (snapshot/memory.rs).
    libc::SYS_recvmsg,
    libc::SYS_fstat,
    libc::SYS_lseek,
    // NICs: frames from the tap (writev is there for the console).
    libc::SYS_readv,
];

/// An ioctl request number as <asm-generic/ioctl.h> builds it, spelled
/// out because libc and nix type them differently on musl and glibc.
const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}
const IOC_NONE: u64 = 0;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const KVMIO: u64 = 0xae;
const TCGETS: u64 = 0x5401;
const TCSETS: u64 = 0x5402;

fn ioctls() -> Vec<u64> {
    vec![
        ioc(IOC_NONE, KVMIO, 0x80, 0),                      // KVM_RUN
        ioc(IOC_READ, KVMIO, 0x81, size_of::<kvm_regs>()),  // KVM_GET_REGS
        ioc(IOC_READ, KVMIO, 0x83, size_of::<kvm_sregs>()), // KVM_GET_SREGS
        // MSI-X vectors are routed as the guest programs them, and kicks
        // follow BAR 0 when the guest moves it.
        ioc(IOC_WRITE, KVMIO, 0x6a, size_of::<kvm_irq_routing>()), // KVM_SET_GSI_ROUTING
        ioc(IOC_WRITE, KVMIO, 0x79, size_of::<kvm_ioeventfd>()),   // KVM_IOEVENTFD
        // INTx, for guests without MSI.
        ioc(IOC_WRITE, KVMIO, 0x61, size_of::<kvm_irq_level>()), // KVM_IRQ_LINE
        // Pause and resume (vm-ctl pause): the guest's clock stands still.
        ioc(IOC_READ, KVMIO, 0x7c, size_of::<kvm_clock_data>()), // KVM_GET_CLOCK
        ioc(IOC_WRITE, KVMIO, 0x7b, size_of::<kvm_clock_data>()), // KVM_SET_CLOCK
        ioc(IOC_NONE, KVMIO, 0xad, 0),                           // KVM_KVMCLOCK_CTRL
        // vm-send: the state of the paused vCPUs and in-kernel devices.
        ioc(IOC_READ, KVMIO, 0x98, size_of::<kvm_mp_state>()), // KVM_GET_MP_STATE
        ioc(IOC_READ, KVMIO, 0xa4, size_of::<kvm_xsave>()),    // KVM_GET_XSAVE
        ioc(IOC_READ, KVMIO, 0xa6, size_of::<kvm_xcrs>()),     // KVM_GET_XCRS
        ioc(IOC_READ, KVMIO, 0xa1, size_of::<kvm_debugregs>()), // KVM_GET_DEBUGREGS
        ioc(IOC_READ, KVMIO, 0x8e, size_of::<kvm_lapic_state>()), // KVM_GET_LAPIC
        ioc(IOC_READ | IOC_WRITE, KVMIO, 0x88, size_of::<kvm_msrs>()), // KVM_GET_MSRS
        ioc(IOC_READ, KVMIO, 0x9f, size_of::<kvm_vcpu_events>()), // KVM_GET_VCPU_EVENTS
        ioc(IOC_READ | IOC_WRITE, KVMIO, 0x62, size_of::<kvm_irqchip>()), // KVM_GET_IRQCHIP
        ioc(IOC_READ, KVMIO, 0x9f, size_of::<kvm_pit_state2>()), // KVM_GET_PIT2
        // vm-send -l: dirty-page logging turned on and off on the same
        // memory slots, and the log read.
        ioc(
            IOC_WRITE,
            KVMIO,
            0x46,
            size_of::<kvm_userspace_memory_region>(),
        ), // KVM_SET_USER_MEMORY_REGION
        ioc(IOC_WRITE, KVMIO, 0x42, size_of::<kvm_dirty_log>()), // KVM_GET_DIRTY_LOG
        TCGETS,
        TCSETS,
    ]
    .into_iter()
    // The NICs' offloads, set when the guest negotiates them.
    .chain(crate::nic::tap::RUNTIME_IOCTLS.iter().copied())
    .collect()
}

type Backend<T> = std::result::Result<T, seccompiler::BackendError>;

fn arg_is(arg: u8, value: u64) -> Backend<SeccompRule> {
    SeccompRule::new(vec![SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        value,
    )?])
}

/// The allow-list, for process `pid`: what is not in it fails with EPERM.
fn filter(pid: u32) -> Backend<BpfProgram> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        SYSCALLS.iter().map(|s| (*s, Vec::new())).collect();
    let by_request = ioctls()
        .into_iter()
        .map(|req| arg_is(1, req))
        .collect::<Backend<Vec<_>>>()?;
    rules.insert(libc::SYS_ioctl, by_request);
    // UnixStream::try_clone, for the console client; whether vm-send's
    // file appends (snapshot/memory.rs); no other fcntl.
    rules.insert(
        libc::SYS_fcntl,
        vec![
            arg_is(1, libc::F_DUPFD_CLOEXEC as u64)?,
            arg_is(1, libc::F_GETFL as u64)?,
        ],
    );
    // Signals to our own threads only (Pauser, glibc's raise and
    // pthread_kill): the thread group must be ours.
    rules.insert(libc::SYS_tgkill, vec![arg_is(0, u64::from(pid))?]);
    // No tkill: it names a thread alone, of any process. The Pauser's kick
    // uses tgkill; musl's abort() raises SIGABRT with tkill, and refused,
    // it falls through to a crash, which ends the process all the same.
    // Threads, never a new process: clone must share the thread group.
    let thread = libc::CLONE_THREAD as u64;
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(thread),
            thread,
        )?])?],
    );
    // Rust's std names each thread it starts, from inside the thread.
    rules.insert(libc::SYS_prctl, vec![arg_is(0, libc::PR_SET_NAME as u64)?]);
    // Refused with ENOSYS by clone3_filter, which comes first.
    rules.insert(libc::SYS_clone3, Vec::new());
    SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?
    .try_into()
}

/// clone3 passes its flags in memory, where seccomp cannot look: it fails
/// with ENOSYS, as on a kernel without it, so that a libc that tries it
/// first (glibc) falls back to clone, whose flags the allow-list checks.
/// A filter of its own because one filter has one action for what it
/// refuses. It is installed before the allow-list (which could not
/// install it: prctl is limited), and the allow-list lets clone3 through,
/// so that this filter's answer is the one that counts.
fn clone3_filter() -> Backend<BpfProgram> {
    SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )?
    .try_into()
}

/// The highest capability number any kernel has yet; higher ones fail
/// with EINVAL.
const CAP_MAX: libc::c_ulong = 63;

/// capset(2)'s header and data, version 3 (two 32-bit halves).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
const CAP_V3: u32 = 0x2008_0522;

/// Gives up every capability: the bounding set (when we may: dropping it
/// takes CAP_SETPCAP, which an ordinary user lacks, and without
/// privileges and exec it gives nothing anyway), the ambient set, then
/// the permitted, effective and inheritable sets.
fn drop_capabilities() -> std::io::Result<()> {
    for cap in 0..=CAP_MAX {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINVAL | libc::EPERM) => {}
                _ => return Err(std::io::Error::last_os_error()),
            }
        }
    }
    // SAFETY: as above.
    let ambient = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    // EINVAL: a kernel before ambient capabilities (4.3).
    if ambient != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(std::io::Error::last_os_error());
    }
    let header = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads one header and two data structs, both live
    // here for the call, of the layout version 3 defines.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        let refused = std::io::Error::last_os_error();
        // A service manager's own filter may refuse capset (systemd's
        // ~@privileged): that is no failure when there is nothing to drop.
        let mut held = [CapData::default(); 2];
        // SAFETY: capget writes two data structs of version 3's layout
        // into `held`, which lives for the call.
        let got = unsafe { libc::syscall(libc::SYS_capget, &header, held.as_mut_ptr()) };
        let none = held
            .iter()
            .all(|d| d.effective == 0 && d.permitted == 0 && d.inheritable == 0);
        if got != 0 || !none {
            return Err(refused);
        }
    }
    Ok(())
}

/// Closes every descriptor this process inherited but stdin, stdout,
/// stderr and `keep` (the taps vm-net or -n named): whatever else a parent
/// leaked to us must not be within a hostile guest's reach. Called first
/// thing in main, before vm-run opens anything of its own.
pub fn close_inherited(keep: &[RawFd]) -> std::io::Result<()> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .filter(|&fd| fd > 2)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut first = 3u32;
    for last in keep
        .iter()
        .map(|k| k.checked_sub(1))
        .chain([Some(u32::MAX)])
    {
        if let Some(last) = last.filter(|&l| l >= first) {
            close_range(first, last)?;
        }
        first = last.map_or(first, |l| l.saturating_add(2));
    }
    Ok(())
}

/// close_range(2), or one close at a time on kernels before 5.9.
fn close_range(first: u32, last: u32) -> std::io::Result<()> {
    // SAFETY: close_range takes integers; the descriptors it closes are
    // ones nothing in this process owns yet (see close_inherited).
    if unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(err);
    }
    let open: Vec<u32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| (first..=last).contains(fd))
        .collect();
    for fd in open {
        // SAFETY: as above; the directory's own fd is closed by now, and
        // closing a number that is not open does nothing.
        unsafe { libc::close(fd as RawFd) };
    }
    Ok(())
}

/// Confines the calling thread and every thread it starts afterwards.
/// `_rundir`, where the control socket is, no longer gets a landlock rule
/// of its own (see the module's comment); the parameter stays for the
/// callers. Returns whether landlock was fully enforced.
pub fn enter(_rundir: Option<&Path>) -> Result<bool> {
    let fail = |what: &str, e: String| Error::Setup(format!("sandbox: {what}: {e}"));
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(fail(
            "no_new_privs",
            std::io::Error::last_os_error().to_string(),
        ));
    }
    drop_capabilities().map_err(|e| fail("capabilities", e.to_string()))?;
    let abi = ABI::V6;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.handle_access(AccessNet::from_all(abi)))
        .and_then(|r| r.scope(Scope::from_all(abi)))
        .and_then(|r| r.create())
        .and_then(|r| r.restrict_self())
        .map_err(|e| fail("landlock", e.to_string()))?;
    let seccomp = |e: String| fail("seccomp", e);
    let program = filter(std::process::id()).map_err(|e| seccomp(e.to_string()))?;
    let clone3 = clone3_filter().map_err(|e| seccomp(e.to_string()))?;
    seccompiler::apply_filter(&clone3).map_err(|e| seccomp(e.to_string()))?;
    seccompiler::apply_filter(&program).map_err(|e| seccomp(e.to_string()))?;
    Ok(status.ruleset == RulesetStatus::FullyEnforced)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signal the Pauser kicks vCPU threads with (vcpu.rs's KICK).
    const KICK: libc::c_int = libc::SIGUSR1;

    #[test]
    fn ioctl_numbers_match_the_kernel() {
        // From <linux/kvm.h>, as the kernel computes them.
        assert_eq!(ioctls()[0], 0xae80);
        assert_eq!(ioctls()[1], 0x8090_ae81);
        assert_eq!(ioctls()[2], 0x8138_ae83);
        assert_eq!(ioctls()[3], 0x4008_ae6a);
        assert_eq!(ioctls()[4], 0x4040_ae79);
        assert_eq!(ioctls()[5], 0x4008_ae61);
    }

    #[test]
    fn the_nic_data_path_is_allowed() {
        for s in [libc::SYS_readv, libc::SYS_writev, libc::SYS_poll] {
            assert!(SYSCALLS.contains(&s), "{s}");
        }
        assert!(ioctls().contains(&0x4004_54d0), "TUNSETOFFLOAD");
    }

    #[test]
    fn filter_compiles() {
        assert!(!filter(1).unwrap().is_empty());
        assert!(!clone3_filter().unwrap().is_empty());
    }

    /// The errno of a raw system call's result, 0 for success.
    fn errno(ret: libc::c_long) -> i32 {
        if ret < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        } else {
            0
        }
    }

    /// What a sandboxed process manages, one `name=errno` word each; it
    /// runs in a forked child (the sandbox is for good), whose every
    /// attempt aims at `victim`, another process, or `file`, not its own.
    fn attempts(victim: libc::pid_t, file: &std::ffi::CStr) -> String {
        // SAFETY: raw system calls with integer arguments or a valid
        // C string; a fork that succeeds exits at once in the child.
        unsafe {
            let me = libc::getpid();
            let tid = libc::gettid();
            let mut out = vec![
                (
                    "tgkill-other",
                    errno(libc::syscall(
                        libc::SYS_tgkill,
                        victim,
                        victim,
                        libc::SIGSTOP,
                    )),
                ),
                (
                    "tkill-other-stop",
                    errno(libc::syscall(libc::SYS_tkill, victim, libc::SIGSTOP)),
                ),
                (
                    "kill-other",
                    errno(libc::syscall(libc::SYS_kill, victim, libc::SIGSTOP)),
                ),
                (
                    "tkill-other-kick",
                    errno(libc::syscall(libc::SYS_tkill, victim, KICK)),
                ),
                (
                    "tgkill-self",
                    errno(libc::syscall(libc::SYS_tgkill, me, tid, 0)),
                ),
                ("unlink", errno(libc::unlink(file.as_ptr()) as libc::c_long)),
                (
                    "clone3",
                    errno(libc::syscall(libc::SYS_clone3, 0usize, 0usize)),
                ),
                (
                    "dumpable",
                    errno(libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) as libc::c_long),
                ),
                (
                    "setname",
                    errno(
                        libc::prctl(libc::PR_SET_NAME, c"sandboxed".as_ptr(), 0, 0, 0)
                            as libc::c_long,
                    ),
                ),
            ];
            let pid = libc::fork();
            if pid == 0 {
                libc::_exit(0);
            }
            out.push(("fork", errno(pid as libc::c_long)));
            // glibc tries clone3 first: ENOSYS must bring it to clone.
            let thread = std::thread::Builder::new().spawn(|| 7).map(|t| t.join());
            out.push(("thread", if matches!(thread, Ok(Ok(7))) { 0 } else { -1 }));
            out.iter().map(|(n, e)| format!("{n}={e} ")).collect()
        }
    }

    #[test]
    fn a_sandboxed_process_reaches_only_itself() {
        let dir = std::env::temp_dir().join(format!("vm-run-sandbox-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("not-ours");
        std::fs::write(&file, "x").unwrap();
        let cfile = std::ffi::CString::new(file.to_str().unwrap()).unwrap();
        let mut victim = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let vpid = victim.id() as libc::pid_t;
        let (mut rd, wr) = std::io::pipe().unwrap();
        let (go_rd, go_wr) = std::io::pipe().unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: the child only enters the sandbox, makes its attempts
        // and writes them down before _exit; glibc's malloc is usable
        // after fork.
        let child = unsafe { libc::fork() };
        if child == 0 {
            drop(go_wr);
            let report = match enter(Some(&dir)) {
                Ok(_) => attempts(vpid, &cfile),
                Err(e) => format!("enter: {e}"),
            };
            // SAFETY: plain writes and reads on pipes this process holds.
            unsafe {
                libc::write(wr.as_raw_fd(), report.as_ptr().cast(), report.len());
                libc::close(wr.as_raw_fd());
                let mut b = 0u8;
                // Held until the parent has read /proc of this process.
                libc::read(go_rd.as_raw_fd(), (&raw mut b).cast(), 1);
                libc::_exit(0);
            }
        }
        drop(wr);
        drop(go_rd);
        let mut report = String::new();
        use std::io::Read;
        rd.read_to_string(&mut report).unwrap();
        let status = std::fs::read_to_string(format!("/proc/{child}/status")).unwrap();
        drop(go_wr);
        let mut ws = 0;
        // SAFETY: waitpid on our own child.
        unsafe { libc::waitpid(child, &mut ws, 0) };
        let alive = victim.try_wait().unwrap().is_none();
        let _ = victim.kill();
        let _ = victim.wait();
        let still_there = file.exists();
        let _ = std::fs::remove_dir_all(&dir);
        let (eperm, enosys) = (libc::EPERM, libc::ENOSYS);
        assert_eq!(
            report,
            format!(
                "tgkill-other={eperm} tkill-other-stop={eperm} kill-other={eperm} \
                 tkill-other-kick={eperm} tgkill-self=0 unlink={eperm} clone3={enosys} \
                 dumpable={eperm} setname=0 fork={eperm} thread=0 "
            )
        );
        assert!(alive, "the other process was signalled");
        assert!(still_there, "the file was removed");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_default()
                .to_string()
        };
        for cap in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
            assert_eq!(field(cap), "0000000000000000", "{cap}");
        }
        if nix::unistd::geteuid().is_root() {
            assert_eq!(field("CapBnd:"), "0000000000000000");
        }
        assert_eq!(field("NoNewPrivs:"), "1");
        assert_eq!(field("Seccomp:"), "2");
    }

    #[test]
    fn abort_still_ends_a_sandboxed_process() {
        // SAFETY: the child enters the sandbox and aborts, nothing else.
        let child = unsafe { libc::fork() };
        if child == 0 {
            let _ = enter(None);
            // glibc raises SIGABRT with tgkill to itself; musl's tkill is
            // refused and it crashes instead. Either way the process ends.
            std::process::abort();
        }
        let mut ws = 0;
        // SAFETY: waitpid on our own child.
        unsafe { libc::waitpid(child, &mut ws, 0) };
        assert!(libc::WIFSIGNALED(ws), "status {ws:#x}");
        let sig = libc::WTERMSIG(ws);
        assert!(
            [libc::SIGABRT, libc::SIGSEGV, libc::SIGILL].contains(&sig),
            "signal {sig}"
        );
    }
}
