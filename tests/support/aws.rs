//! AWS clients and peers: the SDK configuration, the AWS CLI and boto3 run as a pod runs them,
//! amazon-ec2-metadata-mock.

use super::*;

/// The Python virtual environment with moto, boto3 and the AWS CLI.
pub fn venv() -> PathBuf {
    if let Some(v) = std::env::var_os("KAIC_VENV") {
        return PathBuf::from(v);
    }
    let out = Command::new(repo().join("scripts/python-env.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/python-env.sh runs");
    assert!(
        out.status.success(),
        "scripts/python-env.sh failed: cannot create the Python environment (moto, boto3, AWS CLI)"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// An STS client configuration the way the controller builds it, against a local STS.
pub fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(Credentials::new(
                "AKIDCONTROLLER000000",
                "controller-secret",
                None,
                None,
                "test",
            )),
        )
        .http_client(https_client())
        .build()
}

pub fn sts_issuer(endpoint: &str) -> Arc<dyn CredentialIssuer> {
    Arc::new(StsIssuer::new(
        &sdk_config(endpoint),
        Duration::from_secs(30),
    ))
}

/// Runs the AWS CLI v1 the way a pod with the Secret mounted at /meta/aws-iam does (a non-root
/// container, see [`kubelet::container`]), using the `credentials.process` file, and returns the
/// caller ARN it prints.
pub fn aws_cli_identity(env: &Env, volume: &Path, sts_endpoint: &str) -> Result<String, String> {
    let aws = env.venv.join("bin/aws");
    let home = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = kubelet::container(
        volume,
        kubelet::PodUser::default(),
        Some(home.path()),
        &aws.to_string_lossy(),
    )
    .args([
        "sts",
        "get-caller-identity",
        "--query",
        "Arn",
        "--output",
        "text",
        "--endpoint-url",
        sts_endpoint,
    ])
    .env("HOME", home.path())
    .env("AWS_CONFIG_FILE", "/meta/aws-iam/credentials.process")
    .env(
        "AWS_SHARED_CREDENTIALS_FILE",
        "/meta/aws-iam/credentials.process",
    )
    .env("AWS_DEFAULT_REGION", "us-east-1")
    .env_remove("AWS_ACCESS_KEY_ID")
    .env_remove("AWS_SECRET_ACCESS_KEY")
    .env_remove("AWS_SESSION_TOKEN")
    .env_remove("AWS_PROFILE")
    .output()
    .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// The version of amazon-ec2-metadata-mock the IMDS tests run (scripts/build-imds-mock.sh).
pub const IMDS_MOCK_VERSION: &str = "v1.13.0";

/// Path of the amazon-ec2-metadata-mock binary: `KAIC_IMDS_MOCK`, else the build script's cache.
pub fn imds_mock_path() -> PathBuf {
    std::env::var_os("KAIC_IMDS_MOCK")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            cache_dir()
                .join("imds-mock")
                .join(IMDS_MOCK_VERSION)
                .join("ec2-metadata-mock")
        })
}

/// amazon-ec2-metadata-mock running on 127.0.0.1.
pub struct ImdsMock {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub port: u16,
    pub log: PathBuf,
    child: Child,
}

impl Drop for ImdsMock {
    fn drop(&mut self) {
        // SIGTERM to the watchdog: it stops the mock.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Starts amazon-ec2-metadata-mock whose `iam/info` names `instance_profile_arn`;
/// `imdsv2_only` makes every metadata request need a session token.
pub async fn start_imds_mock(env: &Env, instance_profile_arn: &str, imdsv2_only: bool) -> ImdsMock {
    let bin = imds_mock_path();
    check_binary(
        &bin,
        "scripts/build-imds-mock.sh (or set KAIC_IMDS_MOCK to the binary)",
    );
    let port = free_port();
    let config = env.dir.join(format!("aemm-{port}.json"));
    let doc = serde_json::json!({"metadata": {"values": {"iam-info": {
        "Code": "Success",
        "LastUpdated": "2026-11-26T12:00:00Z",
        "InstanceProfileArn": instance_profile_arn,
        "InstanceProfileId": "AIPAKAICTEST00000001",
    }}}});
    std::fs::write(&config, doc.to_string()).expect("write mock config");
    let log = env.dir.join(format!("aemm-{port}.log"));
    let mut args = vec![
        "--hostname".to_string(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
        "--config-file".into(),
        config.display().to_string(),
    ];
    if imdsv2_only {
        args.push("--imdsv2".into());
    }
    // HOME: the mock looks for a default config file there; give it an empty one.
    let child = spawn_watched(
        &bin,
        &args,
        &log,
        &[("HOME", env.dir.display().to_string())],
    );
    wait_for_tcp(port, "amazon-ec2-metadata-mock", &log).await;
    ImdsMock {
        endpoint: format!("http://127.0.0.1:{port}"),
        port,
        log,
        child,
    }
}

/// boto3's `GetCallerIdentity` ARN against `endpoint`, with the given environment (credentials
/// through a file or variables); nothing else of the caller's AWS environment is passed.
pub fn boto3_identity(env: &Env, endpoint: &str, vars: &[(&str, &std::ffi::OsStr)]) -> String {
    let mut cmd = Command::new(env.venv.join("bin/python"));
    cmd.args([
        "-c",
        "import boto3,os; print(boto3.client('sts', endpoint_url=os.environ['EP'], region_name='us-east-1').get_caller_identity()['Arn'])",
    ])
    .env("EP", endpoint)
    .env("AWS_CONFIG_FILE", "/dev/null");
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_")) {
        cmd.env_remove(k);
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run boto3");
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// boto3's caller ARN (against moto) using the `credentials` file of `secret`.
pub fn boto3_identity_from_secret(env: &Env, secret: &Secret) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    let creds_file = dir.path().join("credentials");
    std::fs::write(&creds_file, data(secret, "credentials")).expect("write credentials");
    boto3_identity(
        env,
        &env.moto_endpoint,
        &[("AWS_SHARED_CREDENTIALS_FILE", creds_file.as_os_str())],
    )
}
