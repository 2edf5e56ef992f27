//! vm-send: not written yet. Until it is, it only prints its planned usage and
//! exits 64 (EX_USAGE), as its man page says.

const USAGE: &str = "usage: vm-send [-kl] name";

fn main() {
    eprintln!("{USAGE}");
    eprintln!("vm-send: not implemented yet");
    std::process::exit(64);
}
