/*
 * Holds one KVM VM open for the test host's whole life (host.sh starts
 * it from /init), with an in-kernel irqchip and one vCPU that never
 * runs. KVM flips static keys as guests come and go, and each flip
 * patches kernel text with int3s while the other CPU may be running
 * that code; under QEMU's TCG the test host's CPUs now and then never
 * get past such an int3 (tests/README.md):
 * - preempt_notifier_key (the scheduler's), on while any VM exists:
 *   patched at every guest's start and end when guests ran one at a
 *   time (gdb on the outer QEMU showed both CPUs stuck at __schedule's
 *   int3, 2026-12-05). Held on by the VM.
 * - apic_sw_disabled (KVM's local APIC), on while any vCPU's APIC is
 *   software-disabled: every guest turned it on when its vCPUs were
 *   made and off (a second later) once its kernel enabled their APICs,
 *   four patches a boot, three of them while its vCPUs ran (kprobes on
 *   arch_jump_label_transform_apply, 2026-12-05). Held on by this vCPU,
 *   whose APIC stays as reset left it.
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(void)
{
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	int vm = kvm < 0 ? -1 : ioctl(kvm, KVM_CREATE_VM, 0);

	if (vm < 0 || ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0 ||
	    ioctl(vm, KVM_CREATE_VCPU, 0) < 0)
		return 1;
	for (;;)
		pause();
}
