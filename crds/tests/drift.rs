//! The committed CRD YAML and the chart's copy must equal what the types generate.

use std::path::Path;

#[test]
fn committed_crd_matches_the_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let generated = activity_crds::crd_yaml().expect("serialize CRD");
    for copy in ["crds/activity.yaml", "charts/activity-operator/crds/activity.yaml"] {
        let committed = std::fs::read_to_string(root.join(copy)).unwrap_or_default();
        assert!(
            committed == generated,
            "{copy} is out of date: run `make crds` (cargo run -p activity-crds --bin crdgen)"
        );
    }
}
