//! Loading the object (maps pinned, reused when present), attaching a program
//! per NIC behind a pinned bpf_link, and detaching.

use std::{fs, io::ErrorKind, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, PerCpuHashMap},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::{XdpLink, XdpMode},
    },
};
use floatip_common::{
    DEFAULT_MAX_ASSOCIATIONS, IfaceInfo, IfaceSlot, MAP_LAYOUT_VERSION, Meta, globals,
    maps as names, per_cpu_counter_entries, programs, stats_slots,
};

use super::{
    AttachOptions, Counters, Dataplane, EBPF_OBJECT, Mode, Role,
    pins::{
        egress_link, egress_pin, ensure_bpffs, find_link, is_mount_point, layout_mismatch,
        links_dir, maps_dir, nic_link, nic_links, not_attached, open_map, pinned_counters,
        pinned_layout, program_id, remove_pins, unmount,
    },
    possible_cpus, send_drops,
};
use crate::{
    error::{self, error, fail},
    iface,
};

/// Loads the data-plane object with its maps pinned under `bpffs`
/// (reusing pins that exist). The counters live where pinned maps have
/// them; fresh maps put them where `counters` says, by default where the
/// memory budget allows (per-CPU, else shared).
pub(super) fn load(
    bpffs: &Path,
    max_associations: u32,
    counters: Option<Counters>,
) -> Result<Ebpf> {
    if let Some(v) = pinned_layout(bpffs)?
        && v != MAP_LAYOUT_VERSION
    {
        return Err(layout_mismatch(bpffs, v));
    }
    let counters = match (pinned_counters(bpffs)?, counters) {
        (Some(pinned), _) => pinned,
        (None, Some(want)) => want,
        (None, None) => Counters::for_size(max_associations, possible_cpus()? as u32),
    };
    let slots = stats_slots(max_associations);
    let (per_cpu, shared) = match counters {
        Counters::PerCpu => (
            per_cpu_counter_entries(max_associations, possible_cpus()? as u32),
            1,
        ),
        Counters::Shared => (1, slots),
    };
    let shared_flag = u32::from(counters == Counters::Shared);
    let dir = maps_dir(bpffs);
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&dir)
        .map_max_entries(names::FIP_TO_FIXED, max_associations)
        .map_max_entries(names::FIXED_TO_FIP, max_associations)
        .map_max_entries(names::ASSOC_STATS, per_cpu)
        .map_max_entries(names::ASSOC_STATS_SHARED, shared)
        .map_max_entries(names::SLOT_OWNERS, slots)
        .override_global(globals::SHARED_COUNTERS, &shared_flag, true)
        .override_global(globals::STATS_SLOTS, &slots, true)
        .load(EBPF_OBJECT)
        .context("cannot load the floatip eBPF object")?;
    let mut meta: Array<_, Meta> = Array::try_from(
        ebpf.map_mut(names::META)
            .ok_or_else(|| anyhow!("object lacks {}", names::META))?,
    )?;
    let mut m = meta.get(&0, 0)?;
    if m.layout_version == 0 {
        m.layout_version = MAP_LAYOUT_VERSION;
        meta.set(0, m, 0)?;
    }
    Ok(ebpf)
}

fn program_name(role: Role, mode: Mode) -> &'static str {
    match (role, mode) {
        (Role::External, Mode::Tc) => programs::TC_EXTERNAL,
        (Role::Internal, Mode::Tc) => programs::TC_INTERNAL,
        (Role::External, _) => programs::XDP_EXTERNAL,
        (Role::Internal, _) => programs::XDP_INTERNAL,
    }
}

/// Replaces the program of the existing link `old` in place, or attaches
/// afresh when there is none. A pinned link outlives its device: when the
/// NIC went away (a router namespace deleted and created again, a NIC
/// replugged with the same index) the update fails with ENOLINK; then the
/// stale pin goes and the program is attached afresh.
fn update_or_attach<P, L, I>(
    prog: &mut P,
    old: Option<L>,
    update: impl FnOnce(&mut P, L) -> Result<I, ProgramError>,
    fresh: impl FnOnce(&mut P) -> Result<I>,
    stale_pin: Option<&Path>,
) -> Result<I> {
    let Some(link) = old else {
        return fresh(prog);
    };
    match update(prog, link) {
        Ok(id) => Ok(id),
        Err(ProgramError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOLINK) => {
            if let Some(path) = stale_pin {
                fs::remove_file(path)?;
            }
            fresh(prog)
        }
        Err(e) => Err(e.into()),
    }
}

fn foreign_program(name: &str, id: u32) -> anyhow::Error {
    error(
        error::ErrorKind::Conflict,
        format!(
            "{name} already has an XDP program, id {id}, not floatip's; remove it first \
             (ip link set dev {name} xdp off, or stop what holds its link)"
        ),
    )
}

/// Attaches (or atomically replaces) the program of one interface and pins its link.
fn attach_one(
    ebpf: &mut Ebpf,
    bpffs: &Path,
    name: &str,
    ifindex: u32,
    role: Role,
    mode: Mode,
) -> Result<()> {
    let pin = links_dir(bpffs).join(format!("{ifindex}_{}", mode.as_str()));
    let existing = find_link(bpffs, ifindex)?;
    // A link in another mode cannot be updated in place: remove it first.
    if let Some((path, old_mode)) = &existing
        && *old_mode != mode
    {
        drop(PinnedLink::from_pin(path)?.unpin()?);
    }
    let old = match &existing {
        Some((path, old_mode)) if *old_mode == mode => {
            Some(FdLink::from(PinnedLink::from_pin(path)?))
        }
        _ => None,
    };
    let stale_pin = existing.as_ref().map(|(path, _)| path.as_path());
    let prog_name = program_name(role, mode);
    let prog = ebpf
        .program_mut(prog_name)
        .ok_or_else(|| anyhow!("object lacks program {prog_name}"))?;
    let fd_link: FdLink = match mode {
        Mode::Xdp | Mode::XdpGeneric => {
            let prog: &mut Xdp = prog.try_into()?;
            if prog.fd().is_err() {
                prog.load().context("the kernel rejected the XDP program")?;
            }
            let fresh = |prog: &mut Xdp| {
                let xdp_mode = if mode == Mode::Xdp {
                    XdpMode::Driver
                } else {
                    XdpMode::Skb
                };
                prog.attach_to_if_index(ifindex, xdp_mode).map_err(|e| {
                    // Not ours (ours would have a pinned link): name it rather than blame the
                    // mode. Normally refused before anything changed (`check_nics_free`); this
                    // is a program that came in between.
                    if let Ok(Some(iface::LinkInfo {
                        xdp_program: Some(id),
                        ..
                    })) = iface::link_info(ifindex)
                    {
                        return foreign_program(name, id);
                    }
                    if mode == Mode::Xdp {
                        anyhow!(
                            "{name} refused native XDP ({e}); try --mode xdp-generic or --mode tc"
                        )
                    } else {
                        anyhow!("cannot attach XDP to {name}: {e}")
                    }
                })
            };
            let old = old.map(XdpLink::try_from).transpose()?;
            let id = update_or_attach(prog, old, Xdp::attach_to_link, fresh, stale_pin)?;
            prog.take_link(id)?.try_into()?
        }
        Mode::Tc => tcx_link(prog, name, TcAttachType::Ingress, old, stale_pin)?,
    };
    keep_pinned(fd_link, &pin)
}

/// Attaches the TCX program `prog` to `name` at `at`, or replaces the
/// program of its existing link `old` in place.
fn tcx_link(
    prog: &mut aya::programs::Program,
    name: &str,
    at: TcAttachType,
    old: Option<FdLink>,
    stale_pin: Option<&Path>,
) -> Result<FdLink> {
    let prog: &mut SchedClassifier = prog.try_into()?;
    if prog.fd().is_err() {
        prog.load().context("the kernel rejected the TC program")?;
    }
    let fresh = |prog: &mut SchedClassifier| {
        prog.attach_with_options(name, at, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .map_err(|e| anyhow!("cannot attach TCX ({at:?}) to {name}: {e}"))
    };
    let old = old.map(SchedClassifierLink::try_from).transpose()?;
    let id = update_or_attach(prog, old, SchedClassifier::attach_to_link, fresh, stale_pin)?;
    Ok(FdLink::try_from(prog.take_link(id)?)?)
}

/// Pins `link` at `pin`, unless it was updated in place (the pin already
/// refers to it).
fn keep_pinned(link: FdLink, pin: &Path) -> Result<()> {
    if pin.exists() {
        std::mem::forget(link);
    } else {
        link.pin(pin)?;
    }
    Ok(())
}

/// Attaches (or atomically replaces) the TCX egress program of an external
/// NIC, in every mode: the kernel's own ICMP errors about translated
/// packets leave through it (see `translate::kernel_error`).
fn attach_egress(ebpf: &mut Ebpf, bpffs: &Path, name: &str, ifindex: u32) -> Result<()> {
    let pin = egress_pin(bpffs, ifindex);
    let existing = pin.exists().then_some(pin.as_path());
    let old = existing
        .map(|p| PinnedLink::from_pin(p).map(FdLink::from))
        .transpose()?;
    let prog = ebpf
        .program_mut(programs::TC_EGRESS)
        .ok_or_else(|| anyhow!("object lacks program {}", programs::TC_EGRESS))?;
    let link = tcx_link(prog, name, TcAttachType::Egress, old, existing)?;
    keep_pinned(link, &pin)
}

impl Dataplane {
    /// Loads, attaches and pins; safe to run again (replaces programs
    /// atomically, keeps maps and their entries). Returns warnings: what works but not fully.
    pub fn attach(bpffs: &Path, opts: &AttachOptions) -> Result<Vec<String>> {
        let mut nics = Vec::new();
        for (names_, role) in [
            (&opts.external, Role::External),
            (&opts.internal, Role::Internal),
        ] {
            for name in names_ {
                let idx = iface::index(name)?;
                if nics.iter().any(|(_, i, _, _)| *i == idx) {
                    bail!("interface {name} is given twice");
                }
                nics.push((name.clone(), idx, role, iface::mac(name)?));
            }
        }
        if opts.max_associations == Some(0) {
            bail!("--max-associations must be at least 1");
        }
        let was_attached = Self::is_attached(bpffs);
        let mounted = ensure_bpffs(bpffs)?;
        let result = Self::attach_nics(bpffs, opts, &nics);
        if result.is_err() && !was_attached {
            // A first attach that failed leaves nothing behind.
            if let Ok(entries) = fs::read_dir(links_dir(bpffs)) {
                for entry in entries.flatten() {
                    if let Ok(link) = PinnedLink::from_pin(entry.path()) {
                        let _ = link.unpin();
                    }
                }
            }
            remove_pins(bpffs);
            if let Some(root) = mounted {
                // What this attach mounted goes with it.
                unmount(&root);
            }
        }
        result
    }

    fn attach_nics(
        bpffs: &Path,
        opts: &AttachOptions,
        nics: &[(String, u32, Role, [u8; 6])],
    ) -> Result<Vec<String>> {
        let size = opts.max_associations.unwrap_or(DEFAULT_MAX_ASSOCIATIONS);
        let mut ebpf = load(bpffs, size, opts.counters)?;
        register_nics(
            &mut ebpf,
            nics.iter().map(|(_, idx, role, mac)| (*idx, *mac, *role)),
        )?;
        // The gateway's own addresses, before any program runs.
        Dataplane::open(bpffs)?.refresh_gateway_addresses()?;
        for (name, idx, role, _) in nics {
            attach_one(&mut ebpf, bpffs, name, *idx, *role, opts.mode)?;
            if *role == Role::External {
                attach_egress(&mut ebpf, bpffs, name, *idx)?;
            }
        }
        let mut warnings = Vec::new();
        if opts.mode.is_xdp() {
            // Every NIC's program, also of NICs attached before this call.
            let ids: Vec<u32> = nic_links(bpffs)?
                .iter()
                .map(|(_, pin, _)| program_id(pin))
                .collect();
            if let Err(e) = send_drops::count(&mut ebpf, bpffs, &ids) {
                warnings.push(format!(
                    "redirects the kernel refuses will not be counted: {e:#}"
                ));
            }
        }
        Ok(warnings)
    }

    /// Removes the programs of `only` (every interface when empty), and
    /// with them, when nothing stays attached, every pin.
    pub fn detach(bpffs: &Path, only: &[String]) -> Result<()> {
        if !Self::is_attached(bpffs) {
            return Err(not_attached(bpffs));
        }
        let mut indexes = Vec::new();
        for name in only {
            let idx = iface::index(name)?;
            if find_link(bpffs, idx)?.is_none() {
                fail!(Invalid, "{name} is not attached");
            }
            indexes.push(idx);
        }
        let mut dp = Self::open_any_layout(bpffs)?;
        let mut devmap: DevMapHash<_> = DevMapHash::try_from(open_map(bpffs, names::REDIRECT)?)?;
        // Absent from older layouts, which detach must still remove.
        let mut drops: Option<PerCpuHashMap<_, u32, u64>> = open_map(bpffs, names::SEND_DROPS)
            .ok()
            .and_then(|m| PerCpuHashMap::try_from(m).ok());
        let links = links_dir(bpffs);
        if let Ok(entries) = fs::read_dir(&links) {
            for entry in entries {
                let path = entry?.path();
                let file = path.file_name().unwrap_or_default().to_string_lossy();
                let egress = egress_link(&file);
                let idx = nic_link(&file).map(|(i, _)| i);
                if !indexes.is_empty() && !idx.or(egress).is_some_and(|i| indexes.contains(&i)) {
                    continue;
                }
                let prog = program_id(&path);
                // Dropping the last reference to a bpf_link detaches it.
                match PinnedLink::from_pin(&path) {
                    Ok(link) => drop(link.unpin()?),
                    Err(_) => fs::remove_file(&path)?,
                }
                if let Some(i) = idx {
                    dp.forget_nic(i);
                    let _ = devmap.remove(i);
                    if let Some(d) = drops.as_mut() {
                        let _ = d.remove(&prog);
                    }
                }
            }
        }
        if !indexes.is_empty() {
            return Ok(());
        }
        drop((dp, devmap, drops));
        for name in names::ALL {
            match fs::remove_file(maps_dir(bpffs).join(name)) {
                Err(e) if e.kind() != ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        // A --bpffs that is itself a mount point stays: it is the admin's, not ours.
        let own_dir = !is_mount_point(bpffs);
        for dir in [links, maps_dir(bpffs), bpffs.to_path_buf()]
            .into_iter()
            .filter(|d| own_dir || d != bpffs)
        {
            match fs::remove_dir(&dir) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(anyhow!("cannot remove {}: {e}", dir.display()));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Refuses, before anything is created or changed, an XDP attach to a NIC that holds an
    /// XDP program floatip did not attach from `bpffs` (one NIC takes one XDP program). TCX
    /// programs coexist, so `--mode tc` is not checked. Unknown NICs are left to
    /// [`Self::attach`], which names them.
    pub fn check_nics_free(bpffs: &Path, opts: &AttachOptions) -> Result<()> {
        if opts.mode == Mode::Tc {
            return Ok(());
        }
        for name in opts.external.iter().chain(&opts.internal) {
            let Ok(idx) = iface::index(name) else {
                continue;
            };
            if find_link(bpffs, idx)?.is_some() {
                continue;
            }
            if let Some(iface::LinkInfo {
                xdp_program: Some(id),
                ..
            }) = iface::link_info(idx)?
            {
                return Err(foreign_program(name, id));
            }
        }
        Ok(())
    }

    /// Whether the maps pinned under `bpffs` have this floatip's layout.
    pub fn layout_matches(bpffs: &Path) -> Result<bool> {
        Ok(pinned_layout(bpffs)?.is_none_or(|v| v == MAP_LAYOUT_VERSION))
    }

    /// Whether a data plane is attached (its maps are pinned) under `bpffs`.
    /// When that cannot be told (no permission to look), it counts as
    /// attached, so that opening the maps reports why.
    pub fn is_attached(bpffs: &Path) -> bool {
        !matches!(maps_dir(bpffs).join(names::META).try_exists(), Ok(false))
    }
}

/// Makes `nics` (ifindex, MAC, role) the loaded object's managed NICs: `IFACES`, their
/// `IFACE_SLOTS` slot where it is free (the ingress check's array read), and a `REDIRECT`
/// entry each. One place for attach, the test harness and the cost rig alike.
pub(super) fn register_nics(
    ebpf: &mut Ebpf,
    nics: impl Iterator<Item = (u32, [u8; 6], Role)>,
) -> Result<()> {
    let nics: Vec<_> = nics.collect();
    fn map<'e>(ebpf: &'e mut Ebpf, name: &str) -> Result<&'e mut aya::maps::Map> {
        ebpf.map_mut(name)
            .ok_or_else(|| anyhow!("object lacks {name}"))
    }
    let mut ifaces: HashMap<_, u32, IfaceInfo> = HashMap::try_from(map(ebpf, names::IFACES)?)?;
    for (idx, mac, role) in &nics {
        let info = IfaceInfo {
            mac: *mac,
            role: role.to_map(),
            _pad: 0,
        };
        ifaces.insert(idx, info, 0)?;
    }
    let mut slots: Array<_, IfaceSlot> = Array::try_from(map(ebpf, names::IFACE_SLOTS)?)?;
    for (idx, mac, _) in &nics {
        let slot = IfaceSlot::index(*idx);
        if slots.get(&slot, 0)?.ifindex == 0 {
            slots.set(slot, IfaceSlot::new(*idx, *mac), 0)?;
        }
    }
    let mut devmap: DevMapHash<_> = DevMapHash::try_from(map(ebpf, names::REDIRECT)?)?;
    for (idx, _, _) in &nics {
        devmap.insert(*idx, *idx, None, 0)?;
    }
    Ok(())
}
