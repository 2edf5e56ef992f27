//! `vm-img info`: what an image and each of its bases are, as `key value`
//! lines (awk reads them) or as JSON with qemu-img's names (`-j`).

use std::fmt::Write;
use std::path::Path;

use crate::error::Result;
use crate::image::{self, Layer, OpenOptions};

/// The image and its bases, top first. Nothing is locked: an image a
/// guest is using can be looked at.
pub fn chain(path: &Path) -> Result<Vec<Layer>> {
    let file = image::open_file(path, false, false)?;
    Ok(image::walk(file, path, &OpenOptions::default())?.0)
}

fn backing(l: &Layer) -> Option<(&str, Option<&str>)> {
    let h = l.header.as_ref()?;
    Some((h.backing_file.as_deref()?, h.backing_format.as_deref()))
}

pub fn text(chain: &[Layer]) -> String {
    let mut s = String::new();
    for (i, l) in chain.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        let _ = writeln!(s, "image {}", l.path.display());
        let _ = writeln!(s, "format {}", l.format.name());
        let _ = writeln!(s, "virtual-size {}", l.virtual_size());
        let _ = writeln!(s, "disk-size {}", l.disk_usage);
        if let Some(h) = &l.header {
            let _ = writeln!(s, "cluster-size {}", h.cluster_size());
            let _ = writeln!(s, "version {}", h.version);
            let _ = writeln!(s, "refcount-bits {}", h.refcount_bits());
            if h.nb_snapshots > 0 {
                let _ = writeln!(s, "snapshots {}", h.nb_snapshots);
            }
            if h.is_dirty() {
                let _ = writeln!(s, "dirty yes");
            }
            if h.is_corrupt() {
                let _ = writeln!(s, "corrupt yes");
            }
        }
        if let Some((name, format)) = backing(l) {
            let _ = writeln!(s, "backing-file {name}");
            if let Some(f) = format {
                let _ = writeln!(s, "backing-format {f}");
            }
        }
    }
    s
}

/// A JSON string literal.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(q, "\\u{:04x}", c as u32);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// The chain as `qemu-img info --backing-chain --output=json` spells it.
pub fn json(chain: &[Layer]) -> String {
    let mut s = String::from("[");
    for (i, l) in chain.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let mut fields = vec![
            format!("\"filename\": {}", quote(&l.path.display().to_string())),
            format!("\"format\": {}", quote(l.format.name())),
            format!("\"virtual-size\": {}", l.virtual_size()),
            format!("\"actual-size\": {}", l.disk_usage),
        ];
        if let Some(h) = &l.header {
            fields.push(format!("\"cluster-size\": {}", h.cluster_size()));
            fields.push(format!("\"dirty-flag\": {}", h.is_dirty()));
            fields.push(format!(
                "\"format-specific\": {{\"type\": \"qcow2\", \"data\": {{\"compat\": \"{}\", \"refcount-bits\": {}, \"corrupt\": {}}}}}",
                if h.version >= 3 { "1.1" } else { "0.10" },
                h.refcount_bits(),
                h.is_corrupt()
            ));
        }
        if let Some((name, format)) = backing(l) {
            fields.push(format!("\"backing-filename\": {}", quote(name)));
            if let Some(next) = chain.get(i + 1) {
                fields.push(format!(
                    "\"full-backing-filename\": {}",
                    quote(&next.path.display().to_string())
                ));
            }
            if let Some(f) = format {
                fields.push(format!("\"backing-filename-format\": {}", quote(f)));
            }
        }
        let _ = write!(s, "\n  {{\n    {}\n  }}", fields.join(",\n    "));
    }
    s.push_str("\n]\n");
    s
}
