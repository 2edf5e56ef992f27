//! vm-img: creates and inspects raw and qcow2 images (vm-img(1)).

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process;

use lexopt::prelude::*;
use vm_img::create::{self, CreateOptions, DEFAULT_CLUSTER_SIZE};
use vm_img::error::{Error, Result};
use vm_img::image::{self, Format};
use vm_img::qcow2::check;
use vm_img::{convert, info, size};

const USAGE: &str = "usage: vm-img create [-f raw|qcow2] [-b base] [-c cluster] [-s size] file
       vm-img info [-j] file
       vm-img check file
       vm-img convert [-p] [-O raw|qcow2] [-c cluster] in out
       vm-img resize [-S] file [+]size";

/// `vm-img check` tells its findings as `qemu-img check` does.
const CHECK_CORRUPT: i32 = 2;
const CHECK_LEAKS: i32 = 3;

fn usage(msg: impl Into<String>) -> Error {
    Error::Usage(msg.into())
}

fn arg_error(e: lexopt::Error) -> Error {
    usage(e.to_string())
}

fn value_str(v: OsString, opt: &str) -> Result<String> {
    v.into_string()
        .map_err(|_| usage(format!("{opt}: not valid text")))
}

fn size_arg(v: OsString, opt: &str) -> Result<u64> {
    let s = value_str(v, opt)?;
    size::parse(&s).ok_or_else(|| usage(format!("{opt} {s}: not a size (e.g. 512M, 10G)")))
}

fn format_arg(v: OsString, opt: &str) -> Result<Format> {
    let s = value_str(v, opt)?;
    Format::from_name(&s).ok_or_else(|| usage(format!("{opt} {s}: raw or qcow2")))
}

/// The positional arguments, exactly `n` of them.
fn files(p: &mut lexopt::Parser, first: Option<OsString>, n: usize) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = first.into_iter().map(PathBuf::from).collect();
    v.extend(p.raw_args().map_err(arg_error)?.map(PathBuf::from));
    if v.len() != n {
        return Err(usage(format!("expected {n} file name(s)")));
    }
    Ok(v)
}

enum Run {
    Help,
    Status(i32),
}

fn main() {
    let code = match run() {
        Ok(Run::Help) => {
            println!("{USAGE}");
            0
        }
        Ok(Run::Status(c)) => c,
        Err(e) => {
            eprintln!("vm-img: {e}");
            if matches!(e, Error::Usage(_)) {
                eprintln!("{USAGE}");
            }
            e.exit_status()
        }
    };
    process::exit(code);
}

fn run() -> Result<Run> {
    let mut p = lexopt::Parser::from_env();
    let cmd = match p.next().map_err(arg_error)? {
        Some(Short('h')) | Some(Long("help")) => return Ok(Run::Help),
        Some(Value(v)) => value_str(v, "command")?,
        Some(a) => return Err(usage(a.unexpected().to_string())),
        None => return Err(usage("no command")),
    };
    match cmd.as_str() {
        "create" => cmd_create(&mut p),
        "info" => cmd_info(&mut p),
        "check" => cmd_check(&mut p),
        "convert" => cmd_convert(&mut p),
        "resize" => cmd_resize(&mut p),
        other => Err(usage(format!("{other}: no such command"))),
    }
}

fn cmd_create(p: &mut lexopt::Parser) -> Result<Run> {
    let (mut format, mut base, mut size, mut cluster) = (None, None, None, DEFAULT_CLUSTER_SIZE);
    let mut file = None;
    while let Some(a) = p.next().map_err(arg_error)? {
        match a {
            Short('f') => format = Some(format_arg(p.value().map_err(arg_error)?, "-f")?),
            Short('b') => base = Some(value_str(p.value().map_err(arg_error)?, "-b")?),
            Short('s') => size = Some(size_arg(p.value().map_err(arg_error)?, "-s")?),
            Short('c') => {
                cluster = create::cluster_size(size_arg(p.value().map_err(arg_error)?, "-c")?)?
            }
            Short('h') => return Ok(Run::Help),
            Value(v) if file.is_none() => file = Some(v),
            a => return Err(usage(a.unexpected().to_string())),
        }
    }
    let file = PathBuf::from(file.ok_or_else(|| usage("create: no file name"))?);
    // vmctl's rule: the name tells the format, and a base makes it qcow2.
    let format = format.unwrap_or(if base.is_some() {
        Format::Qcow2
    } else {
        Format::from_file_name(&file)
    });
    let opts = CreateOptions {
        format,
        size,
        base,
        cluster_size: cluster,
    };
    create::create(&file, &opts)?;
    Ok(Run::Status(0))
}

fn cmd_info(p: &mut lexopt::Parser) -> Result<Run> {
    let (mut json, mut file) = (false, None);
    while let Some(a) = p.next().map_err(arg_error)? {
        match a {
            Short('j') => json = true,
            Short('h') => return Ok(Run::Help),
            Value(v) if file.is_none() => file = Some(v),
            a => return Err(usage(a.unexpected().to_string())),
        }
    }
    let file = PathBuf::from(file.ok_or_else(|| usage("info: no file name"))?);
    let chain = info::chain(&file)?;
    let out = if json {
        info::json(&chain)
    } else {
        info::text(&chain)
    };
    print_out(&out)?;
    Ok(Run::Status(0))
}

fn print_out(s: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Error::Io(PathBuf::from("standard output"), e))
}

fn cmd_check(p: &mut lexopt::Parser) -> Result<Run> {
    let first = match p.next().map_err(arg_error)? {
        Some(Short('h')) => return Ok(Run::Help),
        Some(Value(v)) => Some(v),
        Some(a) => return Err(usage(a.unexpected().to_string())),
        None => None,
    };
    let file = files(p, first, 1)?.remove(0);
    let f = image::open_file(&file, false, true)?;
    let (format, header, len) = image::probe(&f, &file, None)?;
    let Some(h) = header else {
        // A raw image has no metadata that could be inconsistent.
        debug_assert_eq!(format, Format::Raw);
        return Ok(Run::Status(0));
    };
    let report = check::check(&f, &h, len).map_err(|e| Error::from_io(&file, e))?;
    if report.is_clean() {
        return Ok(Run::Status(0));
    }
    let mut out = String::new();
    for line in &report.problems {
        out.push_str(line);
        out.push('\n');
    }
    let listed = report.problems.len() as u64;
    let total = report.corruptions + report.leaks;
    if total > listed {
        out.push_str(&format!("... and {} more\n", total - listed));
    }
    out.push_str(&format!(
        "{}: {} corruptions, {} leaked clusters\n",
        file.display(),
        report.corruptions,
        report.leaks
    ));
    print_out(&out)?;
    Ok(Run::Status(if report.corruptions > 0 {
        CHECK_CORRUPT
    } else {
        CHECK_LEAKS
    }))
}

fn cmd_convert(p: &mut lexopt::Parser) -> Result<Run> {
    let (mut format, mut cluster, mut progress) = (None, DEFAULT_CLUSTER_SIZE, false);
    let mut names = Vec::new();
    while let Some(a) = p.next().map_err(arg_error)? {
        match a {
            Short('O') => format = Some(format_arg(p.value().map_err(arg_error)?, "-O")?),
            Short('p') => progress = true,
            Short('c') => {
                cluster = create::cluster_size(size_arg(p.value().map_err(arg_error)?, "-c")?)?
            }
            Short('h') => return Ok(Run::Help),
            Value(v) => names.push(PathBuf::from(v)),
            a => return Err(usage(a.unexpected().to_string())),
        }
    }
    let [input, output]: [PathBuf; 2] = names
        .try_into()
        .map_err(|_| usage("convert: an input and an output file"))?;
    let format = format.unwrap_or_else(|| Format::from_file_name(&output));
    convert::convert(&input, &output, format, cluster, progress)?;
    Ok(Run::Status(0))
}

fn cmd_resize(p: &mut lexopt::Parser) -> Result<Run> {
    let mut shrink = false;
    let mut args = Vec::new();
    while let Some(a) = p.next().map_err(arg_error)? {
        match a {
            Short('S') => shrink = true,
            Short('h') => return Ok(Run::Help),
            Value(v) => args.push(value_str(v, "resize")?),
            a => return Err(usage(a.unexpected().to_string())),
        }
    }
    let [file, new]: [String; 2] = args
        .try_into()
        .map_err(|_| usage("resize: a file and a size"))?;
    let file = Path::new(&file);
    let size = match new.strip_prefix('+') {
        Some(more) => {
            let more = size::parse(more).ok_or_else(|| usage(format!("{new}: not a size")))?;
            let now = info::chain(file)?[0].virtual_size();
            now.checked_add(more)
                .ok_or_else(|| usage(format!("{new}: too large")))?
        }
        None => size::parse(&new).ok_or_else(|| usage(format!("{new}: not a size")))?,
    };
    create::resize(file, size, shrink)?;
    Ok(Run::Status(0))
}
