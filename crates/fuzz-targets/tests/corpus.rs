//! Every input kept by fuzzing, run through its target on stable: the corpus in
//! `fuzz/corpus/<target>/` and the crash reproducers in
//! `fuzz/regressions/<target>/`. A missing or empty corpus fails the test, so it
//! never passes without running anything.

use std::fs;
use std::panic;
use std::path::{Path, PathBuf};
use std::time::Instant;

use herald_fuzz_targets::{Target, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The input files of a directory, sorted; hidden files and READMEs are not
/// inputs. `None` when the directory does not exist.
fn inputs(dir: &Path) -> Option<Vec<PathBuf>> {
    let entries = fs::read_dir(dir).ok()?;
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.') && !name.ends_with(".md")
        })
        .collect();
    files.sort();
    Some(files)
}

/// Runs each file through `target`, catching panics so that every failing file
/// is named.
fn run(name: &str, target: Target, files: &[PathBuf], failures: &mut Vec<String>) {
    for path in files {
        let data = fs::read(path).expect("a readable input file");
        if panic::catch_unwind(|| target(&data)).is_err() {
            failures.push(format!("{name}: {}", path.display()));
        }
    }
}

#[test]
fn corpus_and_regressions_pass() {
    let fuzz = fuzz_dir();
    let regressions = fuzz.join("regressions");
    assert!(regressions.is_dir(), "{} is missing", regressions.display());
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut total = 0;
    for &(name, target) in TARGETS {
        let corpus_dir = fuzz.join("corpus").join(name);
        let corpus = inputs(&corpus_dir)
            .unwrap_or_else(|| panic!("corpus {} is missing", corpus_dir.display()));
        assert!(
            !corpus.is_empty(),
            "corpus {} is empty",
            corpus_dir.display()
        );
        let found = inputs(&regressions.join(name)).unwrap_or_default();
        run(name, target, &corpus, &mut failures);
        run(name, target, &found, &mut failures);
        println!(
            "{name}: {} corpus inputs, {} reproducers",
            corpus.len(),
            found.len()
        );
        total += corpus.len() + found.len();
    }
    println!("{total} inputs in {:.1?}", started.elapsed());
    assert!(
        failures.is_empty(),
        "failing inputs:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_target_has_a_fuzz_binary() {
    let dir = fuzz_dir().join("fuzz_targets");
    for &(name, _) in TARGETS {
        let path = dir.join(format!("{name}.rs"));
        assert!(path.is_file(), "{} is missing", path.display());
    }
}
