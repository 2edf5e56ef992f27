# vm-tools: static Unix-style tools around KVM. See README.md.
#   make            static, stripped release binaries in target/$(MUSL)/release
#   make test       every test (unit, tiny guest on /dev/kvm, Linux guests in
#                   the emulated test host); installs what it needs
#   make demo       boots a Linux guest with its console on this terminal
#   make bench      benchmarks, written to docs/BENCHMARKS.md
#   make media      boot media from Debian packages in target/media (tests/media)
#   make test-media the media booted through SeaBIOS in the test host (tests/firmware_linux.rs)
#   make install    binaries and man pages under $(PREFIX)
#   make oci        an OCI image of the static tools, target/oci/vm-tools.tar

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

# Fuzzes every parser that takes a guest's or a peer's bytes, each for
# FUZZ_SECONDS with cargo-fuzz (vm-run/fuzz/run.sh: nightly if rustup has
# it, else stable with RUSTC_BOOTSTRAP=1; it installs cargo-fuzz if
# missing): virtio-blk, virtio-scsi (the CD-ROM), virtio-net, the snapshot
# stream, the control protocol, the DHCP responder, the PCI bus, fw_cfg
# (vm-run/fuzz), then qcow2 images (vm-img/fuzz: header, refcount walk,
# imago's reads and writes). New inputs go to */fuzz/corpus-new, crashes
# to */fuzz/artifacts; the seeds in vm-run/fuzz/corpus and
# tests/qcow2-corpus stay as they are. fuzz-short is CI's pass: a few
# seconds each.
FUZZ_SECONDS ?= 60
fuzz:
	vm-run/fuzz/run.sh $(FUZZ_SECONDS)

fuzz-short:
	vm-run/fuzz/run.sh 5

# The static tools and nothing else as an OCI image archive, for
# containerd (ctr images import) or a registry (docs/OPERATIONS.md).
oci: all
	contrib/oci/build.sh $(BIN) target/oci/vm-tools.tar

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man8
	for t in $(TOOLS); do install -m 755 $(BIN)/$$t $(DESTDIR)$(PREFIX)/bin/; done
	install -m 644 man/*.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	install -m 644 man/*.8 $(DESTDIR)$(PREFIX)/share/man/man8/

clean:
	$(CARGO) clean

.PHONY: all setup-rust setup fixture media test test-media demo bench lint fuzz fuzz-short oci install clean
