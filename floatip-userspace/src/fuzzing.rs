//! Property checks of the parsers in [`crate::addr`], shared by the libFuzzer targets in `fuzz/`
//! and by the replay of their corpus in `tests/fuzz_corpus.rs`, so that CI checks the same
//! properties without libFuzzer. Each check takes one raw input and panics when a property fails.
//!
//! `fuzz/` compiles this file and `addr.rs` on their own (`#[path]`, to leave the eBPF build,
//! aya and SQLite out of the fuzz build): use only std, anyhow and `crate::addr` here.
//!
//! An `addr` input is UTF-8 text whose first four lines are comma-separated lists:
//! 1. `--range` values; 2. `--exclude` values;
//! 3. allocated addresses for `lowest_free`: an address, or a range or CIDR for a run of them;
//! 4. the ranges of a second pool, for `overlaps`.
//!
//! Every item of every line is also fed to `parse_ipv4` and `RangeSpec::parse`. A `bulk` input
//! is the text of a bulk-association file.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
};

use crate::addr::{BulkEntry, PoolRanges, RangeSpec, parse_bulk, parse_ipv4};

/// Pools covering at most this many addresses are also checked address by address.
const SMALL_POOL: u64 = 4096;
/// Bound on the allocated addresses an input expands to, so that one run stays fast.
const MAX_ALLOCATED: usize = 4096;
/// Allocations in a row checked against the next usable address.
const ALLOCATIONS: usize = 64;

pub fn check_addr(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for item in text.lines().flat_map(items) {
        check_ipv4(item);
        check_range(item);
    }
    let mut lines = text.lines().map(items);
    let mut next = || lines.next().unwrap_or_default();
    let (ranges, excludes, allocated, other) = (next(), next(), next(), next());
    check_pool(&ranges, &excludes, &allocated, &other);
}

pub fn check_bulk(data: &[u8]) {
    // The CLI reads the file as UTF-8 before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines: Vec<&str> = text.lines().collect();
    match parse_bulk(text) {
        Ok(entries) => check_bulk_entries(&lines, &entries),
        Err(e) => check_bulk_error(&lines, &message(&e)),
    }
}

/// A line's comma-separated items; a blank line has none (a pool without excludes).
fn items(line: &str) -> Vec<&str> {
    if line.trim().is_empty() {
        Vec::new()
    } else {
        line.split(',').collect()
    }
}

/// The error as the CLI prints it, which must be one non-empty line.
fn message(e: &anyhow::Error) -> String {
    let m = format!("{e:#}");
    assert!(!m.is_empty() && !m.contains('\n'), "not one line: {m:?}");
    m
}

fn mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn check_ipv4(item: &str) {
    match parse_ipv4(item) {
        // Accepted forms are canonical: no leading zeros, signs or spaces inside.
        Ok(ip) => assert_eq!(ip.to_string(), item.trim(), "parse_ipv4({item:?})"),
        Err(e) => assert_eq!(message(&e), format!("invalid IPv4 address '{item}'")),
    }
}

fn check_range(item: &str) {
    let r = match RangeSpec::parse(item) {
        Ok(r) => r,
        Err(e) => {
            message(&e);
            return;
        }
    };
    assert!(r.first() <= r.last(), "{item:?} parsed as {r:?}");
    if let RangeSpec::Cidr { len, .. } = r {
        let size = 1u64 << (32 - len);
        assert_eq!(
            u64::from(r.first()) % size,
            0,
            "{item:?}: network not aligned"
        );
        assert_eq!(u64::from(r.last() - r.first()) + 1, size, "{item:?}");
    }
    assert_eq!(
        RangeSpec::parse(&r.to_string()).ok(),
        Some(r),
        "{item:?} via {r}"
    );
}

/// What a pool must be, worked out straight from its parsed ranges and excludes.
struct Model {
    /// `(first, last)` of each range, sorted.
    ranges: Vec<(u32, u32)>,
    /// Covered but unusable: network and broadcast of CIDRs shorter than /31, and excludes.
    holes: BTreeSet<u32>,
    excludes: BTreeSet<u32>,
}

impl Model {
    /// None when the pool must be rejected: no range, two ranges sharing an address, an exclude
    /// given twice or outside every range, or nothing usable left.
    fn new(specs: &[RangeSpec], excludes: &[Ipv4Addr]) -> Option<Self> {
        let mut ranges: Vec<(u32, u32)> = specs.iter().map(|s| (s.first(), s.last())).collect();
        ranges.sort_unstable();
        // Every pair, not just neighbours: the model should not share the parser's reasoning.
        let overlap = ranges.iter().enumerate().any(|(i, &(lo, hi))| {
            ranges[i + 1..]
                .iter()
                .any(|&(lo2, hi2)| lo <= hi2 && lo2 <= hi)
        });
        if ranges.is_empty() || overlap {
            return None;
        }
        let mut holes = BTreeSet::new();
        for s in specs {
            if let RangeSpec::Cidr { len, .. } = s
                && *len < 31
            {
                holes.extend([s.first(), s.last()]);
            }
        }
        let given = excludes.len();
        let excludes: BTreeSet<u32> = excludes.iter().copied().map(u32::from).collect();
        if excludes.len() != given {
            return None;
        }
        holes.extend(&excludes);
        let model = Self {
            ranges,
            holes,
            excludes,
        };
        let all_covered = model.excludes.iter().all(|&x| model.covers(x));
        (all_covered && model.count() > 0).then_some(model)
    }

    fn covers(&self, a: u32) -> bool {
        let i = self.ranges.partition_point(|&(_, hi)| hi < a);
        self.ranges.get(i).is_some_and(|&(lo, _)| lo <= a)
    }

    fn usable(&self, a: u32) -> bool {
        self.covers(a) && !self.holes.contains(&a)
    }

    fn covered(&self) -> u64 {
        self.ranges
            .iter()
            .map(|&(lo, hi)| u64::from(hi - lo) + 1)
            .sum()
    }

    /// Every hole is covered (checked in `new`), so this is the number of usable addresses.
    fn count(&self) -> u64 {
        self.covered() - self.holes.len() as u64
    }
}

fn check_pool(ranges: &[&str], excludes: &[&str], allocated: &[&str], other: &[&str]) {
    let specs: Option<Vec<RangeSpec>> = ranges.iter().map(|r| RangeSpec::parse(r).ok()).collect();
    let exs: Option<Vec<Ipv4Addr>> = excludes.iter().map(|e| parse_ipv4(e).ok()).collect();
    let model = specs.zip(exs).and_then(|(s, x)| Model::new(&s, &x));
    let (pool, model) = match (PoolRanges::parse(ranges, excludes), model) {
        (Ok(p), Some(m)) => (p, m),
        (Err(e), None) => {
            message(&e);
            return;
        }
        (Ok(p), None) => panic!("accepted {ranges:?} less {excludes:?} as {p}"),
        (Err(e), Some(_)) => panic!("rejected {ranges:?} less {excludes:?}: {e:#}"),
    };
    check_stored_form(&pool, &model, ranges, excludes);
    let probes = check_usable(&pool, &model);
    check_trie(&pool, &model, &probes);
    check_lowest_free(&pool, allocated);
    check_overlaps(&pool, &model, other);
}

fn check_stored_form(p: &PoolRanges, m: &Model, ranges: &[&str], excludes: &[&str]) {
    let spans: Vec<(u32, u32)> = p.ranges().iter().map(|s| (s.first(), s.last())).collect();
    assert_eq!(spans, m.ranges, "ranges of {p}");
    let exs: BTreeSet<u32> = p.excludes().iter().copied().map(u32::from).collect();
    assert_eq!(exs, m.excludes, "excludes of {p}");
    assert_eq!(exs.len(), p.excludes().len(), "duplicate excludes in {p}");
    let back = PoolRanges::from_stored(&p.ranges_text(), &p.excludes_text());
    assert_eq!(back.as_ref().ok(), Some(p), "stored form of {p}: {back:?}");
    assert_eq!(p.to_string(), p.ranges_text());
    // The order of --range and --exclude values does not matter.
    let rev = |v: &[&str]| v.iter().rev().map(|s| s.to_string()).collect::<Vec<_>>();
    let reversed = PoolRanges::parse(&rev(ranges), &rev(excludes));
    assert_eq!(reversed.as_ref().ok(), Some(p), "reversed: {reversed:?}");
}

/// Checks `total`, `contains`, `covers` and `usable_intervals` against the model; returns the
/// addresses it probed: every place where the model or the intervals change, with both
/// neighbours, which makes the comparison complete, or, for a small pool, every address.
fn check_usable(p: &PoolRanges, m: &Model) -> BTreeSet<u32> {
    assert_eq!(p.total(), m.count(), "total of {p}");
    let intervals: Vec<(u32, u32)> = p
        .usable_intervals()
        .into_iter()
        .map(|(a, b)| (u32::from(a), u32::from(b)))
        .collect();
    assert!(intervals.iter().all(|(a, b)| a <= b), "{intervals:?}");
    // Sorted and apart: two touching intervals would be one.
    assert!(
        intervals
            .windows(2)
            .all(|w| u64::from(w[0].1) + 1 < u64::from(w[1].0)),
        "{intervals:?}"
    );
    let sum: u64 = intervals.iter().map(|&(a, b)| u64::from(b - a) + 1).sum();
    assert_eq!(sum, p.total(), "{intervals:?}");

    let edges = m.ranges.iter().chain(&intervals).flat_map(|&(a, b)| [a, b]);
    let mut probes: BTreeSet<u32> = edges
        .chain(m.holes.iter().copied())
        .flat_map(|a| [a.checked_sub(1), Some(a), a.checked_add(1)])
        .flatten()
        .collect();
    if m.covered() <= SMALL_POOL {
        probes.extend(m.ranges.iter().flat_map(|&(lo, hi)| lo..=hi));
    }
    for &a in &probes {
        let ip = Ipv4Addr::from(a);
        let usable = m.usable(a);
        assert_eq!(p.contains(ip), usable, "{p} contains {ip}");
        assert_eq!(p.covers(ip), m.covers(a), "{p} covers {ip}");
        let i = intervals.partition_point(|&(_, hi)| hi < a);
        let listed = intervals.get(i).is_some_and(|&(lo, _)| lo <= a);
        assert_eq!(listed, usable, "{ip} in the usable intervals of {p}");
    }
    probes
}

/// The trie entries must make the kernel's longest-prefix match say "usable" exactly for the
/// usable addresses, with one key per entry and a minimal cover.
fn check_trie(p: &PoolRanges, m: &Model, probes: &BTreeSet<u32>) {
    let entries = p.trie_entries();
    let mut table: HashMap<(u32, u8), bool> = HashMap::new();
    for e in &entries {
        let a = u32::from(e.addr);
        assert!(e.len <= 32 && a & !mask(e.len) == 0, "{e}: host bits set");
        assert!(table.insert((a, e.len), e.excluded).is_none(), "{e} twice");
    }
    let holes: BTreeSet<u32> = entries
        .iter()
        .filter(|e| e.excluded)
        .map(|e| u32::from(e.addr))
        .collect();
    assert!(
        entries.iter().all(|e| !e.excluded || e.len == 32),
        "{entries:?}"
    );
    assert_eq!(holes, m.holes, "holes of {p}");

    let mut blocks: Vec<(u32, u32)> = Vec::new();
    for e in entries.iter().filter(|e| !e.excluded) {
        let a = u32::from(e.addr);
        blocks.push((a, a | !mask(e.len)));
        // Two halves of one block would be one shorter prefix.
        if e.len > 0 {
            let sibling = a ^ (1 << (32 - e.len));
            assert_ne!(
                table.get(&(sibling, e.len)),
                Some(&false),
                "{e} and its sibling"
            );
        }
    }
    blocks.sort_unstable();
    // A /32 that is a hole stands for its prefix as well: it is left out as a prefix.
    let under_block = |h: u32| {
        let i = blocks.partition_point(|&(_, hi)| hi < h);
        blocks.get(i).is_some_and(|&(lo, _)| lo <= h)
    };
    let lone_holes: Vec<(u32, u32)> = holes
        .iter()
        .filter(|&&h| !under_block(h))
        .map(|&h| (h, h))
        .collect();
    blocks.extend(lone_holes);
    blocks.sort_unstable();
    assert!(
        blocks.windows(2).all(|w| w[0].1 < w[1].0),
        "overlapping prefixes in {entries:?}"
    );
    assert_eq!(merge(&blocks), merge(&m.ranges), "trie cover of {p}");

    let lpm = |a: u32| {
        let hit = (0..=32u8)
            .rev()
            .find_map(|len| table.get(&(a & mask(len), len)));
        hit.is_some_and(|excluded| !excluded)
    };
    for &a in probes {
        assert_eq!(
            lpm(a),
            m.usable(a),
            "trie lookup of {} in {p}",
            Ipv4Addr::from(a)
        );
    }
}

/// Sorted, disjoint intervals with touching neighbours joined.
fn merge(v: &[(u32, u32)]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &(lo, hi) in v {
        match out.last_mut() {
            Some(last) if u64::from(last.1) + 1 == u64::from(lo) => last.1 = hi,
            _ => out.push((lo, hi)),
        }
    }
    out
}

fn check_lowest_free(p: &PoolRanges, allocated: &[&str]) {
    let intervals: Vec<(u32, u32)> = p
        .usable_intervals()
        .into_iter()
        .map(|(a, b)| (u32::from(a), u32::from(b)))
        .collect();
    // Allocating from empty hands out the usable addresses in order.
    let mut taken: Vec<Ipv4Addr> = Vec::new();
    let in_order = intervals.iter().flat_map(|&(a, b)| a..=b);
    for expected in in_order.take(ALLOCATIONS).map(Ipv4Addr::from) {
        assert_eq!(
            p.lowest_free(&taken),
            Some(expected),
            "after {taken:?} in {p}"
        );
        taken.push(expected);
    }
    if taken.len() as u64 == p.total() {
        assert_eq!(p.lowest_free(&taken), None, "{p} is full");
    }

    // The input's list: duplicates and addresses outside the pool are allowed.
    let mut list: Vec<u32> = allocated
        .iter()
        .filter_map(|item| match (parse_ipv4(item), RangeSpec::parse(item)) {
            (Ok(ip), _) => Some(u32::from(ip)..=u32::from(ip)),
            (_, Ok(r)) => Some(r.first()..=r.last()),
            _ => None,
        })
        .flatten()
        .take(MAX_ALLOCATED)
        .collect();
    list.sort_unstable();
    let set: HashSet<u32> = list.iter().copied().collect();
    // Each step of the inner loop uses up one member of the set, so this stays short.
    let expected = intervals.iter().find_map(|&(lo, hi)| {
        let mut a = u64::from(lo);
        while a <= u64::from(hi) && set.contains(&(a as u32)) {
            a += 1;
        }
        (a <= u64::from(hi)).then(|| Ipv4Addr::from(a as u32))
    });
    let list: Vec<Ipv4Addr> = list.into_iter().map(Ipv4Addr::from).collect();
    assert_eq!(
        p.lowest_free(&list),
        expected,
        "lowest free of {p} after {list:?}"
    );
}

fn check_overlaps(p: &PoolRanges, m: &Model, other: &[&str]) {
    assert!(p.overlaps(p), "{p} overlaps itself");
    let Ok(q) = PoolRanges::parse(other, &[]) else {
        return;
    };
    let expected = q.ranges().iter().any(|s| {
        let (first, last) = (s.first(), s.last());
        m.ranges.iter().any(|&(lo, hi)| first <= hi && lo <= last)
    });
    assert_eq!(p.overlaps(&q), expected, "{p} overlaps {q}");
    assert_eq!(q.overlaps(p), expected, "{q} overlaps {p}");
}

/// What a line holds before its comment.
fn content(line: &str) -> &str {
    line.split('#').next().unwrap_or_default()
}

fn check_bulk_entries(lines: &[&str], entries: &[BulkEntry]) {
    let numbers: Vec<usize> = entries.iter().map(|e| e.line).collect();
    let filled: Vec<usize> = (1..=lines.len())
        .filter(|&n| !content(lines[n - 1]).trim().is_empty())
        .collect();
    assert_eq!(numbers, filled, "one entry per non-blank line");
    for e in entries {
        let fields: Vec<&str> = content(lines[e.line - 1]).split_whitespace().collect();
        assert_eq!(fields[0].parse(), Ok(e.floating), "{e:?}");
        assert_eq!(fields[1].parse(), Ok(e.fixed), "{e:?}");
        assert_eq!(fields.get(2).copied(), e.instance.as_deref(), "{e:?}");
    }
    let floating: HashSet<Ipv4Addr> = entries.iter().map(|e| e.floating).collect();
    let fixed: HashSet<Ipv4Addr> = entries.iter().map(|e| e.fixed).collect();
    assert_eq!(floating.len(), entries.len(), "a floating IP twice");
    assert_eq!(fixed.len(), entries.len(), "a fixed IP twice");

    // The canonical text of the entries, each on its own line, reads back the same.
    let mut canonical = vec![String::new(); lines.len()];
    for e in entries {
        let instance = e.instance.as_deref().map(|i| format!(" {i}"));
        canonical[e.line - 1] =
            format!("{} {}{}", e.floating, e.fixed, instance.unwrap_or_default());
    }
    let canonical = canonical.join("\n");
    let back = parse_bulk(&canonical).map_err(|e| format!("{e:#}"));
    assert_eq!(back.as_deref(), Ok(entries), "canonical form {canonical:?}");
}

fn check_bulk_error(lines: &[&str], msg: &str) {
    let n: usize = msg
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("error names no line: {msg}"));
    assert!((1..=lines.len()).contains(&n), "{msg}: no such line");
    assert!(
        !content(lines[n - 1]).trim().is_empty(),
        "{msg}: blank line"
    );
    // It is the first bad line: the lines before it parse, and with it fail the same way.
    let before = parse_bulk(&lines[..n - 1].join("\n"));
    let before = before.unwrap_or_else(|e| panic!("{msg}, but before it: {e:#}"));
    let upto = parse_bulk(&lines[..n].join("\n")).map_err(|e| format!("{e:#}"));
    assert_eq!(upto.err().as_deref(), Some(msg), "lines 1 to {n} alone");
    // A duplicate names the earlier line that holds the address.
    if let Some((_, earlier)) = msg.split_once(" already appears on line ") {
        let k: usize = earlier.parse().unwrap_or_else(|_| panic!("{msg}"));
        assert!(
            before.iter().any(|e| e.line == k),
            "{msg}: no entry on line {k}"
        );
    }
}
