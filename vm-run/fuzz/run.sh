#!/bin/sh
# Runs every cargo-fuzz target of vm-run (vm-run/fuzz/Cargo.toml's bins),
# then vm-img's qcow2_open, for SECONDS each; or only the TARGETs named.
#   vm-run/fuzz/run.sh SECONDS [TARGET ...]
# New inputs go to */fuzz/corpus-new/TARGET, crashes to
# */fuzz/artifacts/TARGET; the committed seeds stay as they are. Exits
# non-zero at the first target that crashes.
set -eu
cd "$(dirname "$0")/../.."
secs=${1:?usage: run.sh SECONDS [TARGET ...]}
shift

# cargo fuzz passes nightly's -Z flags (the sanitizer, coverage). Nightly
# where rustup has it; otherwise stable, which takes them with
# RUSTC_BOOTSTRAP=1, so that a fresh machine needs nothing but crates.io.
if rustup run nightly rustc --version >/dev/null 2>&1; then
    toolchain=+nightly
else
    toolchain=
    export RUSTC_BOOTSTRAP=1
fi
cargo $toolchain fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked

targets=${*:-$(sed -n 's/^name = "\(.*\)"$/\1/p' vm-run/fuzz/Cargo.toml | grep -v '^vm-run-fuzz$') qcow2_open}
for t in $targets; do
    case $t in
    qcow2_open)
        dir=vm-img seeds=../tests/qcow2-corpus
        # Images may claim huge tables: bound what one input may take.
        extra="-malloc_limit_mb=256"
        ;;
    *) dir=vm-run seeds=fuzz/corpus/$t extra= ;;
    esac
    mkdir -p "$dir/fuzz/corpus-new/$t"
    echo "fuzz: $t, ${secs} s" >&2
    (cd "$dir" && cargo $toolchain fuzz run "$t" "fuzz/corpus-new/$t" "$seeds" -- \
        -max_total_time="$secs" -timeout=10 $extra -print_final_stats=0)
done
