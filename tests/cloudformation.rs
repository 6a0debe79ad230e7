//! The AWS side as CloudFormation templates (cloudformation/): cfn-lint validates them, and
//! each set-up is created as a stack in moto's CloudFormation; the controller then runs against
//! the roles the stacks created, configured from the stacks' outputs as docs/aws-setup.md says.

mod support;

use std::collections::BTreeMap;
use std::process::Command;

use kube::api::PostParams;

use support::{
    Scene, boto3_identity_from_secret, data, role, scene, start_binary, start_binary_with, wait_for,
};

const TEMPLATES: [&str; 4] = [
    "cloudformation/instance-role.yaml",
    "cloudformation/controller-role.yaml",
    "cloudformation/bootstrap-role.yaml",
    "cloudformation/namespace-role.yaml",
];

fn cfn_lint(paths: &[&str]) -> std::process::Output {
    let venv = support::venv();
    Command::new(venv.join("bin/cfn-lint"))
        .args(paths)
        .current_dir(support::repo())
        .output()
        .expect("cfn-lint runs")
}

#[test]
fn every_template_passes_cfn_lint() {
    let out = cfn_lint(&TEMPLATES);
    assert!(
        out.status.success(),
        "cfn-lint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The check can fail: a template with a misspelt property does not pass.
    let dir = tempfile::tempdir().expect("tmp");
    let text = std::fs::read_to_string(support::repo().join(TEMPLATES[0])).expect("template");
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        text.replace("AssumeRolePolicyDocument", "AssumeRolePolicyDoc"),
    )
    .expect("write");
    let out = cfn_lint(&[broken.to_str().expect("path")]);
    assert!(!out.status.success(), "cfn-lint accepted a broken template");
}

/// Creates `template` as stack `name` in moto's CloudFormation with the AWS CLI, as
/// docs/aws-setup.md does; returns the stack's outputs.
fn create_stack(
    s: &Scene,
    name: &str,
    template: &str,
    params: &[(&str, &str)],
) -> BTreeMap<String, String> {
    let aws = |args: &[String]| {
        let out = Command::new(s.env.venv.join("bin/aws"))
            .args([
                "--endpoint-url",
                &s.env.moto_endpoint,
                "--region",
                "us-east-1",
            ])
            .args(args)
            .current_dir(support::repo())
            .env("AWS_ACCESS_KEY_ID", "AKIDADMIN00000000000")
            .env("AWS_SECRET_ACCESS_KEY", "admin")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .output()
            .expect("aws cli");
        assert!(
            out.status.success(),
            "aws {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let mut create: Vec<String> = [
        "cloudformation",
        "create-stack",
        "--stack-name",
        name,
        "--template-body",
        &format!("file://{template}"),
        "--capabilities",
        "CAPABILITY_NAMED_IAM",
        "--parameters",
    ]
    .map(String::from)
    .into();
    create.extend(
        params
            .iter()
            .map(|(k, v)| format!("ParameterKey={k},ParameterValue={v}")),
    );
    aws(&create);
    aws(&[
        "cloudformation".into(),
        "wait".into(),
        "stack-create-complete".into(),
        "--stack-name".into(),
        name.into(),
    ]);
    let outputs = aws(&[
        "cloudformation".into(),
        "describe-stacks".into(),
        "--stack-name".into(),
        name.into(),
        "--query".into(),
        "Stacks[0].Outputs".into(),
        "--output".into(),
        "json".into(),
    ]);
    let outputs: Vec<serde_json::Value> = serde_json::from_slice(&outputs).expect("outputs");
    outputs
        .iter()
        .map(|o| {
            (
                o["OutputKey"].as_str().expect("key").to_string(),
                o["OutputValue"].as_str().expect("value").to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_instance_role_set_up_gives_the_app_role_by_name() {
    let s = scene("cfn-instance").await;
    let app = format!("app-{}", s.ns);
    let outputs = create_stack(
        &s,
        &format!("instance-{}", s.ns),
        TEMPLATES[0],
        &[
            ("ControllerRoleName", &format!("node-{}", s.ns)),
            ("AppRoleName", &app),
        ],
    );
    let base = &outputs["BaseRoleArn"];
    let base_flag = format!("--base-role-arn={base}");
    let bin = start_binary_with(
        s.env,
        &s.ns,
        &s.env.moto_endpoint,
        &[&base_flag],
        support::Launch {
            discover_base_role_arn: true,
            ..Default::default()
        },
    )
    .await;
    s.roles
        .create(&PostParams::default(), &role("app", &app, 3600))
        .await
        .expect("create");
    let secret = wait_for("secret", || async {
        s.secrets.get_opt("app").await.ok().flatten()
    })
    .await;
    assert_eq!(data(&secret, "role-arn"), outputs["AppRoleArn"]);
    let arn = boto3_identity_from_secret(s.env, &secret);
    assert!(arn.contains(&format!(":assumed-role/{app}/")), "{arn}");
    bin.kill();
}

#[tokio::test]
async fn the_controller_role_set_up_chains_through_the_stacks_controller_role() {
    let s = scene("cfn-chain").await;
    let app = format!("app-{}", s.ns);
    let outputs = create_stack(
        &s,
        &format!("controller-{}", s.ns),
        TEMPLATES[1],
        &[
            (
                "ControllerPrincipalArn",
                "arn:aws:iam::123456789012:role/node",
            ),
            ("ControllerRoleName", &format!("controller-{}", s.ns)),
            ("AppRoleName", &app),
        ],
    );
    let assume = format!("--assume-role={}", outputs["ControllerRoleArn"]);
    let bin = start_binary(s.env, &s.ns, &s.env.moto_endpoint, &[&assume]).await;
    s.roles
        .create(
            &PostParams::default(),
            &role("app", &outputs["AppRoleArn"], 3600),
        )
        .await
        .expect("create");
    let secret = wait_for("secret", || async {
        s.secrets.get_opt("app").await.ok().flatten()
    })
    .await;
    assert_eq!(data(&secret, "role-arn"), outputs["AppRoleArn"]);
    let arn = boto3_identity_from_secret(s.env, &secret);
    assert!(arn.contains(&format!(":assumed-role/{app}/")), "{arn}");
    bin.kill();
}

#[tokio::test]
async fn the_bootstrap_set_up_seeds_the_stacks_controller_role() {
    let s = scene("cfn-bootstrap").await;
    let outputs = create_stack(
        &s,
        &format!("bootstrap-{}", s.ns),
        TEMPLATES[2],
        &[
            (
                "OperatorPrincipalArn",
                "arn:aws:iam::123456789012:user/ops-admin",
            ),
            ("ControllerRoleName", &format!("controller-{}", s.ns)),
            ("AppRoleName", &format!("app-{}", s.ns)),
        ],
    );
    let out = Command::new(support::binary_path())
        .arg("bootstrap")
        .arg(format!("--kubeconfig={}", s.env.kubeconfig.display()))
        .arg(format!("--namespace={}", s.ns))
        .arg(format!("--role={}", outputs["ControllerRoleArn"]))
        .arg(format!("--sts-endpoint={}", s.env.moto_endpoint))
        .arg("--sts-region=us-east-1")
        .env("AWS_ACCESS_KEY_ID", "AKIDOPERATOR00000000")
        .env("AWS_SECRET_ACCESS_KEY", "operator-secret")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("bootstrap");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = s
        .secrets
        .get("kube-aws-iam-controller")
        .await
        .expect("seed");
    assert_eq!(data(&secret, "role-arn"), outputs["ControllerRoleArn"]);
    let arn = boto3_identity_from_secret(s.env, &secret);
    assert!(
        arn.contains(&format!(":assumed-role/controller-{}/", s.ns)),
        "{arn}"
    );
}

#[tokio::test]
async fn the_namespace_role_stack_conditions_its_trust_on_the_namespace_tag() {
    let s = scene("cfn-namespace").await;
    let name = format!("team-{}", s.ns);
    let outputs = create_stack(
        &s,
        &format!("namespace-{}", s.ns),
        TEMPLATES[3],
        &[
            (
                "ControllerRoleArn",
                "arn:aws:iam::123456789012:role/kube-aws-iam-controller",
            ),
            ("Namespace", &s.ns),
            ("RoleName", &name),
        ],
    );
    // The trust policy moto stored names this namespace in the session-tag condition.
    let script = "import boto3,os,json; print(json.dumps(boto3.client('iam', endpoint_url=os.environ['EP'], region_name='us-east-1').get_role(RoleName=os.environ['ROLE'])['Role']['AssumeRolePolicyDocument']))";
    let out = Command::new(s.env.venv.join("bin/python"))
        .args(["-c", script])
        .env("EP", &s.env.moto_endpoint)
        .env("ROLE", &name)
        .env("AWS_ACCESS_KEY_ID", "AKIDADMIN00000000000")
        .env("AWS_SECRET_ACCESS_KEY", "admin")
        .output()
        .expect("python");
    let policy: serde_json::Value = serde_json::from_slice(&out.stdout).expect("policy");
    let condition = &policy["Statement"][0]["Condition"]["StringEquals"];
    assert_eq!(
        condition["aws:RequestTag/kubernetes-namespace"],
        s.ns.as_str()
    );

    // The controller with session tags gets it for an AWSIAMRole in that namespace.
    let bin = start_binary(s.env, &s.ns, &s.env.moto_endpoint, &["--session-tags"]).await;
    s.roles
        .create(
            &PostParams::default(),
            &role("team", &outputs["RoleArn"], 3600),
        )
        .await
        .expect("create");
    let secret = wait_for("secret", || async {
        s.secrets.get_opt("team").await.ok().flatten()
    })
    .await;
    assert_eq!(data(&secret, "role-arn"), outputs["RoleArn"]);
    bin.kill();
}
