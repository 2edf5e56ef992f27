//! vm-net: not written yet. Until it is, it only prints its planned usage and
//! exits 64 (EX_USAGE), as its man page says.

const USAGE: &str =
    "usage: vm-net [-L] [-b bridge] [-a lladdr] [-i ifname] [-u user[:group]] prog [args ...]";

fn main() {
    eprintln!("{USAGE}");
    eprintln!("vm-net: not implemented yet");
    std::process::exit(64);
}
