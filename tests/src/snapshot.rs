//! What a refused command must leave as it was, for the tests that check "no change to
//! state": the pinned maps and links read with bpftool (independently of floatip's own map
//! code), the control plane's view of the database, and the database file's bytes.

use std::{collections::BTreeMap, fs};

use floatip_common::maps as map_names;
use serde_json::Value;

use crate::netns::{self, Lab};

/// The database's bytes (the main file and whatever WAL/SHM files exist):
/// a refused command must not write a byte.
pub fn db_bytes(lab: &Lab) -> BTreeMap<String, Vec<u8>> {
    let dir = lab.state.parent().expect("the state has a directory");
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .flatten()
        .map(|e| {
            let p = e.path();
            let bytes = fs::read(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
            (p.display().to_string(), bytes)
        })
        .collect()
}

/// The control plane's view (pools, addresses, quotas) as JSON text.
pub fn db_view(lab: &Lab) -> String {
    ["pool", "ip", "quota"]
        .iter()
        .map(|what| {
            let verb = if *what == "quota" { "show" } else { "list" };
            lab.json(&[what, verb]).to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The pinned maps and links as the kernel holds them, read with bpftool
/// (independently of floatip's own map code): every entry of every map
/// but the packet counters, and each link's program id.
pub fn pinned_view(lab: &Lab) -> String {
    let mut s = String::new();
    for name in map_names::ALL {
        if [
            map_names::ASSOC_STATS,
            map_names::ASSOC_STATS_SHARED,
            map_names::OUTCOMES,
        ]
        .contains(&name)
        {
            continue;
        }
        let path = lab.bpffs.join("maps").join(name);
        let out = netns::run(
            netns::host_command(&[
                "bpftool",
                "-j",
                "map",
                "dump",
                "pinned",
                &path.to_string_lossy(),
            ]),
            netns::EXEC_TIMEOUT,
        );
        let mut entries: Vec<String> = match serde_json::from_str::<Value>(&out.stdout) {
            Ok(Value::Array(items)) => items.iter().map(Value::to_string).collect(),
            _ => vec![format!("dump failed: {}", out.all().trim())],
        };
        entries.sort();
        s += &format!("{name}: {}\n", entries.join(" "));
    }
    for (pin, link) in pinned_links(lab) {
        s += &format!("link {pin}: prog {}\n", link["prog_id"]);
    }
    s
}

/// Every pinned link (pin name -> `bpftool link show` JSON: `id`, `prog_id`).
pub fn pinned_links(lab: &Lab) -> BTreeMap<String, Value> {
    fs::read_dir(lab.bpffs.join("links"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let pin = e.path();
            let out = netns::run(
                netns::host_command(&[
                    "bpftool",
                    "-j",
                    "link",
                    "show",
                    "pinned",
                    &pin.to_string_lossy(),
                ]),
                netns::EXEC_TIMEOUT,
            );
            let v = serde_json::from_str(&out.stdout).unwrap_or(Value::String(out.all()));
            (e.file_name().to_string_lossy().into_owned(), v)
        })
        .collect()
}

/// What a refused command must leave as it was: maps and links, the
/// control plane's view of the database, and the database's bytes.
pub struct Snapshot {
    pub maps: String,
    pub db: String,
    pub bytes: BTreeMap<String, Vec<u8>>,
}

impl Snapshot {
    pub fn take(lab: &Lab) -> Snapshot {
        Snapshot {
            maps: pinned_view(lab),
            db: db_view(lab),
            bytes: db_bytes(lab),
        }
    }

    /// What differs now, one description per part.
    pub fn changes(&self, lab: &Lab) -> Vec<String> {
        let mut changes = Vec::new();
        // The bytes first: the views below run commands on the database.
        if db_bytes(lab) != self.bytes {
            changes.push("the database file changed".to_string());
        }
        for (what, before, after) in [
            ("the maps or links", &self.maps, pinned_view(lab)),
            ("the database", &self.db, db_view(lab)),
        ] {
            if *before != after {
                changes.push(format!(
                    "{what} changed:\nbefore:\n{before}\nafter:\n{after}"
                ));
            }
        }
        changes
    }
}
