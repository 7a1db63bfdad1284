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

#[test]
fn tags_descriptions_and_pool_set() {
    netns::require_root();
    let work = Work::new("tags");
    let dir = work.0.clone();
    let ok = |args: &[&str]| work.ok(args);
    ok(&["pool", "create", "p", "--range", "192.0.2.8-192.0.2.11"]);
    for _ in 0..3 {
        ok(&["ip", "create", "p"]);
    }
    ok(&["ip", "create", "p", "--project", "other"]);
    let tags = |key: &str| ok(&["ip", "show", key, "-f", "value", "-c", "tags"]);

    // `ip set` adds (a tag it has is kept), by address or id, and prints the record.
    let shown = ok(&["ip", "set", "192.0.2.8", "--tag", "web", "--tag", "blue"]);
    assert!(
        shown
            .lines()
            .any(|l| l.split_whitespace().eq(["tags", "blue,web"])),
        "{shown}"
    );
    ok(&[
        "ip",
        "set",
        "1",
        "--tag",
        "web",
        "--description",
        "front end",
    ]);
    assert_eq!(tags("192.0.2.8"), "blue,web\n");
    ok(&["ip", "set", "2", "--tag", "web"]);
    ok(&["ip", "set", "192.0.2.10", "--tag", "db"]);
    let json = ok(&[
        "ip",
        "show",
        "1",
        "-f",
        "json",
        "-c",
        "tags",
        "-c",
        "description",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"tags": ["blue", "web"], "description": "front end"})
    );

    // --tags: all of them; --any-tags: at least one.
    let listed = |filter: &[&str]| {
        let args = [&["ip", "list", "-f", "value", "-c", "id"][..], filter].concat();
        ok(&args)
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(listed(&["--tags", "web"]), ["1", "2"]);
    assert_eq!(listed(&["--tags", "web,blue"]), ["1"]);
    assert_eq!(listed(&["--any-tags", "blue,db"]), ["1", "3"]);
    assert_eq!(
        listed(&["--tags", "web", "--any-tags", "db"]),
        Vec::<String>::new()
    );
    assert_eq!(listed(&["--floating-ip-address", "192.0.2.9"]), ["2"]);
    // --not-tags: not all of them; --not-any-tags: none of them (Neutron's not-tags,
    // not-tags-any).
    assert_eq!(listed(&["--not-tags", "web,blue"]), ["2", "3", "4"]);
    assert_eq!(listed(&["--not-tags", "web"]), ["3", "4"]);
    assert_eq!(listed(&["--not-any-tags", "blue,db"]), ["2", "4"]);
    assert_eq!(
        listed(&["--tags", "web", "--not-any-tags", "blue"]),
        ["2"],
        "the filters combine"
    );
    // The usual table keeps its columns; --long shows the tags.
    let long = ok(&["ip", "list", "--long", "--tags", "blue"]);
    assert!(long.lines().next().unwrap().contains("tags"), "{long}");
    assert!(
        long.contains("blue,web") && long.contains("front end"),
        "{long}"
    );

    // `ip unset`: a tag, every tag, the description.
    ok(&["ip", "unset", "1", "--tag", "blue", "--tag", "absent"]);
    assert_eq!(tags("1"), "web\n");
    ok(&["ip", "unset", "192.0.2.8", "--all-tag", "--description"]);
    assert_eq!(tags("1"), "\n");
    assert_eq!(
        ok(&["ip", "show", "1", "-f", "json", "-c", "description"]),
        "{\n  \"description\": null\n}\n"
    );
    // --no-tag replaces them.
    ok(&["ip", "set", "2", "--no-tag", "--tag", "new"]);
    assert_eq!(tags("2"), "new\n");

    let shown = ok(&["pool", "set", "p", "--description", "the public range"]);
    assert!(shown.contains("the public range"), "{shown}");
    assert_eq!(
        ok(&["pool", "list", "-f", "value", "-c", "description"]),
        "the public range\n"
    );
    // `pool create --description`.
    ok(&[
        "pool",
        "create",
        "q",
        "--range",
        "198.51.100.8/30",
        "--description",
        "the second range",
    ]);
    assert_eq!(
        ok(&["pool", "show", "q", "-f", "value", "-c", "description"]),
        "the second range\n"
    );

    // Bad input: one line, its kind's exit code, nothing changed (not even the valid part).
    let state = || ok(&["ip", "list", "-f", "json"]) + &ok(&["pool", "list", "-f", "json"]);
    let before = state();
    let long_text = "x".repeat(256);
    let long_tag = "t".repeat(256);
    for (args, code, says) in [
        (
            &["ip", "set", "192.0.2.99", "--tag", "a"][..],
            3,
            "192.0.2.99 not found",
        ),
        (
            &["ip", "set", "77", "--tag", "a"],
            3,
            "floating IP 77 not found",
        ),
        (
            &["ip", "set", "4", "--tag", "a", "--project", "demo"],
            3,
            "not found",
        ),
        (&["ip", "unset", "192.0.2.99", "--all-tag"], 3, "not found"),
        (
            &["ip", "set", "1", "--tag", "ok", "--tag", "two words"],
            2,
            "tag",
        ),
        (&["ip", "set", "1", "--tag", "ok", "--tag", "a,b"], 2, "','"),
        (
            &["ip", "set", "1", "--tag", "ok", "--tag", "tab\there"],
            2,
            "tag",
        ),
        (&["ip", "set", "1", "--tag", &long_tag], 2, "1 to 255"),
        (
            &[
                "ip",
                "set",
                "1",
                "--description",
                "ok",
                "--tag",
                "d",
                "--tag",
                "d",
            ],
            2,
            "given twice",
        ),
        (
            &["ip", "unset", "1", "--tag", "d", "--tag", "d"],
            2,
            "given twice",
        ),
        (
            &["ip", "set", "1", "--description", &long_text],
            2,
            "at most 255",
        ),
        (
            &["ip", "set", "1", "--description", "bell\u{7}"],
            2,
            "control",
        ),
        (
            &["ip", "set", "1", "--description", "rtl\u{202e}"],
            2,
            "format",
        ),
        (
            &["pool", "set", "nope", "--description", "x"],
            3,
            "pool nope does not exist",
        ),
        (
            &["pool", "set", "p", "--description", "nul\u{1}"],
            2,
            "control",
        ),
        (&["ip", "list", "--fixed-ip-address", "10.0.0"], 2, "10.0.0"),
        (
            &[
                "pool",
                "create",
                "r",
                "--range",
                "198.51.100.64/30",
                "--description",
                "nul\u{1}",
            ],
            2,
            "control",
        ),
    ] {
        let out = floatip(&dir, args);
        assert_eq!(
            out.status.and_then(|s| s.code()),
            Some(code),
            "{args:?}: {out}"
        );
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {out}");
        assert!(
            out.stderr.contains(says),
            "{args:?} should say {says:?}: {out}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: {out}");
    }
    let tags: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
    let mut args = vec!["ip", "set", "3"];
    for t in &tags {
        args.extend(["--tag", t]);
    }
    let out = floatip(&dir, &args);
    assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{out}");
    assert!(out.stderr.contains("at most 64"), "{out}");
    assert_eq!(state(), before, "a refused command changed the state");
}
