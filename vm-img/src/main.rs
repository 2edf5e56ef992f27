//! vm-img: not written yet. Until it is, it only prints its planned usage and
//! exits 64 (EX_USAGE), as its man page says.

const USAGE: &str = "usage: vm-img create [-f raw|qcow2] [-b base] [-s size] file | info [-j] file | check file | convert [-O fmt] in out | resize file size";

fn main() {
    eprintln!("{USAGE}");
    eprintln!("vm-img: not implemented yet");
    std::process::exit(64);
}
