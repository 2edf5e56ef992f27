/*
 * Holds one KVM VM open for the test host's whole life (host.sh starts
 * it from /init). KVM enables a static key in the scheduler
 * (preempt_notifier_key) when the first VM is created and disables it
 * when the last is destroyed; each flip patches __schedule's code with
 * int3s. With one guest at a time that happened at every guest's start
 * and end, and under QEMU's TCG the test host's CPUs now and then kept
 * taking the int3 for ever, both at __schedule (gdb on the outer QEMU,
 * 2026-12-05; tests/README.md). Held at one, the key never flips.
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(void)
{
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);

	if (kvm < 0 || ioctl(kvm, KVM_CREATE_VM, 0) < 0)
		return 1;
	for (;;)
		pause();
}
