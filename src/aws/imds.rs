//! Reads the instance profile ARN from the EC2 instance metadata service (IMDS): IMDSv2 with a
//! session token, falling back to IMDSv1 when no token can be had, as the AWS SDKs do.
//!
//! `aws_config::imds::Client` only speaks IMDSv2 (it never falls back to v1), hence this small
//! client on hyper.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

/// Where IMDS answers on EC2 (IPv4).
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
const TOKEN_PATH: &str = "/latest/api/token";
const INFO_PATH: &str = "/latest/meta-data/iam/info";
const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// The IMDSv2 token is used for one request; the shortest TTL AWS allows would do, but SDKs ask for 6 h.
const TOKEN_TTL_SECONDS: &str = "21600";
/// IMDS answers are tiny; anything larger is not IMDS.
const MAX_BODY: usize = 64 * 1024;

/// How to reach IMDS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImdsSettings {
    /// `http://host[:port]`, without a path.
    pub endpoint: String,
    /// Limit for connecting and for each answer (the SDKs use 1 s).
    pub timeout: Duration,
}

impl ImdsSettings {
    /// The settings the AWS SDKs would use: `None` when `AWS_EC2_METADATA_DISABLED` is `true`;
    /// the endpoint from `endpoint` (the flag), else `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else
    /// 169.254.169.254.
    pub fn resolve(
        endpoint: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
        timeout: Duration,
    ) -> Option<ImdsSettings> {
        if env("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return None;
        }
        let endpoint = endpoint
            .map(str::to_string)
            .or_else(|| env("AWS_EC2_METADATA_SERVICE_ENDPOINT"))
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        Some(ImdsSettings {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            timeout,
        })
    }
}

/// Which IMDS version answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImdsVersion {
    V2,
    V1,
}

impl ImdsVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            ImdsVersion::V2 => "IMDSv2",
            ImdsVersion::V1 => "IMDSv1",
        }
    }
}

/// Why no instance profile ARN could be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImdsError {
    #[error("instance metadata endpoint {0:?} is not an http:// URL")]
    Endpoint(String),
    #[error("instance metadata service not reachable: {0}")]
    Unreachable(String),
    #[error("instance metadata service did not answer within {0:?}")]
    Timeout(Duration),
    #[error("instance metadata service answered HTTP {status} to {path}")]
    Status { status: u16, path: &'static str },
    #[error("iam/info has no instance profile: {0}")]
    Info(String),
}

/// The `iam/info` document.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IamInfo {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    instance_profile_arn: Option<String>,
}

/// The instance profile ARN from an `iam/info` answer.
pub fn parse_iam_info(body: &str) -> Result<String, ImdsError> {
    let info: IamInfo =
        serde_json::from_str(body).map_err(|e| ImdsError::Info(format!("not JSON: {e}")))?;
    if let Some(code) = info.code.as_deref()
        && code != "Success"
    {
        return Err(ImdsError::Info(format!("Code is {code:?}")));
    }
    info.instance_profile_arn
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ImdsError::Info("no InstanceProfileArn".into()))
}

enum Answer {
    Ok(String),
    Status(u16),
}

struct Imds {
    client: Client<HttpConnector, Empty<Bytes>>,
    settings: ImdsSettings,
}

impl Imds {
    fn new(settings: &ImdsSettings) -> Result<Self, ImdsError> {
        if !settings.endpoint.starts_with("http://") {
            return Err(ImdsError::Endpoint(settings.endpoint.clone()));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.timeout));
        Ok(Imds {
            client: Client::builder(TokioExecutor::new()).build(connector),
            settings: settings.clone(),
        })
    }

    async fn send(
        &self,
        method: http::Method,
        path: &'static str,
        header: Option<(&str, &str)>,
    ) -> Result<Answer, ImdsError> {
        let uri = format!("{}{path}", self.settings.endpoint);
        let mut req = http::Request::builder().method(method).uri(&uri);
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|_| ImdsError::Endpoint(self.settings.endpoint.clone()))?;
        let timeout = self.settings.timeout;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                if e.is_connect() {
                    ImdsError::Unreachable(e.to_string())
                } else {
                    ImdsError::Unreachable(format!("request failed: {e}"))
                }
            })?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| ImdsError::Unreachable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(if status == 200 {
                Answer::Ok(String::from_utf8_lossy(&body).into_owned())
            } else {
                Answer::Status(status)
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ImdsError::Timeout(timeout))?
    }

    /// An IMDSv2 token, or `None` where the SDKs fall back to IMDSv1: the token request is
    /// refused (403, 404, 405) or gets no answer in time (e.g. the PUT answer is dropped by the
    /// hop limit in a container).
    async fn token(&self) -> Result<Option<String>, ImdsError> {
        match self
            .send(
                http::Method::PUT,
                TOKEN_PATH,
                Some((TOKEN_TTL_HEADER, TOKEN_TTL_SECONDS)),
            )
            .await
        {
            Ok(Answer::Ok(token)) => Ok(Some(token.trim().to_string())),
            Ok(Answer::Status(403..=405)) | Err(ImdsError::Timeout(_)) => Ok(None),
            Ok(Answer::Status(status)) => Err(ImdsError::Status {
                status,
                path: TOKEN_PATH,
            }),
            Err(e) => Err(e),
        }
    }
}

/// Reads `iam/info` and returns the instance profile ARN and the IMDS version that answered.
pub async fn instance_profile_arn(
    settings: &ImdsSettings,
) -> Result<(String, ImdsVersion), ImdsError> {
    let imds = Imds::new(settings)?;
    let token = imds.token().await?;
    let version = if token.is_some() {
        ImdsVersion::V2
    } else {
        ImdsVersion::V1
    };
    let header = token.as_deref().map(|t| (TOKEN_HEADER, t));
    match imds.send(http::Method::GET, INFO_PATH, header).await? {
        Answer::Ok(body) => Ok((parse_iam_info(&body)?, version)),
        Answer::Status(status) => Err(ImdsError::Status {
            status,
            path: INFO_PATH,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iam_info_gives_the_instance_profile_arn() {
        let body = r#"{
  "Code" : "Success",
  "LastUpdated" : "2026-11-26T12:00:00Z",
  "InstanceProfileArn" : "arn:aws:iam::210987654321:instance-profile/nodes",
  "InstanceProfileId" : "AIPAEXAMPLE"
}"#;
        assert_eq!(
            parse_iam_info(body).expect("arn"),
            "arn:aws:iam::210987654321:instance-profile/nodes"
        );
    }

    #[test]
    fn iam_info_without_success_or_arn_is_an_error() {
        assert!(parse_iam_info(r#"{"Code":"Failure","InstanceProfileArn":"x"}"#).is_err());
        assert!(parse_iam_info(r#"{"Code":"Success"}"#).is_err());
        assert!(parse_iam_info("<html>404</html>").is_err());
    }

    #[test]
    fn settings_follow_the_sdk_environment() {
        let t = Duration::from_secs(1);
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            ImdsSettings::resolve(None, env(&[]), t).map(|s| s.endpoint),
            Some(DEFAULT_ENDPOINT.to_string())
        );
        assert_eq!(
            ImdsSettings::resolve(None, env(&[("AWS_EC2_METADATA_DISABLED", "TRUE")]), t),
            None
        );
        assert_eq!(
            ImdsSettings::resolve(
                None,
                env(&[(
                    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                    "http://127.0.0.1:1338/"
                )]),
                t
            )
            .map(|s| s.endpoint),
            Some("http://127.0.0.1:1338".to_string())
        );
        assert_eq!(
            ImdsSettings::resolve(
                Some("http://127.0.0.1:9"),
                env(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:1338")]),
                t
            )
            .map(|s| s.endpoint),
            Some("http://127.0.0.1:9".to_string())
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_not_a_hang() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let settings = ImdsSettings {
            endpoint: format!("http://127.0.0.1:{port}"),
            timeout: Duration::from_secs(1),
        };
        assert!(matches!(
            instance_profile_arn(&settings).await,
            Err(ImdsError::Unreachable(_))
        ));
    }
}
