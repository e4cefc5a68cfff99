//! The module map in `src/lib.rs` stays true: a top-level module uses only
//! modules listed below it there (no arrow back up the map, so no cycle
//! between modules).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The modules of the map, top first, as `lib.rs`'s docs list them.
fn map_order(lib: &str) -> Vec<String> {
    let mut order = Vec::new();
    for line in lib.lines().take_while(|l| l.starts_with("//!")) {
        let Some(item) = line.strip_prefix("//! - ") else {
            continue;
        };
        let head = item.split(':').next().unwrap_or("");
        for name in head.split("[`").skip(1) {
            order.push(name.split('`').next().unwrap().to_string());
        }
    }
    order
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a module's files name as `crate::<module>`.
fn uses(src: &Path, module: &str) -> BTreeSet<String> {
    let mut files = Vec::new();
    let dir = src.join(module);
    if dir.is_dir() {
        rust_files(&dir, &mut files);
    }
    let file = src.join(format!("{module}.rs"));
    if file.is_file() {
        files.push(file);
    }
    let mut used = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, _) in text.match_indices("crate::") {
            // `broker_crate::` and the like are not this crate.
            let before = text[..i].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let name: String = text[i + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() && name != module {
                used.insert(name);
            }
        }
    }
    used
}

#[test]
fn every_module_uses_only_modules_below_it_in_the_lib_rs_map() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let order = map_order(&lib);
    assert!(order.len() >= 8, "lib.rs map not found: {order:?}");
    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect();
    let listed: BTreeSet<String> = order.iter().cloned().collect();
    assert_eq!(
        declared, listed,
        "every module of lib.rs is in its map, once"
    );
    let mut upward = Vec::new();
    for (i, module) in order.iter().enumerate() {
        for used in uses(&src, module) {
            // Only modules of the map count (`crate::Result` and the like
            // are re-exports).
            if let Some(j) = order.iter().position(|m| *m == used)
                && j <= i
            {
                upward.push(format!("{module} -> {used}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "arrows back up the module map of lib.rs: {upward:?}"
    );
}
