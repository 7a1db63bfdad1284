//! Pure IPv4 pool arithmetic: parsing addresses, CIDRs and ranges, the usable address set of a
//! pool, allocation of the lowest free address, overlap, the LPM trie entries of a pool and the
//! bulk-association file format. Nothing here touches the system, so all of it is unit-tested.
//!
//! Addresses are handled as `u32` (host order) internally so that ranges compare and add like
//! numbers; sizes are `u64` because a /0 holds 2^32 addresses.
//!
//! `fuzz/` compiles this file on its own (`#[path]`), so it uses nothing but std and anyhow.

use std::{fmt, net::Ipv4Addr, str::FromStr};

use anyhow::{Context, Result, anyhow, bail};

/// Parses a dotted-quad IPv4 address. std's parser is already strict: it rejects leading
/// zeros ("010.0.0.1"), missing or extra octets and octets above 255.
pub fn parse_ipv4(s: &str) -> Result<Ipv4Addr> {
    // std's error text ("invalid IPv4 address syntax") would only repeat ours.
    Ipv4Addr::from_str(s.trim()).map_err(|_| anyhow!("invalid IPv4 address '{s}'"))
}

fn parse_prefix_len(s: &str, whole: &str) -> Result<u8> {
    // Digits only: u8::from_str would accept "+24".
    if s.is_empty() || s.len() > 2 || !s.bytes().all(|b| b.is_ascii_digit()) {
        bail!("invalid prefix length in '{whole}': expected 0 to 32");
    }
    let len: u8 = s.parse().expect("at most two digits");
    if len > 32 {
        bail!("invalid prefix length in '{whole}': expected 0 to 32");
    }
    Ok(len)
}

/// Netmask of a prefix length, as a host-order `u32`.
fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

/// One `--range` as the operator wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeSpec {
    /// `a.b.c.d/n`; its network and broadcast addresses are not usable (except for /31, /32).
    Cidr { network: Ipv4Addr, len: u8 },
    /// `FIRST-LAST`, both inclusive, every address usable.
    Span { first: Ipv4Addr, last: Ipv4Addr },
}

impl RangeSpec {
    /// Parses `a.b.c.d/n` (host bits must be clear) or `FIRST-LAST` (FIRST <= LAST).
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if let Some((addr, len)) = s.split_once('/') {
            let ip = parse_ipv4(addr).with_context(|| format!("invalid CIDR '{s}'"))?;
            let len = parse_prefix_len(len, s)?;
            let network = Ipv4Addr::from(u32::from(ip) & mask(len));
            if network != ip {
                bail!("{s} has host bits set; did you mean {network}/{len}");
            }
            Ok(Self::Cidr { network, len })
        } else if let Some((first, last)) = s.split_once('-') {
            let first = parse_ipv4(first).with_context(|| format!("invalid range '{s}'"))?;
            let last = parse_ipv4(last).with_context(|| format!("invalid range '{s}'"))?;
            if first > last {
                bail!("invalid range '{s}': first address {first} is above last address {last}");
            }
            Ok(Self::Span { first, last })
        } else {
            bail!("invalid range '{s}': expected a CIDR (203.0.113.0/24) or FIRST-LAST");
        }
    }

    /// First address the range covers (a CIDR's network address included).
    pub fn first(&self) -> u32 {
        match *self {
            Self::Cidr { network, .. } => u32::from(network),
            Self::Span { first, .. } => u32::from(first),
        }
    }

    /// Last address the range covers (a CIDR's broadcast address included).
    pub fn last(&self) -> u32 {
        match *self {
            Self::Cidr { network, len } => u32::from(network) | !mask(len),
            Self::Span { last, .. } => u32::from(last),
        }
    }

    /// Addresses the range covers but does not offer: network and broadcast of a CIDR shorter
    /// than /31 (RFC 3021 makes both addresses of a /31 usable).
    fn reserved(&self) -> Vec<u32> {
        match *self {
            Self::Cidr { len, .. } if len < 31 => vec![self.first(), self.last()],
            _ => Vec::new(),
        }
    }
}

impl FromStr for RangeSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for RangeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cidr { network, len } => write!(f, "{network}/{len}"),
            Self::Span { first, last } => write!(f, "{first}-{last}"),
        }
    }
}

/// One entry of the kernel's `POOLS` LPM trie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TrieEntry {
    pub addr: Ipv4Addr,
    pub len: u8,
    /// A /32 hole: the address lies inside a pool prefix but is not part of the pool.
    pub excluded: bool,
}

impl fmt::Display for TrieEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)?;
        if self.excluded {
            f.write_str(" (excluded)")?;
        }
        Ok(())
    }
}

/// Splits the inclusive interval `[lo, hi]` into the minimal list of aligned CIDR blocks.
fn cidrs(lo: u32, hi: u32, out: &mut Vec<(u32, u8)>) {
    let (mut a, b) = (u64::from(lo), u64::from(hi));
    while a <= b {
        // The largest block aligned at `a` (a == 0 is aligned to everything)...
        let mut size: u64 = 1 << a.trailing_zeros().min(32);
        // ...shrunk until it ends inside the interval.
        while a + size - 1 > b {
            size >>= 1;
        }
        out.push((a as u32, (32 - size.trailing_zeros()) as u8));
        a += size;
    }
}

/// The address set of a pool: its ranges less network/broadcast addresses and excludes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolRanges {
    /// As given, sorted by first address, pairwise disjoint.
    specs: Vec<RangeSpec>,
    /// As given, sorted and deduplicated.
    excludes: Vec<Ipv4Addr>,
    /// Covered addresses as inclusive intervals, merged, sorted, neither overlapping nor
    /// adjacent (so that the CIDR split is minimal).
    extents: Vec<(u32, u32)>,
    /// Covered but unusable addresses (reserved + excluded), sorted, unique.
    holes: Vec<u32>,
}

impl PoolRanges {
    /// Builds the set. Errors: no range; two ranges overlap; an exclude outside every range;
    /// nothing left after excludes.
    pub fn new(mut specs: Vec<RangeSpec>, mut excludes: Vec<Ipv4Addr>) -> Result<Self> {
        if specs.is_empty() {
            bail!("a pool needs at least one range");
        }
        specs.sort_by_key(|s| (s.first(), s.last()));
        for w in specs.windows(2) {
            if w[1].first() <= w[0].last() {
                bail!("range {} overlaps range {}", w[1], w[0]);
            }
        }
        excludes.sort();
        excludes.dedup();

        let mut extents: Vec<(u32, u32)> = Vec::with_capacity(specs.len());
        for s in &specs {
            match extents.last_mut() {
                Some(last) if u64::from(last.1) + 1 == u64::from(s.first()) => last.1 = s.last(),
                _ => extents.push((s.first(), s.last())),
            }
        }
        let mut holes: Vec<u32> = specs.iter().flat_map(RangeSpec::reserved).collect();
        for ex in &excludes {
            let x = u32::from(*ex);
            if !specs.iter().any(|s| s.first() <= x && x <= s.last()) {
                bail!("excluded address {ex} is not in any range of the pool");
            }
            holes.push(x);
        }
        holes.sort_unstable();
        holes.dedup();

        let this = Self {
            specs,
            excludes,
            extents,
            holes,
        };
        if this.total() == 0 {
            bail!("the pool has no usable address left after excludes");
        }
        Ok(this)
    }

    /// Parses `--range` and `--exclude` values.
    pub fn parse<S: AsRef<str>>(ranges: &[S], excludes: &[S]) -> Result<Self> {
        let specs = ranges
            .iter()
            .map(|r| RangeSpec::parse(r.as_ref()))
            .collect::<Result<_>>()?;
        let excludes: Vec<Ipv4Addr> = excludes
            .iter()
            .map(|e| parse_ipv4(e.as_ref()))
            .collect::<Result<_>>()?;
        // A repeated value is a typo more often than not: say so rather than fold it away.
        for (i, e) in excludes.iter().enumerate() {
            if excludes[..i].contains(e) {
                bail!("excluded address {e} is given twice");
            }
        }
        Self::new(specs, excludes)
    }

    /// Reads back what [`Self::ranges_text`] and [`Self::excludes_text`] wrote.
    pub fn from_stored(ranges: &str, excludes: &str) -> Result<Self> {
        let split = |s: &str| -> Vec<String> {
            s.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect()
        };
        Self::parse(&split(ranges), &split(excludes))
    }

    /// Canonical, comma-separated form of the ranges (how the store keeps them).
    pub fn ranges_text(&self) -> String {
        self.specs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Canonical, comma-separated form of the excludes.
    pub fn excludes_text(&self) -> String {
        self.excludes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn ranges(&self) -> &[RangeSpec] {
        &self.specs
    }

    pub fn excludes(&self) -> &[Ipv4Addr] {
        &self.excludes
    }

    /// Number of usable addresses.
    pub fn total(&self) -> u64 {
        let covered: u64 = self
            .extents
            .iter()
            .map(|&(lo, hi)| u64::from(hi - lo) + 1)
            .sum();
        // Every hole lies inside an extent and holes are unique.
        covered - self.holes.len() as u64
    }

    /// Whether the ranges cover `ip` at all, usable or not (a CIDR's network and broadcast
    /// addresses and excluded addresses are covered).
    pub fn covers(&self, ip: Ipv4Addr) -> bool {
        self.covers_u32(u32::from(ip))
    }

    fn covers_u32(&self, ip: u32) -> bool {
        let i = self.extents.partition_point(|&(_, hi)| hi < ip);
        self.extents.get(i).is_some_and(|&(lo, _)| lo <= ip)
    }

    /// Whether `ip` is a usable address of the pool.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        self.covers_u32(ip) && self.holes.binary_search(&ip).is_err()
    }

    /// Whether the two sets cover a common address. Coverage (not just usable addresses) is
    /// compared because each pool owns its trie prefixes, holes included.
    pub fn overlaps(&self, other: &Self) -> bool {
        let (mut i, mut j) = (0, 0);
        while i < self.extents.len() && j < other.extents.len() {
            let (a, b) = (self.extents[i], other.extents[j]);
            if a.0 <= b.1 && b.0 <= a.1 {
                return true;
            }
            if a.1 < b.1 { i += 1 } else { j += 1 }
        }
        false
    }

    /// Whether the ranges cover any address of `first..=last`.
    pub fn overlaps_span(&self, first: Ipv4Addr, last: Ipv4Addr) -> bool {
        let (first, last) = (u32::from(first), u32::from(last));
        self.extents
            .iter()
            .any(|&(lo, hi)| lo <= last && first <= hi)
    }

    /// Usable addresses as sorted inclusive intervals: the extents with the holes cut out.
    pub fn usable_intervals(&self) -> Vec<(Ipv4Addr, Ipv4Addr)> {
        let mut out = Vec::with_capacity(self.extents.len() + self.holes.len());
        let mut holes = self.holes.iter().copied().peekable();
        for &(lo, hi) in &self.extents {
            let mut start = u64::from(lo);
            while let Some(h) = holes.next_if(|&h| h <= hi) {
                if u64::from(h) > start {
                    out.push((start as u32, h - 1));
                }
                start = u64::from(h) + 1;
            }
            if start <= u64::from(hi) {
                out.push((start as u32, hi));
            }
        }
        out.into_iter()
            .map(|(a, b)| (Ipv4Addr::from(a), Ipv4Addr::from(b)))
            .collect()
    }

    /// Lowest usable address not in `allocated`, which must be sorted ascending (duplicates and
    /// addresses outside the pool are tolerated). Walks the intervals and the allocated list
    /// side by side: O(intervals + allocated), whatever the pool's size.
    pub fn lowest_free(&self, allocated: &[Ipv4Addr]) -> Option<Ipv4Addr> {
        debug_assert!(allocated.is_sorted());
        let mut taken = allocated
            .iter()
            .map(|a| u64::from(u32::from(*a)))
            .peekable();
        for (lo, hi) in self.usable_intervals() {
            let (mut candidate, hi) = (u64::from(u32::from(lo)), u64::from(u32::from(hi)));
            // Stop at `hi`: allocated addresses past it (a hole, or outside the pool) are left
            // for the next interval, which must still see the ones it holds.
            while candidate <= hi {
                match taken.next_if(|&t| t <= candidate) {
                    Some(t) if t == candidate => candidate += 1,
                    Some(_) => {}
                    None => return Some(Ipv4Addr::from(candidate as u32)),
                }
            }
        }
        None
    }

    /// The entries that describe the pool in the kernel's LPM trie: the minimal CIDR cover of
    /// the ranges, plus a /32 hole for each covered but unusable address. A /32 prefix that is
    /// itself a hole is left out rather than added twice under the same key.
    pub fn trie_entries(&self) -> Vec<TrieEntry> {
        let mut prefixes = Vec::new();
        for &(lo, hi) in &self.extents {
            cidrs(lo, hi, &mut prefixes);
        }
        let is_hole = |a: u32| self.holes.binary_search(&a).is_ok();
        let mut out: Vec<TrieEntry> = prefixes
            .into_iter()
            .filter(|&(a, len)| !(len == 32 && is_hole(a)))
            .map(|(a, len)| TrieEntry {
                addr: a.into(),
                len,
                excluded: false,
            })
            .collect();
        out.extend(self.holes.iter().map(|&h| TrieEntry {
            addr: h.into(),
            len: 32,
            excluded: true,
        }));
        out
    }
}

impl fmt::Display for PoolRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.ranges_text())
    }
}

/// One line of a bulk-association file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BulkEntry {
    /// 1-based line number, for error messages.
    pub line: usize,
    pub floating: Ipv4Addr,
    pub fixed: Ipv4Addr,
    pub instance: Option<String>,
}

/// Parses `FLOATING FIXED [INSTANCE]` lines; `#` starts a comment, blank lines are skipped.
/// Errors name the line, also when an address appears twice in the file.
/// Most associations one bulk file may hold (one transaction, one batch of map writes).
pub const MAX_BULK_ENTRIES: usize = 1 << 20;

pub fn parse_bulk(text: &str) -> Result<Vec<BulkEntry>> {
    use std::collections::HashMap;

    let mut out: Vec<BulkEntry> = Vec::new();
    let mut floating_seen: HashMap<Ipv4Addr, usize> = HashMap::new();
    let mut fixed_seen: HashMap<Ipv4Addr, usize> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split_once('#').map_or(raw, |(c, _)| c);
        let fields: Vec<&str> = content.split_whitespace().collect();
        let (floating, fixed, instance) = match fields[..] {
            [] => continue,
            [f, x] => (f, x, None),
            [f, x, inst] => (f, x, Some(inst.to_owned())),
            _ => bail!(
                "line {line}: expected FLOATING FIXED [INSTANCE], found {} fields",
                fields.len()
            ),
        };
        if out.len() == MAX_BULK_ENTRIES {
            bail!("line {line}: more than {MAX_BULK_ENTRIES} associations in one file; split it");
        }
        let floating = parse_ipv4(floating).with_context(|| format!("line {line}"))?;
        let fixed = parse_ipv4(fixed).with_context(|| format!("line {line}"))?;
        if let Some(first) = floating_seen.insert(floating, line) {
            bail!("line {line}: floating IP {floating} already appears on line {first}");
        }
        if let Some(first) = fixed_seen.insert(fixed, line) {
            bail!("line {line}: fixed IP {fixed} already appears on line {first}");
        }
        out.push(BulkEntry {
            line,
            floating,
            fixed,
            instance,
        });
    }
    Ok(out)
}

/// The first and last address of `addr/len`.
pub fn prefix_span(addr: Ipv4Addr, len: u8) -> (Ipv4Addr, Ipv4Addr) {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    };
    let first = u32::from(addr) & mask;
    (Ipv4Addr::from(first), Ipv4Addr::from(first | !mask))
}

/// Blocks that can never hold a floating IP: "this network", loopback, link-local, multicast,
/// reserved and limited broadcast.
pub const NEVER_FLOATING: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn pool(ranges: &[&str], excludes: &[&str]) -> PoolRanges {
        PoolRanges::parse(ranges, excludes).unwrap()
    }

    fn err(ranges: &[&str], excludes: &[&str]) -> String {
        format!("{:#}", PoolRanges::parse(ranges, excludes).unwrap_err())
    }

    /// Every usable address, by brute force (small pools only).
    fn enumerate(p: &PoolRanges) -> BTreeSet<u32> {
        p.usable_intervals()
            .into_iter()
            .flat_map(|(a, b)| u32::from(a)..=u32::from(b))
            .collect()
    }

    /// The address set the trie entries describe, by brute force.
    fn reassemble(p: &PoolRanges) -> BTreeSet<u32> {
        let mut set = BTreeSet::new();
        let entries = p.trie_entries();
        for e in entries.iter().filter(|e| !e.excluded) {
            let lo = u32::from(e.addr);
            let hi = lo | !mask(e.len);
            set.extend(lo..=hi);
        }
        for e in entries.iter().filter(|e| e.excluded) {
            assert_eq!(e.len, 32);
            set.remove(&u32::from(e.addr));
        }
        set
    }

    #[test]
    fn parses_addresses_strictly() {
        assert_eq!(parse_ipv4("203.0.113.5").unwrap(), ip("203.0.113.5"));
        for bad in [
            "010.0.0.1",
            "1.2.3",
            "1.2.3.4.5",
            "256.0.0.1",
            "",
            "a.b.c.d",
            "1.2.3.4/32",
        ] {
            let e = format!("{:#}", parse_ipv4(bad).unwrap_err());
            assert_eq!(e, format!("invalid IPv4 address '{bad}'"));
        }
    }

    #[test]
    fn parses_cidrs() {
        assert_eq!(
            RangeSpec::parse("203.0.113.0/24").unwrap(),
            RangeSpec::Cidr {
                network: ip("203.0.113.0"),
                len: 24
            }
        );
        assert_eq!(RangeSpec::parse("0.0.0.0/0").unwrap().last(), u32::MAX);
        assert_eq!(
            RangeSpec::parse("203.0.113.5/32").unwrap().first(),
            u32::from(ip("203.0.113.5"))
        );
        assert_eq!(
            RangeSpec::parse("203.0.113.5/24").unwrap_err().to_string(),
            "203.0.113.5/24 has host bits set; did you mean 203.0.113.0/24"
        );
        for bad in [
            "203.0.113.0/33",
            "203.0.113.0/",
            "203.0.113.0/+8",
            "203.0.113.0/a",
            "1.2.3/8",
        ] {
            assert!(RangeSpec::parse(bad).is_err(), "{bad}");
        }
        assert!(
            format!("{:#}", RangeSpec::parse("203.0.113.0/33").unwrap_err()).contains("0 to 32")
        );
    }

    #[test]
    fn parses_spans() {
        let s = RangeSpec::parse("198.51.100.10-198.51.100.20").unwrap();
        assert_eq!(s.to_string(), "198.51.100.10-198.51.100.20");
        assert!(RangeSpec::parse("198.51.100.5-198.51.100.5").is_ok());
        let e = RangeSpec::parse("198.51.100.20-198.51.100.10")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("first address 198.51.100.20 is above last address 198.51.100.10"),
            "{e}"
        );
        assert!(RangeSpec::parse("198.51.100.20-").is_err());
        assert!(
            RangeSpec::parse("198.51.100.20")
                .unwrap_err()
                .to_string()
                .contains("FIRST-LAST")
        );
    }

    #[test]
    fn cidr_leaves_out_network_and_broadcast() {
        let p = pool(&["203.0.113.0/24"], &[]);
        assert_eq!(p.total(), 254);
        assert!(!p.contains(ip("203.0.113.0")));
        assert!(p.contains(ip("203.0.113.1")));
        assert!(p.contains(ip("203.0.113.254")));
        assert!(!p.contains(ip("203.0.113.255")));
        assert!(!p.contains(ip("203.0.114.1")));
        assert!(
            p.covers(ip("203.0.113.0"))
                && p.covers(ip("203.0.113.255"))
                && !p.covers(ip("203.0.114.0"))
        );
        assert_eq!(pool(&["203.0.113.0/30"], &[]).total(), 2);
    }

    #[test]
    fn slash_31_and_32_keep_every_address() {
        let p = pool(&["203.0.113.0/31"], &[]);
        assert_eq!(p.total(), 2);
        assert!(p.contains(ip("203.0.113.0")) && p.contains(ip("203.0.113.1")));
        let p = pool(&["203.0.113.7/32"], &[]);
        assert_eq!(p.total(), 1);
        assert!(p.contains(ip("203.0.113.7")));
        assert_eq!(p.lowest_free(&[]), Some(ip("203.0.113.7")));
    }

    #[test]
    fn slash_0_is_handled_without_enumerating() {
        let p = pool(&["0.0.0.0/0"], &[]);
        assert_eq!(p.total(), (1u64 << 32) - 2);
        assert!(!p.contains(ip("0.0.0.0")) && !p.contains(ip("255.255.255.255")));
        assert_eq!(
            p.lowest_free(&[ip("0.0.0.1"), ip("0.0.0.2")]),
            Some(ip("0.0.0.3"))
        );
        assert_eq!(
            p.trie_entries(),
            vec![
                TrieEntry {
                    addr: ip("0.0.0.0"),
                    len: 0,
                    excluded: false
                },
                TrieEntry {
                    addr: ip("0.0.0.0"),
                    len: 32,
                    excluded: true
                },
                TrieEntry {
                    addr: ip("255.255.255.255"),
                    len: 32,
                    excluded: true
                },
            ]
        );
        let everything = pool(&["0.0.0.0-255.255.255.255"], &[]);
        assert_eq!(everything.total(), 1 << 32);
        assert_eq!(everything.trie_entries().len(), 1);
    }

    #[test]
    fn excludes() {
        let p = pool(
            &["203.0.113.0/29"],
            &["203.0.113.1", "203.0.113.3", "203.0.113.0"],
        );
        assert_eq!(p.total(), 6 - 2);
        assert_eq!(p.excludes_text(), "203.0.113.0,203.0.113.1,203.0.113.3");
        assert_eq!(
            enumerate(&p),
            [2, 4, 5, 6]
                .iter()
                .map(|x| u32::from(ip("203.0.113.0")) + x)
                .collect()
        );
        assert!(
            err(&["203.0.113.0/29"], &["203.0.113.9"]).contains("203.0.113.9 is not in any range")
        );
        assert!(
            err(&["203.0.113.0/30"], &["203.0.113.1", "203.0.113.2"]).contains("no usable address")
        );
        assert!(err(&["203.0.113.5-203.0.113.5"], &["203.0.113.5"]).contains("no usable address"));
        assert!(
            err(&["203.0.113.0/30"], &["203.0.113.x"])
                .contains("invalid IPv4 address '203.0.113.x'")
        );
        assert!(err(&[], &[]).contains("at least one range"));
        assert_eq!(
            err(
                &["203.0.113.0/29"],
                &["203.0.113.1", "203.0.113.3", "203.0.113.1"]
            ),
            "excluded address 203.0.113.1 is given twice"
        );
    }

    #[test]
    fn ranges_within_a_pool_must_not_overlap() {
        let e = err(&["203.0.113.0/24", "203.0.113.200-203.0.114.10"], &[]);
        assert_eq!(
            e,
            "range 203.0.113.200-203.0.114.10 overlaps range 203.0.113.0/24"
        );
        // Adjacent is fine and merges into one extent.
        let p = pool(
            &["203.0.113.128-203.0.113.255", "203.0.113.0-203.0.113.127"],
            &[],
        );
        assert_eq!(p.total(), 256);
        assert_eq!(
            p.ranges_text(),
            "203.0.113.0-203.0.113.127,203.0.113.128-203.0.113.255"
        );
        assert_eq!(
            p.trie_entries(),
            vec![TrieEntry {
                addr: ip("203.0.113.0"),
                len: 24,
                excluded: false
            }]
        );
    }

    #[test]
    fn stored_form_round_trips() {
        let p = pool(
            &["198.51.100.10-198.51.100.20", "203.0.113.0/24"],
            &["203.0.113.9"],
        );
        let back = PoolRanges::from_stored(&p.ranges_text(), &p.excludes_text()).unwrap();
        assert_eq!(p, back);
        assert_eq!(p.to_string(), "198.51.100.10-198.51.100.20,203.0.113.0/24");
    }

    #[test]
    fn overlap_between_pools() {
        let a = pool(&["203.0.113.0/25"], &[]);
        let b = pool(&["203.0.113.128/25"], &[]);
        let c = pool(&["203.0.113.100-203.0.113.130"], &[]);
        let d = pool(&["10.0.0.0/8", "203.0.113.127/32"], &[]);
        assert!(!a.overlaps(&b) && !b.overlaps(&a));
        assert!(a.overlaps(&c) && c.overlaps(&a) && b.overlaps(&c) && c.overlaps(&b));
        assert!(a.overlaps(&d) && d.overlaps(&a) && !b.overlaps(&d));
        assert!(a.overlaps(&a));
        // Network addresses count: they are in the pool's trie prefix.
        let e = pool(&["203.0.113.0-203.0.113.0"], &[]);
        assert!(a.overlaps(&e));
    }

    #[test]
    fn lowest_free_walks_ranges_and_allocations_in_order() {
        let p = pool(
            &["203.0.113.0/29", "198.51.100.10-198.51.100.11"],
            &["198.51.100.10"],
        );
        let v = |xs: &[&str]| xs.iter().map(|s| ip(s)).collect::<Vec<_>>();
        assert_eq!(p.lowest_free(&[]), Some(ip("198.51.100.11")));
        assert_eq!(
            p.lowest_free(&v(&["198.51.100.11"])),
            Some(ip("203.0.113.1"))
        );
        assert_eq!(
            p.lowest_free(&v(&[
                "10.0.0.1",
                "198.51.100.11",
                "198.51.100.11",
                "203.0.113.1",
                "203.0.113.2"
            ])),
            Some(ip("203.0.113.3"))
        );
        // A gap in the middle is found first.
        assert_eq!(
            p.lowest_free(&v(&["198.51.100.11", "203.0.113.1", "203.0.113.3"])),
            Some(ip("203.0.113.2"))
        );
        let all: Vec<Ipv4Addr> = enumerate(&p).into_iter().map(Ipv4Addr::from).collect();
        assert_eq!(p.lowest_free(&all), None);
        assert_eq!(p.lowest_free(&all[..all.len() - 1]), all.last().copied());
        // Allocated addresses that are not usable (a hole, or outside the pool) right after a
        // full interval do not hide the next interval's allocations (found by the fuzzer).
        let holed = pool(&["203.0.113.0/24"], &["203.0.113.7"]);
        let every: Vec<Ipv4Addr> = (0..=255).map(|i| Ipv4Addr::new(203, 0, 113, i)).collect();
        assert_eq!(holed.lowest_free(&every), None);
        assert_eq!(holed.lowest_free(&every[..9]), Some(ip("203.0.113.9")));
        let gap = pool(&["10.0.0.0-10.0.0.9", "10.0.0.20-10.0.0.29"], &[]);
        let run: Vec<Ipv4Addr> = (0..=20).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        assert_eq!(gap.lowest_free(&run), Some(ip("10.0.0.21")));
        // Big pool, big allocation list: no enumeration of the pool.
        let big = pool(&["10.0.0.0/8"], &[]);
        let taken: Vec<Ipv4Addr> = (1..100_000u32)
            .map(|i| Ipv4Addr::from(u32::from(ip("10.0.0.0")) + i))
            .collect();
        assert_eq!(
            big.lowest_free(&taken),
            Some(Ipv4Addr::from(u32::from(ip("10.0.0.0")) + 100_000))
        );
    }

    #[test]
    fn trie_entries_of_a_cidr_keep_the_prefix_and_punch_holes() {
        let p = pool(&["203.0.113.0/24"], &["203.0.113.7"]);
        assert_eq!(
            p.trie_entries(),
            vec![
                TrieEntry {
                    addr: ip("203.0.113.0"),
                    len: 24,
                    excluded: false
                },
                TrieEntry {
                    addr: ip("203.0.113.0"),
                    len: 32,
                    excluded: true
                },
                TrieEntry {
                    addr: ip("203.0.113.7"),
                    len: 32,
                    excluded: true
                },
                TrieEntry {
                    addr: ip("203.0.113.255"),
                    len: 32,
                    excluded: true
                },
            ]
        );
    }

    #[test]
    fn trie_entries_of_a_span_are_minimal() {
        let p = pool(&["198.51.100.1-198.51.100.14"], &[]);
        let got: Vec<String> = p.trie_entries().iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "198.51.100.1/32",
                "198.51.100.2/31",
                "198.51.100.4/30",
                "198.51.100.8/30",
                "198.51.100.12/31",
                "198.51.100.14/32"
            ]
        );
        // A /32 prefix that is excluded appears once, as the hole.
        let p = pool(&["198.51.100.3-198.51.100.5"], &["198.51.100.3"]);
        let got: Vec<String> = p.trie_entries().iter().map(ToString::to_string).collect();
        assert_eq!(got, ["198.51.100.4/31", "198.51.100.3/32 (excluded)"]);
    }

    #[test]
    fn trie_entries_reassemble_exactly_the_pool() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["203.0.113.0/24"], &[]),
            (&["203.0.113.0/31"], &[]),
            (&["203.0.113.9/32"], &[]),
            (
                &["203.0.113.0/28", "203.0.113.16-203.0.113.40"],
                &["203.0.113.16", "203.0.113.40"],
            ),
            (
                &["198.51.100.3-198.51.100.200"],
                &["198.51.100.3", "198.51.100.100", "198.51.100.127"],
            ),
            (
                &["10.0.0.255-10.0.2.0", "10.0.3.0/25", "10.0.3.128/25"],
                &["10.0.3.128"],
            ),
            (&["192.0.2.1-192.0.2.1", "192.0.2.3-192.0.2.3"], &[]),
            (&["255.255.255.0/24"], &[]),
            (&["0.0.0.0-0.0.1.7"], &["0.0.0.0"]),
        ];
        for (ranges, excludes) in cases {
            let p = pool(ranges, excludes);
            let usable = enumerate(&p);
            assert_eq!(usable.len() as u64, p.total(), "{ranges:?}");
            assert_eq!(reassemble(&p), usable, "{ranges:?} {excludes:?}");
            for a in &usable {
                assert!(p.contains(Ipv4Addr::from(*a)));
            }
            // No two prefixes overlap (each is a separate trie key on the same pool).
            let keys: BTreeSet<_> = p.trie_entries().iter().map(|e| (e.addr, e.len)).collect();
            assert_eq!(keys.len(), p.trie_entries().len());
        }
    }

    #[test]
    fn cidr_split_exhaustive_on_small_intervals() {
        for lo in 0u32..40 {
            for hi in lo..40 {
                let mut out = Vec::new();
                cidrs(lo, hi, &mut out);
                let mut covered = Vec::new();
                for (a, len) in &out {
                    assert_eq!(a & !mask(*len), 0, "unaligned {a}/{len}");
                    covered.extend(*a..=(a | !mask(*len)));
                }
                assert_eq!(covered, (lo..=hi).collect::<Vec<_>>());
                // Minimal: no two neighbours could merge into one aligned block.
                for w in out.windows(2) {
                    let ((a, la), (_, lb)) = (w[0], w[1]);
                    assert!(!(la == lb && la > 0 && a & !mask(la - 1) == 0), "{out:?}");
                }
            }
        }
        let mut out = Vec::new();
        cidrs(u32::MAX, u32::MAX, &mut out);
        assert_eq!(out, [(u32::MAX, 32)]);
    }

    #[test]
    fn bulk_file() {
        let text = "# floating fixed instance\n\n203.0.113.1 10.0.0.1 web-1\n  203.0.113.2\t10.0.0.2 # db\n";
        let got = parse_bulk(text).unwrap();
        assert_eq!(
            got,
            vec![
                BulkEntry {
                    line: 3,
                    floating: ip("203.0.113.1"),
                    fixed: ip("10.0.0.1"),
                    instance: Some("web-1".into())
                },
                BulkEntry {
                    line: 4,
                    floating: ip("203.0.113.2"),
                    fixed: ip("10.0.0.2"),
                    instance: None
                },
            ]
        );
        assert!(parse_bulk("").unwrap().is_empty());
        let e = |t: &str| format!("{:#}", parse_bulk(t).unwrap_err());
        assert_eq!(
            e("203.0.113.1 10.0.0.1\n203.0.113.2\n"),
            "line 2: expected FLOATING FIXED [INSTANCE], found 1 fields"
        );
        assert_eq!(
            e("\n203.0.113.1 10.0.0.1 a b\n"),
            "line 2: expected FLOATING FIXED [INSTANCE], found 4 fields"
        );
        assert_eq!(
            e("203.0.113.1 10.0.0.300\n"),
            "line 1: invalid IPv4 address '10.0.0.300'"
        );
        assert_eq!(
            e("203.0.113.1 10.0.0.1\n203.0.113.1 10.0.0.2\n"),
            "line 2: floating IP 203.0.113.1 already appears on line 1"
        );
        assert_eq!(
            e("203.0.113.1 10.0.0.1\n203.0.113.2 10.0.0.1\n"),
            "line 2: fixed IP 10.0.0.1 already appears on line 1"
        );
    }
}
