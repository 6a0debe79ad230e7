//! The ServiceAccount binding (`spec.serviceAccountNames`): which AWSIAMRoles' Secrets a pod
//! reaches and whether its ServiceAccount may use them. Pure; the same judgement as the
//! admission policy in `deploy/serviceaccount-binding.yaml`, row by row
//! (`tests/serviceaccount_binding.rs`).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Pod, PodSpec};

/// The ServiceAccount a pod runs as: `spec.serviceAccountName`, else the deprecated
/// `spec.serviceAccount`, else `default` (what the API server's ServiceAccount admission sets).
pub fn service_account(spec: Option<&PodSpec>) -> &str {
    spec.and_then(|s| {
        s.service_account_name
            .as_deref()
            .filter(|n| !n.is_empty())
            .or(s.service_account.as_deref().filter(|n| !n.is_empty()))
    })
    .unwrap_or("default")
}

/// Names of every Secret the pod reaches: `volumes[].secret`, `projected.sources[].secret`,
/// and, in containers, init containers and ephemeral containers, `env[].valueFrom.secretKeyRef`
/// and `envFrom[].secretRef`.
pub fn secret_names(spec: Option<&PodSpec>) -> BTreeSet<&str> {
    let mut names = BTreeSet::new();
    let Some(spec) = spec else {
        return names;
    };
    for v in spec.volumes.iter().flatten() {
        if let Some(n) = v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) {
            names.insert(n);
        }
        let sources = v.projected.as_ref().and_then(|p| p.sources.as_ref());
        for s in sources.into_iter().flatten() {
            if let Some(n) = s.secret.as_ref().map(|s| s.name.as_str()) {
                names.insert(n);
            }
        }
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| (c.env.as_ref(), c.env_from.as_ref()));
    let ephemeral = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .map(|c| (c.env.as_ref(), c.env_from.as_ref()));
    for (env, env_from) in containers.chain(ephemeral) {
        for e in env.into_iter().flatten() {
            let key_ref = e
                .value_from
                .as_ref()
                .and_then(|f| f.secret_key_ref.as_ref());
            if let Some(r) = key_ref {
                names.insert(r.name.as_str());
            }
        }
        for f in env_from.into_iter().flatten() {
            if let Some(r) = f.secret_ref.as_ref() {
                names.insert(r.name.as_str());
            }
        }
    }
    names
}

/// The refusal message: the same text as the admission policy's for a pod.
pub fn message(namespace: &str, role: &str, service_account: &str, listed: &[String]) -> String {
    let listed = if listed.is_empty() {
        "lists no ServiceAccount".to_string()
    } else {
        format!("lists only {}", listed.join(", "))
    };
    format!(
        "ServiceAccount {service_account} may not use AWSIAMRole {namespace}/{role}: its spec.serviceAccountNames {listed}"
    )
}

/// Why the pod may not run: the first AWSIAMRole (by name) whose Secret it reaches, or that the
/// webhook would inject (`injected`), and whose `bindings` entry does not list its
/// ServiceAccount. `bindings` holds the bound roles of the namespace (role name to
/// `spec.serviceAccountNames`); a role missing from it is unbound, as is a Secret that is no
/// AWSIAMRole's.
pub fn refusal(
    namespace: &str,
    pod: &Pod,
    injected: Option<&str>,
    bindings: &BTreeMap<String, Vec<String>>,
) -> Option<String> {
    let spec = pod.spec.as_ref();
    let account = service_account(spec);
    let mut roles = secret_names(spec);
    roles.extend(injected);
    roles.into_iter().find_map(|role| {
        let listed = bindings.get(role)?;
        (!listed.iter().any(|n| n == account)).then(|| message(namespace, role, account, listed))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    fn bound() -> BTreeMap<String, Vec<String>> {
        BTreeMap::from([
            ("a".to_string(), vec!["app".to_string()]),
            ("locked".to_string(), vec![]),
        ])
    }

    #[test]
    fn the_default_service_account_is_default_and_the_deprecated_field_counts() {
        assert_eq!(service_account(None), "default");
        let p = pod(json!({"spec": {"containers": [], "serviceAccountName": ""}}));
        assert_eq!(service_account(p.spec.as_ref()), "default");
        let p = pod(json!({"spec": {"containers": [], "serviceAccount": "old"}}));
        assert_eq!(service_account(p.spec.as_ref()), "old");
    }

    #[test]
    fn every_secret_path_in_every_container_kind_is_found() {
        let p = pod(json!({"spec": {
            "volumes": [
                {"name": "v", "secret": {"secretName": "vol"}},
                {"name": "p", "projected": {"sources": [{"secret": {"name": "proj"}}, {"configMap": {"name": "cm"}}]}}
            ],
            "containers": [{"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "env", "key": "k"}}}]}],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init-from"}}, {"configMapRef": {"name": "cm2"}}]}],
            "ephemeralContainers": [{"name": "e", "env": [{"name": "Y", "valueFrom": {"secretKeyRef": {"name": "eph", "key": "k"}}}]}]
        }}));
        let names: Vec<_> = secret_names(p.spec.as_ref()).into_iter().collect();
        assert_eq!(names, ["env", "eph", "init-from", "proj", "vol"]);
    }

    #[test]
    fn an_unlisted_service_account_is_refused_naming_the_role_and_the_account() {
        let p = pod(
            json!({"spec": {"serviceAccountName": "intruder", "containers": [],
            "volumes": [{"name": "v", "secret": {"secretName": "a"}}]}}),
        );
        assert_eq!(
            refusal("team", &p, None, &bound()).as_deref(),
            Some(
                "ServiceAccount intruder may not use AWSIAMRole team/a: its spec.serviceAccountNames lists only app"
            )
        );
        let listed = pod(
            json!({"spec": {"serviceAccountName": "app", "containers": [],
            "volumes": [{"name": "v", "secret": {"secretName": "a"}}]}}),
        );
        assert_eq!(refusal("team", &listed, None, &bound()), None);
    }

    #[test]
    fn the_injected_role_is_judged_and_unbound_roles_are_not() {
        let p = pod(json!({"spec": {"containers": [{"name": "c"}]}}));
        assert!(
            refusal("team", &p, Some("locked"), &bound())
                .is_some_and(|m| m.contains("team/locked") && m.contains("lists no ServiceAccount"))
        );
        assert_eq!(refusal("team", &p, Some("unbound"), &bound()), None);
        assert_eq!(refusal("team", &p, None, &bound()), None);
    }
}
