//! `floatip gen-docs DIR` (hidden): the man pages and shell completions, generated from this
//! very command line definition so they cannot drift from it. `cargo xtask dist` packages them.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

/// Where each shell's completion goes under `DIR/completions`, named as its vendor directory
/// wants it (bash-completion: the command's name; zsh: `_command`; fish: `command.fish`).
const COMPLETIONS: &[(Shell, &str)] = &[
    (Shell::Bash, "floatip"),
    (Shell::Zsh, "_floatip"),
    (Shell::Fish, "floatip.fish"),
];

pub fn generate(dir: &Path) -> Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    // floatip.1 and one page per subcommand (floatip-ip-create.1, ...); hidden ones are left out.
    clap_mangen::generate_to(Cli::command(), &man)
        .with_context(|| format!("cannot write the man pages to {}", man.display()))?;
    for (shell, name) in COMPLETIONS {
        let path = completions.join(name);
        let mut file = std::fs::File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        clap_complete::generate(*shell, &mut Cli::command(), "floatip", &mut file);
    }
    Ok(())
}
