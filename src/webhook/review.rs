//! The admission decision for one pod, from the request and what the caches know (pure).

use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use std::collections::BTreeMap;

use super::binding;
use super::endpoint::{self, Delivery, Mode};
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

/// The largest AdmissionReview the webhook decodes (docs/webhook.md): a pod of 50 containers
/// with 100 variables each is about a third of it. A larger one is refused before its pod is
/// decoded.
pub const MAX_REVIEW_BYTES: usize = 1024 * 1024;

/// The request in an AdmissionReview body, or the response refusing a body that is not one or
/// is larger than [`MAX_REVIEW_BYTES`]. The error quotes no part of the body: only where
/// decoding stopped.
pub fn decode(body: &[u8]) -> Result<AdmissionRequest<Pod>, Box<AdmissionResponse>> {
    if body.len() > MAX_REVIEW_BYTES {
        return Err(Box::new(too_large(body)));
    }
    let review: AdmissionReview<Pod> = serde_json::from_slice(body).map_err(|e| {
        Box::new(AdmissionResponse::invalid(format!(
            "not an AdmissionReview of a Pod (line {}, column {})",
            e.line(),
            e.column()
        )))
    })?;
    review.try_into().map_err(|_| {
        Box::new(AdmissionResponse::invalid(
            "AdmissionReview without a request",
        ))
    })
}

/// The refusal of a body over [`MAX_REVIEW_BYTES`], for the request's uid (read without decoding
/// the pod: the API server takes no answer for another uid).
fn too_large(body: &[u8]) -> AdmissionResponse {
    #[derive(serde::Deserialize)]
    struct Review {
        request: Option<Request>,
    }
    #[derive(serde::Deserialize)]
    struct Request {
        uid: String,
    }
    let uid = serde_json::from_slice::<Review>(body)
        .ok()
        .and_then(|r| r.request)
        .map(|r| r.uid)
        .unwrap_or_default();
    let mut res = AdmissionResponse::invalid(format!(
        "the pod is too large for the kube-aws-iam-controller webhook: its AdmissionReview has {} KiB, at most {} KiB are admitted",
        body.len() / 1024,
        MAX_REVIEW_BYTES / 1024
    ));
    res.uid = uid;
    res
}

/// The response for `req`, and its metric label; `delivery` chooses between the Secret mount
/// and the credentials sidecar (src/webhook/endpoint.rs).
pub fn respond(
    req: &AdmissionRequest<Pod>,
    facts: &Facts,
    region: Option<&str>,
    delivery: &Delivery,
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
    let injection = Injection {
        role: role.to_string(),
        region: region.map(str::to_string),
    };
    let m = match (delivery.mode_for(pod), delivery.image.as_deref()) {
        (Err(why), _) => return (res.deny(why), result::DENIED),
        (Ok(Mode::Process), _) => mutate::mutate(pod, &injection),
        (Ok(Mode::Endpoint), Some(image)) => endpoint::mutate(pod, &injection, image),
        (Ok(Mode::Endpoint), None) => {
            return (
                res.deny(format!(
                    "{} endpoint: this webhook has no --webhook-sidecar-image to run the credentials sidecar with",
                    endpoint::MODE_ANNOTATION
                )),
                result::DENIED,
            );
        }
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn review(env_vars: usize) -> Vec<u8> {
        let env: Vec<_> = (0..env_vars)
            .map(|i| json!({"name": format!("VAR_{i}"), "value": "x".repeat(40)}))
            .collect();
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "operation": "CREATE", "userInfo": {"username": "admin"},
                "object": {"metadata": {"name": "p"}, "spec": {"containers": [
                    {"name": "c", "image": "i", "env": env}
                ]}},
            },
        }))
        .expect("json")
    }

    #[test]
    fn a_review_over_the_limit_is_refused_for_its_uid_with_a_clear_message() {
        let small = review(5_000);
        assert!(small.len() < MAX_REVIEW_BYTES);
        assert!(decode(&small).is_ok());
        let big = review(20_000);
        assert!(big.len() > MAX_REVIEW_BYTES);
        let res = decode(&big).expect_err("too large");
        assert!(!res.allowed);
        assert_eq!(res.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert!(
            res.result.message.contains("too large")
                && res.result.message.contains("at most 1024 KiB"),
            "{}",
            res.result.message
        );
    }
}
