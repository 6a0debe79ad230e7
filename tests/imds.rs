//! Base role ARN discovery against amazon-ec2-metadata-mock (the AWS project's IMDS mock, built
//! by scripts/build-imds-mock.sh) on 127.0.0.1: IMDSv2, the IMDSv1 fallback, and STS
//! GetCallerIdentity when there is no instance metadata.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use kube_aws_iam_controller::aws::discover::{self, Source};
use kube_aws_iam_controller::aws::imds::{self, ImdsSettings, ImdsVersion};
use kube_aws_iam_controller::aws::sts::StsIssuer;
use kube_aws_iam_controller::crd::AWSIAMRole;
use support::sts_double::StsDouble;
use support::{Launch, data, env, role, start_binary_with, start_imds_mock, wait_for};

/// The instance profile the mock reports: another account than the STS double's caller
/// (123456789012), so the tests can tell where the base role ARN came from.
const PROFILE: &str = "arn:aws:iam::210987654321:instance-profile/kaic-nodes";
const PROFILE_BASE: &str = "arn:aws:iam::210987654321:role/";

fn settings(endpoint: &str) -> ImdsSettings {
    ImdsSettings {
        endpoint: endpoint.to_string(),
        timeout: Duration::from_secs(1),
    }
}

#[tokio::test]
async fn the_binary_takes_the_base_role_arn_from_imdsv2_and_logs_it() {
    let env = env().await;
    let client = env.client().await;
    let ns = env.namespace(&client, "imds").await;
    let mock = start_imds_mock(env, PROFILE, true).await;
    let sts = StsDouble::start().await;
    let imds_flag = format!("--imds-endpoint={}", mock.endpoint);
    let bin = start_binary_with(
        env,
        &ns,
        &sts.endpoint,
        &[imds_flag.as_str()],
        Launch {
            discover_base_role_arn: true,
            aws_env: Some(vec![
                ("AWS_ACCESS_KEY_ID", "AKIDCONTROLLER000000".into()),
                ("AWS_SECRET_ACCESS_KEY", "controller-secret".into()),
                ("AWS_CONFIG_FILE", "/dev/null".into()),
                ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
            ]),
            meta_volume: None,
            kubeconfig: None,
        },
    )
    .await;
    let roles: Api<AWSIAMRole> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    roles
        .create(&PostParams::default(), &role("app", "team/app", 3600))
        .await
        .expect("create");
    let s = wait_for("secret app", || async {
        secrets.get_opt("app").await.ok().flatten()
    })
    .await;
    assert_eq!(data(&s, "role-arn"), format!("{PROFILE_BASE}team/app"));
    let logs = bin.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("base role ARN discovered"))
        .unwrap_or_else(|| panic!("no discovery log line in:\n{logs}"));
    assert!(
        line.contains(PROFILE_BASE) && line.contains("IMDSv2"),
        "{line}"
    );
    // The base came from IMDS (the log line says so); STS is asked once, for the identity the
    // controller must never hand out (docs/security.md).
    let identity_calls = sts
        .requests()
        .iter()
        .filter(|r| r.action == "GetCallerIdentity")
        .count();
    assert_eq!(
        identity_calls, 1,
        "IMDS answered, so STS is asked only for the guard"
    );
    bin.kill();
}

#[tokio::test]
async fn imdsv2_is_used_when_the_metadata_service_requires_it() {
    let env = env().await;
    let mock = start_imds_mock(env, PROFILE, true).await;
    let (arn, version) = imds::instance_profile_arn(&settings(&mock.endpoint))
        .await
        .expect("iam/info");
    assert_eq!((arn.as_str(), version), (PROFILE, ImdsVersion::V2));
}

/// What a proxy in front of the mock does with the IMDSv2 token request.
#[derive(Clone, Copy)]
enum TokenPut {
    /// Answers 403, like an IMDS that has tokens turned off or a proxy that blocks PUT.
    Refuse,
    /// Never answers, like a token answer dropped by the hop limit in a container.
    Drop,
}

/// A TCP proxy to `upstream` that handles PUT requests itself; returns its endpoint and a
/// counter of the PUTs it saw.
async fn put_blocking_proxy(upstream: u16, mode: TokenPut) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let puts = Arc::new(AtomicUsize::new(0));
    let seen = puts.clone();
    tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match down.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if head.starts_with(b"PUT ") {
                    seen.fetch_add(1, Ordering::SeqCst);
                    match mode {
                        TokenPut::Refuse => {
                            let _ = down
                                .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                                .await;
                        }
                        TokenPut::Drop => tokio::time::sleep(Duration::from_secs(30)).await,
                    }
                    return;
                }
                let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                if up.write_all(&head).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    });
    (format!("http://127.0.0.1:{port}"), puts)
}

#[tokio::test]
async fn imdsv1_is_the_fallback_when_the_token_request_is_refused() {
    let env = env().await;
    let mock = start_imds_mock(env, PROFILE, false).await;
    let (endpoint, puts) = put_blocking_proxy(mock.port, TokenPut::Refuse).await;
    let (arn, version) = imds::instance_profile_arn(&settings(&endpoint))
        .await
        .expect("iam/info");
    assert_eq!((arn.as_str(), version), (PROFILE, ImdsVersion::V1));
    assert_eq!(puts.load(Ordering::SeqCst), 1, "IMDSv2 was tried first");
}

#[tokio::test]
async fn imdsv1_is_the_fallback_when_the_token_answer_never_comes() {
    let env = env().await;
    let mock = start_imds_mock(env, PROFILE, false).await;
    let (endpoint, puts) = put_blocking_proxy(mock.port, TokenPut::Drop).await;
    let (arn, version) = imds::instance_profile_arn(&settings(&endpoint))
        .await
        .expect("iam/info");
    assert_eq!((arn.as_str(), version), (PROFILE, ImdsVersion::V1));
    assert_eq!(puts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn without_instance_metadata_the_base_comes_from_get_caller_identity() {
    let sts = StsDouble::start().await;
    let issuer = StsIssuer::new(&support::sdk_config(&sts.endpoint), Duration::from_secs(30));
    let closed = format!("http://127.0.0.1:{}", support::free_port());
    let (base, source) = discover::base_role_arn(Some(&settings(&closed)), &issuer)
        .await
        .expect("base");
    assert_eq!(base.to_string(), "arn:aws:iam::123456789012:role/");
    assert_eq!(source, Source::CallerIdentity);
    assert_eq!(
        sts.requests()
            .iter()
            .filter(|r| r.action == "GetCallerIdentity")
            .count(),
        1
    );
    // AWS_EC2_METADATA_DISABLED=true: IMDS is not asked at all.
    let (base, source) = discover::base_role_arn(None, &issuer).await.expect("base");
    assert_eq!(base.to_string(), "arn:aws:iam::123456789012:role/");
    assert_eq!(source, Source::CallerIdentity);
}
