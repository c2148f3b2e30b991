//! The kernel command line: words separated by spaces, each `key=value` or a bare `key`.
//! Later words win. Plain parsing, unit-tested on the host.

/// A parsed view of the command line.
#[derive(Clone, Copy, Debug)]
pub struct Cmdline<'a> {
    raw: &'a str,
}

impl<'a> Cmdline<'a> {
    /// Wraps a command line.
    pub const fn new(raw: &'a str) -> Self {
        Self { raw }
    }

    /// Every word as `(key, value)`.
    pub fn words(&self) -> impl Iterator<Item = (&'a str, Option<&'a str>)> + 'a {
        self.raw.split_ascii_whitespace().map(|word| match word.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (word, None),
        })
    }

    /// The value of the last `key=value`, if any.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.words().filter(|(k, _)| *k == key).filter_map(|(_, v)| v).last()
    }

    /// Keys that are not in `known`, for warnings.
    pub fn unknown_keys<'k>(&self, known: &'k [&'k str]) -> impl Iterator<Item = &'a str> + 'k
    where
        'a: 'k,
    {
        self.words().map(|(k, _)| k).filter(move |k| !known.contains(k))
    }
}

/// Which self-tests to run: `tests=PATTERN[,PATTERN...]`.
///
/// A pattern selects a test when it equals the test's name, or names a module of it
/// (`pnp` selects `pnp::ring_wakes_task`), or ends in `*` and is a prefix of the name. Tests
/// that are off by default (such as the harness's deliberate failures) only run when a pattern
/// names them exactly. Without `tests=`, every default test runs.
#[derive(Clone, Copy, Debug)]
pub struct TestFilter<'a> {
    patterns: Option<&'a str>,
}

impl<'a> TestFilter<'a> {
    /// The filter a command line asks for.
    pub fn from_cmdline(cmdline: &Cmdline<'a>) -> Self {
        Self { patterns: cmdline.get("tests").filter(|p| !p.is_empty()) }
    }

    /// Whether `name` runs.
    pub fn selects(&self, name: &str, on_by_default: bool) -> bool {
        let Some(patterns) = self.patterns else {
            return on_by_default;
        };
        patterns.split(',').filter(|p| !p.is_empty()).any(|p| {
            if p == name {
                return true;
            }
            if !on_by_default {
                return false;
            }
            if let Some(prefix) = p.strip_suffix('*') {
                return name.starts_with(prefix);
            }
            name.strip_prefix(p).is_some_and(|rest| rest.starts_with("::"))
        })
    }

    /// The patterns as given, for reports.
    pub fn patterns(&self) -> Option<&'a str> {
        self.patterns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_words_win_and_bare_keys_have_no_value() {
        let c = Cmdline::new("a=1 quiet a=2  b=x=y");
        assert_eq!(c.get("a"), Some("2"));
        assert_eq!(c.get("quiet"), None);
        assert_eq!(c.get("b"), Some("x=y"));
        assert_eq!(c.get("missing"), None);
        let unknown: Vec<_> = c.unknown_keys(&["a", "b"]).collect();
        assert_eq!(unknown, ["quiet"]);
    }

    #[test]
    fn no_filter_runs_default_tests_only() {
        let f = TestFilter::from_cmdline(&Cmdline::new(""));
        assert!(f.selects("arch::timer_ticks", true));
        assert!(!f.selects("harness::deliberate_failure", false));
    }

    #[test]
    fn module_patterns_respect_path_boundaries() {
        let f = TestFilter::from_cmdline(&Cmdline::new("tests=arch,task::join"));
        assert!(f.selects("arch::timer_ticks", true));
        assert!(!f.selects("archive::x", true), "a module pattern is not a string prefix");
        assert!(f.selects("task::join", true));
        assert!(!f.selects("task::join_twice", true));
        assert!(!f.selects("pnp::ring", true));
    }

    #[test]
    fn star_is_a_prefix_and_off_by_default_tests_need_their_exact_name() {
        let f = TestFilter::from_cmdline(&Cmdline::new("tests=harness::*"));
        assert!(f.selects("harness::report_line_format", true));
        assert!(!f.selects("harness::deliberate_failure", false));
        let exact = TestFilter::from_cmdline(&Cmdline::new("tests=harness::deliberate_failure"));
        assert!(exact.selects("harness::deliberate_failure", false));
    }
}
