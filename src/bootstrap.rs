//! `kube-aws-iam-controller bootstrap`: seeds the controller's own credentials where no AWS
//! infrastructure gives it any. With the caller's AWS credentials (the SDK's default chain) it
//! assumes the controller's role and writes the controller's AWSIAMRole and its Secret; the
//! Secret has the owner reference and labels of every Secret the controller manages, so the
//! running controller (which mounts it, `deploy/deployment-with-role.yaml`) renews it from
//! then on with the credentials it holds.

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tracing::info;

use crate::aws::arn::{self, BaseRoleArn, RoleArn};
use crate::aws::sts::{StsIssuer, StsSettings, load_config};
use crate::aws::{CredentialIssuer, IssueRequest, RequestOptions};
use crate::cli::BootstrapArgs;
use crate::controller::context::MANAGER;
use crate::controller::secret::{self, Ownership};
use crate::crd::{AWSIAMRole, AWSIAMRoleSpec};
use crate::{Error, Result};

/// Field manager of the AWSIAMRole written by `bootstrap`.
pub const BOOTSTRAP_MANAGER: &str = "kube-aws-iam-controller-bootstrap";

/// What `bootstrap` wrote. Holds no secret.
#[derive(Clone, Debug)]
pub struct Seeded {
    pub namespace: String,
    pub name: String,
    pub role_arn: String,
    pub expiration: DateTime<Utc>,
}

impl std::fmt::Display for Seeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AWSIAMRole and Secret {}/{} written for {}; the seed credentials are valid until {}. Start the controller with this Secret mounted at /meta/aws-iam (deploy/deployment-with-role.yaml): it renews them from now on.",
            self.namespace,
            self.name,
            self.role_arn,
            self.expiration.to_rfc3339_opts(SecondsFormat::Secs, true)
        )
    }
}

/// The controller's role ARN: `--role` as is when it is an ARN, else a name in the account of
/// `--base-role-arn` or, without it, of the caller.
async fn role_arn(args: &BootstrapArgs, sts: &StsIssuer) -> Result<RoleArn> {
    let bad = |e: arn::ArnError| Error::Config(format!("--role: {e}"));
    if args.role.trim().starts_with("arn:") {
        return arn::resolve(&args.role, None).map_err(bad);
    }
    let base: BaseRoleArn = match &args.aws.base_role_arn {
        Some(b) => b.clone(),
        None => {
            let identity = sts.caller_arn().await?;
            arn::base_from_identity(&identity).map_err(bad)?
        }
    };
    arn::resolve(&args.role, Some(&base)).map_err(bad)
}

/// Refuses a Secret of that name the controller would not manage either (judged against an
/// AWSIAMRole of that name, as it will be).
fn refuse_foreign(existing: Option<&Secret>, args: &BootstrapArgs) -> Result<()> {
    let (ns, name) = (args.namespace.as_str(), args.name.as_str());
    let placeholder = AWSIAMRole::new(
        name,
        AWSIAMRoleSpec {
            role_reference: args.role.clone(),
            role_session_duration: args.session_duration,
            policy: None,
            policy_arns: Vec::new(),
            service_account_names: None,
            invalid: None,
        },
    );
    if let Some(s) = existing
        && secret::ownership(s, &placeholder) == Ownership::Foreign
    {
        return Err(Error::Config(format!(
            "Secret {ns}/{name} exists and is not managed by kube-aws-iam-controller; remove it or choose another --name"
        )));
    }
    Ok(())
}

/// Writes the AWSIAMRole (server-side apply, the bootstrap's field manager).
async fn apply_role(
    roles: &Api<AWSIAMRole>,
    args: &BootstrapArgs,
    role_arn: &str,
) -> Result<AWSIAMRole> {
    let (ns, name) = (args.namespace.as_str(), args.name.as_str());
    let role = roles
        .patch(
            name,
            &PatchParams::apply(BOOTSTRAP_MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": "zalando.org/v1",
                "kind": "AWSIAMRole",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "roleReference": role_arn,
                    "roleSessionDuration": args.session_duration,
                },
            })),
        )
        .await?;
    Ok(role)
}

/// Creates the Secret, or applies it at the resourceVersion checked before: a Secret replaced
/// in between is not overwritten.
async fn write_secret(
    secrets: &Api<Secret>,
    existing: Option<Secret>,
    desired: Secret,
) -> Result<()> {
    match existing {
        None => {
            let pp = PostParams {
                field_manager: Some(MANAGER.into()),
                ..PostParams::default()
            };
            secrets.create(&pp, &desired).await?;
        }
        Some(current) => {
            let mut desired = desired;
            desired.metadata.resource_version = current.resource_version();
            secrets
                .patch(
                    &desired.name_any(),
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&desired),
                )
                .await?;
        }
    }
    Ok(())
}

/// Runs `bootstrap`: assume, write the AWSIAMRole, write its Secret.
pub async fn run(args: &BootstrapArgs) -> Result<Seeded> {
    let client = crate::kubeclient::client(args.kubeconfig.as_deref(), None).await?;
    let sdk = load_config(&StsSettings {
        region: args.aws.sts_region.clone(),
        endpoint: args.aws.sts_endpoint.clone(),
        timeout: args.aws.sts_timeout,
        credentials_file: None,
    })
    .await;
    let sts = StsIssuer::new(&sdk, args.aws.sts_timeout);
    let (ns, name) = (args.namespace.as_str(), args.name.as_str());

    // Refuse before calling STS if the Secret's name is taken.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let roles: Api<AWSIAMRole> = Api::namespaced(client, ns);
    let existing = secrets.get_opt(name).await?;
    refuse_foreign(existing.as_ref(), args)?;

    let role_arn = role_arn(args, &sts).await?;
    let creds = sts
        .assume_role(IssueRequest {
            role_arn: role_arn.clone(),
            session_name: arn::session_name(ns, name),
            duration_seconds: args.session_duration,
            options: RequestOptions::default(),
        })
        .await?;
    let role_arn_text = role_arn.to_string();
    info!(role_arn = role_arn_text, "assumed the controller's role");

    let role = apply_role(&roles, args, &role_arn_text).await?;
    let desired = secret::render(&role, &creds, &role_arn_text);
    write_secret(&secrets, existing, desired).await?;
    Ok(Seeded {
        namespace: ns.to_string(),
        name: name.to_string(),
        role_arn: role_arn_text,
        expiration: creds.expiration,
    })
}
