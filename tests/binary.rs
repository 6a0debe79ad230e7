//! End to end: the built binary run as a process, the way users run it; the AWS CLI reads the
//! Secret through `credentials.process` from the kubelet's own Secret volume layout, read-only at
//! /meta/aws-iam, as a non-root user.

mod support;

use support::{Scene, scene};

use kube::api::PostParams;

use support::kubelet::{SecretVolume, VolumeSpec};
use support::{aws_cli_identity, data, role, start_binary, wait_for};

#[tokio::test]
async fn the_binary_issues_credentials_the_aws_cli_uses_and_logs_no_secret() {
    let Scene {
        env,
        ns,
        roles,
        secrets,
        ..
    } = scene("binary").await;
    let bin = start_binary(
        env,
        &ns,
        &env.moto_endpoint,
        &["--log-format=json", "--log-level=debug"],
    )
    .await;
    roles
        .create(
            &PostParams::default(),
            &role("cli-user", "team/cli-role", 3600),
        )
        .await
        .expect("create");
    let secret = wait_for("secret cli-user", || async {
        secrets.get_opt("cli-user").await.ok().flatten()
    })
    .await;

    let volume = SecretVolume::start(env, &ns, "cli-user", &VolumeSpec::default()).await;
    let arn = aws_cli_identity(env, &volume.dir, &env.moto_endpoint).expect("aws cli");
    assert_eq!(
        arn,
        format!("arn:aws:sts::123456789012:assumed-role/cli-role/{ns}@cli-user")
    );

    wait_for("readyz", || async {
        Some(bin.admin("/readyz").await).filter(|r| r.starts_with("200"))
    })
    .await;
    let metrics = bin.admin("/metrics").await;
    assert!(
        metrics.contains("kaic_credentials_issued_total{reason=\"missing\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kaic_awsiamroles{ready=\"true\"} 1"),
        "{metrics}"
    );

    let logs = bin.logs();
    assert!(logs.contains("credentials issued"), "{logs}");
    let json: serde_json::Value =
        serde_json::from_str(&data(&secret, "credentials.json")).expect("json");
    for field in ["SecretAccessKey", "SessionToken"] {
        let value = json[field].as_str().expect("field");
        assert!(!value.is_empty());
        assert!(
            !logs.contains(value),
            "{field} appears in the controller's logs"
        );
    }
    bin.kill();
}
