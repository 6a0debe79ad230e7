//! Objects and manifests: AWSIAMRoles, Secrets' data, server-side applied YAML.

use super::*;

/// Decoded `data` of a Secret.
pub fn data(secret: &Secret, key: &str) -> String {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).to_string())
        .unwrap_or_default()
}

/// An AdmissionReview of a pod as the API server sends it: `operation` on `object` in `ns`, by
/// user `alice`; `sub_resource` for an ephemeral containers' update.
pub fn admission_review(
    ns: &str,
    operation: &str,
    sub_resource: Option<&str>,
    object: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "subResource": sub_resource,
            "namespace": ns,
            "operation": operation,
            "userInfo": {"username": "alice"},
            "object": object,
            "oldObject": null,
            "dryRun": false
        }
    })
}

/// An AWSIAMRole object.
pub fn role(name: &str, reference: &str, duration: i64) -> AWSIAMRole {
    AWSIAMRole::new(
        name,
        kube_aws_iam_controller::crd::AWSIAMRoleSpec {
            role_reference: reference.to_string(),
            role_session_duration: duration,
            policy: None,
            policy_arns: Vec::new(),
            service_account_names: None,
            invalid: None,
        },
    )
}

/// Server-side applies every object of a YAML manifest in the repository (`dry_run`: the API
/// server validates and admits it, nothing is stored). Objects without a namespace go to
/// `default_ns` when given (namespaced kinds), else are treated as cluster-scoped.
pub async fn apply_manifest(client: &Client, path: &str, default_ns: Option<&str>, dry_run: bool) {
    let text = std::fs::read_to_string(repo().join(path)).expect("manifest");
    apply_yaml(client, &text, path, default_ns, dry_run).await;
}

/// [`apply_manifest`] for YAML text (e.g. `helm template` output); `path` names it in errors.
pub async fn apply_yaml(
    client: &Client,
    text: &str,
    path: &str,
    default_ns: Option<&str>,
    dry_run: bool,
) {
    use kube::api::{DynamicObject, Patch, PatchParams};
    use kube::core::GroupVersionKind;
    let mut applied = 0;
    for doc in serde_yaml::Deserializer::from_str(text) {
        let Ok(obj) = <DynamicObject as serde::Deserialize>::deserialize(doc) else {
            continue;
        };
        let types = obj.types.clone().expect("apiVersion/kind");
        let (group, version) = types
            .api_version
            .rsplit_once('/')
            .unwrap_or(("", &types.api_version));
        let gvk = GroupVersionKind::gvk(group, version, &types.kind);
        // Scope from the API server's discovery, so any kind applies to the right endpoint.
        let (ar, caps) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("discover {path} {}: {e}", types.kind));
        let cluster_scoped = caps.scope == kube::discovery::Scope::Cluster;
        let ns = obj.metadata.namespace.as_deref().or(default_ns);
        let api: Api<DynamicObject> = match ns {
            Some(ns) if !cluster_scoped => Api::namespaced_with(client.clone(), ns, &ar),
            _ => Api::all_with(client.clone(), &ar),
        };
        let name = obj.metadata.name.clone().expect("name");
        let mut pp = PatchParams::apply("kaic-tests").force();
        pp.dry_run = dry_run;
        api.patch(&name, &pp, &Patch::Apply(&obj))
            .await
            .unwrap_or_else(|e| panic!("apply {path} {}/{name}: {e}", types.kind));
        applied += 1;
    }
    assert!(applied > 0, "{path} holds no objects");
}

/// Server-side applies the MutatingWebhookConfiguration `mwc` (JSON) as field manager
/// `manager`, taking over any fields another manager set.
pub async fn install_webhook_configuration(
    client: &Client,
    mwc: &serde_json::Value,
    manager: &str,
) {
    use kube::ResourceExt;
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "admissionregistration.k8s.io",
        "v1",
        "MutatingWebhookConfiguration",
    ));
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let obj: DynamicObject = serde_json::from_value(mwc.clone()).expect("configuration");
    api.patch(
        &obj.name_any(),
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&obj),
    )
    .await
    .expect("install the webhook configuration");
}
