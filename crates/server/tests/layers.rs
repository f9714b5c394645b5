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
