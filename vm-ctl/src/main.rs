//! vm-ctl: not written yet. Until it is, it only prints its planned usage and
//! exits 64 (EX_USAGE), as its man page says.

const USAGE: &str = "usage: vm-ctl status [name] | stop [-fw] name|-a | pause name | unpause name | console name | wait name";

fn main() {
    eprintln!("{USAGE}");
    eprintln!("vm-ctl: not implemented yet");
    std::process::exit(64);
}
