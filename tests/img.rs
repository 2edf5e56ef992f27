//! vm-img against the real qemu-img (Debian's qemu-utils): the images each
//! makes pass the other's check and read the same bytes in both, the two
//! agree on what an image is (size, format, cluster size, backing chain),
//! and hostile or broken images get one line on stderr and a documented
//! status, never a panic. No guest runs here; tests/qcow2.rs has those.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use vm_tests::{bin, target_dir, wait_output, Output};

fn run(cmd: &mut Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_output(child, Duration::from_secs(120))
}

fn vm_img(dir: &Path, args: &[&str]) -> Output {
    run(Command::new(bin("vm-img")).args(args).current_dir(dir))
}

fn qemu_img(dir: &Path, args: &[&str]) -> Output {
    run(Command::new("qemu-img").args(args).current_dir(dir))
}

fn qemu_io(dir: &Path, args: &[&str]) {
    let out = run(Command::new("qemu-io").args(args).current_dir(dir));
    assert_eq!(out.status, 0, "qemu-io {args:?}: {out:?}");
}

fn ok(out: Output, what: &str) -> Output {
    assert_eq!(out.status, 0, "{what}: {out:?}");
    out
}

/// A fresh folder for one test.
fn scratch(name: &str) -> PathBuf {
    let d = target_dir().join("img-tests").join(name);
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// `len` bytes of pseudo-random data in which every third 64 KiB block
/// is zeroes (holes to skip), as a raw image.
fn pattern(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut data = vec![0u8; len];
    for (i, chunk) in data.chunks_mut(64 << 10).enumerate() {
        if i % 3 == 2 {
            continue;
        }
        for b in chunk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    fs::write(path, &data).unwrap();
    data
}

fn json_has(json: &str, key: &str, value: &str) -> bool {
    json.contains(&format!("\"{key}\": {value}"))
}

/// qemu-img check's verdict: 0 clean, 2 corrupt, 3 leaks only.
fn qemu_check(dir: &Path, file: &str) -> i32 {
    qemu_img(dir, &["check", file]).status
}

#[test]
fn images_vm_img_makes_pass_qemu_img_check() {
    let d = scratch("create");
    for (name, cluster) in [
        ("c4k.qcow2", "4K"),
        ("c64k.qcow2", "64K"),
        ("c2m.qcow2", "2M"),
    ] {
        ok(
            vm_img(&d, &["create", "-c", cluster, "-s", "10G", name]),
            name,
        );
        assert_eq!(qemu_check(&d, name), 0, "{name}");
        let info = ok(qemu_img(&d, &["info", "--output=json", name]), name).stdout;
        let bytes = vm_tests_size(cluster);
        assert!(json_has(&info, "virtual-size", "10737418240"), "{info}");
        assert!(json_has(&info, "format", "\"qcow2\""), "{info}");
        assert!(
            json_has(&info, "cluster-size", &bytes.to_string()),
            "{info}"
        );
        assert!(info.contains("\"compat\": \"1.1\""), "{info}");
    }
    // The name says raw; a raw image is sparse.
    ok(vm_img(&d, &["create", "-s", "1G", "disk.img"]), "raw");
    let info = ok(qemu_img(&d, &["info", "--output=json", "disk.img"]), "raw").stdout;
    assert!(json_has(&info, "format", "\"raw\""), "{info}");
    assert!(json_has(&info, "virtual-size", "1073741824"), "{info}");
    assert_eq!(fs::metadata(d.join("disk.img")).unwrap().blocks(), 0);
    assert_eq!(
        fs::metadata(d.join("disk.img")).unwrap().mode() & 0o777,
        0o600
    );

    // A chain of four, names relative to each image's folder, sizes from
    // the base; -b makes qcow2 whatever the name.
    fs::create_dir_all(d.join("sub")).unwrap();
    ok(vm_img(&d, &["create", "-s", "64M", "base.img"]), "base");
    ok(vm_img(&d, &["create", "-b", "base.img", "l1.qcow2"]), "l1");
    ok(vm_img(&d, &["create", "-b", "l1.qcow2", "l2.qcow2"]), "l2");
    ok(
        vm_img(&d, &["create", "-b", "../l2.qcow2", "sub/top"]),
        "top",
    );
    for f in ["l1.qcow2", "l2.qcow2", "sub/top"] {
        assert_eq!(qemu_check(&d, f), 0, "{f}");
    }
    let chain = ok(
        qemu_img(&d, &["info", "--backing-chain", "--output=json", "sub/top"]),
        "chain",
    )
    .stdout;
    assert_eq!(
        chain.matches("\"virtual-size\": 67108864").count(),
        4,
        "{chain}"
    );
    assert!(
        json_has(&chain, "backing-filename", "\"../l2.qcow2\""),
        "{chain}"
    );
    assert!(
        json_has(&chain, "backing-filename-format", "\"raw\""),
        "{chain}"
    );
    assert!(
        json_has(&chain, "full-backing-filename", "\"sub/../l2.qcow2\""),
        "{chain}"
    );
    // vm-img sees the same chain.
    let ours = ok(vm_img(&d, &["info", "sub/top"]), "info").stdout;
    let images: Vec<&str> = ours.lines().filter(|l| l.starts_with("image ")).collect();
    assert_eq!(
        images,
        [
            "image sub/top",
            "image sub/../l2.qcow2",
            "image sub/../l1.qcow2",
            "image sub/../base.img"
        ]
    );
    assert!(
        ours.contains("backing-file ../l2.qcow2\nbacking-format qcow2\n"),
        "{ours}"
    );
    let j = ok(vm_img(&d, &["info", "-j", "sub/top"]), "info -j").stdout;
    assert!(json_has(&j, "backing-filename", "\"../l2.qcow2\""), "{j}");
    assert_eq!(j.matches("\"virtual-size\": 67108864").count(), 4, "{j}");
}

fn vm_tests_size(s: &str) -> u64 {
    let (n, unit) = s.split_at(s.len() - 1);
    n.parse::<u64>().unwrap() << if unit == "K" { 10 } else { 20 }
}

#[test]
fn data_vm_img_writes_is_what_qemu_img_reads() {
    let d = scratch("write");
    let data = pattern(&d.join("p.raw"), 8 << 20, 7);
    for (out, args) in [
        ("p.qcow2", vec![]),
        ("p4k.qcow2", vec!["-c", "4K"]),
        ("p2m.qcow2", vec!["-c", "2M"]),
    ] {
        let mut a = vec!["convert"];
        a.extend(args);
        a.extend(["p.raw", out]);
        let o = ok(vm_img(&d, &a), out);
        assert_eq!(o.stderr, "", "no progress without -p");
        assert_eq!(qemu_check(&d, out), 0, "{out}");
        ok(
            qemu_img(&d, &["compare", "-f", "raw", "-F", "qcow2", "p.raw", out]),
            out,
        );
        // Zero blocks were not written: a third of the data is holes
        // (2 MiB clusters hold some data each).
        if out == "p2m.qcow2" {
            continue;
        }
        let used = fs::metadata(d.join(out)).unwrap().blocks() * 512;
        assert!(used < (6 << 20) + (1 << 20), "{out} takes {used} bytes");
    }
    // And back to a sparse raw image holding the same bytes.
    ok(
        vm_img(&d, &["convert", "-O", "raw", "p.qcow2", "back"]),
        "back",
    );
    assert_eq!(fs::read(d.join("back")).unwrap(), data);
    assert!(fs::metadata(d.join("back")).unwrap().blocks() * 512 < 6 << 20);
}

#[test]
fn images_qemu_img_makes_read_the_same_in_vm_img() {
    let d = scratch("read");
    pattern(&d.join("p.raw"), 6 << 20, 11);
    let made: [(&str, &[&str]); 5] = [
        ("plain.qcow2", &[]),
        ("compressed.qcow2", &["-c"]),
        ("c64k.qcow2", &["-o", "cluster_size=65536"]),
        ("c2m.qcow2", &["-o", "cluster_size=2M"]),
        ("v2.qcow2", &["-o", "compat=0.10"]),
    ];
    let mut images: Vec<&str> = Vec::new();
    for (name, opts) in made {
        let mut a = vec!["convert", "-f", "raw", "-O", "qcow2"];
        a.extend_from_slice(opts);
        a.extend(["p.raw", name]);
        ok(qemu_img(&d, &a), name);
        images.push(name);
    }
    // An overlay on a raw base, with writes of its own and zeroed ranges.
    ok(
        qemu_img(
            &d,
            &[
                "create", "-f", "qcow2", "-b", "p.raw", "-F", "raw", "ov.qcow2",
            ],
        ),
        "overlay",
    );
    qemu_io(
        &d,
        &[
            "-c",
            "write -P 0xab 1M 192k",
            "-c",
            "write -z 3M 128k",
            "ov.qcow2",
        ],
    );
    images.push("ov.qcow2");
    for name in images {
        let c = vm_img(&d, &["check", name]);
        assert_eq!(
            (c.status, c.stdout.as_str(), c.stderr.as_str()),
            (0, "", ""),
            "{name}"
        );
        let theirs = format!("{name}.q.raw");
        let ours = format!("{name}.v.raw");
        ok(qemu_img(&d, &["convert", "-O", "raw", name, &theirs]), name);
        ok(vm_img(&d, &["convert", "-O", "raw", name, &ours]), name);
        assert!(
            fs::read(d.join(&theirs)).unwrap() == fs::read(d.join(&ours)).unwrap(),
            "{name}: vm-img reads other bytes than qemu-img"
        );
        let info = ok(vm_img(&d, &["info", name]), name).stdout;
        assert!(info.contains("virtual-size 6291456\n"), "{info}");
    }
    let info = ok(vm_img(&d, &["info", "c2m.qcow2"]), "info").stdout;
    assert!(info.contains("cluster-size 2097152\n"), "{info}");
    let info = ok(vm_img(&d, &["info", "v2.qcow2"]), "info").stdout;
    assert!(info.contains("version 2\n"), "{info}");
}

/// Overwrites `bytes` at `offset` of `file`.
fn poke(file: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(file).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn be64_at(file: &Path, offset: usize) -> u64 {
    let b = fs::read(file).unwrap();
    u64::from_be_bytes(b[offset..offset + 8].try_into().unwrap())
}

#[test]
fn check_tells_leaks_from_corruption_as_qemu_img_does() {
    let d = scratch("check");
    pattern(&d.join("p.raw"), 2 << 20, 3);
    ok(
        qemu_img(&d, &["convert", "-O", "qcow2", "p.raw", "clean.qcow2"]),
        "clean",
    );
    let clean = d.join("clean.qcow2");
    let refblock = be64_at(&clean, be64_at(&clean, 48) as usize);
    let len = fs::metadata(&clean).unwrap().len();
    let clusters = len / 65536;

    // A leak: a refcount for a cluster nothing uses (what an allocating
    // write cut short leaves).
    fs::copy(&clean, d.join("leak.qcow2")).unwrap();
    let leak = d.join("leak.qcow2");
    fs::OpenOptions::new()
        .write(true)
        .open(&leak)
        .unwrap()
        .set_len(len + 65536)
        .unwrap();
    poke(&leak, refblock + 2 * clusters, &1u16.to_be_bytes());
    let out = vm_img(&d, &["check", "leak.qcow2"]);
    assert_eq!(out.status, 3, "{out:?}");
    assert!(
        out.stdout.contains(&format!("leaked cluster {clusters}")),
        "{out:?}"
    );
    assert!(
        out.stdout
            .ends_with("leak.qcow2: 0 corruptions, 1 leaked clusters\n"),
        "{out:?}"
    );
    assert_eq!(qemu_check(&d, "leak.qcow2"), 3);

    // Corruption: a data cluster whose refcount says free.
    fs::copy(&clean, d.join("bad.qcow2")).unwrap();
    let bad = d.join("bad.qcow2");
    poke(&bad, refblock + 2 * (clusters - 1), &0u16.to_be_bytes());
    let out = vm_img(&d, &["check", "bad.qcow2"]);
    assert_eq!(out.status, 2, "{out:?}");
    assert!(
        out.stdout.contains("refcount 0 but 1 references"),
        "{out:?}"
    );
    assert_eq!(qemu_check(&d, "bad.qcow2"), 2);

    // A raw image has nothing to check.
    assert_eq!(vm_img(&d, &["check", "p.raw"]).status, 0);
}

#[test]
fn resize_grows_and_shrinks_only_when_asked() {
    let d = scratch("resize");
    let size = |f: &str| {
        let info = ok(qemu_img(&d, &["info", "--output=json", f]), f).stdout;
        let at = info.find("\"virtual-size\": ").unwrap() + 16;
        info[at..]
            .split(',')
            .next()
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    for f in ["r.qcow2", "r.img"] {
        ok(vm_img(&d, &["create", "-s", "64M", f]), f);
        ok(vm_img(&d, &["resize", f, "+64M"]), f);
        assert_eq!(size(f), 128 << 20, "{f}");
        let refused = vm_img(&d, &["resize", f, "32M"]);
        assert_eq!(refused.status, 64, "{refused:?}");
        assert!(refused.stderr.contains("-S shrinks"), "{refused:?}");
        assert_eq!(size(f), 128 << 20, "{f}");
        ok(vm_img(&d, &["resize", "-S", f, "32M"]), f);
        assert_eq!(size(f), 32 << 20, "{f}");
    }
    assert_eq!(qemu_check(&d, "r.qcow2"), 0);
}

/// An overlay whose base qemu-img does not open (it may not exist, or
/// lead back to the overlay).
fn unchecked_overlay(dir: &Path, base: &str, format: &str, name: &str) {
    let args = [
        "create", "-q", "-f", "qcow2", "-u", "-b", base, "-F", format, name, "1M",
    ];
    ok(qemu_img(dir, &args), name);
}

/// One line on stderr, naming `name`, and the status: never a panic.
fn refused(out: &Output, tool: &str, name: &str, statuses: &[i32]) {
    assert!(statuses.contains(&out.status), "{name}: {out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{name}: {out:?}");
    assert!(
        out.stderr.starts_with(&format!("{tool}: ")) && out.stderr.contains(name),
        "{name}: {out:?}"
    );
}

#[test]
fn hostile_images_get_one_line_and_no_panic() {
    let d = scratch("hostile");
    ok(vm_img(&d, &["create", "-s", "16M", "good.qcow2"]), "good");
    let good = fs::read(d.join("good.qcow2")).unwrap();
    let edit = |name: &str, at: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        fs::write(d.join(name), b).unwrap();
    };
    edit("version.qcow2", 4, &9u32.to_be_bytes());
    edit("cluster.qcow2", 20, &31u32.to_be_bytes());
    edit("size.qcow2", 24, &(1u64 << 62).to_be_bytes());
    edit("l1size.qcow2", 36, &u32::MAX.to_be_bytes());
    edit("l1past.qcow2", 40, &(1u64 << 40).to_be_bytes());
    edit("l1odd.qcow2", 40, &0x30001u64.to_be_bytes());
    edit("rtpast.qcow2", 48, &(1u64 << 50).to_be_bytes());
    edit("rtbig.qcow2", 56, &100_000u32.to_be_bytes());
    edit("datafile.qcow2", 72, &4u64.to_be_bytes());
    edit("features.qcow2", 72, &(1u64 << 40).to_be_bytes());
    edit(
        "backname.qcow2",
        8,
        &[0, 0, 0, 0, 0, 0, 0xff, 0xf0, 0, 0, 0x10, 0],
    );
    fs::write(d.join("truncated.qcow2"), &good[..100]).unwrap();
    fs::write(d.join("tables-cut.qcow2"), &good[..good.len() - 4096]).unwrap();
    fs::write(d.join("empty.qcow2"), b"QFI\xfb").unwrap();
    // Chains that loop, are too deep, or lose a base.
    unchecked_overlay(&d, "loop2.qcow2", "qcow2", "loop1.qcow2");
    unchecked_overlay(&d, "loop1.qcow2", "qcow2", "loop2.qcow2");
    unchecked_overlay(&d, "gone.img", "raw", "orphan.qcow2");
    let mut prev = "good.qcow2".to_string();
    for i in 0..16 {
        let next = format!("deep{i}.qcow2");
        ok(vm_img(&d, &["create", "-b", &prev, &next]), &next);
        prev = next;
    }
    let cases: [(&str, &[i32]); 18] = [
        ("version.qcow2", &[65]),
        ("cluster.qcow2", &[65]),
        ("size.qcow2", &[65]),
        ("l1size.qcow2", &[65]),
        ("l1past.qcow2", &[65]),
        ("l1odd.qcow2", &[65]),
        ("rtpast.qcow2", &[65]),
        ("rtbig.qcow2", &[65]),
        ("datafile.qcow2", &[65]),
        ("features.qcow2", &[65]),
        ("backname.qcow2", &[65]),
        ("truncated.qcow2", &[65]),
        ("tables-cut.qcow2", &[65]),
        ("empty.qcow2", &[65]),
        ("loop1.qcow2", &[65]),
        ("orphan.qcow2", &[66]),
        ("deep15.qcow2", &[65]),
        ("gone.qcow2", &[66]),
    ];
    for (name, statuses) in cases {
        // The message names the image at fault: the file itself, or the
        // base that is missing.
        let named = if name == "orphan.qcow2" {
            "gone.img"
        } else {
            name
        };
        refused(&vm_img(&d, &["info", name]), "vm-img", named, statuses);
        refused(
            &vm_img(&d, &["convert", name, "out.raw"]),
            "vm-img",
            named,
            statuses,
        );
        assert!(
            !d.join("out.raw").exists(),
            "{name}: convert left its output"
        );
        let check = vm_img(&d, &["check", name]);
        // check reads only the image itself: a bad chain is no concern of it.
        if !["loop1.qcow2", "orphan.qcow2", "deep15.qcow2"].contains(&name) {
            refused(&check, "vm-img", named, statuses);
        }
        let run = run(Command::new(bin("vm-run"))
            .args(["-m", "16M", "-b", vm_tests::tiny_guest().to_str().unwrap()])
            .args(["-a", "poweroff", "-d", name])
            .current_dir(&d));
        refused(&run, "vm-run", named, statuses);
    }
    // A chain of 17 images is one too many; 16 is fine.
    ok(vm_img(&d, &["info", "deep14.qcow2"]), "deep14");
}

#[test]
fn bad_commands_have_documented_statuses() {
    let d = scratch("errors");
    ok(vm_img(&d, &["create", "-s", "1M", "a.qcow2"]), "a");
    let again = vm_img(&d, &["create", "-s", "1M", "a.qcow2"]);
    refused(&again, "vm-img", "a.qcow2: File exists", &[73]);
    for (args, status) in [
        (&["create", "b.qcow2"][..], 64),
        (&["create", "-s", "1Q", "b.qcow2"], 64),
        (&["create", "-c", "3K", "-s", "1M", "b.qcow2"], 64),
        (&["create", "-f", "raw", "-b", "a.qcow2", "b.img"], 64),
        (&["frobnicate"], 64),
        (&["info"], 64),
        (&["resize", "a.qcow2"], 64),
    ] {
        let out = vm_img(&d, args);
        assert_eq!(out.status, status, "{args:?}: {out:?}");
        assert!(
            out.stderr.starts_with("vm-img: ") && out.stderr.contains("usage:"),
            "{out:?}"
        );
    }
    assert!(!d.join("b.qcow2").exists() && !d.join("b.img").exists());
    refused(
        &vm_img(&d, &["create", "-b", "nope.qcow2", "c.qcow2"]),
        "vm-img",
        "nope.qcow2",
        &[66],
    );
    assert!(!d.join("c.qcow2").exists());
    refused(
        &vm_img(&d, &["info", "nope.qcow2"]),
        "vm-img",
        "nope.qcow2",
        &[66],
    );
    let help = vm_img(&d, &["-h"]);
    assert_eq!(help.status, 0);
    assert!(help.stdout.starts_with("usage: vm-img create"), "{help:?}");
}

#[test]
fn a_full_disk_is_one_line_and_leaves_nothing_behind() {
    let d = scratch("full");
    pattern(&d.join("p.raw"), 4 << 20, 5);
    let small = d.join("small");
    fs::create_dir_all(&small).unwrap();
    let mounted = run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1M", "tmpfs"])
        .arg(&small));
    assert_eq!(mounted.status, 0, "{mounted:?}");
    let out = vm_img(&d, &["convert", "p.raw", "small/out.qcow2"]);
    let raw = vm_img(&d, &["convert", "p.raw", "small/out.img"]);
    let left: Vec<_> = fs::read_dir(&small).unwrap().collect();
    run(Command::new("umount").arg(&small));
    refused(
        &out,
        "vm-img",
        "small/out.qcow2: No space left on device",
        &[74],
    );
    refused(
        &raw,
        "vm-img",
        "small/out.img: No space left on device",
        &[74],
    );
    assert!(left.is_empty(), "{left:?}");
}

/// `-p` shows the progress as qemu-img's does (on stderr, where qemu-img
/// uses stdout), on a terminal or not; without it, nothing, even on a
/// terminal (it used to show progress there unasked).
#[test]
fn convert_p_shows_progress_as_qemu_img_does() {
    let d = scratch("progress");
    pattern(&d.join("p.raw"), 4 << 20, 9);
    let out = ok(vm_img(&d, &["convert", "-p", "p.raw", "p.qcow2"]), "-p");
    assert_eq!(out.stdout, "", "{out:?}");
    assert!(
        out.stderr.starts_with("    (0.00/100%)\r")
            && out.stderr.ends_with("    (100.00/100%)\r\n"),
        "{out:?}"
    );
    assert!(out.stderr.contains("    (50.00/100%)\r"), "{out:?}");
    assert_eq!(qemu_check(&d, "p.qcow2"), 0);
    ok(qemu_img(&d, &["compare", "p.raw", "p.qcow2"]), "compare");
    // script(1) gives vm-img a terminal: no -p, no progress.
    let cmd = format!("{} convert p.raw q.qcow2", bin("vm-img").display());
    let out = ok(
        run(Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .current_dir(&d)),
        "script",
    );
    assert_eq!(out.stdout, "", "{out:?}");
    ok(qemu_img(&d, &["compare", "p.raw", "q.qcow2"]), "compare");
}

#[test]
fn convert_skips_holes_and_unallocated_clusters_but_not_data() {
    use std::os::unix::fs::FileExt;
    let d = scratch("sparse");
    // 1 GiB with data at three places, the rest holes.
    let f = fs::File::create(d.join("s.raw")).unwrap();
    f.set_len(1 << 30).unwrap();
    for (at, byte) in [(0u64, 1u8), (300 << 20, 2), ((1 << 30) - 4096, 3)] {
        f.write_all_at(&[byte; 4096], at).unwrap();
    }
    drop(f);
    ok(vm_img(&d, &["convert", "s.raw", "s.qcow2"]), "to qcow2");
    ok(qemu_img(&d, &["compare", "s.raw", "s.qcow2"]), "compare");
    // An overlay that zeroes part of what its base has.
    ok(
        vm_img(&d, &["create", "-b", "s.qcow2", "o.qcow2"]),
        "overlay",
    );
    qemu_io(
        &d,
        &["-c", "write -z 0 4k", "-c", "write -P 7 512M 4k", "o.qcow2"],
    );
    ok(vm_img(&d, &["convert", "o.qcow2", "o.raw"]), "to raw");
    ok(qemu_img(&d, &["compare", "o.qcow2", "o.raw"]), "compare");
    let used = fs::metadata(d.join("o.raw")).unwrap().blocks() * 512;
    assert!(used <= 64 << 10, "o.raw takes {used} bytes");
}

/// qcow2 images whose size is not a whole number of clusters: convert
/// writes their last, partial cluster (it used to fail with "Cannot
/// allocate beyond the disk size", exit 74), sizes are whole sectors as
/// qemu-img makes them, and qemu-img reads the same bytes.
#[test]
fn convert_writes_the_partial_last_cluster() {
    let d = scratch("partial");
    for len in [1usize, 512, 1000, 65537, 100000] {
        let raw = format!("p{len}.raw");
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
        fs::write(d.join(&raw), &data).unwrap();
        for (out, cluster) in [("64k", "64K"), ("4k", "4K")] {
            let out = format!("p{len}-{out}.qcow2");
            ok(
                vm_img(&d, &["convert", "-c", cluster, "-O", "qcow2", &raw, &out]),
                &out,
            );
            assert_eq!(qemu_check(&d, &out), 0, "{out}");
            ok(
                qemu_img(&d, &["compare", "-f", "raw", "-F", "qcow2", &raw, &out]),
                &out,
            );
            let info = ok(qemu_img(&d, &["info", "--output=json", &out]), &out).stdout;
            let sectors = len.next_multiple_of(512);
            assert!(
                json_has(&info, "virtual-size", &sectors.to_string()),
                "{info}"
            );
        }
        let back = format!("p{len}.back");
        ok(vm_img(&d, &["convert", "-O", "raw", &raw, &back]), &back);
        let mut want = data.clone();
        want.resize(len.next_multiple_of(512), 0);
        assert!(fs::read(d.join(&back)).unwrap() == want, "{back}");
    }
}

/// Growing an overlay whose base is longer than the overlay was: the new
/// area reads as zeroes, as after qemu-img resize, not as the base's
/// bytes (they showed through). Also from a size inside a cluster, to a
/// size inside the same cluster, and shrink then grow with no base.
#[test]
fn resize_of_an_overlay_does_not_show_the_base() {
    let d = scratch("resize-overlay");
    pattern(&d.join("base.raw"), 3 << 20, 13);
    for (i, (from, to)) in [
        ("1M", "2M"),
        ("1000000", "2M"),
        ("1000000", "1000960"),
        ("1M", "8M"),
    ]
    .into_iter()
    .enumerate()
    {
        let (ours, theirs) = (format!("o{i}.qcow2"), format!("q{i}.qcow2"));
        for f in [&ours, &theirs] {
            ok(
                qemu_img(
                    &d,
                    &[
                        "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", f, from,
                    ],
                ),
                f,
            );
        }
        qemu_io(&d, &["-c", "write -P 0x3c 64k 4k", &ours]);
        qemu_io(&d, &["-c", "write -P 0x3c 64k 4k", &theirs]);
        ok(vm_img(&d, &["resize", &ours, to]), &ours);
        ok(qemu_img(&d, &["resize", "-q", &theirs, to]), &theirs);
        assert_eq!(qemu_check(&d, &ours), 0, "{ours}");
        let same = qemu_img(&d, &["compare", &ours, &theirs]);
        assert_eq!(same.status, 0, "{from} to {to}: {same:?}");
        // And vm-img reads what qemu-img reads.
        let flat = format!("o{i}.raw");
        ok(vm_img(&d, &["convert", "-O", "raw", &ours, &flat]), &flat);
        ok(
            qemu_img(&d, &["compare", "-F", "raw", &theirs, &flat]),
            &flat,
        );
    }
    // No base: what a shrink dropped does not come back.
    ok(vm_img(&d, &["create", "-s", "2M", "s.qcow2"]), "s");
    qemu_io(&d, &["-c", "write -P 0x5a 1M 1M", "s.qcow2"]);
    ok(vm_img(&d, &["resize", "-S", "s.qcow2", "1M"]), "shrink");
    ok(vm_img(&d, &["resize", "s.qcow2", "2M"]), "grow");
    qemu_io(&d, &["-c", "read -P 0 1M 1M", "s.qcow2"]);
    assert_eq!(qemu_check(&d, "s.qcow2"), 0);
}

/// vm-img with a time limit: a FIFO used to hang it in open(2).
fn vm_img_soon(dir: &Path, args: &[&str]) -> Output {
    let child = Command::new(bin("vm-img"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_output(child, Duration::from_secs(10))
}

/// What is not a regular file or a block device is refused before it is
/// opened for reading: a FIFO (open(2) hung), a character device behind a
/// symlink (/dev/zero read as an empty raw image), a directory (74 from
/// info, 65 from check); 65 from every command, 66 for what is missing.
#[test]
fn what_is_not_a_file_or_disk_is_refused_at_once() {
    let d = scratch("not-files");
    let fifo = d.join("fifo");
    let made = run(Command::new("mkfifo").arg(&fifo));
    assert_eq!(made.status, 0, "{made:?}");
    std::os::unix::fs::symlink("/dev/zero", d.join("zero")).unwrap();
    fs::create_dir_all(d.join("dir")).unwrap();
    std::os::unix::fs::symlink("nowhere", d.join("dangling")).unwrap();
    ok(vm_img(&d, &["create", "-s", "1M", "good.qcow2"]), "good");
    for (name, status) in [("fifo", 65), ("zero", 65), ("dir", 65), ("dangling", 66)] {
        for args in [
            &["info", name][..],
            &["info", "-j", name],
            &["check", name],
            &["resize", name, "2M"],
            &["resize", name, "+1M"],
            &["convert", name, "out.raw"],
            &["create", "-b", name, "ov.qcow2"],
        ] {
            let out = vm_img_soon(&d, args);
            refused(&out, "vm-img", name, &[status]);
            assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
        }
        assert!(!d.join("out.raw").exists() && !d.join("ov.qcow2").exists());
    }
    // A base name that leads to one of them, too.
    unchecked_overlay(&d, "fifo", "raw", "on-fifo.qcow2");
    let out = vm_img_soon(&d, &["info", "on-fifo.qcow2"]);
    refused(&out, "vm-img", "fifo", &[65]);
}

/// A copy of `from` with the big-endian u64 at `at` replaced by what `f`
/// makes of it.
fn edit_u64(from: &Path, to: &Path, at: u64, f: impl Fn(u64) -> u64) {
    fs::copy(from, to).unwrap();
    let old = be64_at(to, at as usize);
    poke(to, at, &f(old).to_be_bytes());
}

/// Invalid images are 65 whatever part of them is invalid (these were
/// 74, the status of a failing disk), and a size no image can have is a
/// usage error, 64.
#[test]
fn invalid_images_are_65_and_impossible_sizes_64() {
    let d = scratch("statuses");
    pattern(&d.join("p.raw"), 1 << 20, 17);
    ok(
        qemu_img(&d, &["convert", "-O", "qcow2", "p.raw", "d.qcow2"]),
        "d",
    );
    let good = d.join("d.qcow2");
    let (l1, reftable) = (be64_at(&good, 40), be64_at(&good, 48));
    let l2 = be64_at(&good, l1 as usize) & 0x00ff_ffff_ffff_fe00;
    // A reserved bit of an L2 entry; an L2 table off its cluster.
    edit_u64(&good, &d.join("l2-reserved.qcow2"), l2, |e| e | 2);
    edit_u64(&good, &d.join("l2-unaligned.qcow2"), l1, |e| e + 512);
    // A refcount block 2^64 - 64 KiB into the file.
    edit_u64(&good, &d.join("refblock-far.qcow2"), reftable, |_| {
        0xffff_ffff_ffff_0000
    });
    // A compressed cluster that does not inflate.
    let text: Vec<u8> = (0..100_000u32)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    fs::write(d.join("t.raw"), &text).unwrap();
    ok(
        qemu_img(&d, &["convert", "-c", "-O", "qcow2", "t.raw", "c.qcow2"]),
        "c",
    );
    let c = d.join("c.qcow2");
    let cl2 = be64_at(&c, be64_at(&c, 40) as usize) & 0x00ff_ffff_ffff_fe00;
    let entry = be64_at(&c, cl2 as usize);
    assert!(entry & (1 << 62) != 0, "not compressed: {entry:x}");
    fs::copy(&c, d.join("inflate.qcow2")).unwrap();
    poke(
        &d.join("inflate.qcow2"),
        entry & ((1 << 54) - 1),
        &[0xff; 64],
    );
    // check's verdict: the metadata of inflate.qcow2 is sound, only its
    // data is not (qemu-img check agrees; on refblock-far.qcow2 it gives
    // up with 1).
    for (name, args, check) in [
        (
            "l2-reserved.qcow2",
            &["convert", "l2-reserved.qcow2", "o.raw"][..],
            2,
        ),
        (
            "l2-unaligned.qcow2",
            &["convert", "l2-unaligned.qcow2", "o.raw"],
            2,
        ),
        ("inflate.qcow2", &["convert", "inflate.qcow2", "o.raw"], 0),
        (
            "refblock-far.qcow2",
            &["resize", "refblock-far.qcow2", "+1M"],
            2,
        ),
    ] {
        refused(&vm_img(&d, args), "vm-img", name, &[65]);
        assert!(!d.join("o.raw").exists(), "{name}");
        assert_eq!(vm_img(&d, &["check", name]).status, check, "{name}");
        assert_eq!(qemu_check(&d, name) == 0, check == 0, "{name}");
    }
    let run = run(Command::new(bin("vm-run"))
        .args(["-m", "16M", "-b", vm_tests::tiny_guest().to_str().unwrap()])
        .args(["-a", "poweroff", "-d", "refblock-far.qcow2"])
        .current_dir(&d));
    refused(&run, "vm-run", "refblock-far.qcow2", &[65]);

    // Too large: 64P needs clusters of 2M (qemu-img agrees); no file
    // system takes a raw file of 64P; nothing is left behind.
    ok(vm_img(&d, &["create", "-s", "2P", "2p.qcow2"]), "2P");
    for args in [
        &["create", "-s", "64P", "big.qcow2"][..],
        &["create", "-s", "64P", "big.img"],
        &["create", "-s", "15E", "big.img"],
        &["resize", "2p.qcow2", "+1"],
        &["resize", "2p.qcow2", "+15E"],
    ] {
        let out = vm_img(&d, args);
        assert_eq!(out.status, 64, "{args:?}: {out:?}");
        assert!(out.stderr.starts_with("vm-img: "), "{out:?}");
    }
    assert!(!d.join("big.qcow2").exists() && !d.join("big.img").exists());
    assert_ne!(
        qemu_img(&d, &["create", "-f", "qcow2", "q.qcow2", "64P"]).status,
        0
    );
    ok(
        vm_img(&d, &["create", "-c", "2M", "-s", "64P", "64p.qcow2"]),
        "64P",
    );
    assert_eq!(qemu_check(&d, "64p.qcow2"), 0);
}
