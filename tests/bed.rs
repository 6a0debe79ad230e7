//! Smoke tests proving the test bed is real: a real API server with RBAC, and moto's STS
//! whose credentials a real SDK (boto3) accepts.

mod support;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::api::{Api, PostParams};
use kube_aws_iam_controller::aws::IssueRequest;
use kube_aws_iam_controller::crd::AWSIAMRole;
use support::env;

#[tokio::test]
async fn custom_objects_round_trip_through_the_real_api_server() {
    let env = env().await;
    let client = env.client().await;
    let ns = env.namespace(&client, "bed").await;
    let api: Api<AWSIAMRole> = Api::namespaced(client, &ns);
    api.create(
        &PostParams::default(),
        &support::role("r1", "app-role", 1800),
    )
    .await
    .expect("create AWSIAMRole");
    let back = api.get("r1").await.expect("read back");
    assert_eq!(back.spec.role_reference, "app-role");
    assert_eq!(back.spec.role_session_duration, 1800);
    assert!(back.metadata.uid.is_some(), "the API server assigned a uid");
}

#[tokio::test]
async fn the_schema_rejects_invalid_awsiamroles() {
    let env = env().await;
    let client = env.client().await;
    let ns = env.namespace(&client, "bed").await;
    let api: Api<AWSIAMRole> = Api::namespaced(client, &ns);
    for (reference, duration) in [("ab", 3600), ("good-name", 60), ("good-name", 50000)] {
        let err = api
            .create(
                &PostParams::default(),
                &support::role("bad", reference, duration),
            )
            .await
            .expect_err("invalid object must be rejected");
        assert!(
            err.to_string().contains("Invalid") || err.to_string().contains("invalid"),
            "{err}"
        );
    }
    // The default session duration comes from the schema, as in the Go controller's CRD.
    let obj: AWSIAMRole = serde_json::from_value(serde_json::json!({
        "apiVersion": "zalando.org/v1", "kind": "AWSIAMRole",
        "metadata": {"name": "defaulted"}, "spec": {"roleReference": "app"}
    }))
    .expect("object");
    let created = api
        .create(&PostParams::default(), &obj)
        .await
        .expect("create");
    assert_eq!(created.spec.role_session_duration, 3600);
}

#[tokio::test]
async fn a_service_account_without_permissions_is_denied_by_rbac() {
    let env = env().await;
    let client = env.client().await;
    let ns = env.namespace(&client, "bed").await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let mut sa = ServiceAccount::default();
    sa.metadata.name = Some("nobody".into());
    sas.create(&PostParams::default(), &sa)
        .await
        .expect("create sa");
    let token = sas
        .create_token_request("nobody", &PostParams::default(), &TokenRequest::default())
        .await
        .expect("token request")
        .status
        .expect("token status")
        .token
        .expect("token");
    let as_sa = env.token_client(&token);
    let cms: Api<ConfigMap> = Api::namespaced(as_sa, &ns);
    let err = cms
        .list(&Default::default())
        .await
        .expect_err("RBAC must deny");
    match err {
        kube::Error::Api(e) => assert_eq!(e.code, 403, "{e:?}"),
        other => panic!("expected 403, got {other}"),
    }
}

#[tokio::test]
async fn moto_issues_credentials_that_boto3_uses_as_the_assumed_role() {
    let env = env().await;
    let issuer = support::sts_issuer(&env.moto_endpoint);
    let creds = issuer
        .assume_role(IssueRequest {
            role_arn: "arn:aws:iam::123456789012:role/bed-check"
                .parse()
                .expect("arn"),
            session_name: "bed@check".into(),
            duration_seconds: 900,
            options: Default::default(),
        })
        .await
        .expect("AssumeRole against moto");
    let arn = support::boto3_identity(
        env,
        &env.moto_endpoint,
        &[
            ("AWS_ACCESS_KEY_ID", creds.access_key_id.as_ref()),
            ("AWS_SECRET_ACCESS_KEY", creds.secret_access_key.as_ref()),
            ("AWS_SESSION_TOKEN", creds.session_token.as_ref()),
        ],
    );
    assert_eq!(
        arn,
        "arn:aws:sts::123456789012:assumed-role/bed-check/bed@check"
    );
}

#[tokio::test]
async fn every_shipped_manifest_is_accepted_by_the_api_server() {
    let env = env().await;
    let client = env.client().await;
    let ns = env.namespace(&client, "manifests").await;
    // deploy/rbac-namespaced.yaml serves namespace `team`.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let mut team = k8s_openapi::api::core::v1::Namespace::default();
    team.metadata.name = Some("team".into());
    let _ = namespaces.create(&PostParams::default(), &team).await;
    // The CRD first: the examples hold AWSIAMRoles.
    support::apply_manifest(&client, "deploy/crd.yaml", Some(&ns), false).await;
    let mut paths: Vec<String> = std::fs::read_dir(support::repo().join("deploy"))
        .expect("deploy/")
        .filter_map(|e| e.ok())
        .map(|e| format!("deploy/{}", e.file_name().to_string_lossy()))
        .filter(|p| p.ends_with(".yaml"))
        .collect();
    paths.sort();
    paths.push("examples/awsiamrole.yaml".into());
    assert!(paths.len() >= 8, "{paths:?}");
    for path in &paths {
        support::apply_manifest(&client, path, Some(&ns), true).await;
    }
}
