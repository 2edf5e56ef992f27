/*
 * floor: the least a KVM VMM does to start and end a guest, as the floor
 * vm-run's start-up is measured against (tests/bench/startup.sh). It
 * creates a VM, one memory slot and one vCPU (with -i the in-kernel
 * irqchip first, with -p the PIT too, as vm-run does with a BIOS), runs
 * four bytes of real-mode code that write to port 0xf4, prints "tiny:
 * bench" as the tiny guest does, and exits, leaving the teardown to the
 * kernel; with -c it first closes the vCPU and the VM, as vm-run does, so
 * that KVM tears the VM down before the process's memory goes.
 */
#include <err.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define MEM_SIZE (2 << 20)
#define CODE 0x1000

int
main(int argc, char **argv)
{
	/* mov $'x', %al; out %al, $0xf4 */
	static const unsigned char code[] = { 0xb0, 'x', 0xe6, 0xf4 };
	int irqchip = 0, pit = 0, closing = 0, c;
	while ((c = getopt(argc, argv, "cip")) != -1) {
		if (c == 'i')
			irqchip = 1;
		else if (c == 'p')
			irqchip = pit = 1;
		else if (c == 'c')
			closing = 1;
		else
			errx(64, "usage: floor [-c] [-i] [-p]");
	}
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		err(69, "/dev/kvm");
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		err(69, "KVM_CREATE_VM");
	if (irqchip) {
		if (ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000UL) < 0)
			err(69, "KVM_SET_TSS_ADDR");
		if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0)
			err(69, "KVM_CREATE_IRQCHIP");
	}
	if (pit) {
		struct kvm_pit_config pc = { .flags = KVM_PIT_SPEAKER_DUMMY };
		if (ioctl(vm, KVM_CREATE_PIT2, &pc) < 0)
			err(69, "KVM_CREATE_PIT2");
	}
	unsigned char *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE,
	    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (mem == MAP_FAILED)
		err(71, "mmap");
	memcpy(mem + CODE, code, sizeof(code));
	struct kvm_userspace_memory_region region = {
		.slot = 0,
		.guest_phys_addr = 0,
		.memory_size = MEM_SIZE,
		.userspace_addr = (unsigned long)mem,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		err(69, "KVM_SET_USER_MEMORY_REGION");
	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		err(69, "KVM_CREATE_VCPU");
	int size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (size < 0)
		err(69, "KVM_GET_VCPU_MMAP_SIZE");
	struct kvm_run *run = mmap(NULL, size, PROT_READ | PROT_WRITE,
	    MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		err(71, "mmap kvm_run");
	struct kvm_sregs sregs;
	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
		err(69, "KVM_GET_SREGS");
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
		err(69, "KVM_SET_SREGS");
	struct kvm_regs regs = { .rip = CODE, .rflags = 2 };
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		err(69, "KVM_SET_REGS");
	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0)
			err(70, "KVM_RUN");
		if (run->exit_reason == KVM_EXIT_IO && run->io.port == 0xf4) {
			fputs("tiny: bench\n", stdout);
			fflush(stdout);
			if (closing) {
				munmap(run, size);
				close(vcpu);
				close(vm);
			}
			return 0;
		}
		errx(70, "unexpected exit %u", run->exit_reason);
	}
}
