//! Bundles exported by earlier versions of custody, checked in as they
//! were exported: the verifier must keep verifying them as they are, so a
//! change to the statements' shapes can never strand evidence an auditor
//! already holds. Refresh them only by adding new ones (see the evidence
//! tests' `CUSTODY_WRITE_GOLDEN`).

use custody_formats::evidence::Bundle;
use custody_formats::trust::TrustRoot;
use custody_formats::verify::verify;

fn golden(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_production_release_exported_earlier_still_verifies() {
    let bundle = Bundle::parse(&golden("deployment.bundle.json")).expect("a bundle");
    let trust = TrustRoot::parse(&golden("trust.json")).expect("a trust file");
    let report = verify(&bundle, &trust, None);
    let failed: Vec<_> = report.failures().collect();
    assert!(report.valid, "{failed:#?}");
    assert_eq!(report.environments, ["staging", "production"]);
    let holders = |step: &str, duty: &str| {
        report.duties.iter().find(|d| d.step == step && d.duty == duty).map(|d| d.holders.clone()).unwrap_or_default()
    };
    assert_eq!(holders("change 1", "author"), ["alice"]);
    assert_eq!(holders("change 1", "reviewer"), ["bob"]);
    assert_eq!(holders("deployment 2 (production)", "approver"), ["carol"]);
    // With another approver written in, it no longer verifies.
    let text = golden("deployment.bundle.json");
    let altered = text.replacen("\"carol\"", "\"alice\"", 1);
    assert_ne!(altered, text);
    let altered = Bundle::parse(&altered).expect("still a bundle");
    assert!(!verify(&altered, &trust, None).valid);
}

#[test]
fn the_whole_report_of_a_golden_bundle_is_as_recorded() {
    // Every check's rule, subject and message, in order, and every duty,
    // person, finding and key: what auditors and their scripts read.
    let trust = TrustRoot::parse(&golden("trust.json")).expect("a trust file");
    let text = golden("deployment.bundle.json");
    let altered = text.replacen("\"carol\"", "\"alice\"", 1);
    for (bundle, expected) in
        [(text, "deployment.report.json"), (altered, "deployment.carol-approves-as-alice.report.json")]
    {
        let report = verify(&Bundle::parse(&bundle).expect("a bundle"), &trust, None);
        let expected: serde_json::Value = serde_json::from_str(&golden(expected)).expect("a report");
        assert_eq!(serde_json::to_value(&report).expect("serializes"), expected, "{expected}");
    }
}
