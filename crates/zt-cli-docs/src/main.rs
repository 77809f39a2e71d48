//! `zt-cli-docs OUT_DIR`: writes the sidecar's man pages under `OUT_DIR/man/` and its bash, zsh
//! and fish completions under `OUT_DIR/completions/`, and prints each path. It only writes files;
//! what they say comes from the library, that is from the sidecar's clap definition.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(directory), None) = (args.next(), args.next()) else {
        eprintln!("usage: zt-cli-docs OUT_DIR");
        return ExitCode::from(2);
    };
    let directory = PathBuf::from(directory);
    let written = zt_cli_docs::render(zt_cli_docs::sidecar_command())
        .and_then(|documents| zt_cli_docs::write(&documents, &directory));
    match written {
        Ok(paths) => {
            for path in paths {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!(
                "zt-cli-docs: cannot write to {}: {error}",
                directory.display()
            );
            ExitCode::FAILURE
        }
    }
}
