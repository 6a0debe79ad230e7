//! The `AWSIAMRole` custom resource (`zalando.org/v1`); the CRD in `deploy/` is generated from these types.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

/// Default session length the Go controller's CRD uses.
pub const DEFAULT_SESSION_SECONDS: i64 = 3600;
/// STS bounds for `DurationSeconds`.
pub const MIN_SESSION_SECONDS: i64 = 900;
pub const MAX_SESSION_SECONDS: i64 = 43200;
/// Most ServiceAccounts one AWSIAMRole may list: bounds the admission policy's CEL cost.
pub const MAX_SERVICE_ACCOUNT_NAMES: usize = 64;
/// Longest `roleReference`: the longest ARN prefix (`arn:aws-us-gov:iam::<12 digits>:role/`)
/// plus IAM's longest path (512) and name (64).
pub const ROLE_REFERENCE_MAX: usize = 640;

fn default_session_duration() -> i64 {
    DEFAULT_SESSION_SECONDS
}

/// An AWS IAM role whose credentials the controller keeps in a Secret of the same name.
// NOTE: clippy reads the repeated `type_ = "string"` of the printcolumns as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
// NOTE: `Deserialize` of the spec is written by hand (below): it never fails, so one malformed
// object cannot break the list/watch of all the others.
#[derive(CustomResource, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "zalando.org",
    version = "v1",
    kind = "AWSIAMRole",
    plural = "awsiamroles",
    singular = "awsiamrole",
    shortname = "iamrole",
    category = "all",
    namespaced,
    status = "AWSIAMRoleStatus",
    doc = "AWSIAMRole asks the controller for credentials of an AWS IAM role, delivered in a Secret of the same name.",
    printcolumn(name = "RoleARN", type_ = "string", json_path = ".status.roleARN"),
    printcolumn(
        name = "Expiration",
        type_ = "string",
        json_path = ".status.expiration"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "ServiceAccounts",
        type_ = "string",
        json_path = ".status.serviceAccounts"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AWSIAMRoleSpec {
    /// Role name (`my-role`), name with a path (`team/my-role`), or full role ARN
    /// (`arn:<partition>:iam::<12-digit account>:role/<path/><name>`). Names are prefixed with
    /// the controller's base role ARN. IAM limits: names and path segments of 1-64 of
    /// `A-Za-z0-9+=,.@_-`, paths up to 512 characters.
    #[schemars(
        length(min = 3, max = ROLE_REFERENCE_MAX),
        regex(pattern = r"^(arn:aws(-cn|-us-gov)?:iam::[0-9]{12}:role/)?[A-Za-z0-9+=,.@_-]{1,64}(/[A-Za-z0-9+=,.@_-]{1,64})*$")
    )]
    pub role_reference: String,
    /// Session length in seconds, 900 to 43200.
    #[serde(default = "default_session_duration")]
    #[schemars(range(min = 900, max = 43200))]
    pub role_session_duration: i64,
    /// Inline session policy (IAM policy JSON): the credentials get only the permissions both
    /// this policy and the role's policies allow. It can only reduce permissions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub policy: Option<String>,
    /// Managed policies (`arn:<partition>:iam::<account or aws>:policy/<name>`) used as session
    /// policies, at most 10. Like `policy`, they can only reduce permissions.
    #[serde(default, rename = "policyARNs", skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 10),
        inner(
            length(max = 2048),
            regex(pattern = r"^arn:aws(-cn|-us-gov)?:iam::(\d{12}|aws):policy/[\w+=,.@/-]+$")
        )
    )]
    pub policy_arns: Vec<String>,
    /// The ServiceAccounts (in the role's namespace) whose pods may use the role's Secret. Unset:
    /// any pod in the namespace may (the Go controller's behaviour); empty: none may. Enforced at
    /// admission by `deploy/serviceaccount-binding.yaml` and by the webhook (docs/security.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = MAX_SERVICE_ACCOUNT_NAMES),
        inner(
            length(min = 1, max = 253),
            regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
        )
    )]
    pub service_account_names: Option<Vec<String>>,
    /// Why the stored spec could not be read (a missing `roleReference`, a wrongly typed field):
    /// the controller reports it as `InvalidSpec` instead of failing the whole watch.
    #[serde(skip)]
    #[schemars(skip)]
    pub invalid: Option<String>,
}

/// The spec exactly as the schema describes it; decoding it may fail.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StrictSpec {
    role_reference: String,
    #[serde(default = "default_session_duration")]
    role_session_duration: i64,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default, rename = "policyARNs")]
    policy_arns: Vec<String>,
    #[serde(default)]
    service_account_names: Option<Vec<String>>,
}

/// Longest decoding error kept in `invalid` (it ends up in status and an Event).
const MAX_INVALID_MESSAGE: usize = 200;

impl AWSIAMRoleSpec {
    /// Decodes a stored spec; never fails. A spec the schema would reject (objects written
    /// under the Go controller's CRD, which did not require `roleReference`) comes back with
    /// `invalid` set and whatever `roleReference` could be read.
    pub fn lenient(value: Option<serde_json::Value>) -> Self {
        let Some(value) = value.filter(|v| !v.is_null()) else {
            return Self::invalid("spec is missing".into(), None);
        };
        match serde_json::from_value::<StrictSpec>(value.clone()) {
            Ok(s) => AWSIAMRoleSpec {
                role_reference: s.role_reference,
                role_session_duration: s.role_session_duration,
                policy: s.policy,
                policy_arns: s.policy_arns,
                service_account_names: s.service_account_names,
                invalid: None,
            },
            Err(e) => {
                let mut message = e.to_string();
                if message.len() > MAX_INVALID_MESSAGE {
                    let mut cut = MAX_INVALID_MESSAGE;
                    while !message.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    message.truncate(cut);
                }
                let reference = value
                    .get("roleReference")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_string);
                let mut spec = Self::invalid(message, reference);
                spec.service_account_names = lenient_service_accounts(&value);
                spec
            }
        }
    }

    fn invalid(message: String, role_reference: Option<String>) -> Self {
        AWSIAMRoleSpec {
            role_reference: role_reference.unwrap_or_default(),
            role_session_duration: DEFAULT_SESSION_SECONDS,
            policy: None,
            policy_arns: Vec::new(),
            service_account_names: None,
            invalid: Some(message),
        }
    }
}

/// `serviceAccountNames` of a spec that did not decode as a whole: the binding still holds
/// (the admission policy reads the stored list whatever else is wrong). A list that is not a
/// list of strings binds the role to no ServiceAccount: fail closed, as the policy does when
/// its expression errs.
fn lenient_service_accounts(value: &serde_json::Value) -> Option<Vec<String>> {
    let field = value.get("serviceAccountNames")?;
    if field.is_null() {
        return None;
    }
    Some(serde_json::from_value::<Vec<String>>(field.clone()).unwrap_or_default())
}

impl<'de> Deserialize<'de> for AWSIAMRoleSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `Option` so that a missing or null `spec` decodes too.
        Ok(Self::lenient(Option::<serde_json::Value>::deserialize(d)?))
    }
}

/// What the controller last did for this role.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AWSIAMRoleStatus {
    /// The generation the current credentials were issued for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The full ARN of the assumed role.
    #[serde(default, rename = "roleARN", skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// When the credentials in the Secret expire (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    /// The ServiceAccounts that may use the role (`spec.serviceAccountNames`, comma-separated;
    /// `<none>` for an empty list); absent while any pod in the namespace may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<String>,
    /// `Ready` says whether the Secret holds valid credentials for the current spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A standard Kubernetes condition (the subset of `metav1.Condition` this CRD uses).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    /// RFC 3339; changes only when `status` changes.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl AWSIAMRole {
    /// The `Ready` condition, if the controller has written one.
    pub fn ready_condition(&self) -> Option<&Condition> {
        self.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
    }
}

/// The CRD as YAML, exactly as committed in `deploy/crd.yaml`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&AWSIAMRole::crd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crd_matches_the_rust_types() {
        let committed = include_str!("../deploy/crd.yaml");
        let generated = crd_yaml().expect("yaml");
        assert!(
            committed == generated,
            "deploy/crd.yaml is out of date: run `cargo run --bin crdgen > deploy/crd.yaml`"
        );
    }

    #[test]
    fn crd_keeps_the_go_controllers_names_and_bounds() {
        let crd: serde_json::Value =
            serde_yaml::from_str(include_str!("../deploy/crd.yaml")).expect("yaml");
        assert_eq!(crd["spec"]["group"], "zalando.org");
        assert_eq!(crd["spec"]["names"]["kind"], "AWSIAMRole");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        let v = &crd["spec"]["versions"][0];
        assert_eq!(v["name"], "v1");
        assert!(v["subresources"]["status"].is_object());
        let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(spec["roleReference"]["minLength"], 3);
        assert_eq!(spec["roleSessionDuration"]["minimum"].as_f64(), Some(900.0));
        assert_eq!(
            spec["roleSessionDuration"]["maximum"].as_f64(),
            Some(43200.0)
        );
        assert_eq!(spec["roleSessionDuration"]["default"], 3600);
        assert_eq!(spec["policy"]["maxLength"], 2048);
        assert_eq!(spec["policyARNs"]["maxItems"], 10);
        assert!(
            spec["policyARNs"]["items"]["pattern"]
                .as_str()
                .is_some_and(|p| p.contains(":policy/"))
        );
        let required = &v["schema"]["openAPIV3Schema"]["properties"]["spec"]["required"];
        assert_eq!(required, &serde_json::json!(["roleReference"]));
    }

    #[test]
    fn roles_written_before_the_session_policy_fields_still_read_and_write_the_same() {
        let old: AWSIAMRoleSpec =
            serde_json::from_str(r#"{"roleReference":"app","roleSessionDuration":900}"#)
                .expect("old spec");
        assert_eq!(old.policy, None);
        assert!(old.policy_arns.is_empty());
        assert_eq!(
            serde_json::to_value(&old).expect("json"),
            serde_json::json!({"roleReference":"app","roleSessionDuration":900})
        );
        let new: AWSIAMRoleSpec = serde_json::from_str(
            r#"{"roleReference":"app","policy":"{}","policyARNs":["arn:aws:iam::aws:policy/ReadOnlyAccess"]}"#,
        )
        .expect("new spec");
        assert_eq!(new.role_session_duration, 3600);
        assert_eq!(new.policy_arns.len(), 1);
    }

    #[test]
    fn a_malformed_object_decodes_with_the_reason_instead_of_failing() {
        let missing: AWSIAMRole = serde_json::from_value(serde_json::json!({
            "apiVersion": "zalando.org/v1", "kind": "AWSIAMRole",
            "metadata": {"name": "old", "namespace": "ns"},
            "spec": {"roleSessionDuration": 3600}
        }))
        .expect("decodes");
        assert!(
            missing
                .spec
                .invalid
                .as_deref()
                .is_some_and(|m| m.contains("roleReference"))
        );
        let typed: AWSIAMRole = serde_json::from_value(serde_json::json!({
            "apiVersion": "zalando.org/v1", "kind": "AWSIAMRole",
            "metadata": {"name": "typed", "namespace": "ns"},
            "spec": {"roleReference": "app", "roleSessionDuration": "an hour"}
        }))
        .expect("decodes");
        assert_eq!(typed.spec.role_reference, "app");
        assert!(typed.spec.invalid.is_some());
        let specless: AWSIAMRole = serde_json::from_value(serde_json::json!({
            "apiVersion": "zalando.org/v1", "kind": "AWSIAMRole",
            "metadata": {"name": "bare", "namespace": "ns"}
        }))
        .expect("decodes");
        assert_eq!(specless.spec.invalid.as_deref(), Some("spec is missing"));
        let good: AWSIAMRoleSpec =
            serde_json::from_str(r#"{"roleReference":"app"}"#).expect("spec");
        assert_eq!(good.invalid, None);
    }

    #[test]
    fn the_service_account_binding_survives_a_spec_that_does_not_decode() {
        let unbound: AWSIAMRoleSpec =
            serde_json::from_str(r#"{"roleReference":"app"}"#).expect("spec");
        assert_eq!(unbound.service_account_names, None);
        let bound: AWSIAMRoleSpec =
            serde_json::from_str(r#"{"roleReference":"app","serviceAccountNames":["web"]}"#)
                .expect("spec");
        assert_eq!(bound.service_account_names, Some(vec!["web".to_string()]));
        // Another field is malformed: the role is invalid and still bound.
        let invalid: AWSIAMRoleSpec = serde_json::from_str(
            r#"{"roleReference":"app","roleSessionDuration":"an hour","serviceAccountNames":["web"]}"#,
        )
        .expect("spec");
        assert!(invalid.invalid.is_some());
        assert_eq!(invalid.service_account_names, Some(vec!["web".to_string()]));
        // The list itself is malformed: bound to no ServiceAccount (fail closed).
        let garbled: AWSIAMRoleSpec =
            serde_json::from_str(r#"{"roleReference":"app","serviceAccountNames":"web"}"#)
                .expect("spec");
        assert!(garbled.invalid.is_some());
        assert_eq!(garbled.service_account_names, Some(vec![]));
        let crd: serde_json::Value =
            serde_yaml::from_str(include_str!("../deploy/crd.yaml")).expect("yaml");
        let v = &crd["spec"]["versions"][0];
        let names = &v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["serviceAccountNames"];
        assert_eq!(names["maxItems"], MAX_SERVICE_ACCOUNT_NAMES);
        assert_eq!(names["items"]["maxLength"], 253);
        assert!(
            v["additionalPrinterColumns"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["jsonPath"] == ".status.serviceAccounts"))
        );
    }
}
