//! The host stub's arguments for each boot of `cargo xtask run`: xtask's defaults, the user's
//! options after `--`, and the rule for the options that name an output file, so that no boot
//! overwrites another's file:
//!
//! - `--results-json`, `--results-junit` belong to `cargo xtask run` itself (before `--`), which
//!   merges every boot's results into one file of each kind; after `--` they are refused.
//! - `--trace FILE` (and `--trace-omit-console` with it) records the first boot only, whether
//!   xtask's own option gives it or the user's after `--`: one timeline, of the boot that runs
//!   every selected test.
//! - `--serial-log FILE` keeps every boot's console: the first boot writes FILE, boot N writes
//!   FILE with `.bootN` before its extension (`console.log`, `console.boot2.log`).

use std::path::Path;

use crate::{Result, err};

/// Whether `args` (the user's host stub arguments) give option `name` (`--name VALUE`,
/// `--name=VALUE`, or a bare flag).
pub(super) fn gives(args: &[String], name: &str) -> bool {
    value_of(args, name).is_some() || args.iter().any(|a| a == name)
}

/// The value `args` give option `name` (the last one, as the host stub would refuse a second).
pub(super) fn value_of<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let mut found = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == name {
            found = it.next().map(String::as_str);
        } else if let Some(value) = equals_value(arg, name) {
            found = Some(value);
        }
    }
    found
}

/// The value of `arg` when it is `name=VALUE`.
fn equals_value<'a>(arg: &'a str, name: &str) -> Option<&'a str> {
    arg.strip_prefix(name).and_then(|rest| rest.strip_prefix('='))
}

/// `args` without option `name` and its value.
pub(super) fn without(args: &[String], name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == name {
            it.next();
        } else if equals_value(arg, name).is_none() {
            out.push(arg.clone());
        }
    }
    out
}

/// `args` without the flag `name` (which takes no value).
fn without_flag(args: &[String], name: &str) -> Vec<String> {
    args.iter().filter(|a| *a != name).cloned().collect()
}

/// `args` with the value of option `name` replaced by `change(value)`.
fn with_value_changed(args: &[String], name: &str, change: impl Fn(&str) -> String) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == name {
            out.push(arg.clone());
            out.extend(it.next().map(|value| change(value)));
        } else if let Some(value) = equals_value(arg, name) {
            out.push(format!("{name}={}", change(value)));
        } else {
            out.push(arg.clone());
        }
    }
    out
}

/// The host stub's arguments: the user's `extra`, after xtask's `defaults` (option, value)
/// that the user did not give.
pub(super) fn host_arguments(defaults: &[(&str, String)], extra: &[String]) -> Vec<String> {
    let mut args = Vec::new();
    for (name, value) in defaults.iter().filter(|(name, _)| !gives(extra, name)) {
        args.push(name.to_string());
        args.push(value.clone());
    }
    args.extend(extra.iter().cloned());
    args
}

/// Host stub options xtask refuses after `--`: it gives each boot a results file of its own
/// and merges them into the file its own option of the same name names.
const REFUSED: &[&str] = &["--results-json", "--results-junit"];

/// A usage error for a host stub option xtask does not pass on (see the module's rule).
pub(super) fn check(extra: &[String]) -> Result<()> {
    match REFUSED.iter().find(|name| gives(extra, name)) {
        Some(name) => Err(err!(
            "{name} after `--` is refused: xtask gives each boot a results file of its own and merges them; \
             give it to xtask itself, before `--` (`cargo xtask run {name} FILE`)"
        )),
        None => Ok(()),
    }
}

/// The user's host stub options for boot `n` (1-based) of the plan, by the module's rule.
pub(super) fn for_boot(extra: &[String], n: usize) -> Vec<String> {
    if n == 1 {
        return extra.to_vec();
    }
    let untraced = without_flag(&without(extra, "--trace"), "--trace-omit-console");
    with_value_changed(&untraced, "--serial-log", |file| per_boot_file(file, n))
}

/// The file boot `n` writes for an option whose value is `file`: `file` for the first boot,
/// `file` with `.boot<n>` before its extension for the others.
pub(super) fn per_boot_file(file: &str, n: usize) -> String {
    if n == 1 {
        return file.to_string();
    }
    let path = Path::new(file);
    let (Some(stem), Some(ext)) = (path.file_stem(), path.extension()) else { return format!("{file}.boot{n}") };
    let name = format!("{}.boot{n}.{}", stem.to_string_lossy(), ext.to_string_lossy());
    path.with_file_name(name).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    fn defaults() -> Vec<(&'static str, String)> {
        vec![("--pnp-mode", "ring".to_string()), ("--timeout", "300".to_string())]
    }

    /// Each option exactly once (the host stub refuses a repeated one), with the user's value.
    #[test]
    fn a_users_option_replaces_xtasks_default() {
        let args = host_arguments(&defaults(), &strings(&["--timeout", "5", "--pnp-mode=sync", "--counters"]));
        assert_eq!(args, strings(&["--timeout", "5", "--pnp-mode=sync", "--counters"]));
        for name in ["--timeout", "--pnp-mode"] {
            assert_eq!(args.iter().filter(|a| a.starts_with(name)).count(), 1, "{name}: {args:?}");
        }
    }

    #[test]
    fn xtasks_defaults_apply_where_the_user_gave_none() {
        let args = host_arguments(&defaults(), &strings(&["--mem", "256"]));
        assert_eq!(args, strings(&["--pnp-mode", "ring", "--timeout", "300", "--mem", "256"]));
        // A longer option that starts with the same letters is another option.
        assert!(!gives(&strings(&["--pnp-modes", "x"]), "--pnp-mode"));
        assert!(gives(&strings(&["--counters"]), "--counters"), "a flag is given too");
    }

    /// Only the first boot is traced; every boot keeps its own console log; the options that
    /// do not name a file go to every boot.
    #[test]
    fn no_boot_writes_over_another_boots_file() {
        let extra =
            strings(&["--trace", "t.json", "--trace-omit-console", "--serial-log=out/console.log", "--counters"]);
        assert_eq!(for_boot(&extra, 1), extra);
        assert_eq!(for_boot(&extra, 2), strings(&["--serial-log=out/console.boot2.log", "--counters"]));
        let extra = strings(&["--serial-log", "console", "--trace=t.json", "--quiet"]);
        assert_eq!(for_boot(&extra, 3), strings(&["--serial-log", "console.boot3", "--quiet"]));
        assert_eq!(per_boot_file("/tmp/a.b/run.log", 2), "/tmp/a.b/run.boot2.log");
        assert_eq!(per_boot_file("run.log", 1), "run.log");
    }

    #[test]
    fn results_options_after_the_separator_are_refused_with_where_they_go() {
        for args in [&["--results-json", "r.jsonl"][..], &["--results-junit=r.xml"], &["--counters", "--results-json"]]
        {
            let message = check(&strings(args)).unwrap_err().message;
            assert!(message.contains("before `--`"), "{args:?}: {message}");
        }
        assert!(check(&strings(&["--trace", "t.json", "--serial-log", "s"])).is_ok());
    }
}
