//! The only module that touches aya: loading, attaching and pinning the
//! programs, and reading and writing the pinned maps.
//!
//! Pins live under one bpffs directory (`--bpffs`, default
//! `/sys/fs/bpf/floatip`):
//! - `maps/<NAME>`: every map, by the names in `floatip_common::maps`;
//! - `links/<ifindex>_<mode>`: one bpf_link per interface (bpffs refuses
//!   dots in names), which keeps the
//!   program attached after `floatip attach` exits and lets a newer program
//!   replace it atomically (`BPF_LINK_UPDATE`).

pub mod bench;
pub mod log;

use std::{
    collections::BTreeMap,
    fs,
    io::ErrorKind,
    net::Ipv4Addr,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader, TestRunOptions,
    maps::{
        Array, DevMapHash, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues,
        lpm_trie::Key,
    },
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, TestRun, Xdp,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::{XdpLink, XdpMode},
    },
    util::nr_cpus,
};
use floatip_common::{
    AssocStats, IfaceInfo, MAP_LAYOUT_VERSION, Meta, NatEntry, POOL_EXCLUDED, POOL_MEMBER,
    ROLE_EXTERNAL, ROLE_INTERNAL, SPOOF_FILTER_BUCKETS, maps as names, outcome, programs,
    spoof_filter_bucket, stats_slots,
};

use crate::iface;

/// The data-plane object, built by `build.rs` from `floatip-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floatip"));
/// Benchmark-only programs (XDP_PASS floor, redirect-only, drop sink, generator).
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floatip-bench"));

const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// How the programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Xdp,
    XdpGeneric,
    Tc,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Xdp => "xdp",
            Mode::XdpGeneric => "xdp-generic",
            Mode::Tc => "tc",
        }
    }

    /// Whether the programs run as XDP (native or generic).
    pub fn is_xdp(self) -> bool {
        self != Mode::Tc
    }

    fn parse(s: &str) -> Option<Mode> {
        [Mode::Xdp, Mode::XdpGeneric, Mode::Tc]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// Which side of the gateway a NIC is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    External,
    Internal,
}

/// Options of `floatip attach`.
#[derive(Clone, Debug)]
pub struct AttachOptions {
    pub external: Vec<String>,
    pub internal: Vec<String>,
    pub mode: Mode,
    pub max_associations: u32,
}

/// One association as the maps hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Pair {
    pub floating: Ipv4Addr,
    pub fixed: Ipv4Addr,
}

/// An attached interface, as `floatip status` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Attached {
    pub ifindex: u32,
    pub name: String,
    pub role: Role,
    pub mode: Mode,
    pub program_id: u32,
    pub mac: String,
}

/// Everything `floatip status` prints.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Status {
    pub bpffs: PathBuf,
    pub interfaces: Vec<Attached>,
    pub associations: usize,
    pub max_associations: u32,
    pub layout_version: u32,
    pub generation: u64,
    pub counters: BTreeMap<&'static str, u64>,
}

/// Per-association counters, summed over CPUs.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct PairStats {
    pub floating: Ipv4Addr,
    pub fixed: Ipv4Addr,
    pub in_packets: u64,
    pub in_bytes: u64,
    pub out_packets: u64,
    pub out_bytes: u64,
}

fn to_key(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn from_key(k: u32) -> Ipv4Addr {
    Ipv4Addr::from(k.to_ne_bytes())
}

fn maps_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("maps")
}

fn links_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("links")
}

fn not_attached(bpffs: &Path) -> anyhow::Error {
    anyhow!(
        "the data plane is not attached (no pinned maps in {}); run `floatip attach --external IFACE --internal IFACE` first",
        bpffs.display()
    )
}

/// Mounts a bpffs at the pin root when none is mounted there (as bpftool
/// does), and creates `bpffs` owner-only.
fn ensure_bpffs(bpffs: &Path) -> Result<()> {
    let root = if bpffs.starts_with("/sys/fs/bpf") {
        PathBuf::from("/sys/fs/bpf")
    } else {
        bpffs.to_path_buf()
    };
    fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
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
    }
    for dir in [bpffs.to_path_buf(), maps_dir(bpffs), links_dir(bpffs)] {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    fs::set_permissions(bpffs, fs::Permissions::from_mode(0o700))?;
    Ok(())
}

fn is_bpffs(path: &Path) -> Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Ok(false);
    }
    Ok(st.f_type == BPF_FS_MAGIC)
}

/// The pinned link of `ifindex`, with the mode it was attached in.
fn find_link(bpffs: &Path, ifindex: u32) -> Result<Option<(PathBuf, Mode)>> {
    let dir = links_dir(bpffs);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((idx, mode)) = name.split_once('_')
            && idx.parse::<u32>() == Ok(ifindex)
            && let Some(mode) = Mode::parse(mode)
        {
            return Ok(Some((entry.path(), mode)));
        }
    }
    Ok(None)
}

/// Reads the layout version of already pinned maps, if any.
fn pinned_layout(bpffs: &Path) -> Result<Option<u32>> {
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

/// The refusal of pinned maps whose layout version is not this floatip's.
fn layout_mismatch(bpffs: &Path, pinned: u32) -> anyhow::Error {
    anyhow!(
        "the pinned maps in {} have layout version {pinned}, this floatip expects {MAP_LAYOUT_VERSION}; run `floatip detach` and attach again (associations are restored from the database)",
        bpffs.display()
    )
}

/// Loads the data-plane object with its maps pinned under `bpffs`
/// (reusing pins that exist).
fn load(bpffs: &Path, max_associations: u32) -> Result<Ebpf> {
    if let Some(v) = pinned_layout(bpffs)?
        && v != MAP_LAYOUT_VERSION
    {
        return Err(layout_mismatch(bpffs, v));
    }
    let dir = maps_dir(bpffs);
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&dir)
        .map_max_entries(names::FIP_TO_FIXED, max_associations)
        .map_max_entries(names::FIXED_TO_FIP, max_associations)
        .map_max_entries(names::ASSOC_STATS, stats_slots(max_associations))
        .map_max_entries(names::SLOT_OWNERS, stats_slots(max_associations))
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
        Mode::Tc => {
            let prog: &mut SchedClassifier = prog.try_into()?;
            if prog.fd().is_err() {
                prog.load().context("the kernel rejected the TC program")?;
            }
            let fresh = |prog: &mut SchedClassifier| {
                prog.attach_with_options(
                    name,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|e| anyhow!("cannot attach TCX to {name}: {e}"))
            };
            let old = old.map(SchedClassifierLink::try_from).transpose()?;
            let id =
                update_or_attach(prog, old, SchedClassifier::attach_to_link, fresh, stale_pin)?;
            let link = prog.take_link(id)?;
            FdLink::try_from(link)?
        }
    };
    if pin.exists() {
        // Updated in place: the pin already refers to this link.
        std::mem::forget(fd_link);
    } else {
        fd_link.pin(&pin)?;
    }
    Ok(())
}

/// Handle on the pinned maps of an attached data plane.
pub struct Dataplane {
    bpffs: PathBuf,
    fip_to_fixed: HashMap<MapData, u32, NatEntry>,
    fixed_to_fip: HashMap<MapData, u32, NatEntry>,
    pools: LpmTrie<MapData, u32, u32>,
    stats: PerCpuArray<MapData, AssocStats>,
    spoof_filter: Array<MapData, u32>,
    slot_owners: Array<MapData, u32>,
    outcomes: PerCpuArray<MapData, u64>,
    ifaces: HashMap<MapData, u32, IfaceInfo>,
    meta: Array<MapData, Meta>,
    max_associations: u32,
    /// The gateway's own addresses, read once per handle (bulk adds many pairs).
    local_addrs: std::sync::OnceLock<Vec<(String, Ipv4Addr)>>,
}

fn open_map(bpffs: &Path, name: &str) -> Result<Map> {
    Ok(Map::from_map_data(open_data(bpffs, name)?)?)
}

fn open_data(bpffs: &Path, name: &str) -> Result<MapData> {
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

impl Dataplane {
    /// Loads, attaches and pins; safe to run again (replaces programs
    /// atomically, keeps maps and their entries).
    pub fn attach(bpffs: &Path, opts: &AttachOptions) -> Result<()> {
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
        if opts.max_associations == 0 {
            bail!("--max-associations must be at least 1");
        }
        let was_attached = Self::is_attached(bpffs);
        ensure_bpffs(bpffs)?;
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
        }
        result
    }

    fn attach_nics(
        bpffs: &Path,
        opts: &AttachOptions,
        nics: &[(String, u32, Role, [u8; 6])],
    ) -> Result<()> {
        let mut ebpf = load(bpffs, opts.max_associations)?;
        {
            let mut ifaces: HashMap<_, u32, IfaceInfo> = HashMap::try_from(
                ebpf.map_mut(names::IFACES)
                    .ok_or_else(|| anyhow!("object lacks {}", names::IFACES))?,
            )?;
            for (_, idx, role, mac) in nics {
                let info = IfaceInfo {
                    mac: *mac,
                    role: if *role == Role::External {
                        ROLE_EXTERNAL
                    } else {
                        ROLE_INTERNAL
                    },
                    _pad: 0,
                };
                ifaces.insert(idx, info, 0)?;
            }
        }
        {
            let mut devmap: DevMapHash<_> = DevMapHash::try_from(
                ebpf.map_mut(names::REDIRECT)
                    .ok_or_else(|| anyhow!("object lacks {}", names::REDIRECT))?,
            )?;
            for (_, idx, _, _) in nics {
                devmap.insert(*idx, *idx, None, 0)?;
            }
        }
        for (name, idx, role, _) in nics {
            attach_one(&mut ebpf, bpffs, name, *idx, *role, opts.mode)?;
        }
        Ok(())
    }

    /// Removes the programs of `only` (every interface when empty), and
    /// with them, when nothing stays attached, every pin.
    pub fn detach(bpffs: &Path, only: &[String]) -> Result<()> {
        if !Self::is_attached(bpffs) {
            return Err(not_attached(bpffs));
        }
        let mut indexes = Vec::new();
        for name in only {
            indexes.push(iface::index(name)?);
        }
        let mut dp = Self::open_any_layout(bpffs)?;
        let mut devmap: DevMapHash<_> = DevMapHash::try_from(open_map(bpffs, names::REDIRECT)?)?;
        let links = links_dir(bpffs);
        if let Ok(entries) = fs::read_dir(&links) {
            for entry in entries {
                let path = entry?.path();
                let idx = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.split_once('_'))
                    .and_then(|(i, _)| i.parse::<u32>().ok());
                if !indexes.is_empty() && !idx.is_some_and(|i| indexes.contains(&i)) {
                    continue;
                }
                // Dropping the last reference to a bpf_link detaches it.
                match PinnedLink::from_pin(&path) {
                    Ok(link) => drop(link.unpin()?),
                    Err(_) => fs::remove_file(&path)?,
                }
                if let Some(i) = idx {
                    let _ = dp.ifaces.remove(&i);
                    let _ = devmap.remove(i);
                }
            }
        }
        if !indexes.is_empty() {
            return Ok(());
        }
        drop((dp, devmap));
        for name in names::ALL {
            match fs::remove_file(maps_dir(bpffs).join(name)) {
                Err(e) if e.kind() != ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        for dir in [links, maps_dir(bpffs), bpffs.to_path_buf()] {
            match fs::remove_dir(&dir) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(anyhow!("cannot remove {}: {e}", dir.display()));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether a data plane is attached (its maps are pinned) under `bpffs`.
    /// When that cannot be told (no permission to look), it counts as
    /// attached, so that opening the maps reports why.
    pub fn is_attached(bpffs: &Path) -> bool {
        !matches!(maps_dir(bpffs).join(names::META).try_exists(), Ok(false))
    }

    /// The internal NIC through which the kernel routes to `fixed`, if any.
    pub fn internal_route(&self, fixed: Ipv4Addr) -> Result<Option<String>> {
        let Some(oif) = iface::route_oif(fixed)? else {
            return Ok(None);
        };
        let internal = self.nics(Role::Internal)?;
        Ok(internal
            .iter()
            .find(|(idx, _)| *idx == oif)
            .map(|(idx, _)| iface::name(*idx).unwrap_or_else(|| format!("#{idx}"))))
    }

    /// Opens the pinned maps; fails with a one-line error naming `floatip
    /// attach` when the data plane is not attached, and refuses maps of
    /// another layout version (checked before any other map is read).
    pub fn open(bpffs: &Path) -> Result<Self> {
        let meta: Array<MapData, Meta> = Array::try_from(open_map(bpffs, names::META)?)?;
        let pinned = meta.get(&0, 0)?.layout_version;
        if pinned != MAP_LAYOUT_VERSION {
            return Err(layout_mismatch(bpffs, pinned));
        }
        Self::open_with_meta(bpffs, meta)
    }

    /// [`Self::open`] without the layout check, for `detach`, which must be
    /// able to remove maps of another layout version.
    fn open_any_layout(bpffs: &Path) -> Result<Self> {
        Self::open_with_meta(bpffs, Array::try_from(open_map(bpffs, names::META)?)?)
    }

    fn open_with_meta(bpffs: &Path, meta: Array<MapData, Meta>) -> Result<Self> {
        let f2x = open_data(bpffs, names::FIP_TO_FIXED)?;
        let max_associations = f2x.info()?.max_entries();
        Ok(Self {
            bpffs: bpffs.to_path_buf(),
            max_associations,
            local_addrs: std::sync::OnceLock::new(),
            fip_to_fixed: HashMap::try_from(Map::from_map_data(f2x)?)?,
            fixed_to_fip: HashMap::try_from(open_map(bpffs, names::FIXED_TO_FIP)?)?,
            pools: LpmTrie::try_from(open_map(bpffs, names::POOLS)?)?,
            stats: PerCpuArray::try_from(open_map(bpffs, names::ASSOC_STATS)?)?,
            slot_owners: Array::try_from(open_map(bpffs, names::SLOT_OWNERS)?)?,
            spoof_filter: Array::try_from(open_map(bpffs, names::SPOOF_FILTER)?)?,
            outcomes: PerCpuArray::try_from(open_map(bpffs, names::OUTCOMES)?)?,
            ifaces: HashMap::try_from(open_map(bpffs, names::IFACES)?)?,
            meta,
        })
    }

    fn lookup(map: &HashMap<MapData, u32, NatEntry>, ip: Ipv4Addr) -> Result<Option<NatEntry>> {
        match map.get(&to_key(ip), 0) {
            Ok(e) => Ok(Some(e)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The fixed IP `floating` maps to, if any.
    pub fn fixed_of(&self, floating: Ipv4Addr) -> Result<Option<Ipv4Addr>> {
        Ok(Self::lookup(&self.fip_to_fixed, floating)?.map(|e| from_key(e.addr)))
    }

    /// The floating IP of `fixed`, if any.
    pub fn floating_of(&self, fixed: Ipv4Addr) -> Result<Option<Ipv4Addr>> {
        Ok(Self::lookup(&self.fixed_to_fip, fixed)?.map(|e| from_key(e.addr)))
    }

    /// Hands out a counter slot for `floating`, zeroed: linear probing from
    /// a hash of the address for a free slot, or one `floating` already
    /// owns (left behind by a crash between claiming and mapping).
    /// Mutating commands run one at a time (the database's write lock), so
    /// two claims never race.
    fn claim_slot(&mut self, floating: Ipv4Addr) -> Result<u32> {
        let owner = to_key(floating);
        let n = self.slot_owners.len();
        let start = u32::from(floating).wrapping_mul(0x9e37_79b1) % n;
        for i in 0..n {
            let slot = (start + i) % n;
            let current = self.slot_owners.get(&slot, 0)?;
            if current == 0 || current == owner {
                let cpus = nr_cpus().map_err(|(_, e)| e)?;
                let zero = PerCpuValues::try_from(vec![AssocStats::default(); cpus])?;
                self.stats.set(slot, zero, 0)?;
                self.slot_owners.set(slot, owner, 0)?;
                return Ok(slot);
            }
        }
        bail!("no free counter slot for {floating} ({n} slots)")
    }

    /// Adds `delta` to the spoof-filter bucket of `fixed`. Counted up before
    /// a fixed IP enters `FIXED_TO_FIP` and down after it left, so a crash
    /// can only leave a count too high (an extra exact lookup), never too
    /// low (a spoofed packet let through); a full repair recounts.
    fn filter_add(&mut self, fixed: Ipv4Addr, delta: i32) -> Result<()> {
        let bucket = spoof_filter_bucket(to_key(fixed));
        let n = self.spoof_filter.get(&bucket, 0)?;
        self.spoof_filter
            .set(bucket, n.saturating_add_signed(delta), 0)?;
        Ok(())
    }

    /// What every spoof-filter bucket should count, from `FIXED_TO_FIP`.
    fn filter_counts(&self) -> Result<Vec<u32>> {
        let mut want = vec![0u32; SPOOF_FILTER_BUCKETS as usize];
        for key in self.fixed_to_fip.keys() {
            want[spoof_filter_bucket(key?) as usize] += 1;
        }
        Ok(want)
    }

    /// Recounts the spoof filter from `FIXED_TO_FIP` (after a repair).
    pub fn rebuild_spoof_filter(&mut self) -> Result<()> {
        for (bucket, want) in self.filter_counts()?.into_iter().enumerate() {
            let bucket = bucket as u32;
            if self.spoof_filter.get(&bucket, 0)? != want {
                self.spoof_filter.set(bucket, want, 0)?;
            }
        }
        Ok(())
    }

    /// Buckets whose count differs from the fixed IPs in `FIXED_TO_FIP`:
    /// (bucket, count, fixed IPs). Empty when the filter is exact.
    pub fn spoof_filter_mismatches(&self) -> Result<Vec<(u32, u32, u32)>> {
        let mut out = Vec::new();
        for (bucket, want) in self.filter_counts()?.into_iter().enumerate() {
            let bucket = bucket as u32;
            let have = self.spoof_filter.get(&bucket, 0)?;
            if have != want {
                out.push((bucket, have, want));
            }
        }
        Ok(out)
    }

    /// Frees `slot` if `floating` owns it.
    fn release_slot(&mut self, slot: u32, floating: Ipv4Addr) -> Result<()> {
        if slot < self.slot_owners.len() && self.slot_owners.get(&slot, 0)? == to_key(floating) {
            self.slot_owners.set(slot, 0, 0)?;
        }
        Ok(())
    }

    fn check_free(&self, floating: Ipv4Addr, fixed: Ipv4Addr) -> Result<()> {
        // The gateway must never answer ARP for, or translate, its own addresses.
        let local = self
            .local_addrs
            .get_or_init(|| iface::addresses().unwrap_or_default());
        for addr in [floating, fixed] {
            if let Some((nic, _)) = local.iter().find(|(_, a)| *a == addr) {
                bail!("{addr} is an address of the gateway's interface {nic}");
            }
        }
        if let Some(other) = self.fixed_of(floating)? {
            bail!("floating IP {floating} is already mapped to {other}");
        }
        if let Some(other) = self.floating_of(fixed)? {
            bail!("fixed IP {fixed} already has floating IP {other}");
        }
        Ok(())
    }

    /// Adds a pair so that traffic never sees half of it: the reverse entry
    /// first (BPF_NOEXIST), then the forward one, the reverse rolled back if
    /// that fails.
    pub fn nat_add(&mut self, floating: Ipv4Addr, fixed: Ipv4Addr) -> Result<()> {
        self.check_free(floating, fixed)?;
        let slot = self.claim_slot(floating)?;
        self.filter_add(fixed, 1)?;
        let (f, x) = (to_key(floating), to_key(fixed));
        if let Err(e) = self
            .fixed_to_fip
            .insert(x, NatEntry { addr: f, slot }, BPF_NOEXIST)
        {
            let _ = self.filter_add(fixed, -1);
            let _ = self.release_slot(slot, floating);
            return Err(anyhow!("cannot map fixed IP {fixed}: {e}"));
        }
        crate::failpoint::hit("pair-half-written");
        if let Err(e) = self
            .fip_to_fixed
            .insert(f, NatEntry { addr: x, slot }, BPF_NOEXIST)
        {
            let _ = self.fixed_to_fip.remove(&x);
            let _ = self.filter_add(fixed, -1);
            let _ = self.release_slot(slot, floating);
            return Err(anyhow!("cannot map floating IP {floating}: {e}"));
        }
        Ok(())
    }

    /// Moves `floating` to `new_fixed`: the floating->fixed entry is
    /// overwritten in place, so traffic switches from the next packet.
    /// The association keeps its counters (and slot).
    pub fn nat_move(&mut self, floating: Ipv4Addr, new_fixed: Ipv4Addr) -> Result<()> {
        let entry = Self::lookup(&self.fip_to_fixed, floating)?
            .ok_or_else(|| anyhow!("floating IP {floating} is not mapped"))?;
        let old_fixed = from_key(entry.addr);
        if old_fixed == new_fixed {
            return Ok(());
        }
        if let Some(other) = self.floating_of(new_fixed)? {
            bail!("fixed IP {new_fixed} already has floating IP {other}");
        }
        let (f, x, old, slot) = (
            to_key(floating),
            to_key(new_fixed),
            to_key(old_fixed),
            entry.slot,
        );
        self.filter_add(new_fixed, 1)?;
        if let Err(e) = self
            .fixed_to_fip
            .insert(x, NatEntry { addr: f, slot }, BPF_NOEXIST)
        {
            let _ = self.filter_add(new_fixed, -1);
            return Err(e.into());
        }
        if let Err(e) = self
            .fip_to_fixed
            .insert(f, NatEntry { addr: x, slot }, BPF_EXIST)
        {
            let _ = self.fixed_to_fip.remove(&x);
            let _ = self.filter_add(new_fixed, -1);
            return Err(e.into());
        }
        self.fixed_to_fip.remove(&old)?;
        self.filter_add(old_fixed, -1)?;
        Ok(())
    }

    /// Removes the pair of `floating` (inbound first) and returns its fixed IP.
    pub fn nat_del(&mut self, floating: Ipv4Addr) -> Result<Ipv4Addr> {
        let entry = Self::lookup(&self.fip_to_fixed, floating)?
            .ok_or_else(|| anyhow!("floating IP {floating} is not mapped"))?;
        let fixed = from_key(entry.addr);
        self.fip_to_fixed.remove(&to_key(floating))?;
        crate::failpoint::hit("pair-half-written");
        self.fixed_to_fip.remove(&to_key(fixed))?;
        self.filter_add(fixed, -1)?;
        self.release_slot(entry.slot, floating)?;
        Ok(fixed)
    }

    /// Removes whatever entries mention `floating` or `fixed`, half pairs
    /// included; absence is not an error. For repair after a crash.
    pub fn nat_purge(&mut self, floating: Ipv4Addr, fixed: Ipv4Addr) -> Result<()> {
        let mut slots = Vec::new();
        for (map, key) in [(&self.fip_to_fixed, floating), (&self.fixed_to_fip, fixed)] {
            if let Some(e) = Self::lookup(map, key)? {
                slots.push(e.slot);
            }
        }
        let mut fixed_removed = false;
        for (map, key) in [
            (&mut self.fip_to_fixed, floating),
            (&mut self.fixed_to_fip, fixed),
        ] {
            match map.remove(&to_key(key)) {
                Ok(()) => fixed_removed = key == fixed,
                Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e)) if e.io_error.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        if fixed_removed {
            self.filter_add(fixed, -1)?;
        }
        for slot in slots {
            self.release_slot(slot, floating)?;
        }
        Ok(())
    }

    /// Every pair, read from floating->fixed.
    pub fn nat_list(&self) -> Result<Vec<Pair>> {
        let mut out = Vec::new();
        for item in self.fip_to_fixed.iter() {
            let (f, e) = item?;
            out.push(Pair {
                floating: from_key(f),
                fixed: from_key(e.addr),
            });
        }
        out.sort();
        Ok(out)
    }

    /// Every fixed->floating entry, for finding half pairs.
    pub fn nat_list_reverse(&self) -> Result<Vec<Pair>> {
        let mut out = Vec::new();
        for item in self.fixed_to_fip.iter() {
            let (x, e) = item?;
            out.push(Pair {
                floating: from_key(e.addr),
                fixed: from_key(x),
            });
        }
        out.sort();
        Ok(out)
    }

    /// Adds many pairs; each pair is written as in [`Self::nat_add`].
    /// On failure the pairs already added by this call are removed again.
    pub fn nat_add_bulk(&mut self, pairs: &[Pair]) -> Result<()> {
        for (i, p) in pairs.iter().enumerate() {
            if i == pairs.len() / 2 {
                crate::failpoint::hit("bulk-middle");
            }
            if let Err(e) = self.nat_add(p.floating, p.fixed) {
                for q in &pairs[..i] {
                    let _ = self.nat_purge(q.floating, q.fixed);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Marks `addr/len` as a pool prefix or, with `excluded`, as a hole in one.
    pub fn pool_prefix_add(&mut self, addr: Ipv4Addr, len: u8, excluded: bool) -> Result<()> {
        let value = if excluded { POOL_EXCLUDED } else { POOL_MEMBER };
        self.pools
            .insert(&Key::new(len as u32, to_key(addr)), value, 0)?;
        Ok(())
    }

    pub fn pool_prefix_del(&mut self, addr: Ipv4Addr, len: u8) -> Result<()> {
        match self.pools.remove(&Key::new(len as u32, to_key(addr))) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every pool prefix: (address, length, excluded).
    pub fn pool_prefixes(&self) -> Result<Vec<(Ipv4Addr, u8, bool)>> {
        let mut out = Vec::new();
        for item in self.pools.iter() {
            let (k, v) = item?;
            out.push((from_key(k.data()), k.prefix_len() as u8, v == POOL_EXCLUDED));
        }
        Ok(out)
    }

    /// Control-plane generation the maps reflect.
    pub fn generation(&self) -> Result<u64> {
        Ok(self.meta.get(&0, 0)?.generation)
    }

    pub fn set_generation(&mut self, generation: u64) -> Result<()> {
        let mut m = self.meta.get(&0, 0)?;
        m.generation = generation;
        self.meta.set(0, m, 0)?;
        Ok(())
    }

    /// Whether the programs write their event log (see [`log::follow`]).
    pub fn set_log_enabled(&mut self, on: bool) -> Result<()> {
        let mut m = self.meta.get(&0, 0)?;
        m.log_enabled = u32::from(on);
        self.meta.set(0, m, 0)?;
        Ok(())
    }

    /// Size of the association maps.
    pub fn max_associations(&self) -> Result<u32> {
        Ok(self.max_associations)
    }

    /// Managed NICs of the given role: (ifindex, MAC).
    pub fn nics(&self, role: Role) -> Result<Vec<(u32, [u8; 6])>> {
        let want = if role == Role::External {
            ROLE_EXTERNAL
        } else {
            ROLE_INTERNAL
        };
        let mut out = Vec::new();
        for item in self.ifaces.iter() {
            let (idx, info) = item?;
            if info.role == want {
                out.push((idx, info.mac));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Per-outcome counters summed over CPUs, in `outcome::NAMES` order.
    pub fn outcomes(&self) -> Result<BTreeMap<&'static str, u64>> {
        let mut out = BTreeMap::new();
        for (i, name) in outcome::NAMES.iter().enumerate() {
            let v = self.outcomes.get(&(i as u32), 0)?;
            out.insert(*name, v.iter().sum());
        }
        Ok(out)
    }

    /// Counters of one association, or of all when `only` is `None`.
    pub fn pair_stats(&self, only: Option<Ipv4Addr>) -> Result<Vec<PairStats>> {
        let entries = match only {
            Some(f) => vec![(
                f,
                Self::lookup(&self.fip_to_fixed, f)?
                    .ok_or_else(|| anyhow!("floating IP {f} is not mapped"))?,
            )],
            None => {
                let mut all = Vec::new();
                for item in self.fip_to_fixed.iter() {
                    let (f, e) = item?;
                    all.push((from_key(f), e));
                }
                all.sort_by_key(|(f, _)| *f);
                all
            }
        };
        let mut out = Vec::new();
        for (floating, entry) in entries {
            let mut s = PairStats {
                floating,
                fixed: from_key(entry.addr),
                in_packets: 0,
                in_bytes: 0,
                out_packets: 0,
                out_bytes: 0,
            };
            if let Ok(values) = self.stats.get(&entry.slot, 0) {
                for v in values.iter() {
                    s.in_packets += v.in_packets;
                    s.in_bytes += v.in_bytes;
                    s.out_packets += v.out_packets;
                    s.out_bytes += v.out_bytes;
                }
            }
            out.push(s);
        }
        Ok(out)
    }

    /// Everything `floatip status` shows.
    pub fn status(&self) -> Result<Status> {
        let mut interfaces = Vec::new();
        for item in self.ifaces.iter() {
            let (idx, info) = item?;
            let Some((path, mode)) = find_link(&self.bpffs, idx)? else {
                continue;
            };
            let program_id = PinnedLink::from_pin(&path)
                .ok()
                .and_then(|l| FdLink::from(l).info().ok())
                .map(|i| i.program_id())
                .unwrap_or(0);
            interfaces.push(Attached {
                ifindex: idx,
                name: iface::name(idx).unwrap_or_else(|| format!("#{idx}")),
                role: if info.role == ROLE_EXTERNAL {
                    Role::External
                } else {
                    Role::Internal
                },
                mode,
                program_id,
                mac: iface::fmt_mac(&info.mac),
            });
        }
        interfaces.sort_by_key(|a| a.ifindex);
        let meta = self.meta.get(&0, 0)?;
        Ok(Status {
            bpffs: self.bpffs.clone(),
            interfaces,
            associations: self.fip_to_fixed.keys().count(),
            max_associations: self.max_associations()?,
            layout_version: meta.layout_version,
            generation: meta.generation,
            counters: self.outcomes()?,
        })
    }
}

/// Removes the map pins and directories under `bpffs`, best effort.
fn remove_pins(bpffs: &Path) {
    for name in names::ALL {
        let _ = fs::remove_file(maps_dir(bpffs).join(name));
    }
    for dir in [links_dir(bpffs), maps_dir(bpffs), bpffs.to_path_buf()] {
        let _ = fs::remove_dir(&dir);
    }
}

/// Which program of the data-plane object a test run exercises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestProgram {
    XdpExternal,
    XdpInternal,
    TcExternal,
    TcInternal,
    /// The benchmark object's program that only returns XDP_PASS.
    XdpPassOnly,
}

/// Outcome of one `BPF_PROG_TEST_RUN`.
#[derive(Clone, Debug)]
pub struct TestRunOutput {
    pub action: u32,
    pub data: Vec<u8>,
    /// Mean time per repetition as the kernel measured it.
    pub duration: Duration,
}

/// The programs loaded (not attached) for `BPF_PROG_TEST_RUN`, with their
/// maps pinned in a private bpffs directory so `Dataplane` can fill them.
pub struct TestPrograms {
    ebpf: Ebpf,
    bench: Ebpf,
    bpffs: PathBuf,
}

impl TestPrograms {
    /// Loads the programs with maps pinned under `bpffs` (which must not be
    /// in use); `ifindex` is registered as a managed NIC with `mac`.
    pub fn load(bpffs: &Path, max_associations: u32, ifindex: u32, mac: [u8; 6]) -> Result<Self> {
        ensure_bpffs(bpffs)?;
        Self::load_pinned(bpffs, max_associations, ifindex, mac).inspect_err(|_| remove_pins(bpffs))
    }

    fn load_pinned(
        bpffs: &Path,
        max_associations: u32,
        ifindex: u32,
        mac: [u8; 6],
    ) -> Result<Self> {
        let mut ebpf = load(bpffs, max_associations)?;
        for name in [
            programs::XDP_EXTERNAL,
            programs::XDP_INTERNAL,
            programs::TC_EXTERNAL,
            programs::TC_INTERNAL,
        ] {
            let prog = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("object lacks {name}"))?;
            match prog {
                aya::programs::Program::Xdp(p) => p.load()?,
                aya::programs::Program::SchedClassifier(p) => p.load()?,
                _ => bail!("unexpected program type for {name}"),
            }
        }
        {
            let mut ifaces: HashMap<_, u32, IfaceInfo> =
                HashMap::try_from(ebpf.map_mut(names::IFACES).unwrap())?;
            ifaces.insert(
                ifindex,
                IfaceInfo {
                    mac,
                    role: ROLE_EXTERNAL,
                    _pad: 0,
                },
                0,
            )?;
        }
        let mut bench = Ebpf::load(BENCH_OBJECT).context("cannot load the bench object")?;
        let pass: &mut Xdp = bench
            .program_mut(programs::BENCH_PASS)
            .ok_or_else(|| anyhow!("bench object lacks {}", programs::BENCH_PASS))?
            .try_into()?;
        pass.load()?;
        Ok(Self {
            ebpf,
            bench,
            bpffs: bpffs.to_path_buf(),
        })
    }

    /// The map handle for filling associations and pools.
    pub fn dataplane(&self) -> Result<Dataplane> {
        Dataplane::open(&self.bpffs)
    }

    /// Runs `which` over `frame` `repeat` times with the ingress interface
    /// set to `ifindex` (XDP) and returns the action and output of the run.
    pub fn run(
        &mut self,
        which: TestProgram,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> Result<TestRunOutput> {
        // The program may grow nothing, but leave room anyway.
        let mut out = vec![0u8; frame.len() + 256];
        // xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let mut ctx = [0u32; 6];
        ctx[1] = frame.len() as u32;
        ctx[3] = ifindex;
        let ctx_bytes: Vec<u8> = ctx.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat.max(1);
        let result = match which {
            TestProgram::XdpExternal | TestProgram::XdpInternal | TestProgram::XdpPassOnly => {
                opts.ctx_in = Some(&ctx_bytes);
                let (obj, name) = match which {
                    TestProgram::XdpExternal => (&mut self.ebpf, programs::XDP_EXTERNAL),
                    TestProgram::XdpInternal => (&mut self.ebpf, programs::XDP_INTERNAL),
                    _ => (&mut self.bench, programs::BENCH_PASS),
                };
                let prog: &mut Xdp = obj.program_mut(name).unwrap().try_into()?;
                prog.test_run(opts)
            }
            TestProgram::TcExternal | TestProgram::TcInternal => {
                let name = if which == TestProgram::TcExternal {
                    programs::TC_EXTERNAL
                } else {
                    programs::TC_INTERNAL
                };
                let prog: &mut SchedClassifier = self.ebpf.program_mut(name).unwrap().try_into()?;
                prog.test_run(opts)
            }
        }
        .map_err(|e: ProgramError| {
            anyhow!(
                "BPF_PROG_TEST_RUN failed: {}",
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.to_string())
            )
        })?;
        let n = result.data_size_out as usize;
        out.truncate(n);
        Ok(TestRunOutput {
            action: result.return_value,
            data: out,
            duration: result.duration,
        })
    }

    /// Removes the pins this instance made.
    pub fn cleanup(self) -> Result<()> {
        let bpffs = self.bpffs.clone();
        drop(self);
        remove_pins(&bpffs);
        Ok(())
    }
}
