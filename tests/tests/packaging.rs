//! The Debian package of `cargo xtask dist` (which `cargo xtask test` builds first), installed
//! on this machine with `dpkg -i` as an operator would: the binary answers `--version`, `man`
//! finds its pages, the completions are where bash-completion, zsh and fish look, the
//! installed unit passes `systemd-analyze verify` (a broken copy of it does not, so the check
//! can fail), the configuration is a conffile and the state directory is root's alone. Then
//! `dpkg -r` removes the package and leaves the state directory with its database.
//!
//! The package is purged at the end, also when an assertion fails, and the state directory
//! removed if this test created it; a run left half way (killed) is simply installed over.

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use tests::netns::{self, Output};

const STATE_DIR: &str = "/var/lib/floatip";

fn run(argv: &[&str]) -> Output {
    let mut cmd = netns::host_command(argv);
    // dpkg must never wait for an answer (a conffile question) on a terminal.
    cmd.stdin(std::process::Stdio::null());
    netns::run(cmd, Duration::from_secs(120))
}

fn ok(argv: &[&str]) -> String {
    let out = run(argv);
    assert!(out.success(), "{out}");
    out.stdout
}

/// `target/debian/floatip_<version>-1_<arch>.deb` (cargo-deb's name), or `$FLOATIP_DEB`.
fn package() -> PathBuf {
    if let Some(p) = std::env::var_os("FLOATIP_DEB") {
        return PathBuf::from(p);
    }
    let arch = ok(&["dpkg", "--print-architecture"]);
    // The test executable is target/<profile>/deps/packaging-*.
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap();
    target.join(format!(
        "debian/floatip_{}-1_{}.deb",
        env!("CARGO_PKG_VERSION"),
        arch.trim()
    ))
}

/// Purges the package on drop and removes the state directory if the test made it.
struct Installed {
    state_dir_was_there: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let purge = run(&["dpkg", "--purge", "floatip"]);
        if !purge.success() {
            eprintln!("cleanup: {purge}");
        }
        if !self.state_dir_was_there {
            let _ = fs::remove_dir_all(STATE_DIR);
        }
    }
}

/// `systemd-analyze verify UNIT`; only findings about floatip's unit count (others on the
/// machine may have their own).
fn verify(unit: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .expect("systemd-analyze (package systemd) must be installed");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let about_us = stderr
        .lines()
        .filter(|l| l.contains("floatip"))
        .collect::<Vec<_>>()
        .join("\n");
    (out.status.success() && about_us.is_empty(), stderr)
}

#[test]
fn deb_installs_verifies_and_removes() {
    netns::require_root();
    let deb = package();
    assert!(
        deb.is_file(),
        "{} is missing: build it with `cargo xtask dist` (`cargo xtask test` does)",
        deb.display()
    );
    let deb = deb.to_string_lossy().into_owned();
    let guard = Installed {
        state_dir_was_there: Path::new(STATE_DIR).exists(),
    };
    ok(&["dpkg", "-i", &deb]);

    let version = ok(&["floatip", "--version"]);
    assert_eq!(
        version.trim(),
        format!("floatip {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        ok(&["sh", "-c", "command -v floatip"]).trim(),
        "/usr/bin/floatip"
    );

    // One page for the command and one per subcommand, as `man` finds them.
    for page in [
        "floatip",
        "floatip-ip-set",
        "floatip-agent",
        "floatip-pool-create",
    ] {
        let path = ok(&["man", "-w", page]);
        assert!(
            path.trim()
                .starts_with(&format!("/usr/share/man/man1/{page}.1")),
            "man -w {page}: {path}"
        );
    }
    let page = ok(&["man", "-P", "cat", "floatip-ip-list"]);
    assert!(page.contains("--fixed-ip-address"), "{page}");
    let hidden = run(&["man", "-w", "floatip-gen-docs"]);
    assert!(
        !hidden.success(),
        "the hidden gen-docs has no page: {hidden}"
    );

    // bash loads the completion and registers it for floatip; zsh's and fish's files are
    // the ones their vendor directories expect.
    let complete = ok(&[
        "bash",
        "-c",
        ". /usr/share/bash-completion/completions/floatip && complete -p floatip",
    ]);
    assert!(complete.contains("floatip"), "{complete}");
    let zsh = fs::read_to_string("/usr/share/zsh/vendor-completions/_floatip").unwrap();
    assert!(zsh.starts_with("#compdef floatip"), "{zsh:.80}");
    let fish = fs::read_to_string("/usr/share/fish/vendor_completions.d/floatip.fish").unwrap();
    assert!(fish.contains("complete -c floatip"), "{fish:.200}");

    // The unit as dpkg installed it.
    let files = ok(&["dpkg", "-L", "floatip"]);
    let unit = files
        .lines()
        .find(|l| l.ends_with("/systemd/system/floatip-agent.service"))
        .unwrap_or_else(|| panic!("no unit in the package:\n{files}"));
    let (good, stderr) = verify(Path::new(unit));
    assert!(good, "systemd-analyze verify {unit}:\n{stderr}");
    let text = fs::read_to_string(unit).unwrap();
    assert!(text.contains("ExecStart=/usr/bin/floatip "), "{text}");
    let broken_dir = std::env::temp_dir().join(format!("floatip-unit-{}", std::process::id()));
    fs::create_dir_all(&broken_dir).unwrap();
    let broken = broken_dir.join("floatip-agent.service");
    fs::write(
        &broken,
        text.replace(
            "ExecStart=/usr/bin/floatip",
            "ExecStart=/usr/bin/nonexistent",
        ),
    )
    .unwrap();
    let (broken_passes, _) = verify(&broken);
    let _ = fs::remove_dir_all(&broken_dir);
    assert!(
        !broken_passes,
        "a unit without its binary must fail the check"
    );

    let conffiles = ok(&["dpkg-query", "--control-show", "floatip", "conffiles"]);
    assert!(conffiles.contains("/etc/floatip/agent.toml"), "{conffiles}");

    let meta = fs::metadata(STATE_DIR).unwrap();
    assert!(meta.is_dir());
    if !guard.state_dir_was_there {
        assert_eq!(meta.permissions().mode() & 0o7777, 0o700);
        assert_eq!((meta.uid(), meta.gid()), (0, 0));
        // A database where the agent keeps it, made by the installed binary (in an empty
        // network namespace, with pins nowhere): removing the package must keep it.
        ok(&[
            "unshare",
            "-n",
            "floatip",
            "--bpffs",
            "/nonexistent/floatip-packaging-test",
            "pool",
            "list",
        ]);
        assert!(Path::new(STATE_DIR).join("state.db").is_file());
    }

    ok(&["dpkg", "-r", "floatip"]);
    assert!(!Path::new("/usr/bin/floatip").exists());
    assert!(
        Path::new(STATE_DIR).is_dir(),
        "dpkg -r must leave {STATE_DIR}"
    );
    if !guard.state_dir_was_there {
        assert!(Path::new(STATE_DIR).join("state.db").is_file());
    }
    drop(guard);
}
