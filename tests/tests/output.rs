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

#[test]
fn styles_columns_and_sorting() {
    netns::require_root();
    let dir = std::env::temp_dir().join(format!("floatip-output-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    struct Gone<'a>(&'a Path);
    impl Drop for Gone<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0);
        }
    }
    let _gone = Gone(&dir);
    let ok = |args: &[&str]| {
        let out = floatip(&dir, args);
        assert!(out.success(), "{out}");
        out.stdout
    };
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
