//! `cargo xtask fuzz`: the long fuzz runs. First the coverage-guided (libFuzzer) fuzz of the
//! userspace parsers, a bounded run of each target in `fuzz/`; then the packet fuzz, the `fuzz`
//! binary of the `tests` crate (malformed frames, the reference model, and the differential
//! namespace test against the kernel, `tests::oracle`).

use std::{collections::BTreeSet, fs, path::Path};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{run, setup, util};

/// The targets in `fuzz/fuzz_targets/`.
const TARGETS: [&str; 2] = ["addr", "bulk"];

#[derive(Args)]
pub struct FuzzArgs {
    /// libFuzzer run time of each parser target, in seconds
    #[arg(long, value_name = "N", default_value_t = 60)]
    parser_seconds: u64,
    /// Fuzz only this parser target (repeatable; default: all)
    #[arg(long = "parser", value_name = "TARGET", value_parser = TARGETS)]
    parsers: Vec<String>,
    /// Run only the packet fuzz
    #[arg(long, conflicts_with = "only_parsers")]
    skip_parsers: bool,
    /// Run only the parser fuzz (no eBPF build)
    #[arg(long, conflicts_with = "packet_args")]
    only_parsers: bool,
    /// Passed to the packet fuzz: [--frames N] [--cases N] [--oracle-cases N] [--seed S]
    #[arg(
        value_name = "PACKET_ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    packet_args: Vec<String>,
}

pub fn fuzz(args: &FuzzArgs) -> Result<()> {
    if args.parser_seconds == 0 {
        bail!("--parser-seconds must be at least 1");
    }
    // Every part runs even when one fails, so that a long unattended run reports all it found.
    let mut failures = Vec::new();
    if !args.skip_parsers {
        setup::fuzz_setup()?;
        let targets: Vec<&str> = if args.parsers.is_empty() {
            TARGETS.to_vec()
        } else {
            args.parsers.iter().map(String::as_str).collect()
        };
        for target in targets {
            if let Err(e) = fuzz_parser(target, args.parser_seconds) {
                eprintln!("error: {e:#}");
                failures.push(format!("parser target {target}"));
            }
        }
    }
    if !args.only_parsers
        && let Err(e) = run::run_tests_bin("fuzz", &args.packet_args)
    {
        eprintln!("error: {e:#}");
        failures.push("packet fuzz".to_owned());
    }
    if !failures.is_empty() {
        bail!("fuzzing failed: {}", failures.join(", "));
    }
    Ok(())
}

/// One bounded libFuzzer run of `target`. Fails, naming the saved input, if libFuzzer finds a
/// crash (a failed property check), a timeout or an out-of-memory.
fn fuzz_parser(target: &str, seconds: u64) -> Result<()> {
    let fuzz_dir = util::workspace_root().join("fuzz");
    // libFuzzer adds what it finds to the first corpus directory: a scratch one, so that runs
    // build on each other while the committed seeds stay as written.
    let grown = fuzz_dir.join("target/corpus").join(target);
    let seeds = fuzz_dir.join("corpus").join(target);
    // Made here too so that a crash input can be copied straight into it.
    let regressions = fuzz_dir.join("regressions").join(target);
    for dir in [&grown, &regressions] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let artifacts = fuzz_dir.join("artifacts").join(target);
    let before = file_names(&artifacts);

    let mut cmd = util::nightly_cargo();
    cmd.args(["fuzz", "run", "--fuzz-dir"])
        .arg(&fuzz_dir)
        // Safe Rust only, so ASan would only slow it down. Debug assertions keep overflow
        // checks and the parsers' debug_asserts on.
        .args(["--sanitizer", "none", "--debug-assertions", target])
        .args([&grown, &seeds, &regressions]);
    // An input that takes seconds is a bug too (the pool code must never enumerate a pool).
    cmd.arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-timeout=10");
    let Err(e) = util::run(&mut cmd) else {
        println!("parser fuzz: {target}: {seconds} s, no failure");
        return Ok(());
    };
    let found: Vec<String> = file_names(&artifacts)
        .difference(&before)
        .map(|name| format!("fuzz/artifacts/{target}/{name}"))
        .collect();
    if found.is_empty() {
        return Err(e);
    }
    bail!(
        "parser fuzz: {target} failed on the input saved as {}; copy it into fuzz/regressions/{target}/ so that `cargo xtask test` replays it, then fix the bug",
        found.join(", ")
    )
}

fn file_names(dir: &Path) -> BTreeSet<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return BTreeSet::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect()
}
