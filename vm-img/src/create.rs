//! `vm-img create` and `vm-img resize`.

use std::fs::{self, File, OpenOptions as FsOpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use imago::qcow2::Qcow2;
use imago::FormatCreateBuilder;

use crate::error::{Error, Result};
use crate::image::{self, Format, Image, OpenOptions};
use crate::qcow2::header::{MAX_CLUSTER_BITS, MAX_L1_BYTES, MAX_SIZE};

pub const DEFAULT_CLUSTER_SIZE: u64 = 64 << 10;
/// The smallest cluster vm-img makes (qcow2 allows 512 bytes; 4 KiB is
/// the page size everything else aligns to).
pub const MIN_CLUSTER_SIZE: u64 = 4 << 10;

#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub format: Format,
    /// None: the base image's size.
    pub size: Option<u64>,
    /// The base image's name as it goes into the header: relative names
    /// are relative to the new image's folder, as qemu-img takes them.
    pub base: Option<String>,
    pub cluster_size: u64,
}

/// The largest qcow2 image with clusters of `cluster_size` bytes: its L1
/// table may take at most QEMU's 32 MiB (8 bytes an L2 table, an L2 table
/// maps cluster_size / 8 clusters), and no image is larger than 2^56
/// bytes. 2 PiB with 64 KiB clusters, 64 PiB with 2 MiB ones, as qemu-img.
pub fn max_qcow2_size(cluster_size: u64) -> u64 {
    (MAX_L1_BYTES / 8)
        .saturating_mul(cluster_size)
        .saturating_mul(cluster_size / 8)
        .min(MAX_SIZE)
}

/// `size` rounded up to whole sectors (the unit of every block device), or
/// a usage error if no image of `format` can be that large.
fn whole_size(path: &Path, size: u64, format: Format, cluster_size: u64) -> Result<u64> {
    let max = match format {
        Format::Qcow2 => max_qcow2_size(cluster_size),
        // A file system's own limit comes as EFBIG (too_large).
        Format::Raw => i64::MAX as u64 & !511,
    };
    match size.checked_next_multiple_of(512) {
        Some(s) if s <= max => Ok(s),
        _ => Err(Error::Usage(format!(
            "{}: {size} bytes is larger than a {} image can be ({max}{})",
            path.display(),
            format.name(),
            if format == Format::Qcow2 && max < MAX_SIZE {
                ", more with larger clusters"
            } else {
                ""
            }
        ))),
    }
}

/// A size the file system refuses (EFBIG) is the user's to change.
fn too_large(path: &Path, size: u64, e: std::io::Error) -> Error {
    if e.raw_os_error() == Some(libc::EFBIG) {
        Error::Usage(format!(
            "{}: {size} bytes is larger than its file system allows",
            path.display()
        ))
    } else {
        Error::from_io(path, e)
    }
}

/// Checks a cluster size given on the command line.
pub fn cluster_size(n: u64) -> Result<u64> {
    if n.is_power_of_two() && (MIN_CLUSTER_SIZE..=1 << MAX_CLUSTER_BITS).contains(&n) {
        Ok(n)
    } else {
        Err(Error::Usage(format!(
            "-c {n}: a cluster is a power of two from 4K to 2M"
        )))
    }
}

/// Creates a new file (never overwrites one): mode 0600, as vmctl does,
/// since images hold guests' data.
pub fn new_file(path: &Path) -> Result<File> {
    FsOpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::Create(path.to_path_buf(), e))
}

pub fn create(path: &Path, opts: &CreateOptions) -> Result<()> {
    let base = match &opts.base {
        Some(name) => {
            if opts.format != Format::Qcow2 {
                return Err(Error::Usage("-b: only a qcow2 image has a base".into()));
            }
            let base_path = image::resolve_backing(path, name);
            let base = Image::open(
                &base_path,
                &OpenOptions {
                    lock: true,
                    ..Default::default()
                },
            )?;
            Some((name.clone(), base.format(), base.size()))
        }
        None => None,
    };
    let size = match (opts.size, &base) {
        (Some(s), _) => s,
        (None, Some((_, _, s))) => *s,
        (None, None) => return Err(Error::Usage("-s size: a size is needed without -b".into())),
    };
    let size = whole_size(path, size, opts.format, opts.cluster_size)?;
    let file = new_file(path)?;
    let made = match opts.format {
        Format::Raw => file.set_len(size).map_err(|e| too_large(path, size, e)),
        Format::Qcow2 => format_qcow2(
            file,
            path,
            size,
            opts.cluster_size,
            base.map(|(n, f, _)| (n, f)),
        ),
    };
    if made.is_err() {
        // Leave nothing half made behind.
        let _ = fs::remove_file(path);
    }
    made
}

/// Writes an empty qcow2 v3 image into `file`.
pub fn format_qcow2(
    file: File,
    path: &Path,
    size: u64,
    cluster_size: u64,
    base: Option<(String, Format)>,
) -> Result<()> {
    let io = |e| Error::Io(path.to_path_buf(), e);
    let storage = imago::file::File::try_from(file).map_err(io)?;
    let mut b = Qcow2::<imago::file::File>::create_builder(storage)
        .size(size)
        .cluster_size(cluster_size as usize);
    if let Some((name, format)) = base {
        b = b.backing(name, format.name().to_string());
    }
    b.create().map_err(io)
}

/// Sets the virtual size; shrinking drops what lies past the new end, so
/// it has to be asked for.
pub fn resize(path: &Path, size: u64, shrink: bool) -> Result<()> {
    let img = Image::open(
        path,
        &OpenOptions {
            write: true,
            lock: true,
            format: None,
        },
    )?;
    let cluster_size = img.layers()[0]
        .header
        .as_ref()
        .map_or(0, |h| h.cluster_size());
    let size = whole_size(path, size, img.format(), cluster_size)?;
    if size < img.size() && !shrink {
        return Err(Error::Usage(format!(
            "{}: {size} is smaller than {}: -S shrinks",
            path.display(),
            img.size()
        )));
    }
    img.resize(size).map_err(|e| too_large(path, size, e))?;
    img.flush().map_err(|e| Error::from_io(path, e))
}
