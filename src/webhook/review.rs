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

/// The largest AdmissionReview the webhook decodes (docs/webhook.md). The review holds the pod
/// and its `metadata.managedFields`, which list every field the creator set: for a pod that is
/// mostly variables they are about as large as the pod, so this admits pods of up to about
/// 0.5 MiB of JSON (50 containers and 5 init containers with 100 variables each: 495 KiB sent,
/// 959 KiB admitted, measured by `scripts/bench-admission.sh`). A larger one is refused before
/// its pod is decoded.
pub const MAX_REVIEW_BYTES: usize = 1024 * 1024;

/// The most a body is read before the connection is refused (413). Past
/// [`MAX_REVIEW_BYTES`] the bytes are read and dropped, so that the API server gets the refusal
/// with its message: it sends reviews of pods of up to its request limit (3 MiB) plus their
/// managed fields, several times that at worst.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// How much of each end of an oversized body is kept to find the request's uid in (the API
/// server writes it first; an encoder that sorts keys, last).
const PREFIX_BYTES: usize = 4096;

/// An AdmissionReview body as it arrives: kept whole up to [`MAX_REVIEW_BYTES`]; past that only
/// its first and last bytes and its length, in constant memory.
#[derive(Debug, Default)]
pub struct Collector {
    kept: Vec<u8>,
    tail: Vec<u8>,
    len: usize,
}

impl Collector {
    /// Adds the next chunk of the body; false once the body is over [`MAX_BODY_BYTES`].
    pub fn push(&mut self, chunk: &[u8]) -> bool {
        self.len = self.len.saturating_add(chunk.len());
        if self.len <= MAX_REVIEW_BYTES {
            self.kept.extend_from_slice(chunk);
            return true;
        }
        if self.kept.len() > PREFIX_BYTES {
            let rest = self.kept.split_off(PREFIX_BYTES);
            self.kept.shrink_to_fit();
            self.keep_tail(&rest);
        }
        let room = PREFIX_BYTES
            .saturating_sub(self.kept.len())
            .min(chunk.len());
        self.kept.extend_from_slice(&chunk[..room]);
        self.keep_tail(&chunk[room..]);
        self.len <= MAX_BODY_BYTES
    }

    fn keep_tail(&mut self, bytes: &[u8]) {
        let bytes = &bytes[bytes.len().saturating_sub(PREFIX_BYTES)..];
        self.tail.extend_from_slice(bytes);
        let over = self.tail.len().saturating_sub(PREFIX_BYTES);
        self.tail.drain(..over);
    }

    /// The bytes received so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The request, or the response refusing the body (see [`decode`]).
    pub fn finish(self) -> Result<AdmissionRequest<Pod>, Box<AdmissionResponse>> {
        if self.len > MAX_REVIEW_BYTES {
            let mut res = too_large(self.len);
            res.uid = request_uid(&self.kept, &self.tail);
            return Err(Box::new(res));
        }
        decode(&self.kept)
    }
}

/// The request in an AdmissionReview body, or the response refusing a body that is not one or
/// is larger than [`MAX_REVIEW_BYTES`]. The error quotes no part of the body: only where
/// decoding stopped.
pub fn decode(body: &[u8]) -> Result<AdmissionRequest<Pod>, Box<AdmissionResponse>> {
    if body.len() > MAX_REVIEW_BYTES {
        let mut res = too_large(body.len());
        res.uid = request_uid(body, &[]);
        return Err(Box::new(res));
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

/// The request's uid in a body, or in its first and last bytes, without decoding the pod (the
/// API server takes no answer for another uid): read as JSON when `head` is the whole body,
/// else the first `"uid"` string of either end (the API server writes the request's first).
fn request_uid(head: &[u8], tail: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Review {
        request: Option<Request>,
    }
    #[derive(serde::Deserialize)]
    struct Request {
        uid: String,
    }
    if let Ok(r) = serde_json::from_slice::<Review>(head) {
        return r.request.map(|r| r.uid).unwrap_or_default();
    }
    let uid = first_uid(head);
    if uid.is_empty() { first_uid(tail) } else { uid }
}

/// The value of the first `"uid"` key in `bytes`, if it looks like a uid.
fn first_uid(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let Some((_, after)) = text.split_once("\"uid\"") else {
        return String::new();
    };
    let after = after.trim_start();
    let Some(after) = after.strip_prefix(':').map(str::trim_start) else {
        return String::new();
    };
    after
        .strip_prefix('"')
        .and_then(|v| v.split_once('"'))
        .map(|(uid, _)| uid)
        .filter(|uid| {
            uid.len() <= 128
                && uid
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        })
        .unwrap_or_default()
        .to_string()
}

/// The refusal of a body of `len` bytes, over [`MAX_REVIEW_BYTES`] (its uid is set by the
/// caller).
fn too_large(len: usize) -> AdmissionResponse {
    AdmissionResponse::invalid(format!(
        "the pod is too large for the kube-aws-iam-controller webhook: its AdmissionReview has {} KiB, at most {} KiB are admitted",
        len / 1024,
        MAX_REVIEW_BYTES / 1024
    ))
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
    if let Some(why) = binding_refusal(req, facts, ns) {
        return (res.deny(why), result::DENIED);
    }
    let (Some(pod), Operation::Create) = (req.object.as_ref(), &req.operation) else {
        return (res, result::SKIPPED);
    };
    let Some(role) = facts.choice.role() else {
        return (res, result::SKIPPED);
    };
    let injection = Injection {
        role: role.to_string(),
        region: region.map(str::to_string),
    };
    let m = match mutation(pod, &injection, &facts.choice, delivery) {
        Ok(m) => m,
        Err(why) => return (res.deny(why), result::DENIED),
    };
    let warnings = warnings(ns, role, facts, &m.warnings);
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

/// The ServiceAccount binding's refusal: it judges a new pod, with the role it would be given,
/// and a pod gaining ephemeral containers, as the admission policy does.
fn binding_refusal(req: &AdmissionRequest<Pod>, facts: &Facts, ns: &str) -> Option<String> {
    let injected = match req.operation {
        Operation::Create => facts.choice.role(),
        _ => None,
    };
    let judged = matches!(req.operation, Operation::Create)
        || (matches!(req.operation, Operation::Update)
            && req.sub_resource.as_deref() == Some("ephemeralcontainers"));
    let pod = req.object.as_ref().filter(|_| judged)?;
    binding::refusal(ns, pod, injected, &facts.bindings)
}

/// The mutation of `pod` in its delivery mode, or why the pod is refused (a role name that is
/// not a Secret name, an unknown mode, no sidecar image).
fn mutation(
    pod: &Pod,
    injection: &Injection,
    choice: &Choice,
    delivery: &Delivery,
) -> Result<mutate::Mutation, String> {
    if let Some(why) = mutate::invalid_role_name(&injection.role) {
        let source = match choice {
            Choice::ServiceAccount(_) => "the ServiceAccount's annotation",
            _ => "the pod's label",
        };
        return Err(format!("{source} {}: {why}", mutate::ROLE_LABEL));
    }
    match (delivery.mode_for(pod)?, delivery.image.as_deref()) {
        (Mode::Process, _) => Ok(mutate::mutate(pod, injection)),
        (Mode::Endpoint, Some(image)) => Ok(endpoint::mutate(pod, injection, image)),
        (Mode::Endpoint, None) => Err(format!(
            "{} endpoint: this webhook has no --webhook-sidecar-image to run the credentials sidecar with",
            endpoint::MODE_ANNOTATION
        )),
    }
}

/// What the caches say about the role, and the mutation's own warnings.
fn warnings(ns: &str, role: &str, facts: &Facts, mutation: &[String]) -> Vec<String> {
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
    warnings.extend(mutation.iter().cloned());
    warnings
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
    fn an_oversized_body_arriving_in_chunks_keeps_only_its_head_and_is_refused_for_its_uid() {
        let big = review(20_000);
        let mut c = Collector::default();
        for chunk in big.chunks(16 * 1024) {
            assert!(c.push(chunk));
        }
        assert_eq!(c.len(), big.len());
        assert!(
            c.kept.len() <= PREFIX_BYTES && c.tail.len() <= PREFIX_BYTES,
            "{} and {} bytes kept",
            c.kept.len(),
            c.tail.len()
        );
        let res = c.finish().expect_err("too large");
        assert!(!res.allowed);
        assert_eq!(res.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert!(
            res.result
                .message
                .contains(&format!("has {} KiB", big.len() / 1024)),
            "{}",
            res.result.message
        );
        // Within the limit, whole: decoded as before.
        let mut c = Collector::default();
        for chunk in review(5_000).chunks(7) {
            assert!(c.push(chunk));
        }
        assert!(c.finish().is_ok());
        // Past the most the webhook reads: refused at the connection.
        let mut c = Collector::default();
        let chunk = vec![b' '; 1024 * 1024];
        let pushed = (0..=MAX_BODY_BYTES / chunk.len())
            .map(|_| c.push(&chunk))
            .collect::<Vec<_>>();
        assert_eq!(pushed.last(), Some(&false));
        assert!(c.kept.len() <= PREFIX_BYTES && c.tail.len() <= PREFIX_BYTES);
    }

    #[test]
    fn the_uid_is_found_in_the_head_of_a_body_as_the_api_server_writes_it() {
        let head = br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid" : "0f1e-2d3c","kind":{"#;
        assert_eq!(request_uid(head, b""), "0f1e-2d3c");
        assert_eq!(request_uid(br#"{"request":{"kind":{"#, b""), "");
        assert_eq!(
            request_uid(br#"{"request":{"uid":"a\"b","kind":{"#, b""),
            ""
        );
        // Keys in sorted order (serde_json's): the uid is near the end.
        assert_eq!(
            request_uid(
                br#"{"request":{"kind":{"#,
                br#""}]}},"uid":"9-8","userInfo":{}}}"#
            ),
            "9-8"
        );
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
