//! Following the programs' aya-log event log (drops, malformed frames,
//! translated packets left to the kernel). The programs only log while
//! `META.log_enabled` is set, which [`follow`] does for as long as it runs.
//! Each record starts with `if IFINDEX:` (floatip-ebpf's log.rs), which is
//! shown as the interface's name.

use std::{
    collections::{BTreeSet, HashMap},
    os::fd::{AsFd, AsRawFd},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    maps::MapInfo,
    programs::{ProgramInfo, loaded_programs},
};
use aya_log::EbpfLogger;
use log::{Log, Metadata, Record};

use super::Dataplane;

/// The aya-log ring buffer's map name (aya-log-ebpf declares it).
const LOG_MAP: &str = "AYA_LOGS";

/// Hands each record's text to the caller, the interface named.
struct Sink<'a> {
    out: std::sync::Mutex<&'a mut (dyn FnMut(String) + Send)>,
    /// Names of the attached interfaces by ifindex.
    names: HashMap<u32, String>,
}

impl Log for Sink<'_> {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        if let Ok(mut out) = self.out.lock() {
            (out)(named(record.args().to_string(), &self.names));
        }
    }

    fn flush(&self) {}
}

/// `line` with its leading `if IFINDEX:` replaced by the interface's name, when known.
fn named(line: String, names: &HashMap<u32, String>) -> String {
    let name = line
        .strip_prefix("if ")
        .and_then(|rest| rest.split_once(':'))
        .and_then(|(index, rest)| Some((names.get(&index.parse().ok()?)?, rest)));
    match name {
        Some((name, rest)) => format!("{name}:{rest}"),
        None => line,
    }
}

/// One program id per distinct log ring buffer among the attached
/// programs: the programs of one load share a ring buffer, and two readers
/// of one ring buffer would steal each other's records.
fn log_programs(dp: &Dataplane) -> Result<Vec<u32>> {
    let attached: BTreeSet<u32> = dp
        .status()?
        .interfaces
        .iter()
        .map(|a| a.program_id)
        .filter(|id| *id != 0)
        .collect();
    if attached.is_empty() {
        bail!("no floatip program is attached; run `floatip attach` first");
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for info in loaded_programs().filter_map(Result::ok) {
        if !attached.contains(&info.id()) {
            continue;
        }
        if let Some(map) = log_map(&info)?
            && seen.insert(map)
        {
            out.push(info.id());
        }
    }
    if out.is_empty() {
        bail!("the attached programs have no {LOG_MAP} map");
    }
    Ok(out)
}

fn log_map(info: &ProgramInfo) -> Result<Option<u32>> {
    let ids = info.map_ids()?.unwrap_or_default();
    Ok(ids.into_iter().find(|id| {
        MapInfo::from_id(*id)
            .ok()
            .is_some_and(|m| m.name_as_str() == Some(LOG_MAP))
    }))
}

/// Turns logging on, calls `ready` with the number of ring buffers read,
/// hands every record to `out` until `stop` says so (or `duration`
/// passed), then turns logging off again.
pub fn follow(
    bpffs: &Path,
    duration: Option<Duration>,
    stop: &dyn Fn() -> bool,
    ready: &dyn Fn(usize),
    out: &mut (dyn FnMut(String) + Send),
) -> Result<()> {
    let mut dp = Dataplane::open(bpffs)?;
    let ids = log_programs(&dp)?;
    let names = dp
        .status()?
        .interfaces
        .into_iter()
        .map(|i| (i.ifindex, i.name))
        .collect();
    let sink = Sink {
        out: std::sync::Mutex::new(out),
        names,
    };
    let mut loggers = Vec::new();
    for id in ids {
        loggers.push(
            EbpfLogger::init_from_id_with_logger(id, &sink)
                .with_context(|| format!("cannot read the log of program {id}"))?,
        );
    }
    dp.set_log_enabled(true)?;
    ready(loggers.len());
    let started = Instant::now();
    let result = (|| -> Result<()> {
        let mut fds: Vec<libc::pollfd> = loggers
            .iter()
            .map(|l| libc::pollfd {
                fd: l.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        while !stop() && duration.is_none_or(|d| started.elapsed() < d) {
            // Short timeout: `stop` is a signal flag checked between polls.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
            if rc < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(err).context("poll on the log ring buffer");
                }
            }
            for l in loggers.iter_mut() {
                l.flush();
            }
        }
        Ok(())
    })();
    let off = dp.set_log_enabled(false);
    for l in loggers.iter_mut() {
        l.flush();
    }
    result.and(off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_name_their_interface() {
        let names = HashMap::from([(7, "gw-ext".to_owned())]);
        let n = |l: &str| named(l.to_owned(), &names);
        assert_eq!(
            n("if 7: dropped, spoofed source: 10.0.0.11 -> 203.0.113.10"),
            "gw-ext: dropped, spoofed source: 10.0.0.11 -> 203.0.113.10"
        );
        // An interface that is gone (or anything else) is shown as it came.
        assert_eq!(
            n("if 8: handed to the kernel: x"),
            "if 8: handed to the kernel: x"
        );
        assert_eq!(n("if x: y"), "if x: y");
        assert_eq!(n("other"), "other");
    }
}
