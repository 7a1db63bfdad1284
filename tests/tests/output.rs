//! Output styles of the real `floatip` binary, as the `openstack` CLI has them: `-f value`,
//! `-f csv`, `-f yaml`, `-c COLUMN`, `--long`, `--sort-column` with either direction, and an
//! unknown column refused in one line. Database only: runs in an empty network namespace.

use std::path::Path;

use tests::netns::{self, Output};

fn floatip(dir: &Path, args: &[&str]) -> Output {
    let bin = netns::floatip_binary().to_string_lossy().into_owned();
    let bpffs = dir.join("bpf").to_string_lossy().into_owned();
    let state = dir.join("state.db").to_string_lossy().into_owned();
    let mut argv = vec!["unshare", "-n", &bin, "--bpffs", &bpffs, "--state", &state];
    argv.extend_from_slice(args);
    netns::run(netns::host_command(&argv), netns::EXEC_TIMEOUT)
}

/// A state directory of its own, removed on drop.
struct Work(std::path::PathBuf);

impl Work {
    fn new(tag: &str) -> Work {
        let dir = std::env::temp_dir().join(format!("floatip-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Work(dir)
    }

    /// `floatip ARGS`, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = floatip(&self.0, args);
        assert!(out.success(), "{out}");
        out.stdout
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn styles_columns_and_sorting() {
    netns::require_root();
    let work = Work::new("output");
    let dir = work.0.clone();
    let ok = |args: &[&str]| work.ok(args);
    ok(&["pool", "create", "p", "--range", "192.0.2.8-192.0.2.10"]);
    ok(&["ip", "create", "p", "--address", "192.0.2.10"]);
    ok(&[
        "ip",
        "create",
        "p",
        "--address",
        "192.0.2.9",
        "--description",
        "say \"hi\"",
    ]);
    let col = ["-c", "floating_ip_address"];
    assert_eq!(
        ok(&[&["ip", "list", "-f", "value"][..], &col].concat()),
        "192.0.2.9\n192.0.2.10\n"
    );
    assert_eq!(
        ok(&[
            &["ip", "list", "-f", "value", "--sort-column", "id"][..],
            &col
        ]
        .concat()),
        "192.0.2.10\n192.0.2.9\n"
    );
    assert_eq!(
        ok(&[
            &[
                "ip",
                "list",
                "-f",
                "value",
                "--sort-column",
                "floating_ip_address"
            ][..],
            &["--sort-descending"],
            &col
        ]
        .concat()),
        "192.0.2.10\n192.0.2.9\n"
    );
    assert_eq!(
        ok(&[
            "ip",
            "list",
            "-f",
            "csv",
            "-c",
            "floating_ip_address",
            "-c",
            "description"
        ]),
        "\"floating_ip_address\",\"description\"\n\"192.0.2.9\",\"say \"\"hi\"\"\"\n\"192.0.2.10\",\"\"\n"
    );
    assert_eq!(
        ok(&[
            "ip",
            "show",
            "192.0.2.9",
            "-f",
            "yaml",
            "-c",
            "status",
            "-c",
            "pool"
        ]),
        "status: \"DOWN\"\npool: \"p\"\n"
    );
    assert_eq!(
        ok(&["pool", "show", "p", "-f", "value", "-c", "free"]),
        "1\n"
    );
    let long = ok(&["ip", "list", "--long"]);
    assert!(
        long.lines().next().unwrap().contains("created_at"),
        "{long}"
    );
    let out = floatip(&dir, &["ip", "list", "-c", "nope"]);
    assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    assert!(out.stderr.contains("unknown column nope"), "{out}");
}

#[test]
fn ids_and_several_deletes() {
    netns::require_root();
    let work = Work::new("ids");
    let dir = work.0.clone();
    let ok = |args: &[&str]| work.ok(args);
    ok(&["pool", "create", "p", "--range", "192.0.2.8-192.0.2.12"]);
    for _ in 0..4 {
        ok(&["ip", "create", "p"]);
    }
    ok(&["ip", "create", "p", "--project", "other"]);
    // `ip show` takes the id `ip list` prints as well as the address.
    assert_eq!(
        ok(&[
            "ip",
            "show",
            "2",
            "-f",
            "value",
            "-c",
            "floating_ip_address"
        ]),
        "192.0.2.9\n"
    );
    assert_eq!(
        ok(&["ip", "show", "192.0.2.9", "-f", "value", "-c", "id"]),
        "2\n"
    );
    let out = floatip(&dir, &["ip", "show", "5", "--project", "demo"]);
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(3),
        "another project's id: {out}"
    );
    let out = floatip(&dir, &["ip", "show", "web1"]);
    assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");

    // Several at once: each reported, the missing one named, the command fails.
    let out = floatip(
        &dir,
        &["ip", "delete", "1", "192.0.2.10", "192.0.2.99", "4"],
    );
    assert_eq!(out.status.and_then(|s| s.code()), Some(3), "{out}");
    assert_eq!(
        out.stdout,
        "deleted 192.0.2.8 (1)\ndeleted 192.0.2.10 (3)\ndeleted 192.0.2.11 (4)\n"
    );
    assert!(
        out.stderr.contains("192.0.2.99") && out.stderr.contains("1 of 4"),
        "{out}"
    );
    assert_eq!(ok(&["ip", "list", "-f", "value", "-c", "id"]), "2\n5\n");
    // One that fails alone: one line, its own kind.
    let out = floatip(&dir, &["ip", "delete", "1"]);
    assert_eq!(out.status.and_then(|s| s.code()), Some(3), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
}
