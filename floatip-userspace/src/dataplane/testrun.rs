//! The `BPF_PROG_TEST_RUN` harness: the data-plane programs loaded, not
//! attached, with their maps pinned in a private directory. Built only for
//! tests (`feature = "test-harness"`), never into the production binary.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Result, anyhow, bail};
use aya::{
    Ebpf, TestRunOptions,
    programs::{ProgramError, SchedClassifier, TestRun, Xdp},
};
use floatip_common::programs;

use super::{
    Counters, Dataplane, Role,
    attach::load,
    pins::{ensure_bpffs, maps_dir, remove_pins},
    xdp_ctx,
};

/// Which program of the data-plane object a test run exercises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestProgram {
    XdpExternal,
    XdpInternal,
    TcExternal,
    TcInternal,
    /// The external NICs' egress program.
    TcEgress,
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
    bpffs: PathBuf,
}

impl TestPrograms {
    /// Loads the programs with maps pinned under `bpffs` (which must not be
    /// in use); `ifindex` is registered as a managed NIC with `mac`.
    pub fn load(bpffs: &Path, max_associations: u32, ifindex: u32, mac: [u8; 6]) -> Result<Self> {
        Self::load_with_nics(bpffs, max_associations, &[(ifindex, mac, Role::External)])
    }

    /// [`Self::load`] with any set of managed NICs: (ifindex, MAC, role).
    pub fn load_with_nics(
        bpffs: &Path,
        max_associations: u32,
        nics: &[(u32, [u8; 6], Role)],
    ) -> Result<Self> {
        Self::load_with_counters(bpffs, max_associations, nics, None)
    }

    /// [`Self::load_with_nics`] with the counters where `counters` says
    /// (`None`: the loader's choice). Maps already pinned under `bpffs` are
    /// shared, with the counters where they have them: a second load runs the
    /// programs on the same maps (from another thread, say).
    pub fn load_with_counters(
        bpffs: &Path,
        max_associations: u32,
        nics: &[(u32, [u8; 6], Role)],
        counters: Option<Counters>,
    ) -> Result<Self> {
        let fresh = !maps_dir(bpffs).exists();
        ensure_bpffs(bpffs)?;
        Self::load_pinned(bpffs, max_associations, nics, counters).inspect_err(|_| {
            if fresh {
                remove_pins(bpffs)
            }
        })
    }

    fn load_pinned(
        bpffs: &Path,
        max_associations: u32,
        nics: &[(u32, [u8; 6], Role)],
        counters: Option<Counters>,
    ) -> Result<Self> {
        let mut ebpf = load(bpffs, max_associations, counters)?;
        for name in [
            programs::XDP_EXTERNAL,
            programs::XDP_INTERNAL,
            programs::TC_EXTERNAL,
            programs::TC_INTERNAL,
            programs::TC_EGRESS,
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
        // Managed NICs and redirect targets, as attach makes them.
        super::attach::register_nics(&mut ebpf, nics.iter().map(|(i, m, r)| (*i, *m, *r)))?;
        Ok(Self {
            ebpf,
            bpffs: bpffs.to_path_buf(),
        })
    }

    /// Another instance of the data-plane object on these pinned maps, loaded as `attach`
    /// loads it (its programs not yet in the kernel), for tests that put a program of
    /// their own in front of one.
    pub fn second_instance(&self, max_associations: u32) -> Result<aya::Ebpf> {
        load(&self.bpffs, max_associations, None)
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
        let ctx_bytes = xdp_ctx(frame.len(), ifindex);
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat.max(1);
        let result = match which {
            TestProgram::XdpExternal | TestProgram::XdpInternal => {
                opts.ctx_in = Some(&ctx_bytes);
                let name = if which == TestProgram::XdpExternal {
                    programs::XDP_EXTERNAL
                } else {
                    programs::XDP_INTERNAL
                };
                let prog: &mut Xdp = self.ebpf.program_mut(name).unwrap().try_into()?;
                prog.test_run(opts)
            }
            TestProgram::TcExternal | TestProgram::TcInternal | TestProgram::TcEgress => {
                let name = match which {
                    TestProgram::TcExternal => programs::TC_EXTERNAL,
                    TestProgram::TcInternal => programs::TC_INTERNAL,
                    _ => programs::TC_EGRESS,
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
