//! Replays the fuzz seed corpus (`fuzz/corpus/<target>/`) and the saved crash inputs
//! (`fuzz/regressions/<target>/`) through the property checks the libFuzzer targets run, so
//! that the normal test suite keeps them without libFuzzer.

use std::{fs, panic, path::Path};

use floatip::fuzzing;

fn replay(target: &str, check: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for kind in ["corpus", "regressions"] {
        let dir = fuzz.join(kind).join(target);
        // regressions/<target> exists only once a crash has been saved there.
        let Ok(entries) = fs::read_dir(&dir) else {
            assert_eq!(kind, "regressions", "{} is missing", dir.display());
            continue;
        };
        files.extend(entries.map(|e| e.unwrap().path()));
    }
    files.sort();
    // A handful of seeds at least: an empty or moved corpus must not pass silently.
    assert!(files.len() >= 5, "only {} inputs for {target}", files.len());
    let failed: Vec<String> = files
        .iter()
        .filter(|file| {
            let data = fs::read(file).unwrap();
            panic::catch_unwind(|| check(&data)).is_err()
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(failed.is_empty(), "properties fail on {failed:#?}");
}

#[test]
fn addr_corpus() {
    replay("addr", fuzzing::check_addr);
}

#[test]
fn bulk_corpus() {
    replay("bulk", fuzzing::check_bulk);
}
