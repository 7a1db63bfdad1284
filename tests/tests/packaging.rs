//! `packaging/floatip-agent.service` passes `systemd-analyze verify`, checked against a
//! throw-away root holding the unit, the built binary at the unit's `ExecStart` path and the
//! system's own units; a broken copy must fail the same check (so the check can fail).

use std::{fs, path::Path, process::Command};

use tests::netns;

fn verify(root: &Path) -> std::process::Output {
    let unit = root.join("etc/systemd/system/floatip-agent.service");
    Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg(&unit)
        .output()
        .expect("systemd-analyze (package systemd) must be installed")
}

#[test]
fn systemd_unit_verifies() {
    let unit = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/floatip-agent.service"),
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("floatip-unit-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    for d in ["usr/local/bin", "etc/systemd/system", "usr/lib/systemd"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    // Copies, not links: absolute links would be resolved inside the root.
    let cp = Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(dir.join("usr/lib/systemd/"))
        .status()
        .unwrap();
    assert!(cp.success());
    fs::copy(netns::floatip_binary(), dir.join("usr/local/bin/floatip")).unwrap();
    let path = dir.join("etc/systemd/system/floatip-agent.service");
    fs::write(&path, &unit).unwrap();
    let good = verify(&dir);
    fs::write(
        &path,
        unit.replace("/usr/local/bin/floatip", "/usr/local/bin/nonexistent"),
    )
    .unwrap();
    let broken = verify(&dir);
    let _ = fs::remove_dir_all(&dir);
    assert!(
        // The copied system units may warn about their own links inside the root; only
        // findings about this unit count.
        good.status.success() && !String::from_utf8_lossy(&good.stderr).contains("floatip-agent"),
        "systemd-analyze verify failed:\n{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(
        !broken.status.success(),
        "a unit without its binary must fail the check"
    );
}
