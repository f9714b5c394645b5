//! The server's place among the crates: it reaches releases, merges and
//! pushes through the application layer, never through the job runner.

#[test]
fn the_server_does_not_depend_on_the_runner() {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let dependencies: Vec<&str> = manifest
        .lines()
        .skip_while(|line| line.trim() != "[dependencies]")
        .skip(1)
        .take_while(|line| !line.starts_with('['))
        .collect();
    assert!(dependencies.iter().any(|line| line.starts_with("custody-app")), "{dependencies:?}");
    assert!(!dependencies.iter().any(|line| line.starts_with("custody-runner")), "{dependencies:?}");
}

/// Every source file of the server, with its path.
fn server_sources() -> Vec<(std::path::PathBuf, String)> {
    let mut files = Vec::new();
    let mut dirs = vec![std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                files.push((path, text));
            }
        }
    }
    files
}

#[test]
fn the_server_neither_merges_nor_signs_nor_moves_a_ref_itself() {
    // Making a merge commit, signing its attestation and moving a protected
    // ref are the application layer's (custody_app::Changes); the server
    // only calls it.
    for (path, text) in server_sources() {
        for needle in ["commit_tree", "compare_and_swap", "merge_tree", ".sign(", "Statement::new"] {
            assert!(!text.contains(needle), "{} contains `{needle}`", path.display());
        }
    }
}
