//! One malformed AWSIAMRole (no `roleReference`, a wrongly typed field: objects created under
//! the Go controller's CRD, which required neither) never stalls the controller: it is reported
//! `InvalidSpec` and all others are served. A test binary of its own: it swaps the CRD its API
//! server serves.

mod support;

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use serde_json::json;

use kube_aws_iam_controller::crd::AWSIAMRole;
use support::{Controller, Scene, install_crd, repo, role, scene, sts_issuer, wait_for};

/// The shipped CRD with a spec schema that accepts anything, as the Go controller's did.
async fn install_permissive_crd(client: &kube::Client) {
    let yaml = std::fs::read_to_string(repo().join("deploy/crd.yaml")).expect("deploy/crd.yaml");
    let mut crd: serde_json::Value = serde_yaml::from_str(&yaml).expect("crd yaml");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"] =
        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let crd: CustomResourceDefinition = serde_json::from_value(crd).expect("crd");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        "awsiamroles.zalando.org",
        &PatchParams::apply("kaic-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("install the permissive CRD");
}

#[tokio::test]
async fn a_role_without_role_reference_does_not_stall_the_others() {
    let Scene {
        client,
        ns,
        roles,
        sts,
        ..
    } = scene("lenient").await;
    install_permissive_crd(&client).await;
    let ar = ApiResource::erase::<AWSIAMRole>(&());
    let raw: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let malformed = |name: &str, spec: serde_json::Value| {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "zalando.org/v1",
            "kind": "AWSIAMRole",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .expect("object");
        obj
    };
    // The permissive schema may take a moment to be served.
    wait_for("a roleReference-less AWSIAMRole to be accepted", || async {
        raw.create(
            &PostParams::default(),
            &malformed("no-reference", json!({"roleSessionDuration": 3600})),
        )
        .await
        .ok()
    })
    .await;
    raw.create(
        &PostParams::default(),
        &malformed(
            "wrong-type",
            json!({"roleReference": "typed", "roleSessionDuration": "one hour"}),
        ),
    )
    .await
    .expect("create wrongly typed");
    install_crd(&client).await;
    roles
        .create(&PostParams::default(), &role("good", "good", 3600))
        .await
        .expect("create a valid role");

    let ctl = Controller::builder(&client, &ns, sts_issuer(&sts.endpoint))
        .start()
        .await;
    wait_for("the valid role to be Ready", || async {
        let r = roles.get("good").await.ok()?;
        (r.ready_condition()?.status == "True").then_some(())
    })
    .await;
    for name in ["no-reference", "wrong-type"] {
        let r = wait_for(&format!("{name} Ready=False InvalidSpec"), || async {
            let r = roles.get(name).await.ok()?;
            let c = r.ready_condition()?;
            (c.status == "False" && c.reason == "InvalidSpec").then_some(r)
        })
        .await;
        assert!(
            r.spec.invalid.is_some(),
            "the client reads it leniently too"
        );
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        wait_for(&format!("an InvalidSpec event for {name}"), || async {
            let evs = events.list(&ListParams::default()).await.ok()?;
            evs.items
                .iter()
                .any(|e| {
                    e.involved_object.name.as_deref() == Some(name)
                        && e.reason.as_deref() == Some("InvalidSpec")
                })
                .then_some(())
        })
        .await;
    }
    let message = roles
        .get("no-reference")
        .await
        .expect("get")
        .ready_condition()
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("roleReference"), "{message}");
    assert_eq!(sts.total_calls(), 1, "only the valid role was issued");
    ctl.stop().await;
}
