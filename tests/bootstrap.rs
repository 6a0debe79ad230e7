//! Bootstrap off AWS, end to end: `kube-aws-iam-controller bootstrap` seeds the controller's
//! AWSIAMRole and Secret with the operator's AWS credentials; the controller binary then runs
//! with that Secret mounted at /meta/aws-iam (by the kubelet's own volume code), reading its own
//! `credentials.json` with `--credentials-file`, as `deploy/deployment-with-role.yaml` runs it. It renews its
//! own Secret and keeps issuing after the seed credentials have expired; the STS double
//! authenticates every call (SigV4 against the secret it issued), rejects expired keys
//! (`ExpiredToken`) and enforces the role-chaining limit.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, PostParams};

use kube_aws_iam_controller::crd::AWSIAMRole;
use support::kubelet::{SecretVolume, VolumeSpec};
use support::sts_double::StsDouble;
use support::{Launch, binary_path, data, env, role, start_binary_with, wait_for, wait_for_within};

const PREFIX: &str = "arn:aws:iam::123456789012:role/";
const NAME: &str = "kube-aws-iam-controller";
const OPERATOR_KEY: &str = "AKIDOPERATOR00000000";

/// Runs `kube-aws-iam-controller bootstrap ...` as the operator would, with the operator's
/// own AWS credentials; returns (success, stdout, stderr).
async fn bootstrap(args: Vec<String>) -> (bool, String, String) {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary_path())
            .arg("bootstrap")
            .args(args)
            .env("AWS_ACCESS_KEY_ID", OPERATOR_KEY)
            .env("AWS_SECRET_ACCESS_KEY", "operator-secret")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .output()
    })
    .await
    .expect("join")
    .expect("run bootstrap");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What the bootstrap Deployment manifest sets up for the controller's own credentials.
struct ManifestView {
    secret_name: String,
    mount_path: String,
    /// The container's AWS_* environment variables with literal values.
    aws_env: Vec<(&'static str, String)>,
    /// The container's `--credentials-file=...` flag.
    credentials_file_arg: String,
    deployment: Deployment,
}

impl ManifestView {
    fn read() -> Self {
        let text =
            std::fs::read_to_string(support::repo().join("deploy/deployment-with-role.yaml"))
                .expect("deploy/deployment-with-role.yaml");
        let deployment = support::pod::deployment(&text);
        let pod = deployment.spec.template.spec.clone().expect("pod spec");
        let volume = pod
            .volumes
            .unwrap_or_default()
            .into_iter()
            .find(|v| v.secret.is_some())
            .expect("a Secret volume");
        let container = &pod.containers[0];
        let mount = container
            .volume_mounts
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|m| m.name == volume.name)
            .expect("the Secret volume is mounted");
        let aws_env = container
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| {
                let name: &'static str = match e.name.as_str() {
                    "AWS_EC2_METADATA_DISABLED" => "AWS_EC2_METADATA_DISABLED",
                    other if other.starts_with("AWS_") => panic!("unexpected {other}"),
                    _ => return None,
                };
                Some((name, e.value.expect("literal value")))
            })
            .collect();
        let credentials_file_arg = container
            .args
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|a| a.starts_with("--credentials-file="))
            .expect("--credentials-file");
        ManifestView {
            credentials_file_arg,
            secret_name: volume
                .secret
                .and_then(|s| s.secret_name)
                .unwrap_or_default(),
            mount_path: mount.mount_path,
            aws_env,
            deployment,
        }
    }
}

#[tokio::test]
async fn the_bootstrap_deployment_manifest_is_valid_and_mounts_the_controllers_own_secret() {
    let env = env().await;
    let client = env.client().await;
    let m = ManifestView::read();
    assert_eq!(m.secret_name, NAME);
    assert_eq!(m.mount_path, "/meta/aws-iam");
    assert_eq!(
        m.credentials_file_arg,
        "--credentials-file=/meta/aws-iam/credentials.json"
    );
    assert!(
        m.aws_env
            .iter()
            .all(|(k, _)| *k != "AWS_CONFIG_FILE" && *k != "AWS_SHARED_CREDENTIALS_FILE"),
        "no credential_process: {:?}",
        m.aws_env
    );
    let ns = m.deployment.metadata.namespace.clone().expect("namespace");
    let api: Api<Deployment> = Api::namespaced(client, &ns);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    api.create(&dry_run, &m.deployment)
        .await
        .expect("the API server accepts the manifest");
}

fn expiry(secret: &Secret) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(&data(secret, "expire"))
        .expect("expire")
        .with_timezone(&chrono::Utc)
}

#[tokio::test]
async fn a_bootstrapped_controller_renews_its_own_secret_and_keeps_issuing_after_the_seed_expired()
{
    let started = Instant::now();
    let env = env().await;
    let client = env.client().await;
    let ns = env.namespace(&client, "bootstrap").await;
    let sts = StsDouble::start().await;
    let controller_arn = format!("{PREFIX}kaic-controller");
    let app_arn = format!("{PREFIX}app");
    let long_arn = format!("{PREFIX}long");
    // Every session of the controller's role lives 30 s (the seed included), the app's 20 s.
    sts.lifetime(&controller_arn, Duration::from_secs(30));
    sts.lifetime(&app_arn, Duration::from_secs(20));
    // Unchained this role would allow 2 h; from the controller's role session only 1 h.
    sts.max_session(&long_arn, 7200);

    let (ok, stdout, stderr) = bootstrap(vec![
        format!("--kubeconfig={}", env.kubeconfig.display()),
        format!("--namespace={ns}"),
        format!("--name={NAME}"),
        "--role=kaic-controller".into(),
        format!("--sts-endpoint={}", sts.endpoint),
        "--sts-region=us-east-1".into(),
    ])
    .await;
    assert!(ok, "bootstrap failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(&controller_arn), "{stdout}");

    // The seed: an AWSIAMRole naming the full ARN, and its Secret owned by it and labelled.
    let roles: Api<AWSIAMRole> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let own = roles.get(NAME).await.expect("the controller's AWSIAMRole");
    assert_eq!(own.spec.role_reference, controller_arn);
    assert_eq!(own.spec.role_session_duration, 3600);
    let seed = secrets.get(NAME).await.expect("the seed Secret");
    assert_eq!(seed.labels()["heritage"], "kube-aws-iam-controller");
    assert_eq!(seed.labels()["type"], "awsiamrole");
    let owner = &seed.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), Some(owner.uid.clone())),
        ("AWSIAMRole", own.uid())
    );
    assert_eq!(data(&seed, "role-arn"), controller_arn);
    let seed_keys = sts.issued_keys(&controller_arn);
    assert_eq!(seed_keys.len(), 1);
    let seed_request = sts
        .requests()
        .into_iter()
        .find(|r| r.action == "AssumeRole")
        .expect("the seed AssumeRole");
    assert_eq!(
        seed_request.caller_access_key.as_deref(),
        Some(OPERATOR_KEY)
    );
    let seed_expiry = expiry(&seed);

    // The controller as deploy/deployment-with-role.yaml runs it: its own Secret at
    // /meta/aws-iam (kept current as the kubelet does), the manifest's AWS environment, and no
    // other AWS credentials.
    let manifest = ManifestView::read();
    assert_eq!(manifest.secret_name, NAME);
    assert_eq!(manifest.mount_path, "/meta/aws-iam");
    let volume = SecretVolume::start(env, &ns, NAME, &VolumeSpec::default()).await;
    let mut aws_env = manifest.aws_env.clone();
    aws_env.push(("AWS_CONFIG_FILE", "/dev/null".into()));
    aws_env.push(("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()));
    let bin = start_binary_with(
        env,
        &ns,
        &sts.endpoint,
        &[
            "--refresh-limit=12s",
            &format!("--own-awsiamrole={ns}/{NAME}"),
            &manifest.credentials_file_arg,
        ],
        Launch {
            discover_base_role_arn: true,
            aws_env: Some(aws_env),
            meta_volume: Some(volume.dir.clone()),
            kubeconfig: None,
        },
    )
    .await;
    roles
        .create(&PostParams::default(), &role("app", "app", 3600))
        .await
        .expect("create app");
    roles
        .create(&PostParams::default(), &role("long", "long", 7200))
        .await
        .expect("create long");

    // Past the seed's expiry: the controller renewed its own Secret (at least twice) and
    // still issues for the app, from sessions it got itself.
    wait_for_within(
        "the seed credentials to expire",
        Duration::from_secs(60),
        || async {
            (chrono::Utc::now() > seed_expiry + chrono::Duration::seconds(2)).then_some(())
        },
    )
    .await;
    let after_seed = Instant::now();
    wait_for_within(
        "an app issue after the seed expired",
        Duration::from_secs(60),
        || async {
            sts.requests()
                .into_iter()
                .any(|r| {
                    r.role_arn.as_deref() == Some(app_arn.as_str())
                        && r.received_at > after_seed
                        && r.status == 200
                })
                .then_some(())
        },
    )
    .await;
    let own_secret = secrets.get(NAME).await.expect("own secret");
    assert!(
        expiry(&own_secret) > seed_expiry,
        "the controller renewed its own Secret"
    );
    // A second renewal: made with the credentials of the first, the seed long gone.
    let keys = wait_for_within(
        "a second renewal of the controller's own credentials",
        Duration::from_secs(60),
        || async {
            let keys = sts.issued_keys(&controller_arn);
            (keys.len() >= 3).then_some(keys)
        },
    )
    .await;
    let own_renewals: Vec<_> = sts
        .requests()
        .into_iter()
        .filter(|r| r.role_arn.as_deref() == Some(controller_arn.as_str()) && r.status == 200)
        .skip(1)
        .collect();
    assert_eq!(
        own_renewals[0].caller_access_key,
        Some(keys[0].clone()),
        "first renewal: the seed"
    );
    assert_eq!(
        own_renewals[1].caller_access_key,
        Some(keys[1].clone()),
        "second renewal: the first renewal's credentials, read back from credentials.json"
    );
    let late_app = sts
        .requests()
        .into_iter()
        .rfind(|r| r.role_arn.as_deref() == Some(app_arn.as_str()) && r.status == 200)
        .expect("app issue");
    assert_ne!(late_app.caller_access_key, seed_keys.first().cloned());
    wait_for("app Ready", || async {
        let r = roles.get("app").await.ok()?;
        (r.ready_condition()?.status == "True").then_some(())
    })
    .await;

    // The seed session is a role session: STS refused 7200 s once (role chaining), the
    // controller capped the session to 1 h right away and said so.
    let long = wait_for("long Ready", || async {
        let r = roles.get("long").await.ok()?;
        (r.ready_condition()?.status == "True").then_some(r)
    })
    .await;
    let message = &long.ready_condition().expect("condition").message;
    assert!(message.contains("capped to 3600s"), "{message}");
    let long_calls: Vec<_> = sts
        .requests()
        .into_iter()
        .filter(|r| r.role_arn.as_deref() == Some(long_arn.as_str()))
        .map(|r| (r.duration_seconds, r.status))
        .collect();
    assert_eq!(long_calls, vec![(Some(7200), 400), (Some(3600), 200)]);

    // Nothing was ever signed with expired credentials, and no other request failed.
    let failed: Vec<_> = sts
        .requests()
        .into_iter()
        .filter(|r| r.status != 200 && r.role_arn.as_deref() != Some(long_arn.as_str()))
        .collect();
    assert!(failed.is_empty(), "failed STS requests: {failed:?}");
    let logs = bin.logs();
    let seed_json: serde_json::Value =
        serde_json::from_str(&data(&seed, "credentials.json")).expect("json");
    for field in ["SecretAccessKey", "SessionToken"] {
        let value = seed_json[field].as_str().expect("field");
        assert!(
            !logs.contains(value),
            "{field} appears in the controller's logs"
        );
    }
    drop(volume);
    bin.kill();
    eprintln!("bootstrap test took {:?}", started.elapsed());
}

#[tokio::test]
async fn bootstrap_refuses_to_overwrite_a_secret_it_does_not_manage() {
    let env = env().await;
    let client = env.client().await;
    let ns = env.namespace(&client, "bootstrap-foreign").await;
    let sts = StsDouble::start().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut foreign = Secret::default();
    foreign.metadata.name = Some(NAME.into());
    foreign.string_data = Some([("password".to_string(), "hunter2".to_string())].into());
    let foreign = secrets
        .create(&PostParams::default(), &foreign)
        .await
        .expect("create");
    let (ok, stdout, stderr) = bootstrap(vec![
        format!("--kubeconfig={}", env.kubeconfig.display()),
        format!("--namespace={ns}"),
        "--role=arn:aws:iam::123456789012:role/kaic-controller".into(),
        format!("--sts-endpoint={}", sts.endpoint),
        "--sts-region=us-east-1".into(),
    ])
    .await;
    assert!(!ok);
    let output = format!("{stdout}{stderr}");
    assert!(
        output.contains("not managed by kube-aws-iam-controller"),
        "{output}"
    );
    let after = secrets.get(NAME).await.expect("secret");
    assert_eq!(after.resource_version(), foreign.resource_version());
    assert_eq!(sts.total_calls(), 0, "refused before any STS call");
    let roles: Api<AWSIAMRole> = Api::namespaced(client.clone(), &ns);
    assert!(roles.get_opt(NAME).await.expect("get").is_none());
}
