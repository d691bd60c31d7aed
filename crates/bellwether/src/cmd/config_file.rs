//! `--config FILE` for the long-running commands (`server`, `agent`): a TOML file of settings
//! whose keys are the commands' long flag names with `_` for `-` (`data_dir` for
//! `--data-dir`, `label` for `--label`), so every flag has a key without a line of code here.
//!
//! Precedence: a flag on the command line, then its environment variable, then the file, then
//! the flag's default. The file is read before the real parse; each key's value is checked with
//! its flag's own value parser (an error names the file, the line and the key), then given to
//! clap as that flag on the command line, unless the command line or the environment already
//! gave it (or a flag that conflicts with it). clap then checks requirements and conflicts as
//! for any flag. `--print-config` prints the settings in effect, each with where it came from.
//!
//! The proxy's `--config` is its own configuration file (listeners, backends; YAML or TOML),
//! read by `cmd::proxy`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};

/// The subcommands that take a settings file.
pub const COMMANDS: &[&str] = &["server", "agent"];

/// The arguments that are not settings: the file itself, the print, and clap's own.
pub const NOT_KEYS: &[&str] = &["config", "print_config", "help", "version"];

/// Where a setting in effect came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env(String),
    File { line: usize },
    Default,
}

/// One key of the file: the flag it stands for, the values to give it, its line.
#[derive(Debug)]
struct Setting {
    id: String,
    line: usize,
    argv: Vec<OsString>,
}

/// Parses the command line, reading `--config FILE` for the commands that take one; exits as
/// clap does on bad input (2) and after `--print-config` (0).
pub fn parse<P: CommandFactory + FromArgMatches>() -> P {
    match parse_from::<P>(std::env::args_os().collect()) {
        Ok(p) => p,
        Err(Failure::Clap(e)) => e.exit(),
        Err(Failure::File(msg)) => {
            eprintln!("error: {msg}");
            std::process::exit(2)
        }
        Err(Failure::Printed) => std::process::exit(0),
    }
}

#[derive(Debug)]
pub enum Failure {
    Clap(clap::Error),
    /// A bad settings file: the message names the file, line and key.
    File(String),
    /// `--print-config` printed the settings; nothing to run.
    Printed,
}

/// The root command with `--config` and `--print-config` added to each of [`COMMANDS`].
pub fn command<P: CommandFactory>() -> Command {
    let mut cmd = P::command();
    for name in COMMANDS {
        cmd = cmd.mut_subcommand(*name, |c| {
            c.arg(
                Arg::new("config")
                    .long("config")
                    .value_name("FILE")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help(
                        "Read settings from this TOML file: one key per flag, named as the flag \
                         with _ for - (data_dir = \"/var/lib/bellwether\"; a repeatable flag \
                         takes a list). A flag or its environment variable wins over the file. \
                         See docs/packaging.md",
                    ),
            )
            .arg(
                Arg::new("print_config")
                    .long("print-config")
                    .action(ArgAction::SetTrue)
                    .help(
                        "Print the settings in effect (as a TOML file, each with where it came \
                         from: flag, env, file or default; secrets hidden) and exit",
                    ),
            )
        });
    }
    cmd
}

/// [`parse`] over the given arguments (the program name first).
pub fn parse_from<P: CommandFactory + FromArgMatches>(argv: Vec<OsString>) -> Result<P, Failure> {
    // A lenient first pass finds the subcommand, its --config, and what the command line and
    // the environment give; errors (a flag the file will supply, --help) are left to the real
    // parse below.
    let first = command::<P>()
        .ignore_errors(true)
        .try_get_matches_from(&argv)
        .ok();
    let mut loaded: Option<(String, PathBuf, Vec<Setting>)> = None;
    let mut argv = argv;
    if let Some(first) = &first {
        if let Some((name, sub_m)) = first.subcommand() {
            if COMMANDS.contains(&name) {
                if let Some(file) = sub_m.get_one::<PathBuf>("config").cloned() {
                    let mut root = command::<P>();
                    root.build();
                    let sub = root
                        .find_subcommand(name)
                        .expect("the subcommand just matched")
                        .clone();
                    let text = std::fs::read_to_string(&file).map_err(|e| {
                        Failure::File(format!("cannot read --config {}: {e}", file.display()))
                    })?;
                    let settings = settings(&sub, &file, &text, sub_m)?;
                    let at = subcommand_index(&root, &argv, name);
                    let injected: Vec<OsString> =
                        settings.iter().flat_map(|s| s.argv.clone()).collect();
                    argv.splice(at + 1..at + 1, injected);
                    loaded = Some((name.to_string(), file, settings));
                }
            }
        }
    }
    let matches = command::<P>().try_get_matches_from(&argv).map_err(|e| {
        match (&loaded, e.kind()) {
            (Some((_, file, settings)), k)
                if !settings.is_empty()
                    && k != clap::error::ErrorKind::DisplayHelp
                    && k != clap::error::ErrorKind::DisplayVersion =>
            {
                // The flags clap names may come from the file: say so.
                let from: Vec<String> = settings
                    .iter()
                    .map(|s| format!("{} (line {})", s.id, s.line))
                    .collect();
                Failure::File(format!(
                    "{}\nwith these settings from {}: {}",
                    e.render()
                        .to_string()
                        .trim_start_matches("error: ")
                        .trim_end(),
                    file.display(),
                    from.join(", ")
                ))
            }
            _ => Failure::Clap(e),
        }
    })?;
    if let Some((name, sub_m)) = matches.subcommand() {
        if COMMANDS.contains(&name) && sub_m.get_flag("print_config") {
            let mut root = command::<P>();
            root.build();
            let sub = root.find_subcommand(name).expect("matched").clone();
            let from_file: BTreeMap<String, usize> = loaded
                .as_ref()
                .map(|(_, _, s)| s.iter().map(|s| (s.id.clone(), s.line)).collect())
                .unwrap_or_default();
            print!(
                "{}",
                render_effective(&sub, sub_m, &from_file, loaded.as_ref().map(|l| &l.1))
            );
            return Err(Failure::Printed);
        }
    }
    P::from_arg_matches(&matches).map_err(Failure::Clap)
}

/// The position of the subcommand's name in `argv`, skipping the root's options and their
/// values (`bellwether --log info server …`).
fn subcommand_index(root: &Command, argv: &[OsString], name: &str) -> usize {
    let mut i = 1;
    while i < argv.len() {
        let t = argv[i].to_string_lossy();
        if t == name {
            return i;
        }
        let takes_value = root.get_arguments().any(|a| {
            a.get_long().is_some_and(|l| t == format!("--{l}")) && a.get_action().takes_values()
        });
        i += if takes_value { 2 } else { 1 };
    }
    unreachable!("the first pass matched the subcommand {name}")
}

/// The settings key of an argument, or None for one that is not a setting.
pub fn key_of(arg: &Arg) -> Option<String> {
    if NOT_KEYS.contains(&arg.get_id().as_str()) || arg.is_positional() {
        return None;
    }
    arg.get_long().map(|l| l.replace('-', "_"))
}

/// Every settings key of a (built) subcommand, with its argument.
pub fn keys(sub: &Command) -> Vec<(String, &Arg)> {
    sub.get_arguments()
        .filter_map(|a| key_of(a).map(|k| (k, a)))
        .collect()
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Reads the file's keys into the command-line arguments they stand for, leaving out those the
/// command line or the environment already gives.
fn settings(
    sub: &Command,
    file: &Path,
    text: &str,
    given: &ArgMatches,
) -> Result<Vec<Setting>, Failure> {
    let f = file.display();
    let table: BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>> =
        toml::from_str(text).map_err(|e| Failure::File(format!("{f}: {e}")))?;
    let keys = keys(sub);
    let mut out = Vec::new();
    for (key, value) in table {
        let line = line_of(text, key.span().start);
        let k = key.get_ref().as_str();
        let Some((_, arg)) = keys.iter().find(|(name, _)| name == k) else {
            let hint = if keys.iter().any(|(name, _)| *name == k.replace('-', "_")) {
                format!(
                    " (keys use _ where the flag has -: {})",
                    k.replace('-', "_")
                )
            } else {
                String::new()
            };
            return Err(Failure::File(format!(
                "{f}:{line}: unknown key `{k}`{hint}: the keys of `bellwether {}` are its flags' \
                 names ({})",
                sub.get_name(),
                keys.iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let id = arg.get_id().as_str();
        // The command line wins, then the environment; a flag on the command line that
        // conflicts with this key wins too (--token-file over a file's token).
        let explicit = |id: &str| {
            matches!(
                given.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        let conflicts = |a: &Arg, b: &Arg| {
            sub.get_arg_conflicts_with(a)
                .iter()
                .any(|c| c.get_id() == b.get_id())
        };
        if explicit(id)
            || sub.get_arguments().any(|other| {
                explicit(other.get_id().as_str())
                    && (conflicts(arg, other) || conflicts(other, arg))
            })
        {
            continue;
        }
        let bad = |what: String| Failure::File(format!("{f}:{line}: {k}: {what}"));
        let argv = flag_argv(sub, arg, value.get_ref()).map_err(bad)?;
        out.push(Setting {
            id: k.to_string(),
            line,
            argv,
        });
    }
    Ok(out)
}

/// The command-line arguments that give `arg` the file's `value`, each value checked by the
/// flag's own parser.
fn flag_argv(sub: &Command, arg: &Arg, value: &toml::Value) -> Result<Vec<OsString>, String> {
    let long = arg.get_long().expect("settings have a long flag");
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => match value {
            toml::Value::Boolean(b) => {
                let on = *b == matches!(arg.get_action(), ArgAction::SetTrue);
                Ok(if on {
                    vec![format!("--{long}").into()]
                } else {
                    vec![]
                })
            }
            other => Err(format!("expected true or false, not {}", describe(other))),
        },
        ArgAction::Count => match value {
            toml::Value::Integer(n) if *n >= 0 => {
                Ok((0..*n).map(|_| format!("--{long}").into()).collect())
            }
            other => Err(format!("expected a count, not {}", describe(other))),
        },
        _ => {
            let many = matches!(arg.get_action(), ArgAction::Append);
            let items: Vec<&toml::Value> = match value {
                toml::Value::Array(items) if many => items.iter().collect(),
                toml::Value::Array(_) => {
                    return Err(format!("--{long} takes one value, not a list"))
                }
                one => vec![one],
            };
            let mut argv = Vec::new();
            for item in items {
                let s = scalar(item)?;
                check_value(sub, arg, &s)?;
                argv.push(format!("--{long}={s}").into());
            }
            Ok(argv)
        }
    }
}

/// Runs `value` through the flag's own value parser, in a command of that value alone (its
/// requirements and conflicts are clap's to check on the whole command line).
fn check_value(sub: &Command, arg: &Arg, value: &str) -> Result<(), String> {
    let _ = sub;
    let alone = Command::new("bellwether")
        .no_binary_name(true)
        .disable_help_flag(true)
        .arg(
            Arg::new(arg.get_id().clone())
                .value_names(arg.get_value_names().unwrap_or_default().to_vec())
                .value_parser(arg.get_value_parser().clone())
                .allow_hyphen_values(true)
                .action(ArgAction::Set),
        );
    alone
        .try_get_matches_from([OsString::from(value)])
        .map(|_| ())
        .map_err(|e| {
            let msg = e.render().to_string();
            let first = msg.lines().next().unwrap_or_default();
            first.trim_start_matches("error: ").to_string()
        })
}

fn scalar(v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(x) => Ok(x.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Datetime(d) => Ok(d.to_string()),
        other => Err(format!("expected a value, not {}", describe(other))),
    }
}

fn describe(v: &toml::Value) -> String {
    match v {
        toml::Value::Array(_) => "a list".into(),
        toml::Value::Table(_) => "a table".into(),
        other => format!("{} {other}", other.type_str()),
    }
}

/// The settings in effect as a TOML file, each line with where its value came from.
fn render_effective(
    sub: &Command,
    m: &ArgMatches,
    from_file: &BTreeMap<String, usize>,
    file: Option<&PathBuf>,
) -> String {
    let mut out = format!("# bellwether {}: the settings in effect\n", sub.get_name());
    for (key, arg) in keys(sub) {
        let id = arg.get_id().as_str();
        let source = match (from_file.get(&key), m.value_source(id)) {
            (Some(line), _) => Source::File { line: *line },
            (None, Some(ValueSource::CommandLine)) => Source::Flag,
            (None, Some(ValueSource::EnvVariable)) => Source::Env(
                arg.get_env()
                    .map(|e| e.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            (None, Some(ValueSource::DefaultValue)) => Source::Default,
            _ => {
                out.push_str(&format!("# {key} (not set)\n"));
                continue;
            }
        };
        let from = match &source {
            Source::Flag => "flag".to_string(),
            Source::Env(name) => format!("env {name}"),
            Source::File { line } => format!(
                "file {}:{line}",
                file.map(|f| f.display().to_string()).unwrap_or_default()
            ),
            Source::Default => "default".to_string(),
        };
        let raw: Vec<String> = m
            .get_raw(id)
            .map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let value = if arg.is_hide_env_values_set() {
            "\"(hidden)\"".to_string()
        } else if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
            m.get_flag(id).to_string()
        } else if matches!(arg.get_action(), ArgAction::Append) {
            let items: Vec<String> = raw.iter().map(|v| toml_str(v)).collect();
            format!("[{}]", items.join(", "))
        } else {
            raw.first().map(|v| toml_str(v)).unwrap_or_default()
        };
        out.push_str(&format!("{key} = {value}  # {from}\n"));
    }
    out
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}
