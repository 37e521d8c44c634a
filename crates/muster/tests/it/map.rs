//! ARCHITECTURE.md's map stays true: every source file of every crate has its row under its
//! crate's heading, and every row names a file that exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The workspace's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every file under `dir`, at any depth.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() { pending.push(path) } else { found.push(path) }
        }
    }
    found
}

/// The files of `crates/<crate>/src` as the map names them (unit-test files left out).
fn files(src: &Path, found: &mut BTreeSet<String>) {
    for path in walk(src) {
        let relative = path.strip_prefix(src).unwrap().to_string_lossy().into_owned();
        let name = path.file_name().unwrap().to_string_lossy();
        if name == "tests.rs" || relative == "serve/mapping.rs" {
            continue;
        }
        if relative.starts_with("lua/") {
            found.insert("lua/*.lua".to_owned());
        } else if name.ends_with(".rs") || name.ends_with(".html") || name.ends_with(".js") {
            found.insert(relative);
        }
    }
}

#[test]
fn the_architecture_map_lists_every_source_file() {
    let root = root();
    let map = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut mismatches = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        let krate = dir.file_name().unwrap().to_string_lossy().into_owned();
        let src = dir.join("src");
        if !src.is_dir() || krate == "muster-peer-macros" {
            continue;
        }
        let mut on_disk = BTreeSet::new();
        files(&src, &mut on_disk);
        // The rows under `### `<crate>`` up to the next heading.
        let Some(start) = map.find(&format!("### `{krate}`")) else {
            mismatches.push(format!("{krate}: no section"));
            continue;
        };
        let section = &map[start..];
        let section = &section[3..section[3..].find("\n#").map_or(section.len(), |end| end + 3)];
        let in_map: BTreeSet<String> = section
            .lines()
            .filter_map(|line| line.strip_prefix("| `")?.split('`').next().map(str::to_owned))
            .collect();
        for missing in on_disk.difference(&in_map) {
            mismatches.push(format!("{krate}: {missing} is not in the map"));
        }
        for gone in in_map.difference(&on_disk) {
            mismatches.push(format!("{krate}: the map lists {gone}, which does not exist"));
        }
    }
    assert!(mismatches.is_empty(), "ARCHITECTURE.md is out of date:\n{}", mismatches.join("\n"));
}

/// Every source file, as `files` finds them, with its path from the workspace root.
fn every_source_file(root: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        let src = entry.unwrap().path().join("src");
        if src.is_dir() {
            let mut found = BTreeSet::new();
            files(&src, &mut found);
            all.extend(found.into_iter().filter(|file| file.ends_with(".rs")).map(|file| src.join(file)));
        }
    }
    all
}

/// A reader never has to scroll past 500 lines of one file to find what it holds (unit-test files
/// aside: they sit beside the code they test).
#[test]
fn no_source_file_is_over_500_lines() {
    let root = root();
    let long: Vec<String> = every_source_file(&root)
        .into_iter()
        .filter_map(|path| {
            let lines = std::fs::read_to_string(&path).unwrap().lines().count();
            (lines > 500).then(|| format!("{} ({lines} lines)", path.strip_prefix(&root).unwrap().display()))
        })
        .collect();
    assert!(long.is_empty(), "split these by responsibility:\n{}", long.join("\n"));
}

/// Each invariant ARCHITECTURE.md lists names the tests that check it, and each test it names
/// exists (a renamed or deleted test would leave the invariant unchecked while the map still
/// claimed it).
#[test]
fn every_invariant_names_tests_that_exist() {
    let root = root();
    let map = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let invariants = &map[map.find("## Invariants").expect("an Invariants section")..];
    let mut functions = BTreeSet::new();
    for path in walk(&root.join("crates")).into_iter().filter(|p| p.extension().is_some_and(|e| e == "rs")) {
        let text = std::fs::read_to_string(&path).unwrap();
        functions.extend(text.split("fn ").skip(1).filter_map(|rest| {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        }));
    }
    // The numbered items: "1. **...", each up to the next.
    let mut items: Vec<String> = Vec::new();
    for line in invariants.lines() {
        let numbered = line
            .split_once(". **")
            .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
        if numbered {
            items.push(String::new());
        }
        if let Some(item) = items.last_mut() {
            item.push_str(line);
            item.push('\n');
        }
    }
    assert!(items.len() >= 10, "the invariants were not found: {}", items.len());
    let mut problems = Vec::new();
    for item in &items {
        let named: Vec<&str> = item
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|word| {
                word.contains('_')
                    && word.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            })
            .collect();
        let title = item.lines().next().unwrap_or_default();
        if named.is_empty() {
            problems.push(format!("names no test: {title}"));
        }
        for name in named {
            if !functions.contains(name) {
                problems.push(format!("names `{name}`, which no source file defines: {title}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
