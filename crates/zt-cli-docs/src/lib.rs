//! The sidecar's man pages and shell completions, rendered from the clap definition the binary
//! parses (`zt_risk_sidecar::config::Cli`), so that a flag added, renamed or removed there changes
//! them too. It renders and writes files; it must not describe a flag by hand, since a hand-written
//! line is the one that drifts.

use std::io;
use std::path::{Path, PathBuf};

use clap::{Command, CommandFactory};
use clap_complete::Shell;
use clap_mangen::Man;
use roff::{bold, italic, roman, Inline, Roff};

/// The installed binary's name: the man page's title and the command the completions complete.
pub const BINARY: &str = "zt-risk-sidecar";

/// The shells completions are generated for: those Debian ships completion directories for.
pub const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// The sidecar's command line as its binary parses it. Without the library's `dev` feature (how
/// this crate depends on it) it has no `--dev`, like the production binary.
pub fn sidecar_command() -> Command {
    zt_risk_sidecar::config::Cli::command()
}

/// What a generated file is, which decides how it spells a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ManPage,
    Completion(Shell),
}

/// One generated file: where it goes under the output directory, and its text.
#[derive(Clone, Debug)]
pub struct Document {
    pub path: PathBuf,
    pub kind: Kind,
    pub text: String,
}

impl Document {
    /// Whether this document covers the sidecar's own flags: its man page and every completion
    /// script (which complete subcommands too), not a subcommand's man page.
    pub fn covers_top_level(&self) -> bool {
        match self.kind {
            Kind::ManPage => self.path == Path::new("man").join(format!("{BINARY}.1")),
            Kind::Completion(_) => true,
        }
    }

    /// Whether this document mentions the long flag `flag` (without its dashes) as a flag of its
    /// own: `--listen` does not count as mentioning `--listen-address`, or the reverse, so a
    /// renamed flag cannot hide behind a longer one that starts with the same words.
    pub fn mentions_flag(&self, flag: &str) -> bool {
        // roff escapes each dash of `--listen` as `\-`; fish spells a long option `-l listen`.
        let (text, spelled) = match self.kind {
            Kind::ManPage => (self.text.replace("\\-", "-"), format!("--{flag}")),
            Kind::Completion(Shell::Fish) => (self.text.clone(), format!("-l {flag}")),
            Kind::Completion(_) => (self.text.clone(), format!("--{flag}")),
        };
        text.match_indices(&spelled).any(|(start, _)| {
            let after = text[start + spelled.len()..].chars().next();
            !after.is_some_and(|next| next.is_ascii_alphanumeric() || next == '-' || next == '_')
        })
    }

    /// The flags of `flags` this document does not mention.
    pub fn missing_flags<'a>(&self, flags: &[&'a str]) -> Vec<&'a str> {
        flags
            .iter()
            .copied()
            .filter(|flag| !self.mentions_flag(flag))
            .collect()
    }
}

/// Renders the man pages (one for the command, one per visible subcommand, named
/// `zt-risk-sidecar-SUBCOMMAND.1` as git and cargo do) and a completion script per shell.
pub fn render(command: Command) -> io::Result<Vec<Document>> {
    // Built once, as clap_mangen's own `generate_to` does, so that subcommands carry their full
    // display names (`zt-risk-sidecar-check`).
    let mut command = command.name(BINARY).disable_help_subcommand(true);
    command.build();
    let mut documents = Vec::new();
    render_man_pages(&command, true, &mut documents)?;
    for shell in SHELLS {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut command.clone(), BINARY, &mut text);
        documents.push(Document {
            path: Path::new("completions").join(completion_file_name(shell)),
            kind: Kind::Completion(shell),
            text: utf8(text)?,
        });
    }
    Ok(documents)
}

/// The man page of `command` and those of its visible subcommands, depth first.
fn render_man_pages(
    command: &Command,
    is_top_level: bool,
    documents: &mut Vec<Document>,
) -> io::Result<()> {
    let man = Man::new(command.clone());
    let mut text = Vec::new();
    man.render(&mut text)?;
    if is_top_level {
        // `to_roff` leaves out the apostrophe preamble `render` already wrote; the sections'
        // text has no apostrophe that would need it.
        text.extend_from_slice(operator_sections().to_roff().as_bytes());
    }
    documents.push(Document {
        path: Path::new("man").join(man.get_filename()),
        kind: Kind::ManPage,
        text: utf8(text)?,
    });
    for subcommand in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        render_man_pages(subcommand, false, documents)?;
    }
    Ok(())
}

/// The sections an operator looks for that clap does not know: the files the Debian package
/// installs and the exit codes (which `main.rs` and the systemd unit's
/// `RestartPreventExitStatus=2` rely on).
fn operator_sections() -> Roff {
    let mut roff = Roff::default();
    let files = [
        (
            "/etc/zt-risk-sidecar/sidecar.toml",
            "The configuration file given with --config by the systemd unit; every key is also a flag and an environment variable.",
        ),
        (
            "/etc/zt-risk-sidecar/token",
            "The Cloudflare API token of the sidecar itself (root, mode 0600), which the systemd unit passes as a credential; optional when every caller sends its own.",
        ),
        (
            "/usr/lib/systemd/system/zt-risk-sidecar.service",
            "The hardened systemd unit. systemctl reload re-reads the configuration (SIGHUP); SIGTERM drains.",
        ),
    ];
    let exit_codes = [
        ("0", "Stopped on SIGTERM or SIGINT after draining."),
        (
            "1",
            "A failure after the configuration was accepted, such as a listen address in use.",
        ),
        (
            "2",
            "A usage or configuration error; the message names the flag, variable or key.",
        ),
    ];
    tagged_section(
        &mut roff,
        "FILES",
        &files.map(|(path, text)| (italic(path), text)),
    );
    tagged_section(
        &mut roff,
        "EXIT STATUS",
        &exit_codes.map(|(code, text)| (bold(code), text)),
    );
    roff
}

/// A section of tagged paragraphs (`.TP`): each tag on its own line, its text indented below.
fn tagged_section(roff: &mut Roff, heading: &str, paragraphs: &[(Inline, &str)]) {
    roff.control("SH", [heading]);
    for (tag, text) in paragraphs {
        roff.control("TP", []);
        roff.text([tag.clone()]);
        roff.text([roman(*text)]);
    }
}

/// The file name each shell looks for in its system completion directory.
fn completion_file_name(shell: Shell) -> String {
    match shell {
        Shell::Zsh => format!("_{BINARY}"),
        Shell::Fish => format!("{BINARY}.fish"),
        _ => format!("{BINARY}.{shell}"),
    }
}

fn utf8(bytes: Vec<u8>) -> io::Result<String> {
    String::from_utf8(bytes).map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
}

/// Writes `documents` under `directory`, creating the subdirectories, and returns the paths
/// written.
pub fn write(documents: &[Document], directory: &Path) -> io::Result<Vec<PathBuf>> {
    documents
        .iter()
        .map(|document| {
            let path = directory.join(&document.path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, &document.text)?;
            Ok(path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Arg;

    /// Flags README, the systemd unit and deploy/ tell operators to use. If one is renamed in the
    /// clap definition, these tests fail until the documents (and those files) follow.
    const DOCUMENTED_FLAGS: [&str; 6] = [
        "config",
        "listen",
        "admin-listen",
        "token-file",
        "log-level",
        "cache-ttl",
    ];

    fn rendered() -> Vec<Document> {
        match render(sidecar_command()) {
            Ok(documents) => documents,
            Err(error) => panic!("rendering failed: {error}"),
        }
    }

    fn top_level(documents: Vec<Document>) -> Vec<Document> {
        documents
            .into_iter()
            .filter(Document::covers_top_level)
            .collect()
    }

    #[test]
    fn a_man_page_for_the_sidecar_and_each_subcommand_and_three_completions() {
        let documents = rendered();
        let paths: Vec<_> = documents.iter().map(|d| d.path.clone()).collect();
        let mut expected = vec![PathBuf::from("man/zt-risk-sidecar.1")];
        // A subcommand (`check`, planned) adds its own page; the sidecar has none yet.
        for subcommand in sidecar_command().get_subcommands() {
            if !subcommand.is_hide_set() {
                expected.push(format!("man/zt-risk-sidecar-{}.1", subcommand.get_name()).into());
            }
        }
        expected.extend(
            [
                "completions/zt-risk-sidecar.bash",
                "completions/_zt-risk-sidecar",
                "completions/zt-risk-sidecar.fish",
            ]
            .map(PathBuf::from),
        );
        assert_eq!(paths, expected);
        let completions: Vec<Kind> = documents
            .iter()
            .map(|document| document.kind)
            .filter(|kind| *kind != Kind::ManPage)
            .collect();
        assert_eq!(
            completions,
            [
                Kind::Completion(Shell::Bash),
                Kind::Completion(Shell::Zsh),
                Kind::Completion(Shell::Fish),
            ]
        );
        assert_eq!(top_level(documents).len(), 4);
    }

    /// Asserts that each of the sidecar's top-level documents mentions every flag of `flags`.
    fn assert_every_document_mentions(flags: &[&str]) {
        for document in top_level(rendered()) {
            assert_eq!(
                document.missing_flags(flags),
                Vec::<&str>::new(),
                "{}",
                document.path.display()
            );
        }
    }

    #[test]
    fn every_document_mentions_the_documented_flags() {
        assert_every_document_mentions(&DOCUMENTED_FLAGS);
    }

    #[test]
    fn every_document_mentions_every_long_flag_of_the_command() {
        let command = sidecar_command();
        let flags: Vec<String> = command
            .get_arguments()
            .filter(|arg| !arg.is_hide_set())
            .filter_map(|arg| arg.get_long().map(str::to_owned))
            .collect();
        assert!(flags.len() > DOCUMENTED_FLAGS.len(), "{flags:?}");
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        assert_every_document_mentions(&flags);
    }

    #[test]
    fn a_renamed_flag_fails_the_check_in_every_document() {
        // `--listen` renamed to `--listen-address`: the longer name starts with the old one, the
        // case a substring search would miss.
        let renamed = sidecar_command().mut_arg("listen", |arg| arg.long("listen-address"));
        let documents = match render(renamed) {
            Ok(documents) => top_level(documents),
            Err(error) => panic!("rendering failed: {error}"),
        };
        assert_eq!(documents.len(), 4);
        for document in documents {
            assert_eq!(
                document.missing_flags(&DOCUMENTED_FLAGS),
                ["listen"],
                "{}",
                document.path.display()
            );
            assert!(document.mentions_flag("listen-address"));
        }
    }

    #[test]
    fn the_man_page_documents_environment_variables_files_and_exit_codes() {
        let documents = rendered();
        let man = &documents[0].text;
        for expected in [
            "ZT_SIDECAR_LISTEN",
            "ZT_SIDECAR_CONFIG",
            ".SH FILES",
            "/etc/zt\\-risk\\-sidecar/sidecar.toml",
            ".SH \"EXIT STATUS\"",
        ] {
            assert!(man.contains(expected), "{expected} is not in the man page");
        }
    }

    #[test]
    fn a_subcommand_gets_its_own_man_page_and_completions_know_it() {
        // A made-up subcommand, so that this holds beside the sidecar's own (`check`, planned).
        let command = sidecar_command().subcommand(
            Command::new("inspect-example")
                .about("An example subcommand")
                .arg(Arg::new("print").long("print-example")),
        );
        let documents = match render(command) {
            Ok(documents) => documents,
            Err(error) => panic!("rendering failed: {error}"),
        };
        let page = documents
            .iter()
            .find(|d| d.path == Path::new("man/zt-risk-sidecar-inspect-example.1"));
        let Some(page) = page else {
            panic!("no man page for the subcommand")
        };
        assert!(!page.covers_top_level());
        assert!(page.mentions_flag("print-example"));
        // The sidecar's flags are global (`check --listen ...` works), so its subcommands'
        // pages list them too.
        assert!(page.mentions_flag("listen"));
        assert!(documents[0].covers_top_level());
        assert!(documents[0]
            .text
            .contains("zt\\-risk\\-sidecar\\-inspect\\-example"));
        for completion in documents.iter().filter(|d| d.kind != Kind::ManPage) {
            assert!(
                completion.text.contains("inspect-example"),
                "{}",
                completion.path.display()
            );
            assert!(
                completion.mentions_flag("print-example"),
                "{}",
                completion.path.display()
            );
        }
    }

    #[test]
    fn write_puts_each_document_at_its_path() {
        let directory = std::env::temp_dir().join(format!("zt-cli-docs-{}", std::process::id()));
        let documents = rendered();
        let written = match write(&documents, &directory) {
            Ok(written) => written,
            Err(error) => panic!("writing failed: {error}"),
        };
        for (path, document) in written.iter().zip(&documents) {
            assert_eq!(
                std::fs::read_to_string(path).ok().as_deref(),
                Some(document.text.as_str())
            );
        }
        let _ = std::fs::remove_dir_all(&directory);
    }
}
