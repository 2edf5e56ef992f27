//! `vm-img create` and `vm-img resize`.

use std::fs::{self, File, OpenOptions as FsOpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use imago::qcow2::Qcow2;
use imago::FormatCreateBuilder;

use crate::error::{Error, Result};
use crate::image::{self, Format, Image, OpenOptions};
use crate::qcow2::header::{MAX_CLUSTER_BITS, MAX_SIZE};

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
    // Sectors are the unit of every block device.
    let size = size.next_multiple_of(512);
    if size > MAX_SIZE {
        return Err(Error::Usage(format!("-s {size}: larger than qcow2 allows")));
    }
    let file = new_file(path)?;
    let made = match opts.format {
        Format::Raw => file
            .set_len(size)
            .map_err(|e| Error::Io(path.to_path_buf(), e)),
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
    let size = size.next_multiple_of(512);
    if size < img.size() && !shrink {
        return Err(Error::Usage(format!(
            "{}: {size} is smaller than {}: -S shrinks",
            path.display(),
            img.size()
        )));
    }
    if size > MAX_SIZE {
        return Err(Error::Usage(format!("{size}: larger than qcow2 allows")));
    }
    img.resize(size)
        .map_err(|e| Error::Io(path.to_path_buf(), e))?;
    img.flush().map_err(|e| Error::Io(path.to_path_buf(), e))
}
