//! The kernel's only string instructions are its `memcpy`, `memmove`, `memset` and `memcmp`
//! (`src/arch/mem.rs`), which count their iterations for the benchmarks: KVM's count of emulated
//! instructions sees a `rep` string instruction once per 1,024 iterations, so one written
//! anywhere else (a `rep stosb` clearing `.bss`, say) would cost an emulated boot its time and
//! no budget would notice. This test reads the kernel's sources and fails on any other.

use std::path::{Path, PathBuf};

/// The string instructions, as the assembler spells them (Intel and AT&T).
const MNEMONICS: &[&str] = &["movs", "stos", "cmps", "scas", "lods", "ins", "outs"];
/// The prefixes that repeat them.
const PREFIXES: &[&str] = &["rep", "repe", "repz", "repne", "repnz"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("the kernel's source directory reads") {
        let path = entry.expect("a directory entry reads").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Whether `line` holds a repeated string instruction: a prefix, then a mnemonic.
fn repeats_a_string_instruction(line: &str) -> bool {
    let words: Vec<&str> =
        line.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()).map(str::trim).collect();
    words.windows(2).any(|pair| {
        let (prefix, insn) = (pair[0].to_ascii_lowercase(), pair[1].to_ascii_lowercase());
        // The mnemonic, less its operand size (`stosb`, `movsq`; AT&T also `l`).
        let base = insn.strip_suffix(['b', 'w', 'd', 'l', 'q']).unwrap_or(&insn);
        PREFIXES.contains(&prefix.as_str()) && MNEMONICS.contains(&base)
    })
}

#[test]
fn recognises_the_forms_it_looks_for() {
    for line in ["rep stosb", "    rep movsq", "\"repe cmpsb\", \"sete {equal}\"", "REP STOS %al,%es:(%rdi)"] {
        assert!(repeats_a_string_instruction(line), "{line}");
    }
    for line in ["// the prefix repeats", "stosb", "let reps = 3;", "rep_count += 1", "rep={rep} outstanding={n}"] {
        assert!(!repeats_a_string_instruction(line), "{line}");
    }
}

#[test]
fn only_arch_mem_has_string_instructions() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "the kernel's sources were not found under {}", src.display());
    let mut found = Vec::new();
    for file in files.iter().filter(|f| !f.ends_with("arch/mem.rs")) {
        let text = std::fs::read_to_string(file).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if repeats_a_string_instruction(code) {
                found.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "string instructions outside arch/mem.rs (not counted):\n{}", found.join("\n"));
    let mem = std::fs::read_to_string(src.join("arch/mem.rs")).unwrap();
    assert!(mem.lines().any(repeats_a_string_instruction), "arch/mem.rs no longer has them: the test is stale");
}
