//! Once the guest is set up, vm-run needs no new files, no privileges and
//! only a handful of system calls: it drops the rest before any guest
//! code runs, as vmd's VM process pledges and unveils itself.
//!
//! - no_new_privs: nothing exec'd later gains privileges;
//! - landlock: no file system access (and no TCP), where the kernel has
//!   landlock, best effort otherwise; the one exception is removing files
//!   in the control socket's directory, so that the socket goes on exit;
//! - seccomp: an allow-list of system calls, and of ioctls by request.
//!   Anything else fails with EPERM, so that vm-run still reports it and
//!   restores the terminal rather than dying silently.
//!
//! Threads inherit all three, so this runs before the first is started.

use std::collections::BTreeMap;
use std::mem::size_of;

use std::path::Path;

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_dirty_log, kvm_ioeventfd, kvm_irq_level, kvm_irq_routing,
    kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msrs, kvm_pit_state2, kvm_regs, kvm_sregs,
    kvm_userspace_memory_region, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use landlock::{
    Access, AccessFs, AccessNet, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, ABI,
};
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
    libc::SYS_futex,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_gettid,
    libc::SYS_prctl,
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
    libc::SYS_tgkill,
    // musl's abort() and raise(), should anything panic.
    libc::SYS_tkill,
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
    // console's non-blocking sends, curmem, and the socket's removal.
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_shutdown,
    libc::SYS_getpid,
    libc::SYS_geteuid,
    libc::SYS_mincore,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    // vm-send passes the fd to write the snapshot to.
    libc::SYS_recvmsg,
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

fn filter() -> std::result::Result<BpfProgram, seccompiler::BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        SYSCALLS.iter().map(|s| (*s, Vec::new())).collect();
    let by_request = ioctls()
        .into_iter()
        .map(|req| {
            SeccompRule::new(vec![SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                req,
            )?])
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, by_request);
    // UnixStream::try_clone, for the console client; no other fcntl.
    rules.insert(
        libc::SYS_fcntl,
        vec![SeccompRule::new(vec![SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::F_DUPFD_CLOEXEC as u64,
        )?])?],
    );
    SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?
    .try_into()
}

/// Confines the calling thread and every thread it starts afterwards.
/// `rundir` is where the control socket is, if there is one. Returns
/// whether landlock was fully enforced.
pub fn enter(rundir: Option<&Path>) -> Result<bool> {
    let fail = |what: &str, e: String| Error::Setup(format!("sandbox: {what}: {e}"));
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(fail(
            "no_new_privs",
            std::io::Error::last_os_error().to_string(),
        ));
    }
    let abi = ABI::V5;
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.handle_access(AccessNet::from_all(abi)))
        .and_then(|r| r.create())
        .map_err(|e| fail("landlock", e.to_string()))?;
    if let Some(dir) = rundir {
        let fd = PathFd::new(dir).map_err(|e| fail("landlock", e.to_string()))?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, AccessFs::RemoveFile))
            .map_err(|e| fail("landlock", e.to_string()))?;
    }
    let status = ruleset
        .restrict_self()
        .map_err(|e| fail("landlock", e.to_string()))?;
    let program = filter().map_err(|e| fail("seccomp", e.to_string()))?;
    seccompiler::apply_filter(&program).map_err(|e| fail("seccomp", e.to_string()))?;
    Ok(status.ruleset == RulesetStatus::FullyEnforced)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(!filter().unwrap().is_empty());
    }
}
