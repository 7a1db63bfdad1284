//! Counting the redirects the kernel refuses. A native-XDP redirect into a veth whose peer runs
//! no NAPI (or to a NIC whose driver cannot transmit XDP frames) fails after the program has
//! returned, and the frame is dropped with none of the NICs' counters moving: nothing on the
//! machine says where the ARP replies and translated packets went. The kernel reports each
//! such failure on the `xdp:xdp_redirect_err` tracepoint, with the id of the program that
//! redirected; a small program counts them per floatip program in `SEND_DROPS`, behind a
//! pinned link like the NICs' programs. The tracepoint fires only on failures, so the fast
//! path pays nothing for it.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{MapError, PerCpuHashMap, PerCpuValues},
    programs::{TracePoint, links::FdLink},
};
use floatip_common::{maps as names, programs, send_drops};

use super::{
    maps::BPF_NOEXIST,
    pins::{links_dir, unmount},
};

/// Pin of the link in the links directory (no `<ifindex>_`: not a NIC's).
const LINK: &str = "send-drops";

const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Gives each of `programs` (the attached NICs' programs) a counter, keeping those that have one
/// (a re-attach that keeps a program keeps its count) and dropping the counters of programs
/// that were replaced; attaches the tracepoint program unless its link is pinned already.
pub(super) fn count(ebpf: &mut Ebpf, bpffs: &Path, programs: &[u32]) -> Result<()> {
    let link = links_dir(bpffs).join(LINK);
    if !link.exists() {
        let (tracefs, mounted) = tracefs()?;
        let attached = attach(ebpf, &link, &tracefs);
        if let Some(m) = mounted {
            // The link holds the program; the mount was only needed to find the event.
            unmount(&m);
        }
        attached?;
    }
    let mut map: PerCpuHashMap<_, u32, u64> = PerCpuHashMap::try_from(
        ebpf.map_mut(names::SEND_DROPS)
            .ok_or_else(|| anyhow!("object lacks {}", names::SEND_DROPS))?,
    )?;
    let stale: Vec<u32> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|id| !programs.contains(id))
        .collect();
    for id in stale {
        let _ = map.remove(&id);
    }
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    for id in programs {
        let zero = PerCpuValues::try_from(vec![0u64; cpus])?;
        match map.insert(id, zero, BPF_NOEXIST) {
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            r => r?,
        }
    }
    Ok(())
}

fn attach(ebpf: &mut Ebpf, pin: &Path, tracefs: &Path) -> Result<()> {
    let (category, event) = send_drops::EVENT;
    check_format(tracefs, category, event, send_drops::PROG_ID)?;
    let name = programs::SEND_DROPS;
    let prog: &mut TracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("object lacks program {name}"))?
        .try_into()?;
    prog.load().with_context(|| format!("cannot load {name}"))?;
    let id = prog
        .attach(category, event)
        .with_context(|| format!("cannot attach to the {category}:{event} tracepoint"))?;
    let link: FdLink = prog.take_link(id)?.try_into()?;
    link.pin(pin)
        .with_context(|| format!("cannot pin the {category}:{event} link"))?;
    Ok(())
}

/// Refuses an event whose record does not hold the field as a 4-byte integer where the program
/// reads it: a wrong offset would count garbage.
fn check_format(tracefs: &Path, category: &str, event: &str, field: (&str, usize)) -> Result<()> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(event)
        .join("format");
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let (name, offset) = field;
    let found = text.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("field:") && l.contains(&format!(" {name};\toffset:{offset};\tsize:4;"))
    });
    if !found {
        bail!("the kernel's {category}:{event} record has no {name} at offset {offset}");
    }
    Ok(())
}

/// A tracefs to find the event in, and the mount point when this call mounted it.
fn tracefs() -> Result<(PathBuf, Option<PathBuf>)> {
    for dir in TRACEFS {
        if Path::new(dir).join("events").is_dir() {
            return Ok((dir.into(), None));
        }
    }
    let dir = PathBuf::from(TRACEFS[0]);
    let target = std::ffi::CString::new(TRACEFS[0])?;
    // SAFETY: NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!("cannot mount a tracefs at {}: {err}", dir.display());
    }
    Ok((dir.clone(), Some(dir)))
}
