#!/bin/sh
# fio-jobs.sh TARGET DIRECT: the disk benchmark's six fio jobs on TARGET
# (a block device or a file), one line each:
#   FIO job read_KiB/s read_IOPS write_KiB/s write_IOPS
# DIRECT=1 bypasses the page cache (in guests); 0 on the host's tmpfs,
# which has no O_DIRECT and is the same page cache the VMMs read.
t=$1; direct=$2; secs=${FIO_SECONDS:-5}
job() { # name rw bs iodepth
    fio --name="$1" --filename="$t" --rw="$2" --bs="$3" --iodepth="$4" \
        --ioengine=io_uring --direct="$direct" --size=256M --runtime="$secs" \
        --time_based --ramp_time=1 --output-format=terse --terse-version=3 \
        2>&1 | awk -F';' -v n="$1" 'NF > 50 { print "FIO", n, $7, $8, $48, $49 } NF <= 50 { print "FIO-ERROR", n, $0 }'
}
job randread-4k-qd1 randread 4k 1
job randread-4k-qd32 randread 4k 32
job randwrite-4k-qd1 randwrite 4k 1
job randwrite-4k-qd32 randwrite 4k 32
job read-1m read 1M 4
job write-1m write 1M 4
