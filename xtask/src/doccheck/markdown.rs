//! Where a Markdown document shows a command: each line of a fenced ```` ```sh ```` block (a
//! trailing `# comment` is not part of it), and each inline code span in the prose whose text
//! starts with a program a reader would run (`cargo ...`, `grep ...`, `target/debug/... ...`)
//! followed by its arguments. A span of one word (`cargo xtask` has two, `sudo` one) names a
//! program or a file rather than a command. Inline spans may run over a line break; their
//! whitespace is read as single spaces, as Markdown renders it.

/// Programs whose inline spans are commands.
const PROGRAMS: &[&str] =
    &["cargo", "grep", "rustup", "sudo", "apt-get", "apt", "git", "sh", "bash", "taskset", "mount"];

/// Path prefixes of programs run from the work tree.
const PROGRAM_PATHS: &[&str] = &["target/", "./", ".ci/"];

/// A command as a document shows it, with its line (1-based) and where it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shown {
    pub line: usize,
    pub command: String,
    /// In the prose (an inline code span), not in a `sh` block.
    pub inline: bool,
}

/// Every command `text` shows, in `sh` blocks and inline, in the order they appear.
pub fn commands_in(text: &str) -> Vec<Shown> {
    let mut out = Vec::new();
    let mut fence: Option<&str> = None;
    let mut in_sh = false;
    // The current paragraph of prose: (line number, line).
    let mut paragraph: Vec<(usize, &str)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(marker)) => {
                out.extend(inline_commands(&paragraph));
                paragraph.clear();
                fence = Some(marker);
                in_sh = trimmed.trim_start_matches(marker).trim() == "sh";
            }
            (Some(open), Some(marker)) if marker == open && trimmed.trim_start_matches(marker).trim().is_empty() => {
                fence = None;
                in_sh = false;
            }
            (Some(_), _) => {
                let command = strip_comment(trimmed);
                if in_sh && !command.is_empty() {
                    out.push(Shown { line: i + 1, command: command.to_string(), inline: false });
                }
            }
            (None, None) if trimmed.is_empty() => {
                out.extend(inline_commands(&paragraph));
                paragraph.clear();
            }
            (None, None) => paragraph.push((i + 1, line)),
        }
    }
    out.extend(inline_commands(&paragraph));
    out
}

/// The commands among the inline code spans of one paragraph.
fn inline_commands(paragraph: &[(usize, &str)]) -> Vec<Shown> {
    code_spans(paragraph)
        .into_iter()
        .filter(|(_, span)| is_command(span))
        .map(|(line, command)| Shown { line, command, inline: true })
        .collect()
}

/// The inline code spans of a paragraph, each with the line it starts on, its whitespace
/// collapsed to single spaces. A span opens with a run of backticks and closes at the next run
/// of as many; an opening run with no closing one is literal text.
fn code_spans(paragraph: &[(usize, &str)]) -> Vec<(usize, String)> {
    let chars: Vec<(usize, char)> =
        paragraph.iter().flat_map(|(line, text)| text.chars().chain(['\n']).map(move |c| (*line, c))).collect();
    let run_at = |i: usize| chars[i..].iter().take_while(|(_, c)| *c == '`').count();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let open = run_at(i);
        if open == 0 {
            i += 1;
            continue;
        }
        let mut j = i + open;
        let close = loop {
            if j >= chars.len() {
                break None;
            }
            let run = run_at(j);
            if run == open {
                break Some(j);
            }
            j += run.max(1);
        };
        match close {
            Some(end) => {
                let content: String = chars[i + open..end].iter().map(|(_, c)| *c).collect();
                spans.push((chars[i].0, content.split_whitespace().collect::<Vec<_>>().join(" ")));
                i = end + open;
            }
            None => i += open,
        }
    }
    spans
}

/// Whether an inline span's text is a command: a program and at least one argument.
fn is_command(span: &str) -> bool {
    let Some((program, _arguments)) = span.split_once(' ') else { return false };
    PROGRAMS.contains(&program) || PROGRAM_PATHS.iter().any(|p| program.starts_with(p))
}

/// A shell line without its trailing comment: a `#` that starts a word outside quotes.
fn strip_comment(line: &str) -> &str {
    let (mut quote, mut previous) = (None, ' ');
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if previous.is_whitespace() => return line[..i].trim_end(),
            _ => {}
        }
        previous = c;
    }
    line.trim_end()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(line: usize, command: &str) -> Shown {
        Shown { line, command: command.to_string(), inline: false }
    }

    fn inline(line: usize, command: &str) -> Shown {
        Shown { line, command: command.to_string(), inline: true }
    }

    #[test]
    fn commands_are_the_lines_of_sh_blocks_without_their_comments() {
        let text = "intro\n```sh\ncargo a   # does a\n\ncargo b \"x # y\" # real comment\n```\n\
                    ```text\nnot a command\ncargo c\n```\n```sh\ngrep -c '#' f\n```\n";
        assert_eq!(commands_in(text), [block(3, "cargo a"), block(5, "cargo b \"x # y\""), block(12, "grep -c '#' f")]);
    }

    /// A command told in prose is a command too: a check cannot miss it for being inline.
    #[test]
    fn inline_commands_are_found_across_line_breaks_but_not_in_blocks_or_single_words() {
        let text = "Run `cargo xtask\n  run --list` or `grep -rn \"x\" src`; the file is `target/debug/host`,\n\
                    the tool `cargo`, with `sudo` as root, and ``a `tick` in cargo x``.\n\n\
                    ```text\n`cargo not-this one`\n```\n\
                    | a | `target/debug/pvagent-host --help` |\n\nA `git status` here.\n";
        assert_eq!(
            commands_in(text),
            [
                inline(1, "cargo xtask run --list"),
                inline(2, "grep -rn \"x\" src"),
                inline(8, "target/debug/pvagent-host --help"),
                inline(10, "git status"),
            ]
        );
    }

    #[test]
    fn a_fence_is_closed_only_by_its_own_marker() {
        let text = "~~~text\n```\n`cargo x y`\n~~~\n`cargo c d`\n```sh\ncargo e\n```\n";
        assert_eq!(commands_in(text), [inline(5, "cargo c d"), block(7, "cargo e")]);
    }
}
