//! Prints the Activity CRD as YAML: `cargo run -p activity-crds --bin crdgen > crds/activity.yaml`.

fn main() -> Result<(), serde_norway::Error> {
    print!("{}", activity_crds::crd_yaml()?);
    Ok(())
}
