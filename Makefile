# vm-tools: static Unix-style tools around KVM. See README.md.
#   make            static, stripped release binaries in target/$(MUSL)/release
#   make test       every test (unit, tiny guest on /dev/kvm, Linux guests in
#                   the emulated test host); installs what it needs
#   make demo       boots a Linux guest with its console on this terminal
#   make bench      benchmarks, written to docs/BENCHMARKS.md
#   make media      boot media from Debian packages in target/media (tests/media)
#   make test-media the media booted through SeaBIOS in the test host (tests/firmware_linux.rs)
#   make install    binaries and man pages under $(PREFIX)

PREFIX  ?= /usr/local
MUSL    := x86_64-unknown-linux-musl
BIN     := target/$(MUSL)/release
TOOLS   := vm-run vm-ctl vm-img vm-net vm-send vm-receive
CARGO   ?= cargo

all: setup-rust
	$(CARGO) build --release --bins --target $(MUSL)

# What the build needs: the musl target for static binaries, and the
# linters of make lint.
setup-rust:
	@rustup target list --installed 2>/dev/null | grep -qx $(MUSL) || rustup target add $(MUSL)
	@rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

# What the tests, demo and benchmarks need from Debian.
setup: setup-rust
	@tests/harness/setup.sh

fixture: setup
	tests/guest/build.sh target/guest

media: setup fixture
	tests/media/build.sh target/media

# Not part of make test: the media and this one long test-host boot
# would take a CI run past its time (tests/README.md).
test-media: media all
	$(CARGO) test -p vm-tests --test firmware_linux -- --ignored

test: setup all
	mandoc -Tlint -Wwarning man/*
	$(CARGO) test --workspace

demo: setup all fixture
	@tests/harness/demo.sh

bench: setup all fixture
	tests/bench/run.sh docs/BENCHMARKS.md

lint: setup-rust
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Fuzzes the virtio-blk and virtio-scsi queues (vm-run/fuzz) and then qcow2 images
# (vm-img/fuzz: header, refcount walk, imago's reads and writes), each for
# FUZZ_SECONDS, with nightly and cargo-fuzz. New inputs go to
# */fuzz/corpus-new, crashes to */fuzz/artifacts; the seeds in
# vm-run/fuzz/corpus and tests/qcow2-corpus stay as they are.
FUZZ_SECONDS ?= 60
fuzz:
	@cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	mkdir -p vm-run/fuzz/corpus-new/virtio_blk
	cd vm-run && cargo +nightly fuzz run virtio_blk fuzz/corpus-new/virtio_blk fuzz/corpus/virtio_blk -- -max_total_time=$(FUZZ_SECONDS)
	mkdir -p vm-run/fuzz/corpus-new/virtio_scsi
	cd vm-run && cargo +nightly fuzz run virtio_scsi fuzz/corpus-new/virtio_scsi fuzz/corpus/virtio_scsi -- -max_total_time=$(FUZZ_SECONDS)
	mkdir -p vm-img/fuzz/corpus-new/qcow2_open
	cd vm-img && cargo +nightly fuzz run qcow2_open fuzz/corpus-new/qcow2_open ../tests/qcow2-corpus -- -max_total_time=$(FUZZ_SECONDS) -malloc_limit_mb=256 -timeout=10

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man8
	for t in $(TOOLS); do install -m 755 $(BIN)/$$t $(DESTDIR)$(PREFIX)/bin/; done
	install -m 644 man/*.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	install -m 644 man/*.8 $(DESTDIR)$(PREFIX)/share/man/man8/

clean:
	$(CARGO) clean

.PHONY: all setup-rust setup fixture media test-media test demo bench lint fuzz install clean
