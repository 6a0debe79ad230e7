//! The admission decision for one pod, from the request and what the caches know (pure).

use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};

use std::collections::BTreeMap;

use super::binding;
use super::mutate::{self, Choice, Injection};

/// What the caches say about the AWSIAMRole a pod names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoleState {
    Ready,
    NotReady {
        reason: String,
    },
    Missing,
    /// The cache is not synced yet: no warning either way.
    Unknown,
}

/// Everything the decision needs besides the request; gathered by the handler from caches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub choice: Choice,
    pub role: RoleState,
    /// The namespace role policy's refusal of the role, if any (from the controller's caches).
    pub not_permitted: Option<String>,
    /// The namespace's bound AWSIAMRoles the pod may reach: role name to its
    /// `spec.serviceAccountNames` (`binding::refusal`). Unbound roles are not in it.
    pub bindings: BTreeMap<String, Vec<String>>,
}

/// Bounded outcome labels for metrics.
pub mod result {
    pub const MUTATED: &str = "mutated";
    pub const UNCHANGED: &str = "unchanged";
    pub const SKIPPED: &str = "skipped";
    pub const DENIED: &str = "denied";
    pub const ERROR: &str = "error";
}

/// The response for `req`, and its metric label.
pub fn respond(
    req: &AdmissionRequest<Pod>,
    facts: &Facts,
    region: Option<&str>,
) -> (AdmissionResponse, &'static str) {
    let res = AdmissionResponse::from(req);
    let ns = req.namespace.as_deref().unwrap_or("default");
    // The ServiceAccount binding judges a new pod, with the role it would be given, and a pod
    // gaining ephemeral containers, as the admission policy does.
    let injected = match req.operation {
        Operation::Create => facts.choice.role(),
        _ => None,
    };
    let judged = matches!(req.operation, Operation::Create)
        || (matches!(req.operation, Operation::Update)
            && req.sub_resource.as_deref() == Some("ephemeralcontainers"));
    if let (Some(pod), true) = (req.object.as_ref(), judged)
        && let Some(why) = binding::refusal(ns, pod, injected, &facts.bindings)
    {
        return (res.deny(why), result::DENIED);
    }
    let (Some(pod), Operation::Create) = (req.object.as_ref(), &req.operation) else {
        return (res, result::SKIPPED);
    };
    let Some(role) = facts.choice.role() else {
        return (res, result::SKIPPED);
    };
    if let Some(why) = mutate::invalid_role_name(role) {
        let source = match facts.choice {
            Choice::ServiceAccount(_) => "the ServiceAccount's annotation",
            _ => "the pod's label",
        };
        return (
            res.deny(format!("{source} {}: {why}", mutate::ROLE_LABEL)),
            result::DENIED,
        );
    }
    let m = mutate::mutate(
        pod,
        &Injection {
            role: role.to_string(),
            region: region.map(str::to_string),
        },
    );
    let mut warnings = Vec::new();
    match &facts.role {
        RoleState::Missing => warnings.push(format!(
            "AWSIAMRole {ns}/{role} does not exist: the pod waits in ContainerCreating until its Secret exists"
        )),
        RoleState::NotReady { reason } => warnings.push(format!(
            "AWSIAMRole {ns}/{role} is not Ready ({reason}): the pod may wait for its Secret"
        )),
        RoleState::Ready | RoleState::Unknown => {}
    }
    if let Some(reason) = &facts.not_permitted {
        warnings.push(format!("AWSIAMRole {ns}/{role} is not permitted: {reason}"));
    }
    warnings.extend(m.warnings.iter().cloned());
    let label = if m.is_empty() {
        result::UNCHANGED
    } else {
        result::MUTATED
    };
    let mut res = if m.is_empty() {
        res
    } else {
        match res.clone().with_patch(m.patch) {
            Ok(r) => r,
            Err(_) => {
                return (
                    res.deny("kube-aws-iam-controller webhook: could not encode the patch"),
                    result::ERROR,
                );
            }
        }
    };
    if !warnings.is_empty() {
        res.warnings = Some(warnings);
    }
    (res, label)
}
