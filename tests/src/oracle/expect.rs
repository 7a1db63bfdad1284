//! What may differ from the oracle, and why; and the defects of issue 10
//! that are known and not fixed yet. docs/ORACLE.md lists the same.
//!
//! - [`INTENDED`]: floatip differs from a conntrack NAT on purpose. These
//!   differences are dropped (and counted in the report).
//! - [`KNOWN_DEFECTS`]: (defect number of issue 10, class, directions,
//!   modes) that still differ. They are reported as "known defect, still
//!   failing" and do not fail the test; but if such a class no longer
//!   differs, the test fails until the entry is removed, so the list stays
//!   honest. When a fix lands, removing its entries is the whole change.
//! - [`correct_oracle`]: where this kernel is not a correct oracle.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    Diff, Outcome,
    cases::{CLASSES, Case, Dir},
    gateway::{GW_EXT, PAIRS},
    sockets::Check,
};
use crate::netns::Mode;

/// A known, not yet fixed defect of issue 10.
pub struct Known {
    /// The defect's number in issue 10.
    pub defect: u8,
    /// A case class of `cases::CLASSES`, or "socket:NAME" for a socket check.
    pub class: &'static str,
    pub dirs: &'static [Dir],
    /// Empty: every mode.
    pub modes: &'static [Mode],
}

/// Empty: every defect class of issue 10 matches the oracle in every mode.
/// A defect found later is listed here, as `Known { defect: 0, class,
/// dirs: &[Dir::In], modes: &[] }` (defect 0: not one of issue 10's), with
/// a line in docs/ORACLE.md, until it is fixed.
pub const KNOWN_DEFECTS: &[Known] = &[];

/// An intended difference from the oracle.
pub struct Intended {
    /// A case class, or "*" for all.
    pub class: &'static str,
    /// A field name, or a prefix ending in '.' or '*'.
    pub field: &'static str,
    /// Which values of the field (oracle, floatip) the difference covers.
    pub when: fn(&Diff) -> bool,
    pub reason: &'static str,
}

fn always(_: &Diff) -> bool {
    true
}

/// The oracle's ICMP error comes from a floating IP, floatip's from the
/// gateway's own external address.
fn error_source(d: &Diff) -> bool {
    PAIRS.iter().any(|(f, _)| f.to_string() == d.oracle) && d.floatip == GW_EXT.to_string()
}

pub const INTENDED: &[Intended] = &[
    Intended {
        class: "frag-overlap",
        field: "*",
        when: always,
        reason: "stateless: floatip forwards each fragment as it comes and leaves reassembly \
                 (and the discarding of overlapping fragments) to the receiver; the oracle's \
                 conntrack reassembles first and discards the whole datagram",
    },
    Intended {
        class: "*",
        field: "ip.src",
        when: error_source,
        reason: "the ICMP errors the gateway originates (time exceeded, fragmentation needed) \
                 come from its own external address; the oracle holds the floating IPs as \
                 addresses of its external NIC and answers from the one the packet was sent \
                 to. Both are addresses of the outgoing interface (RFC 1812 §4.3.2.4)",
    },
];

fn field_matches(pattern: &str, field: &str) -> bool {
    pattern == "*"
        || pattern == field
        || (pattern.ends_with(['.', '*']) && field.starts_with(pattern.trim_end_matches('*')))
}

fn intended(class: &str, d: &Diff) -> Option<usize> {
    INTENDED.iter().position(|e| {
        (e.class == "*" || e.class == class) && field_matches(e.field, &d.field) && (e.when)(d)
    })
}

/// Where this kernel cannot be the oracle:
/// - Linux 6.16 removed DCCP, and with it the conntrack/NAT helper that
///   fixed DCCP checksums. Its NAT still rewrites the addresses (generic
///   protocol) but leaves the checksum as it was. A correct 1:1 NAT leaves
///   a valid checksum: expect that. The raw quoted DCCP checksum value is
///   not compared (only its validity).
/// - Linux forwards sources in 0.0.0.0/8 (since 5.3) and 240.0.0.0/4 (since
///   2.6.25) as unicast; issue 10 lists both as martians a router must
///   drop (RFC 1812 §5.3.7: 0/8 "this network", 240/4 reserved). Expect
///   nothing delivered and no host to notice.
pub fn correct_oracle(cases: &[Case], mut out: Vec<Outcome>) -> Vec<Outcome> {
    for (c, o) in cases.iter().zip(&mut out) {
        if c.class == "martian-source" && c.frames.iter().any(|(_, f)| unicast_martian(f)) {
            o.seen.clear();
            o.counters.clear();
            continue;
        }
        for s in &mut o.seen {
            if s.get("ip.proto") == Some("33") && s.get("l4.csum") == Some("bad") {
                s.fields.insert("l4.csum", "ok".into());
            }
            if s.get("q.proto") == Some("33") {
                s.fields.remove("q.l4csum");
                if s.fields.contains_key("q.l4csum.valid") {
                    s.fields.insert("q.l4csum.valid", "ok".into());
                }
            }
        }
        o.seen.sort();
    }
    out
}

/// Whether the untagged IPv4 frame `f` comes from 0.0.0.0/8 or 240.0.0.0/4
/// (but not the limited broadcast, which the kernel drops itself).
fn unicast_martian(f: &[u8]) -> bool {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] {
        return false;
    }
    let src = [f[26], f[27], f[28], f[29]];
    src[0] == 0 || (src[0] >= 240 && src != [255; 4])
}

/// The same fields floatip's side does not compare (see [`correct_oracle`]).
pub fn correct_floatip(cases: &[Case], mut out: Vec<Outcome>) -> Vec<Outcome> {
    for (_, o) in cases.iter().zip(&mut out) {
        for s in &mut o.seen {
            if s.get("q.proto") == Some("33") {
                s.fields.remove("q.l4csum");
            }
        }
        o.seen.sort();
    }
    out
}

fn known_entry(mode: Mode, class: &str, dir: Dir) -> Option<&'static Known> {
    KNOWN_DEFECTS.iter().find(|k| {
        k.class == class && k.dirs.contains(&dir) && (k.modes.is_empty() || k.modes.contains(&mode))
    })
}

/// The verdict of one mode.
pub struct Verdict {
    pub lines: Vec<String>,
    pub failures: Vec<String>,
}

/// Judges one mode's differences: one line per (class, direction, point,
/// field), marked intended, known defect, or unexpected.
pub fn judge(
    mode: Mode,
    cases: &[Case],
    diffs: &[(usize, Diff)],
    socket_diffs: &[(Check, String)],
) -> Verdict {
    let m = mode.as_str();
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    let mut intended_count: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    // (class, dir) -> (point, field) -> (cases, first example)
    type Group = BTreeMap<(&'static str, String), (BTreeSet<usize>, usize, String, String)>;
    let mut groups: BTreeMap<(String, Dir), Group> = BTreeMap::new();
    for (i, d) in diffs {
        let c = &cases[*i];
        if let Some(e) = intended(c.class, d) {
            intended_count.entry(e).or_default().insert(*i);
            continue;
        }
        let g = groups.entry((c.class.to_string(), c.dir)).or_default();
        let e = g
            .entry((d.point, d.field.clone()))
            .or_insert_with(|| (BTreeSet::new(), *i, d.oracle.clone(), d.floatip.clone()));
        e.0.insert(*i);
    }
    for (check, got) in socket_diffs {
        let g = groups
            .entry((format!("socket:{}", check.name), check.dir))
            .or_default();
        g.insert(
            ("socket", "outcome".into()),
            (
                BTreeSet::new(),
                usize::MAX,
                check.outcome.clone(),
                got.clone(),
            ),
        );
    }
    for (e, set) in &intended_count {
        lines.push(format!(
            "  [{m}] intended: {} {}: {} case(s) ({})",
            INTENDED[*e].class,
            INTENDED[*e].field,
            set.len(),
            INTENDED[*e].reason
        ));
    }
    for ((class, dir), g) in &groups {
        let known = known_entry(mode, class, *dir);
        let total = cases
            .iter()
            .filter(|c| c.class == class && c.dir == *dir)
            .count();
        for ((point, field), (set, ex, o, f)) in g {
            let example = cases
                .get(*ex)
                .map(|c| format!(" (#{}: {})", c.n, c.what))
                .unwrap_or_default();
            let count = if set.is_empty() {
                String::new()
            } else {
                format!(", {} of {total} cases", set.len())
            };
            let line = format!(
                "[{m}] {class} {} {point} {field}: oracle {o:?}, floatip {f:?}{count}{example}",
                dir.name()
            );
            match known {
                Some(k) if k.defect == 0 => {
                    lines.push(format!("  known, not in issue 10, still failing: {line}"))
                }
                Some(k) => lines.push(format!(
                    "  known defect {}, still failing: {line}",
                    k.defect
                )),
                None => {
                    lines.push(format!("  UNEXPECTED: {line}"));
                    failures.push(line);
                }
            }
        }
    }
    // Honesty: a known defect that no longer shows must leave the list.
    for k in KNOWN_DEFECTS {
        if !(k.modes.is_empty() || k.modes.contains(&mode)) {
            continue;
        }
        for dir in k.dirs {
            // The socket checks run in every run; a case class must have had cases.
            let ran = k.class.starts_with("socket:") || {
                assert!(
                    CLASSES
                        .iter()
                        .any(|(c, d)| *c == k.class && d.contains(dir)),
                    "KNOWN_DEFECTS names class {} {}, which is not generated",
                    k.class,
                    dir.name()
                );
                cases.iter().any(|c| c.class == k.class && c.dir == *dir)
            };
            if ran && !groups.contains_key(&(k.class.to_string(), *dir)) {
                let line = format!(
                    "[{m}] known defect {} ({} {}) no longer differs from the oracle: remove it \
                     from KNOWN_DEFECTS (tests/src/oracle/expect.rs) and docs/ORACLE.md",
                    k.defect,
                    k.class,
                    dir.name()
                );
                lines.push(format!("  FIXED?: {line}"));
                failures.push(line);
            }
        }
    }
    Verdict { lines, failures }
}
