//! Man pages and shell completions of `plughostctl` and `plughostd`, generated from their clap
//! definitions by a hidden `__generate-docs DIR` subcommand of each (`make install` runs it), so
//! the pages always say what the binaries parse.

use std::path::{Path, PathBuf};

/// A file the generator could not write.
#[derive(Debug, thiserror::Error)]
#[error("write {path}: {source}")]
pub struct DocsError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn create(path: &Path) -> Result<std::fs::File, DocsError> {
    let fail = |source| DocsError {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    std::fs::File::create(path).map_err(fail)
}

/// Writes, beneath the share directory `dir` (e.g. `/usr/local/share`):
/// `man/man<section>/<name>.<section>` and one page per visible subcommand
/// (`<name>-<sub>[-<subsub>].<section>`), and the completions
/// `bash-completion/completions/<name>`, `zsh/site-functions/_<name>` and
/// `fish/vendor_completions.d/<name>.fish`.
pub fn generate(command: clap::Command, section: &str, dir: &Path) -> Result<(), DocsError> {
    let name = command.get_name().to_owned();
    // The pages leave out the `help` subcommands (each page is the help), so no page lists one.
    let mut pages = recursively(command.clone(), &|c| c.disable_help_subcommand(true));
    pages.build();
    man_pages(&pages, section, &dir.join(format!("man/man{section}")))?;
    let mut command = command;
    command.build();
    use clap_complete::Shell;
    for (shell, path) in [
        (Shell::Bash, format!("bash-completion/completions/{name}")),
        (Shell::Zsh, format!("zsh/site-functions/_{name}")),
        (
            Shell::Fish,
            format!("fish/vendor_completions.d/{name}.fish"),
        ),
    ] {
        let path = dir.join(path);
        let mut file = create(&path)?;
        clap_complete::generate(shell, &mut command, &name, &mut file);
    }
    Ok(())
}

/// The visible subcommands and arguments of `command` that have no description (for a test of
/// each binary: `--help` and the man pages must say what everything is).
pub fn undocumented(mut command: clap::Command) -> Vec<String> {
    fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in command.get_arguments() {
            if !arg.is_hide_set() && arg.get_help().is_none() {
                missing.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() {
                missing.push(name.clone());
            }
            walk(sub, &name, missing);
        }
    }
    command.build();
    let mut missing = Vec::new();
    walk(&command, command.get_name(), &mut missing);
    missing
}

fn recursively(
    command: clap::Command,
    f: &dyn Fn(clap::Command) -> clap::Command,
) -> clap::Command {
    let names: Vec<String> = command
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    let mut command = f(command);
    for name in names {
        command = command.mut_subcommand(name, |s| recursively(s, f));
    }
    command
}

/// `command` must be built: its display name (`plughostctl-vm-start`) names the page.
fn man_pages(command: &clap::Command, section: &str, dir: &Path) -> Result<(), DocsError> {
    let page = command
        .get_display_name()
        .unwrap_or_else(|| command.get_name());
    let path = dir.join(format!("{page}.{section}"));
    let mut file = create(&path)?;
    let man = clap_mangen::Man::new(command.clone()).section(section);
    man.render(&mut file).map_err(|source| DocsError {
        path: path.clone(),
        source,
    })?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub, section, dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    #[command(name = "tool", about = "A tool")]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(clap::Subcommand)]
    enum Sub {
        /// Shown.
        Shown,
        #[command(hide = true)]
        Hidden,
    }

    #[test]
    fn an_argument_or_subcommand_without_description_is_found() {
        #[derive(clap::Parser)]
        #[command(name = "bare")]
        struct Bare {
            #[arg(long)]
            flag: bool,
            #[command(subcommand)]
            command: Sub,
        }
        use clap::CommandFactory;
        let missing = undocumented(Bare::command());
        assert!(missing.contains(&"bare flag".to_owned()), "{missing:?}");
        assert!(!missing.iter().any(|m| m.contains("shown")), "{missing:?}");
        assert!(!missing.iter().any(|m| m.contains("hidden")), "{missing:?}");
    }

    #[test]
    fn pages_and_completions_land_in_the_share_layout_without_hidden_commands() {
        use clap::CommandFactory;
        let dir = tempfile::tempdir().expect("tempdir");
        generate(Cli::command(), "1", dir.path()).expect("generate");
        let page = std::fs::read_to_string(dir.path().join("man/man1/tool.1")).expect("page");
        assert!(page.contains("A tool"), "{page}");
        assert!(!page.contains("tool\\-help"), "{page}");
        assert!(!dir.path().join("man/man1/tool-help.1").exists());
        assert!(dir.path().join("man/man1/tool-shown.1").exists());
        assert!(!dir.path().join("man/man1/tool-hidden.1").exists());
        for completion in [
            "bash-completion/completions/tool",
            "zsh/site-functions/_tool",
            "fish/vendor_completions.d/tool.fish",
        ] {
            let text = std::fs::read_to_string(dir.path().join(completion)).expect(completion);
            assert!(text.contains("shown"), "{completion}: {text}");
        }
    }
}
