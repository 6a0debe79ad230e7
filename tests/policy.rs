//! The namespace role policy and the controller's guard on its own identity, against the real
//! API server and the STS double: who gets which role, what is withdrawn when a policy changes,
//! and that refused roles never reach STS.

mod support;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use kube_aws_iam_controller::aws::{IssueRequest, RequestOptions};
use kube_aws_iam_controller::controller::policy::PolicyContext;
use kube_aws_iam_controller::controller::secret::CREDENTIALS_PROCESS_KEY;
use kube_aws_iam_controller::policy::{
    ALLOWED_ROLES_ANNOTATION, Guard, PERMITTED_ANNOTATION, PolicyMode,
};
use support::sts_double::StsDouble;
use support::{
    BASE_ROLE_ARN, Controller, Launch, data, env, event_reasons, ready_role, role, sts_issuer,
    wait_for,
};

fn has_credentials(s: &k8s_openapi::api::core::v1::Secret) -> bool {
    s.data
        .as_ref()
        .is_some_and(|d| d.contains_key("credentials.json") || d.contains_key("credentials"))
}

#[tokio::test]
async fn a_namespace_without_a_policy_gets_no_credentials_and_an_annotated_one_does() {
    let env = env().await;
    let client = env.client().await;
    let sts = StsDouble::start().await;
    let bare = env.namespace_with(&client, "nopolicy", &[]).await;
    let ctl = Controller::builder(&client, &bare, sts_issuer(&sts.endpoint))
        .start()
        .await;
    let roles = Api::namespaced(client.clone(), &bare);
    roles
        .create(&PostParams::default(), &role("app", "app", 3600))
        .await
        .expect("create");
    let r = ready_role(&roles, "app", "False", Some("RoleNotPermitted")).await;
    let c = r.ready_condition().expect("condition");
    assert!(c.message.contains("has no role policy"), "{}", c.message);
    assert!(c.message.contains(PERMITTED_ANNOTATION), "{}", c.message);
    wait_for("a RoleNotPermitted event", || async {
        event_reasons(&client, &bare, "app")
            .await
            .iter()
            .any(|(r, _)| r == "RoleNotPermitted")
            .then_some(())
    })
    .await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &bare);
    assert!(
        secrets.get_opt("app").await.expect("get").is_none(),
        "a Secret was written"
    );
    assert_eq!(sts.assume_role_calls(&format!("{BASE_ROLE_ARN}app")), 0);
    ctl.stop().await;

    let allowed = env
        .namespace_with(
            &client,
            "policy",
            &[(ALLOWED_ROLES_ANNOTATION, r#"["app"]"#)],
        )
        .await;
    let ctl = Controller::builder(&client, &allowed, sts_issuer(&sts.endpoint))
        .start()
        .await;
    let roles = Api::namespaced(client.clone(), &allowed);
    roles
        .create(&PostParams::default(), &role("app", "app", 3600))
        .await
        .expect("create");
    ready_role(&roles, "app", "True", None).await;
    ctl.stop().await;
}

#[tokio::test]
async fn revoking_the_annotation_withdraws_the_credentials_and_restoring_it_reissues() {
    let env = env().await;
    let client = env.client().await;
    let sts = StsDouble::start().await;
    let ns = env
        .namespace_with(&client, "revoke", &[(PERMITTED_ANNOTATION, "team/.*")])
        .await;
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .start()
        .await;
    let roles = Api::namespaced(client.clone(), &ns);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    roles
        .create(&PostParams::default(), &role("app", "team/app", 3600))
        .await
        .expect("create");
    ready_role(&roles, "app", "True", None).await;
    assert!(has_credentials(&secrets.get("app").await.expect("secret")));

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let revoke = json!({"metadata": {"annotations": {PERMITTED_ANNOTATION: "other/.*"}}});
    namespaces
        .patch(&ns, &PatchParams::default(), &Patch::Merge(&revoke))
        .await
        .expect("revoke");
    let withdrawn = wait_for("credentials withdrawn after the policy changed", || async {
        secrets
            .get_opt("app")
            .await
            .ok()
            .flatten()
            .filter(|s| !has_credentials(s))
    })
    .await;
    // Pods see no credentials, and no fallback: the process file stays and fails.
    let keys: Vec<&String> = withdrawn
        .data
        .as_ref()
        .map(|d| d.keys().collect())
        .unwrap_or_default();
    assert_eq!(keys, vec![CREDENTIALS_PROCESS_KEY], "keys left: {keys:?}");
    let r = ready_role(&roles, "app", "False", Some("RoleNotPermitted")).await;
    let status = r.status.clone().expect("status");
    assert!(
        status.expiration.is_none() && status.role_arn.is_none(),
        "{status:?}"
    );
    assert!(
        r.ready_condition()
            .expect("c")
            .message
            .contains("the Secret holds no credentials"),
        "the status says the credentials were withdrawn"
    );
    let calls = sts.assume_role_calls(&format!("{BASE_ROLE_ARN}team/app"));
    assert_eq!(calls, 1, "no STS call for a refused role");

    let restore = json!({"metadata": {"annotations": {PERMITTED_ANNOTATION: null, ALLOWED_ROLES_ANNOTATION: r#"["team/*"]"#}}});
    namespaces
        .patch(&ns, &PatchParams::default(), &Patch::Merge(&restore))
        .await
        .expect("restore");
    let back = wait_for("credentials issued again", || async {
        secrets
            .get_opt("app")
            .await
            .ok()
            .flatten()
            .filter(has_credentials)
    })
    .await;
    assert_eq!(data(&back, "role-arn"), format!("{BASE_ROLE_ARN}team/app"));
    ready_role(&roles, "app", "True", None).await;
    ctl.stop().await;
}

#[tokio::test]
async fn the_controllers_own_role_is_refused_whatever_the_policy_except_for_its_own_awsiamrole() {
    let env = env().await;
    let client = env.client().await;
    let sts = StsDouble::start().await;
    let ns = env.namespace(&client, "own").await;
    let mut guard = Guard::default();
    guard.protect_identity(
        "arn:aws:sts::123456789012:assumed-role/kube-aws-iam-controller/i-0abc",
        "the controller's own role",
    );
    guard.protect_role(
        &format!("{BASE_ROLE_ARN}hub").parse().expect("arn"),
        "--assume-role",
    );
    for mode in [PolicyMode::Enforce, PolicyMode::None] {
        let policy =
            PolicyContext::new(mode, Some((ns.clone(), "self".into())), Some(guard.clone()));
        let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
            .policy(policy)
            .start()
            .await;
        let roles = Api::namespaced(client.clone(), &ns);
        let suffix = mode.as_str();
        for (name, reference) in [
            (
                format!("steal-{suffix}"),
                "kube-aws-iam-controller".to_string(),
            ),
            (
                format!("path-{suffix}"),
                "x/Kube-AWS-IAM-Controller".to_string(),
            ),
            (format!("hub-{suffix}"), format!("{BASE_ROLE_ARN}hub")),
        ] {
            roles
                .create(&PostParams::default(), &role(&name, &reference, 3600))
                .await
                .expect("create");
            let r = ready_role(&roles, &name, "False", Some("RoleNotPermitted")).await;
            assert!(
                r.ready_condition()
                    .expect("c")
                    .message
                    .contains("own identity"),
                "{name}"
            );
        }
        ctl.stop().await;
    }
    assert_eq!(sts.total_calls(), 0, "a refused role reached STS");

    let policy = PolicyContext::new(
        PolicyMode::Enforce,
        Some((ns.clone(), "self".into())),
        Some(guard),
    );
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .policy(policy)
        .start()
        .await;
    let roles = Api::namespaced(client.clone(), &ns);
    roles
        .create(
            &PostParams::default(),
            &role("self", "kube-aws-iam-controller", 3600),
        )
        .await
        .expect("create");
    ready_role(&roles, "self", "True", None).await;
    ctl.stop().await;
}

#[tokio::test]
async fn audit_mode_issues_and_reports_what_enforce_would_deny() {
    let env = env().await;
    let client = env.client().await;
    let sts = StsDouble::start().await;
    let ns = env.namespace_with(&client, "audit", &[]).await;
    let policy = PolicyContext::new(PolicyMode::Audit, None, Some(Guard::default()));
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .policy(policy)
        .start()
        .await;
    let roles = Api::namespaced(client.clone(), &ns);
    roles
        .create(&PostParams::default(), &role("app", "app", 3600))
        .await
        .expect("create");
    let r = ready_role(&roles, "app", "True", None).await;
    let audit = wait_for("PolicyWouldDeny condition", || async {
        let r = roles.get("app").await.ok()?;
        r.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "PolicyWouldDeny" && c.status == "True")
    })
    .await;
    assert!(
        audit.message.contains("has no role policy"),
        "{}",
        audit.message
    );
    drop(r);
    wait_for("a PolicyWouldDeny Warning event", || async {
        event_reasons(&client, &ns, "app")
            .await
            .iter()
            .any(|(r, _)| r == "PolicyWouldDeny")
            .then_some(())
    })
    .await;
    assert!(
        ctl.ctx
            .metrics
            .render()
            .contains("kaic_policy_would_deny 1"),
        "{}",
        ctl.ctx.metrics.render()
    );
    // Annotating the namespace clears it.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let permit = json!({"metadata": {"annotations": {PERMITTED_ANNOTATION: "app"}}});
    namespaces
        .patch(&ns, &PatchParams::default(), &Patch::Merge(&permit))
        .await
        .expect("annotate");
    wait_for("PolicyWouldDeny cleared", || async {
        let r = roles.get("app").await.ok()?;
        (!r.status?
            .conditions
            .iter()
            .any(|c| c.type_ == "PolicyWouldDeny"))
        .then_some(())
    })
    .await;
    assert_eq!(sts.assume_role_calls(&format!("{BASE_ROLE_ARN}app")), 1);
    ctl.stop().await;
}

#[tokio::test]
async fn a_role_reference_changed_to_a_role_sts_denies_withdraws_the_old_roles_credentials() {
    let env = env().await;
    let client = env.client().await;
    let sts = StsDouble::start().await;
    sts.deny(&format!("{BASE_ROLE_ARN}forbidden"));
    let ns = env.namespace(&client, "change").await;
    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .start()
        .await;
    let roles = Api::namespaced(client.clone(), &ns);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    roles
        .create(&PostParams::default(), &role("app", "allowed", 3600))
        .await
        .expect("create");
    ready_role(&roles, "app", "True", None).await;
    let change = json!({"spec": {"roleReference": "forbidden"}});
    roles
        .patch("app", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .expect("change");
    wait_for("the old role's credentials withdrawn", || async {
        secrets
            .get_opt("app")
            .await
            .ok()
            .flatten()
            .filter(|s| !has_credentials(s))
    })
    .await;
    let r = ready_role(&roles, "app", "False", Some("AccessDenied")).await;
    assert!(r.status.expect("status").role_arn.is_none());
    ctl.stop().await;
}

#[tokio::test]
async fn the_binary_never_issues_its_own_role_in_the_default_mode() {
    let env = env().await;
    let client = env.client().await;
    let sts = StsDouble::start().await;
    // The controller runs on a session of its own role, as after `bootstrap` or on IRSA.
    let own = sts_issuer(&sts.endpoint)
        .assume_role(IssueRequest {
            role_arn: format!("{BASE_ROLE_ARN}kube-aws-iam-controller")
                .parse()
                .expect("arn"),
            session_name: "seed".into(),
            duration_seconds: 3600,
            options: RequestOptions::default(),
        })
        .await
        .expect("seed credentials");
    let ns = env.namespace(&client, "binown").await;
    let bin = support::start_binary_with(
        env,
        &ns,
        &sts.endpoint,
        &[],
        Launch {
            aws_env: Some(vec![
                ("AWS_ACCESS_KEY_ID", own.access_key_id.clone()),
                ("AWS_SECRET_ACCESS_KEY", own.secret_access_key.clone()),
                ("AWS_SESSION_TOKEN", own.session_token.clone()),
                ("AWS_CONFIG_FILE", "/dev/null".into()),
                ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
                ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ]),
            ..Launch::default()
        },
    )
    .await;
    let roles = Api::namespaced(client.clone(), &ns);
    roles
        .create(
            &PostParams::default(),
            &role("steal", "kube-aws-iam-controller", 3600),
        )
        .await
        .expect("create");
    roles
        .create(&PostParams::default(), &role("app", "app", 3600))
        .await
        .expect("create");
    ready_role(&roles, "app", "True", None).await;
    let r = ready_role(&roles, "steal", "False", Some("RoleNotPermitted")).await;
    assert!(
        r.ready_condition()
            .expect("c")
            .message
            .contains("own identity")
    );
    assert_eq!(
        sts.assume_role_calls(&format!("{BASE_ROLE_ARN}kube-aws-iam-controller")),
        1,
        "only the seed call reached STS for the controller's own role"
    );
    bin.kill();
}
