/*
 * stamp: copies standard input to standard output, each line led by the
 * milliseconds (CLOCK_MONOTONIC) since stamp started when its first byte
 * arrived. tests/bench/boot.sh (BOOT_STAMP) pipes a VMM's console through
 * it in the test host: the host's clock, unlike the guest's printk times,
 * is the same for every VMM.
 */
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(void)
{
	char buf[4096];
	double t0 = now_ms();
	int at_start = 1;
	ssize_t n;

	while ((n = read(0, buf, sizeof buf)) > 0) {
		for (ssize_t i = 0; i < n; i++) {
			if (at_start)
				printf("%10.1f ", now_ms() - t0);
			putchar(buf[i]);
			at_start = buf[i] == '\n';
		}
		fflush(stdout);
	}
	return 0;
}
