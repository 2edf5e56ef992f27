#!/bin/sh
# fio-jobs.sh TARGET DIRECT [SECONDS [ENGINE]]: the disk benchmark's six fio
# jobs, one after the other, on all of TARGET (a block device or a file),
# with ENGINE (default libaio), each for SECONDS (default 5) after 1 s of
# ramp. One line a job:
#   FIO job error read_KiB/s read_IOPS write_KiB/s write_IOPS
# and whatever else fio says as FIO-MSG lines.
# DIRECT=1 in guests: O_DIRECT, past the guest's page cache to the device.
# DIRECT=0 on the host's tmpfs, which has no O_DIRECT (before Linux 6.6);
# its page cache is what both VMMs read and write (buffered preadv and
# pwritev, QEMU's cache=writeback). libaio, not io_uring: buffered, it
# does the I/O within io_submit, as fast as the page cache; io_uring on
# 6.1's tmpfs passes buffered writes to its worker threads: 4k random
# writes there ran at ~300 IOPS at depth 1 and ~8000 at 32, against
# ~25000-30000 with libaio or psync, in the same test host.
t=$1; direct=$2; secs=${3:-5}; engine=${4:-libaio}
[ -e "$t" ] || { echo "FIO-MSG no such file or device: $t"; exit 1; }
q=/sys/block/${t#/dev/}
[ ! -d "$q/mq" ] || echo "FIO-MSG $t: $(ls "$q/mq" | wc -l) queue(s) of $(cat "$q/queue/nr_requests")," \
    "max_segments $(cat "$q/queue/max_segments"), max_sectors_kb $(cat "$q/queue/max_sectors_kb")"
# One fio process for all six jobs (starting fio with its ~100 libraries
# takes seconds on an emulated CPU); --stonewall runs them in turn.
fio --filename="$t" --direct="$direct" --ioengine="$engine" --time_based \
    --runtime="$secs" --ramp_time=1 --output-format=terse --terse-version=3 \
    --name=randread-4k-qd1 --rw=randread --bs=4k --iodepth=1 --stonewall \
    --name=randread-4k-qd32 --rw=randread --bs=4k --iodepth=32 --stonewall \
    --name=randwrite-4k-qd1 --rw=randwrite --bs=4k --iodepth=1 --stonewall \
    --name=randwrite-4k-qd32 --rw=randwrite --bs=4k --iodepth=32 --stonewall \
    --name=read-1m --rw=read --bs=1M --iodepth=4 --stonewall \
    --name=write-1m --rw=write --bs=1M --iodepth=4 --stonewall 2>&1 |
    awk -F';' 'NF > 50 && $1 == 3 { print "FIO", $3, $5, $7, $8, $48, $49; next }
        { print "FIO-MSG " $0 }'
