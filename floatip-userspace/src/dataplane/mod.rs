//! The only module that touches aya: loading, attaching and pinning the
//! programs, and reading and writing the pinned maps.
//!
//! Pins live under one bpffs directory (`--bpffs`, default
//! `/sys/fs/bpf/floatip`):
//! - `maps/<NAME>`: every map, by the names in `floatip_common::maps`;
//! - `links/<ifindex>_<mode>`: one bpf_link per interface (bpffs refuses
//!   dots in names), which keeps the program attached after `floatip attach`
//!   exits and lets a newer program replace it atomically (`BPF_LINK_UPDATE`);
//!   `links/send-drops-*`: the tracepoint programs of [`send_drops`].
//!
//! By concern: [`pins`] (the bpffs layout), [`attach`] (load, attach,
//! detach), [`maps`] (the map handle with its slot allocator and
//! anti-spoofing filter), [`status`] (what `floatip status` reads),
//! [`send_drops`] (counting what the kernel drops after a send), plus the
//! event log, the benchmark rig and, for tests only, the test-run harness.

mod attach;
pub mod bench;
mod hops;
pub mod log;
mod maps;
mod pins;
mod send_drops;
mod status;
#[cfg(any(test, feature = "test-harness"))]
pub mod testrun;

use std::net::Ipv4Addr;

use floatip_common::{ROLE_EXTERNAL, ROLE_INTERNAL};

#[cfg(any(test, feature = "test-harness"))]
pub use self::testrun::{TestProgram, TestPrograms, TestRunOutput};
pub use self::{
    hops::{HopCache, PairLock, coarse_now_ns},
    maps::Dataplane,
    pins::not_attached,
    status::{Attached, DataplaneStatus, PairStats},
};

/// The data-plane object, built from `floatip-ebpf` by `floatip-object`.
pub static EBPF_OBJECT: &[u8] = floatip_object::FLOATIP;
/// Benchmark-only programs (XDP_PASS floor, redirect-only, drop sink, generator).
pub static BENCH_OBJECT: &[u8] = floatip_object::BENCH;

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

impl Role {
    /// The role as the `IFACES` map stores it.
    fn to_map(self) -> u8 {
        match self {
            Role::External => ROLE_EXTERNAL,
            Role::Internal => ROLE_INTERNAL,
        }
    }

    fn from_map(role: u8) -> Role {
        if role == ROLE_EXTERNAL {
            Role::External
        } else {
            Role::Internal
        }
    }
}

/// Where the per-association counters live, chosen when the maps are created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Counters {
    /// One copy per CPU (the flat `ASSOC_STATS`): plain adds, no cache line shared
    /// between CPUs; memory grows with the CPU count.
    PerCpu,
    /// One copy for all CPUs (`ASSOC_STATS_SHARED`), atomic adds.
    Shared,
}

impl Counters {
    pub fn as_str(self) -> &'static str {
        match self {
            Counters::PerCpu => "per-cpu",
            Counters::Shared => "shared",
        }
    }

    /// The loader's choice for maps of `max_associations` on `cpus` possible
    /// CPUs: per-CPU where they fit [`floatip_common::PER_CPU_COUNTERS_BUDGET`].
    pub fn for_size(max_associations: u32, cpus: u32) -> Self {
        if floatip_common::per_cpu_counters_fit(max_associations, cpus) {
            Counters::PerCpu
        } else {
            Counters::Shared
        }
    }
}

/// Options of `floatip attach`.
#[derive(Clone, Debug)]
pub struct AttachOptions {
    pub external: Vec<String>,
    pub internal: Vec<String>,
    pub mode: Mode,
    /// Size of the association maps when they are created (`None`: the default).
    pub max_associations: Option<u32>,
    /// Where the counters live when the maps are created (`None`: by the
    /// memory budget, [`Counters::for_size`]).
    pub counters: Option<Counters>,
}

/// One association as the maps hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Pair {
    pub floating: Ipv4Addr,
    pub fixed: Ipv4Addr,
}

/// The CPUs the kernel sizes per-CPU maps for (`num_possible_cpus`).
pub fn possible_cpus() -> anyhow::Result<usize> {
    aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("cannot read {what}: {e}"))
}

/// Map keys hold addresses in network byte order.
fn to_key(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn from_key(k: u32) -> Ipv4Addr {
    Ipv4Addr::from(k.to_ne_bytes())
}

/// `xdp_md` for a test run: data, data_end, data_meta, ingress_ifindex,
/// rx_queue_index, egress_ifindex.
fn xdp_ctx(len: usize, ifindex: u32) -> Vec<u8> {
    let ctx = [0, len as u32, 0, ifindex, 0, 0];
    ctx.iter().flat_map(|v| v.to_ne_bytes()).collect()
}
