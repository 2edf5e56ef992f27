//! vm-receive: not written yet. Until it is, it only prints its planned usage and
//! exits 64 (EX_USAGE), as its man page says.

const USAGE: &str = "usage: vm-receive [-N name] [disk and network options]";

fn main() {
    eprintln!("{USAGE}");
    eprintln!("vm-receive: not implemented yet");
    std::process::exit(64);
}
