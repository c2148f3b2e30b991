//! The pvagent guest kernel.
//!
//! Layers, bottom to top: `cell` (the two doors to shared statics), `boot` and `arch`
//! (hardware, no protocol knowledge), `task` (the scheduler), `pv` (the paravirtual protocols),
//! `selftest`; `start` is the boot sequence the kernel binaries share (the product kernel,
//! `main.rs`, and the benchmark kernel, `bench/`, whose code lives only in that binary). Modules
//! whose logic is plain code (the memory layout, the scheduler's bookkeeping, the command line,
//! the protocol state machines) build for the host too and are unit-tested there; everything
//! that touches hardware is `cfg(kernel)`.

#![cfg_attr(not(test), no_std)]

pub mod arch;
pub mod boot;
pub mod cell;
pub mod pv;
pub mod task;

#[cfg(kernel)]
pub mod console;
#[cfg(kernel)]
pub mod selftest;
#[cfg(kernel)]
pub mod start;
#[cfg(any(kernel, test))]
pub mod sync;
#[cfg(test)]
mod testing;

/// The kernel's version, printed at boot.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Checks of the self-tests' sources (which build only for the kernel), run on the host.
#[cfg(test)]
mod selftest_sources {
    use std::path::Path;

    /// Words that make a value an address or a data word, which a failure must show in hex.
    const ADDRESS_WORDS: &[&str] = &["rip", "insn", "addr", "address", "gpa", "gva", "cr2", "cr3", "pattern"];

    /// The `ensure_eq!` invocations of a source text: (line, the two compared expressions).
    fn ensure_eq_operands(text: &str) -> Vec<(usize, String, String)> {
        let mut out = Vec::new();
        for (at, _) in text.match_indices("ensure_eq!(") {
            let line = text[..at].lines().count().max(1);
            let args = &text[at + "ensure_eq!(".len()..];
            // Split at the top-level commas up to the closing parenthesis.
            let (mut depth, mut start, mut parts) = (0i32, 0, Vec::new());
            for (i, c) in args.char_indices() {
                match c {
                    '(' | '[' | '{' => depth += 1,
                    ')' | ']' | '}' if depth == 0 => {
                        parts.push(&args[start..i]);
                        break;
                    }
                    ')' | ']' | '}' => depth -= 1,
                    ',' if depth == 0 => {
                        parts.push(&args[start..i]);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            if let [left, right, ..] = parts[..] {
                out.push((line, left.trim().to_string(), right.trim().to_string()));
            }
        }
        out
    }

    /// Whether an expression is an address or data word, by its words; an `ExitStatus` prints
    /// its value in hex itself.
    fn is_address(expression: &str) -> bool {
        !expression.contains("ExitStatus::")
            && expression
                .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .flat_map(|word| word.split('_'))
                .any(|word| ADDRESS_WORDS.contains(&word.to_ascii_lowercase().as_str()))
    }

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read the self-tests' directory").flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }

    /// `ensure_eq!` shows its values as `Debug` does, in decimal for integers: an address or a
    /// data word compared with it would read as a decimal number in the failure, unlike
    /// anywhere else. Those go through `ensure_eq_hex!`.
    #[test]
    fn addresses_and_data_words_are_compared_with_ensure_eq_hex() {
        let mut files = Vec::new();
        rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/selftest"), &mut files);
        assert!(files.len() >= 5, "{files:?}");
        let mut decimal = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).expect("read a self-test source");
            for (line, left, right) in ensure_eq_operands(&text) {
                if is_address(&left) || is_address(&right) {
                    decimal.push(format!("{}:{line}: ensure_eq!({left}, {right}, ...)", file.display()));
                }
            }
        }
        assert!(decimal.is_empty(), "use ensure_eq_hex! for these:\n{}", decimal.join("\n"));
    }

    #[test]
    fn the_check_reads_each_invocations_two_operands() {
        let text = "x\n    ensure_eq!(HOOK_RIP.load(Ordering::SeqCst), insn, \"RIP of the #AC\");\n\
                    ensure_eq!(join(id)?, ExitStatus::Returned(backing_pattern(gpa)), \"data\");\n\
                    ensure_eq!(after.events - before.events, 2, \"events: {}\", [1, 2].len());";
        let found = ensure_eq_operands(text);
        assert_eq!(found[0], (2, "HOOK_RIP.load(Ordering::SeqCst)".into(), "insn".into()));
        assert!(is_address(&found[0].1) && is_address(&found[0].2));
        assert!(!is_address(&found[1].2), "ExitStatus prints in hex itself");
        assert_eq!(found[2].2, "2");
        assert!(!is_address(&found[2].1));
    }
}

#[cfg(kernel)]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    match info.location() {
        Some(at) => arch::fault::fatal(format_args!("panicked at {}:{}: {}", at.file(), at.line(), info.message())),
        None => arch::fault::fatal(format_args!("panicked: {}", info.message())),
    }
}
