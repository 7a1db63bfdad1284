//! The bpffs layout: where maps and links are pinned, mounting the bpffs,
//! finding a NIC's link, the map layout check and opening pinned maps.

use std::{
    fs,
    io::ErrorKind,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    maps::{Array, Map, MapData, MapError},
    programs::links::{FdLink, PinnedLink},
};
use floatip_common::{MAP_LAYOUT_VERSION, Meta, maps as names};

use super::{Counters, Mode};
use crate::error::{self, error};

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

pub(super) fn maps_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("maps")
}

pub(super) fn links_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("links")
}

pub fn not_attached(bpffs: &Path) -> anyhow::Error {
    error(
        error::ErrorKind::Unavailable,
        format!(
            "the data plane is not attached (no pinned maps in {}); run `floatip attach --external IFACE --internal IFACE` first",
            bpffs.display()
        ),
    )
}

/// Mounts a bpffs at the pin root when none is mounted there (as bpftool
/// does), and creates `bpffs` owner-only.
///
/// Returns the mount point when it mounted one.
pub(super) fn ensure_bpffs(bpffs: &Path) -> Result<Option<PathBuf>> {
    let root = if bpffs.starts_with("/sys/fs/bpf") {
        PathBuf::from("/sys/fs/bpf")
    } else {
        bpffs.to_path_buf()
    };
    fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let mut mounted = None;
    if !is_bpffs(&root)? {
        let src = c"bpf";
        let target = std::ffi::CString::new(root.as_os_str().as_encoded_bytes())?;
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                0,
                c"mode=0700".as_ptr().cast(),
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            bail!("cannot mount a bpffs at {}: {err}", root.display());
        }
        mounted = Some(root.clone());
    }
    for dir in [bpffs.to_path_buf(), maps_dir(bpffs), links_dir(bpffs)] {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    fs::set_permissions(bpffs, fs::Permissions::from_mode(0o700))?;
    Ok(mounted)
}

/// Whether `path` is the root of a mount (its device differs from its parent's).
pub(super) fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(path), path.parent().map(fs::metadata)) {
        (Ok(m), Some(Ok(p))) => m.dev() != p.dev(),
        _ => false,
    }
}

/// Unmounts `root`, best effort (a failed first attach undoing its mount).
pub(super) fn unmount(root: &Path) {
    if let Ok(c) = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()) {
        // SAFETY: a NUL-terminated path; umount2 has no other preconditions.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

pub(super) fn is_bpffs(path: &Path) -> Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Ok(false);
    }
    Ok(st.f_type == BPF_FS_MAGIC)
}

/// The NIC and mode of a link pin named `<ifindex>_<mode>`; `None` for any other pin (the
/// send-drop tracepoint's).
pub(super) fn nic_link(name: &str) -> Option<(u32, Mode)> {
    let (idx, mode) = name.split_once('_')?;
    Some((idx.parse().ok()?, Mode::parse(mode)?))
}

/// Where the egress link of external NIC `ifindex` is pinned.
pub(super) fn egress_pin(bpffs: &Path, ifindex: u32) -> PathBuf {
    links_dir(bpffs).join(format!("{ifindex}_egress"))
}

/// The ifindex of an egress link's pin name (see [`egress_pin`]).
pub(super) fn egress_link(name: &str) -> Option<u32> {
    name.strip_suffix("_egress")?.parse().ok()
}

/// Every NIC's pinned link: (ifindex, pin, mode).
pub(super) fn nic_links(bpffs: &Path) -> Result<Vec<(u32, PathBuf, Mode)>> {
    let entries = match fs::read_dir(links_dir(bpffs)) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        if let Some((idx, mode)) = nic_link(&entry.file_name().to_string_lossy()) {
            out.push((idx, entry.path(), mode));
        }
    }
    Ok(out)
}

/// The pinned link of `ifindex`, with the mode it was attached in.
pub(super) fn find_link(bpffs: &Path, ifindex: u32) -> Result<Option<(PathBuf, Mode)>> {
    Ok(nic_links(bpffs)?
        .into_iter()
        .find(|(idx, ..)| *idx == ifindex)
        .map(|(_, path, mode)| (path, mode)))
}

/// The id of the program behind the pinned link at `path` (0 when it cannot be read).
pub(super) fn program_id(path: &Path) -> u32 {
    PinnedLink::from_pin(path)
        .ok()
        .and_then(|l| FdLink::from(l).info().ok())
        .map(|i| i.program_id())
        .unwrap_or(0)
}

/// Reads the layout version of already pinned maps, if any.
pub(super) fn pinned_layout(bpffs: &Path) -> Result<Option<u32>> {
    let path = maps_dir(bpffs).join(names::META);
    match MapData::from_pin(&path) {
        Ok(data) => {
            let meta: Array<_, Meta> = Array::try_from(Map::from_map_data(data)?)?;
            Ok(Some(meta.get(&0, 0)?.layout_version))
        }
        Err(MapError::SyscallError(e)) if e.io_error.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Where the counters of already pinned maps live, if any are pinned: the
/// shared map has more than one entry exactly when it is the one in use
/// (maps of layouts before it had only per-CPU counters).
pub(super) fn pinned_counters(bpffs: &Path) -> Result<Option<Counters>> {
    if !maps_dir(bpffs).join(names::META).exists() {
        return Ok(None);
    }
    match MapData::from_pin(maps_dir(bpffs).join(names::ASSOC_STATS_SHARED)) {
        Ok(data) if data.info()?.max_entries() > 1 => Ok(Some(Counters::Shared)),
        Ok(_) => Ok(Some(Counters::PerCpu)),
        Err(MapError::SyscallError(e)) if e.io_error.kind() == ErrorKind::NotFound => {
            Ok(Some(Counters::PerCpu))
        }
        Err(e) => Err(e.into()),
    }
}

/// The refusal of pinned maps whose layout version is not this floatip's.
pub(super) fn layout_mismatch(bpffs: &Path, pinned: u32) -> anyhow::Error {
    error(
        error::ErrorKind::Unavailable,
        format!(
            "the pinned maps in {} have layout version {pinned}, this floatip expects {MAP_LAYOUT_VERSION}; run `floatip detach` and attach again (associations are restored from the database)",
            bpffs.display()
        ),
    )
}

pub(super) fn open_map(bpffs: &Path, name: &str) -> Result<Map> {
    Ok(Map::from_map_data(open_data(bpffs, name)?)?)
}

pub(super) fn open_data(bpffs: &Path, name: &str) -> Result<MapData> {
    let path = maps_dir(bpffs).join(name);
    match MapData::from_pin(&path) {
        Ok(data) => Ok(data),
        Err(MapError::SyscallError(e)) if e.io_error.kind() == ErrorKind::NotFound => {
            Err(not_attached(bpffs))
        }
        Err(MapError::SyscallError(e)) if e.io_error.kind() == ErrorKind::PermissionDenied => {
            Err(anyhow!(
                "permission denied opening {}: run floatip as root",
                path.display()
            ))
        }
        Err(e) => Err(anyhow!("cannot open {}: {e}", path.display())),
    }
}

/// Removes the map pins and directories under `bpffs`, best effort.
pub(super) fn remove_pins(bpffs: &Path) {
    for name in names::ALL {
        let _ = fs::remove_file(maps_dir(bpffs).join(name));
    }
    for dir in [links_dir(bpffs), maps_dir(bpffs), bpffs.to_path_buf()] {
        let _ = fs::remove_dir(&dir);
    }
}
