//! Prints the AWSIAMRole CustomResourceDefinition as YAML (committed as `deploy/crd.yaml`).

fn main() -> Result<(), serde_yaml::Error> {
    print!("{}", kube_aws_iam_controller::crd::crd_yaml()?);
    Ok(())
}
