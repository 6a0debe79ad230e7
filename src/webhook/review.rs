//! The admission decision for one pod, from the request and what the caches know (pure).

use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

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
}

/// Bounded outcome labels for metrics.
pub mod result {
    pub const MUTATED: &str = "mutated";
    pub const UNCHANGED: &str = "unchanged";
    pub const SKIPPED: &str = "skipped";
    pub const DENIED: &str = "denied";
    pub const ERROR: &str = "error";
}

/// The request in an AdmissionReview body, or the response refusing a body that is not one.
/// The error quotes no part of the body: only where decoding stopped.
pub fn decode(body: &[u8]) -> Result<AdmissionRequest<Pod>, Box<AdmissionResponse>> {
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

/// The response for `req`, and its metric label; `delivery` chooses between the Secret mount
/// and the credentials sidecar (src/webhook/endpoint.rs).
pub fn respond(
    req: &AdmissionRequest<Pod>,
    facts: &Facts,
    region: Option<&str>,
    delivery: &Delivery,
) -> (AdmissionResponse, &'static str) {
    let res = AdmissionResponse::from(req);
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
    let ns = req.namespace.as_deref().unwrap_or("default");
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
