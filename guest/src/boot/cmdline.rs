//! The kernel command line: words separated by spaces, each `key=value` or a bare `key`.
//! Later words win. Split into words once, when the boot information is read; every lookup
//! after that compares keys only. Plain parsing, unit-tested on the host.

/// Longest command line kept (bytes).
pub const CMDLINE_MAX: usize = 512;
/// Most words a command line of [`CMDLINE_MAX`] bytes can have (each word at least one byte
/// and one separator): every word is kept.
const MAX_WORDS: usize = CMDLINE_MAX.div_ceil(2);

/// One word: `text[start..end]`, its key `text[start..key_end]` (`key_end == end`: a bare key,
/// otherwise the value follows the `=` at `key_end`).
#[derive(Clone, Copy, Debug)]
struct Word {
    start: u16,
    key_end: u16,
    end: u16,
}

/// The command line and its words.
#[derive(Clone, Debug)]
pub struct Cmdline {
    text: heapless::String<CMDLINE_MAX>,
    words: heapless::Vec<Word, MAX_WORDS>,
}

impl Cmdline {
    /// An empty command line.
    pub const fn new() -> Self {
        Self { text: heapless::String::new(), words: heapless::Vec::new() }
    }

    /// Splits `text` (its first [`CMDLINE_MAX`] bytes, cut back to a character boundary) into
    /// words.
    pub fn parse(text: &str) -> Self {
        let mut cut = text.len().min(CMDLINE_MAX);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut cmdline = Self::new();
        // Fits: at most CMDLINE_MAX bytes.
        let _ = cmdline.text.push_str(&text[..cut]);
        cmdline.split();
        cmdline
    }

    /// Makes the command line the bytes `bytes` yields, in place (the boot's copy is never
    /// moved: it is 2 KiB), and splits it into words. Printable ASCII is kept, anything else
    /// becomes `?`. At most [`CMDLINE_MAX`] bytes are kept; returns whether `bytes` ended
    /// there (false: the line was longer and is cut).
    pub fn fill(&mut self, bytes: impl IntoIterator<Item = u8>) -> bool {
        self.text.clear();
        let mut bytes = bytes.into_iter();
        let mut complete = true;
        for byte in bytes.by_ref() {
            let byte = if byte.is_ascii_graphic() || byte == b' ' { byte } else { b'?' };
            // ASCII, so the text stays UTF-8.
            if self.text.push(char::from(byte)).is_err() {
                complete = false;
                break;
            }
        }
        self.split();
        complete
    }

    /// Splits the text into words, once.
    fn split(&mut self) {
        self.words.clear();
        let bytes = self.text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i].is_ascii_whitespace() {
                i += 1;
                continue;
            }
            let start = i;
            let mut key_end = None;
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                if bytes[i] == b'=' && key_end.is_none() {
                    key_end = Some(i);
                }
                i += 1;
            }
            // Fits: a word takes at least two of the at most CMDLINE_MAX bytes (or is the last),
            // and every offset is below CMDLINE_MAX.
            let word = Word { start: start as u16, key_end: key_end.unwrap_or(i) as u16, end: i as u16 };
            let _ = self.words.push(word);
        }
    }

    /// The command line as given (up to [`CMDLINE_MAX`] bytes).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn key(&self, w: &Word) -> &str {
        &self.text[usize::from(w.start)..usize::from(w.key_end)]
    }

    fn value(&self, w: &Word) -> Option<&str> {
        (w.key_end < w.end).then(|| &self.text[usize::from(w.key_end) + 1..usize::from(w.end)])
    }

    /// Every word as `(key, value)`.
    pub fn words(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.words.iter().map(|w| (self.key(w), self.value(w)))
    }

    /// The value of the last `key=value`, if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.words.iter().rev().filter(|w| self.key(w) == key).find_map(|w| self.value(w))
    }

    /// Whether `key` appears at all, bare or with a value.
    pub fn has(&self, key: &str) -> bool {
        self.words.iter().any(|w| self.key(w) == key)
    }

    /// Keys that are not in `known`, for warnings.
    pub fn unknown_keys<'k>(&'k self, known: &'k [&'k str]) -> impl Iterator<Item = &'k str> + 'k {
        self.words.iter().map(|w| self.key(w)).filter(move |k| !known.contains(k))
    }
}

impl Default for Cmdline {
    fn default() -> Self {
        Self::new()
    }
}

/// Which self-tests to run: `tests=PATTERN[,PATTERN...]`.
///
/// A pattern selects a test when it equals the test's name, or names a module of it
/// (`pnp` selects `pnp::ring_wakes_task`), or ends in `*` and is a prefix of the name. Tests
/// that are off by default (such as the harness's deliberate failures) only run when a pattern
/// names them exactly. Without `tests=`, every default test runs.
#[derive(Clone, Debug)]
pub struct TestFilter<'a> {
    given: Option<&'a str>,
    /// The patterns, split once.
    patterns: heapless::Vec<&'a str, MAX_WORDS>,
}

impl<'a> TestFilter<'a> {
    /// The filter a command line asks for.
    pub fn from_cmdline(cmdline: &'a Cmdline) -> Self {
        let given = cmdline.get("tests").filter(|p| !p.is_empty());
        let mut patterns = heapless::Vec::new();
        for p in given.into_iter().flat_map(|p| p.split(',')).filter(|p| !p.is_empty()) {
            // Fits: a pattern takes at least two bytes of the command line (or is the last).
            let _ = patterns.push(p);
        }
        Self { given, patterns }
    }

    /// Whether `name` runs.
    pub fn selects(&self, name: &str, on_by_default: bool) -> bool {
        if self.given.is_none() {
            return on_by_default;
        }
        self.patterns.iter().any(|&p| {
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
        self.given
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_words_win_and_bare_keys_have_no_value() {
        let c = Cmdline::parse("a=1 quiet a=2  b=x=y\tc= a");
        assert_eq!(c.get("a"), Some("2"), "a later bare `a` does not hide the last value");
        assert_eq!(c.get("quiet"), None);
        assert!(c.has("quiet") && c.has("a") && !c.has("missing"));
        assert_eq!(c.get("b"), Some("x=y"));
        assert_eq!(c.get("c"), Some(""));
        assert_eq!(c.get("missing"), None);
        let unknown: Vec<_> = c.unknown_keys(&["a", "b"]).collect();
        assert_eq!(unknown, ["quiet", "c"]);
        let words: Vec<_> = c.words().collect();
        assert_eq!(words[..2], [("a", Some("1")), ("quiet", None)]);
        assert_eq!(c.as_str(), "a=1 quiet a=2  b=x=y\tc= a");
    }

    #[test]
    fn the_longest_command_line_keeps_every_word() {
        let text = "x ".repeat(CMDLINE_MAX / 2);
        let c = Cmdline::parse(&text);
        assert_eq!(c.words().count(), CMDLINE_MAX / 2);
        let long = "k=".to_string() + &"v".repeat(CMDLINE_MAX);
        assert_eq!(Cmdline::parse(&long).get("k").map(str::len), Some(CMDLINE_MAX - 2), "cut at the limit");
        assert_eq!(Cmdline::parse("").words().count(), 0);
        assert_eq!(Cmdline::parse("  \t ").words().count(), 0);
    }

    #[test]
    fn filling_keeps_printable_ascii_and_says_whether_the_line_was_cut() {
        let mut c = Cmdline::parse("old=1");
        assert!(c.fill(*b"a=1\x07 b\xff=2"));
        assert_eq!(c.as_str(), "a=1? b?=2");
        assert_eq!(c.get("a"), Some("1?"));
        assert_eq!(c.get("old"), None, "the line is replaced");
        let long = "x".repeat(CMDLINE_MAX) + " y";
        assert!(!c.fill(long.bytes()));
        assert_eq!(c.as_str().len(), CMDLINE_MAX);
        assert!(c.fill("z".repeat(CMDLINE_MAX).bytes()), "exactly the limit is not cut");
    }

    #[test]
    fn no_filter_runs_default_tests_only() {
        let line = Cmdline::parse("");
        let f = TestFilter::from_cmdline(&line);
        assert!(f.selects("arch::timer_ticks", true));
        assert!(!f.selects("harness::deliberate_failure", false));
    }

    #[test]
    fn module_patterns_respect_path_boundaries() {
        let line = Cmdline::parse("tests=arch,task::join");
        let f = TestFilter::from_cmdline(&line);
        assert!(f.selects("arch::timer_ticks", true));
        assert!(!f.selects("archive::x", true), "a module pattern is not a string prefix");
        assert!(f.selects("task::join", true));
        assert!(!f.selects("task::join_twice", true));
        assert!(!f.selects("pnp::ring", true));
    }

    #[test]
    fn star_is_a_prefix_and_off_by_default_tests_need_their_exact_name() {
        let line = Cmdline::parse("tests=harness::*");
        let f = TestFilter::from_cmdline(&line);
        assert!(f.selects("harness::report_line_format", true));
        assert!(!f.selects("harness::deliberate_failure", false));
        let exact_line = Cmdline::parse("tests=harness::deliberate_failure");
        let exact = TestFilter::from_cmdline(&exact_line);
        assert!(exact.selects("harness::deliberate_failure", false));
    }
}
