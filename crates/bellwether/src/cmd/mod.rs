//! One module per subcommand. Shared flags and exit-code mapping live here.

pub mod agent;
pub mod alerts;
pub mod baseline;
pub mod bench;
pub mod config;
pub mod config_file;
pub mod detect;
pub mod drift;
pub mod fleet;
pub mod hosts;
pub mod judge;
pub mod mirror;
pub mod mirror_drill;
pub mod model;
pub mod model_server;
pub mod patch;
pub mod patch_remote;
pub mod profile;
pub mod proxy;
pub mod quickstart;
pub mod risk;
pub mod rollout;
pub mod sandbox;
pub mod server;
pub mod shadow;
pub mod shadow_drill;
pub mod shadow_server;
pub mod tls;
pub mod token;

/// `--output human|json`, for commands that print a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Human,
    Json,
}

/// The value parser of every floating-point flag: a finite number. NaN makes every comparison
/// false and an infinity every sum, so either would silently switch a check off (`judge
/// --allowed-increase nan` passed any regression). Clap exits 2 and names the flag.
pub fn finite_f64(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!(
            "`{}` is not a finite number",
            bellwether_model::text::quote(s)
        )),
    }
}

/// Bad input: a file, flag or body that could not be used. Exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A server or service that could not be reached. Exit code 3.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

/// Maps an error to the documented exit code: 2 bad input, 3 unreachable, 1 otherwise.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    if err.chain().any(|e| e.is::<UsageError>()) {
        2
    } else if err.chain().any(|e| e.is::<Unreachable>()) {
        3
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use std::any::TypeId;

    use clap::CommandFactory;

    use super::*;

    #[test]
    fn finite_f64_refuses_nan_and_infinities() {
        assert_eq!(finite_f64("0.25"), Ok(0.25));
        assert_eq!(finite_f64("-1e3"), Ok(-1000.0));
        for bad in ["nan", "NaN", "inf", "-inf", "infinity", "1e999", "", "x"] {
            assert!(finite_f64(bad).is_err(), "{bad}");
        }
    }

    /// Every float flag of every subcommand goes through [`finite_f64`]: given `nan`, clap
    /// refuses the value itself (a bare `f64` parser would accept it and only then complain
    /// about missing arguments).
    #[test]
    fn every_float_flag_refuses_nan() {
        fn walk(cmd: &clap::Command, path: &mut Vec<String>, found: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if arg.get_value_parser().type_id() != TypeId::of::<f64>() {
                    continue;
                }
                let long = arg.get_long().expect("float arguments are flags");
                let mut argv = vec!["bellwether".to_string()];
                argv.extend(path.iter().cloned());
                argv.push(format!("--{long}"));
                argv.push("nan".into());
                let err = crate::Cli::command()
                    .try_get_matches_from(&argv)
                    .expect_err("nan is refused");
                assert_eq!(
                    err.kind(),
                    clap::error::ErrorKind::ValueValidation,
                    "{argv:?}: {err}"
                );
                assert!(
                    err.to_string().contains("not a finite number"),
                    "{argv:?}: {err}"
                );
                found.push(argv[1..argv.len() - 1].join(" "));
            }
            for sub in cmd.get_subcommands() {
                path.push(sub.get_name().to_string());
                walk(sub, path, found);
                path.pop();
            }
        }
        let mut found = Vec::new();
        walk(&crate::Cli::command(), &mut Vec::new(), &mut found);
        // The walk must have seen the flags this test was written for.
        for f in [
            "judge --allowed-increase",
            "judge --pass",
            "model synth --missing",
        ] {
            assert!(found.iter().any(|x| x == f), "{f} not found in {found:?}");
        }
    }
}
