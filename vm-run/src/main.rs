//! vm-run: runs exactly one guest over KVM, in the foreground. Its exit
//! status tells how the guest ended (see vm-run(1)).

use std::process;

use vm_run::config::Config;
use vm_run::config::{self, Parsed};
use vm_run::error::{Error, Result};
use vm_run::outcome::Outcome;
use vm_run::{console, control, exit, sandbox, vm};

/// Nothing inherited but stdio and the taps stays open (vm-run(1)).
fn close_inherited(cfg: &Config) -> Result<()> {
    let taps: Vec<_> = cfg.nics.iter().map(|n| n.fd).collect();
    sandbox::close_inherited(&taps)
        .map_err(|e| Error::Os("closing inherited descriptors".into(), e))
}

fn main() {
    // No panic is expected; should one come, the user still gets their
    // terminal back before the abort.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        console::restore_terminal();
        control::remove_socket();
        default_hook(info);
    }));
    let code = match config::parse(std::env::args_os()) {
        Ok(Parsed::Help) => {
            println!("{}", config::USAGE);
            exit::OK
        }
        Ok(Parsed::Run(cfg)) => match close_inherited(&cfg).and_then(|()| vm::run(&cfg)) {
            Ok(Outcome::Failed(why)) => {
                eprintln!("vm-run: {why}");
                exit::SOFTWARE
            }
            Ok(o @ Outcome::TripleFault(cpu)) => {
                eprintln!("vm-run: vcpu{cpu}: triple fault: the guest was reset");
                o.exit_status()
            }
            Ok(o) => o.exit_status(),
            Err(e) => {
                eprintln!("vm-run: {e}");
                e.exit_status()
            }
        },
        Err(e) => {
            eprintln!("vm-run: {e}");
            eprintln!("{}", config::USAGE);
            e.exit_status()
        }
    };
    process::exit(code);
}
