//! The controller as users run it, on a real single-node cluster (tests/support/node.rs):
//! the chart installed with `helm install` as the README says, the image from
//! scripts/build-image.sh, app pods from images of registry packages (scripts/build-node-images.sh),
//! the kubelet laying out and updating Secret volumes, kube-proxy routing Services, the
//! scheduler and the controller manager (garbage collector included) running.
//!
//! One test, one cluster: the test runs again inside network, mount and PID namespaces of its
//! own (`support::node::run_contained`), brings the node up once and walks through the
//! scenarios in order, each printing what it measured.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, LogParams, PostParams};
use kube_aws_iam_controller::crd::AWSIAMRole;
use serde_json::json;

use support::BASE_ROLE_ARN;
use support::helm::{CHART, helm_ok};
use support::node::{self, NODE_IP, Node};
use support::node_apps::*;
use support::sts_double::StsDouble;

#[test]
fn the_chart_serves_real_pods_on_a_real_node() {
    if !node::inside() {
        node::run_contained("the_chart_serves_real_pods_on_a_real_node");
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let node = std::sync::Arc::new(Node::start().await);
            let run = tokio::spawn(scenarios(std::sync::Arc::clone(&node))).await;
            if let Err(e) = run {
                println!("a scenario failed; the cluster:\n{}", node.diagnose().await);
                std::panic::resume_unwind(e.into_panic());
            }
        });
}

async fn scenarios(node: std::sync::Arc<Node>) {
    let started = Instant::now();
    let images = import_images(&node);
    println!(
        "node: images imported in {} ms",
        started.elapsed().as_millis()
    );
    let sts = StsDouble::start_on(NODE_IP).await;
    let installed = install(&node, &sts).await;
    println!(
        "(a) helm install --wait: {} ms; replicas {:?} Ready by the kubelet's probes (non-root, read-only root filesystem); leader {}; no forbidden in their logs",
        installed.took.as_millis(),
        installed.replicas,
        installed.leader
    );
    first_pod_after_install_is_admitted(&node, &images).await;
    seed_promise(&node, &sts, &images).await;
    let apps = Apps::start(&node, &sts, &images).await;
    operations(&node, &images).await;
    deletion(&node).await;
    apps.finish(&node, &sts).await;
    uninstall_and_reinstall(&node, &sts).await;
}

/// A pod opted in to the webhook by its label (Debian's busybox-static: admission is what
/// matters; its role's Secret may not exist).
fn opted_in_pod(name: &str, role: &str, image: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"zalando.org/aws-iam-role": role}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "app", "image": image, "command": ["sleep", "3600"]}],
        },
    }))
    .expect("pod")
}

/// The issue's first defect: opted-in pods were refused for up to about 50 s after
/// `helm install --wait` (the certificate came late and `/readyz` ignored it).
async fn first_pod_after_install_is_admitted(node: &Node, images: &AppImages) {
    let client = node.client().await;
    namespace(&client, "admit").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "admit");
    let pod = pods
        .create(
            &PostParams::default(),
            &opted_in_pod("first", "none-yet", &images.busybox),
        )
        .await
        .unwrap_or_else(|e| panic!("the first opted-in pod after helm install --wait: {e}"));
    let mounts = pod.spec.expect("spec").volumes.unwrap_or_default();
    assert!(
        mounts.iter().any(|v| v
            .secret
            .as_ref()
            .is_some_and(|s| s.secret_name.as_deref() == Some("none-yet"))),
        "the webhook mutated the first pod (its role's Secret is mounted)"
    );
    println!("(a) the first opted-in pod after helm install --wait was admitted and mutated");
}

/// (b) The seed's promise: a Deployment created before its AWSIAMRole waits in
/// ContainerCreating, starts once the AWSIAMRole exists, and its AWS CLI and boto3 print the
/// role's ARN; STS sees only that role's calls from it.
async fn seed_promise(node: &Node, sts: &StsDouble, images: &AppImages) {
    let client = node.client().await;
    let ns = "promise";
    namespace(&client, ns).await;
    let script = "aws sts get-caller-identity --query Arn --output text && \
        python3 -c \"import boto3; print(boto3.client('sts').get_caller_identity()['Arn'])\" && \
        exec sleep 100000";
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    deployments
        .create(
            &PostParams::default(),
            &deployment(
                "cli",
                "promise-role",
                json!({}),
                json!({"name": "cli", "image": images.awscli, "command": ["sh", "-c", script], "env": app_env(sts)}),
            ),
        )
        .await
        .expect("create the app before its AWSIAMRole");
    let pod = within(60, "the app's pod to wait for its Secret", || async {
        let p = app_pod(&client, ns, "cli").await?;
        (waiting_reason(&p).as_deref() == Some("ContainerCreating")).then_some(p)
    })
    .await;
    // It keeps waiting while the AWSIAMRole does not exist.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let still = pods.get(&pod.name_any()).await.expect("pod");
    assert!(!running(&still), "the pod started without its Secret");
    assert_eq!(waiting_reason(&still).as_deref(), Some("ContainerCreating"));
    let created = Instant::now();
    create_role(&client, ns, "promise-role", 3600).await;
    let arn = format!("{BASE_ROLE_ARN}promise-role");
    let out = within(120, "the app to print its role twice", || async {
        let text = logs(&client, ns, &pod.name_any()).await;
        (text
            .lines()
            .filter(|l| l.contains("assumed-role/promise-role/"))
            .count()
            >= 2)
            .then_some(text)
    })
    .await;
    let started_after = created.elapsed();
    // Every call STS saw, except the controller's own (signed with its key), was signed by a
    // key issued for this role: the pod never ran with another identity, nor with none.
    let issued: BTreeSet<String> = sts.issued_keys(&arn).into_iter().collect();
    let app_calls: Vec<_> = sts
        .requests()
        .into_iter()
        .filter(|r| r.caller_access_key.as_deref() != Some(CONTROLLER_KEY))
        .collect();
    for r in &app_calls {
        {
            let key = r.caller_access_key.clone().unwrap_or_default();
            assert!(
                issued.contains(&key),
                "a GetCallerIdentity signed with {key}, not a key of {arn}"
            );
        }
    }
    let calls = app_calls.len();
    assert_eq!(calls, 2, "the AWS CLI's and boto3's calls:\n{out}");
    println!(
        "(b) the pod waited in ContainerCreating while its AWSIAMRole did not exist; started and printed its role {} ms after the AWSIAMRole was created; STS saw {calls} calls, all with the role's keys",
        started_after.as_millis()
    );
}

/// The role of the long-running apps: credentials live 240 s (the STS double's override), so
/// the controller renews them every 120 s (at half-life) and the kubelet, at its default
/// `syncFrequency` of 1 minute, has 120 s to bring the new ones into the pods.
const LOOP_NS: &str = "apps";
const LOOP_ROLE: &str = "loop-role";
const LOOP_LIFETIME: Duration = Duration::from_secs(240);

/// One `sts:GetCallerIdentity` every 3 s from one STS client, printing the key it signed with:
/// `OK <arn> <key>` or `ERR <error>`.
const BOTO3_LOOP: &str = r#"
import boto3, time
sts = boto3.client("sts")
while True:
    try:
        arn = sts.get_caller_identity()["Arn"]
        key = sts._request_signer._credentials.get_frozen_credentials().access_key
        print("OK", arn, key, flush=True)
    except Exception as e:
        print("ERR", type(e).__name__, str(e)[:300].replace("\n", " "), flush=True)
    time.sleep(3)
"#;

/// (time, access key id) each time the Secret's key changed, and the resourceVersions seen.
type SecretChanges = std::sync::Arc<
    std::sync::Mutex<(
        Vec<(chrono::DateTime<chrono::Utc>, String)>,
        BTreeSet<String>,
    )>,
>;

/// The apps running through the operations: boto3 through `credentials.process` (a shell and
/// `cat`), and the static Rust client without a shell through the credentials endpoint.
struct Apps {
    secret_changes: SecretChanges,
    watcher: tokio::task::JoinHandle<()>,
    started: Instant,
}

fn secret_key(secret: &Secret) -> Option<String> {
    let creds = secret.data.as_ref()?.get("credentials")?;
    String::from_utf8_lossy(&creds.0).lines().find_map(|l| {
        l.trim()
            .strip_prefix("aws_access_key_id")
            .map(|v| v.trim_start_matches([' ', '=']).trim().to_string())
    })
}

impl Apps {
    async fn start(node: &Node, sts: &StsDouble, images: &AppImages) -> Apps {
        let client = node.client().await;
        namespace(&client, LOOP_NS).await;
        sts.lifetime(&format!("{BASE_ROLE_ARN}{LOOP_ROLE}"), LOOP_LIFETIME);
        create_role(&client, LOOP_NS, LOOP_ROLE, 900).await;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), LOOP_NS);
        deployments
            .create(
                &PostParams::default(),
                &deployment(
                    "boto3",
                    LOOP_ROLE,
                    json!({}),
                    json!({"name": "boto3", "image": images.awscli, "command": ["python3", "-c", BOTO3_LOOP], "env": app_env(sts)}),
                ),
            )
            .await
            .expect("create the boto3 app");
        deployments
            .create(
                &PostParams::default(),
                &deployment(
                    "rust",
                    LOOP_ROLE,
                    json!({"zalando.org/aws-iam-credentials": "endpoint"}),
                    json!({"name": "rust", "image": images.rust_client, "args": ["--count=100000", "--interval-ms=3000"], "env": app_env(sts)}),
                ),
            )
            .await
            .expect("create the Rust app");
        let changes = std::sync::Arc::new(std::sync::Mutex::new((Vec::new(), BTreeSet::new())));
        let watcher = {
            let changes = std::sync::Arc::clone(&changes);
            let secrets: Api<Secret> = Api::namespaced(client.clone(), LOOP_NS);
            tokio::spawn(async move {
                loop {
                    if let Ok(Some(s)) = secrets.get_opt(LOOP_ROLE).await {
                        let mut c = changes.lock().expect("lock");
                        if let Some(key) = secret_key(&s)
                            && c.0.last().is_none_or(|(_, k)| k != &key)
                        {
                            c.0.push((chrono::Utc::now(), key));
                        }
                        c.1.insert(s.resource_version().unwrap_or_default());
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
        };
        for app in ["boto3", "rust"] {
            within(120, &format!("the {app} app's first call"), || async {
                let p = app_pod(&client, LOOP_NS, app).await?;
                logs(&client, LOOP_NS, &p.name_any())
                    .await
                    .lines()
                    .any(|l| l.starts_with("OK "))
                    .then_some(())
            })
            .await;
        }
        let pod = app_pod(&client, LOOP_NS, "rust").await.expect("rust pod");
        let spec = pod.spec.expect("spec");
        let image_has_no_shell = spec
            .containers
            .iter()
            .all(|c| c.image.as_deref() == Some(images.rust_client.as_str()));
        assert!(
            image_has_no_shell
                && spec
                    .init_containers
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.restart_policy.as_deref() == Some("Always")),
            "the Rust app runs in endpoint mode, with the credentials sidecar"
        );
        println!(
            "(c) boto3 (credentials.process) and the static Rust client without a shell (credentials endpoint) got their role"
        );
        Apps {
            secret_changes: changes,
            watcher,
            started: Instant::now(),
        }
    }

    /// Waits until both apps have used at least three keys (two rotations), then checks that
    /// no call failed, prints how long each new key took to reach each app, and that every
    /// Secret write brought a new key.
    async fn finish(self, node: &Node, sts: &StsDouble) {
        let client = node.client().await;
        let mut report = Vec::new();
        for app in ["boto3", "rust"] {
            let text = within(600, &format!("the {app} app to use three keys"), || async {
                let p = app_pod(&client, LOOP_NS, app).await?;
                let pods: Api<Pod> = Api::namespaced(client.clone(), LOOP_NS);
                let text = pods
                    .logs(
                        &p.name_any(),
                        &LogParams {
                            timestamps: true,
                            container: Some(app.into()),
                            ..LogParams::default()
                        },
                    )
                    .await
                    .ok()?;
                let keys: BTreeSet<&str> = text
                    .lines()
                    .filter_map(|l| l.split_whitespace().nth(3))
                    .filter(|_| true)
                    .collect();
                (keys.len() >= 3).then_some(text)
            })
            .await;
            let calls: Vec<&str> = text.lines().collect();
            let failed: Vec<&&str> = calls
                .iter()
                .filter(|l| l.split_whitespace().nth(1) == Some("ERR"))
                .collect();
            assert!(
                failed.is_empty(),
                "{app}: {} failed calls of {}:\n{}",
                failed.len(),
                calls.len(),
                failed
                    .iter()
                    .map(|l| l.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            let arn = format!("assumed-role/{LOOP_ROLE}/");
            assert!(
                calls
                    .iter()
                    .filter(|l| l.contains(" OK "))
                    .all(|l| l.contains(&arn)),
                "{app} always ran as its role"
            );
            // First use of each key in the app's log, against when the Secret got it.
            let first_use = |key: &str| {
                calls
                    .iter()
                    .find(|l| l.split_whitespace().nth(3) == Some(key))
                    .and_then(|l| {
                        chrono::DateTime::parse_from_rfc3339(l.split_whitespace().next()?).ok()
                    })
            };
            let changes = self.secret_changes.lock().expect("lock").0.clone();
            let delays: Vec<i64> = changes
                .iter()
                .skip(1)
                .filter_map(|(t, k)| {
                    Some((first_use(k)?.with_timezone(&chrono::Utc) - *t).num_milliseconds())
                })
                .collect();
            report.push(format!("{app}: {} calls, 0 failed, propagation of a new key (Secret written -> first call with it) {delays:?} ms", calls.len()));
        }
        self.watcher.abort();
        let (changes, versions) = self.secret_changes.lock().expect("lock").clone();
        let issued = sts.issued_keys(&format!("{BASE_ROLE_ARN}{LOOP_ROLE}"));
        assert_eq!(
            versions.len(),
            changes.len(),
            "every version of the Secret seen brought a new key (no rewrite without need): {} versions, {} keys",
            versions.len(),
            changes.len()
        );
        sts.assert_at_most_two_calls_per_role_per_minute();
        println!(
            "(c) over {} s: {} keys issued, {} Secret versions; {}",
            self.started.elapsed().as_secs(),
            issued.len(),
            versions.len(),
            report.join("; ")
        );
    }
}

/// (d, f) Operations while the apps run: `helm upgrade` with a changed argument (a rolling
/// update) while opted-in pods are created all along; the leader pod deleted; the kubelet and
/// containerd restarted.
async fn operations(node: &Node, images: &AppImages) {
    let client = node.client().await;
    // (f) Opted-in pods created every 300 ms through the rollout.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let creator = {
        let stop = std::sync::Arc::clone(&stop);
        let pods: Api<Pod> = Api::namespaced(client.clone(), "admit");
        let image = images.busybox.clone();
        tokio::spawn(async move {
            let (mut admitted, mut refused) = (0, Vec::new());
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                match pods
                    .create(
                        &PostParams::default(),
                        &opted_in_pod(&format!("rollout-{i}"), "none-yet", &image),
                    )
                    .await
                {
                    Ok(_) => admitted += 1,
                    Err(e) => refused.push(e.to_string()),
                }
                let _ = pods
                    .delete(&format!("rollout-{i}"), &Default::default())
                    .await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            (admitted, refused)
        })
    };
    let before: BTreeSet<String> = controller_pods(&client)
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    let upgrade = Instant::now();
    let kubeconfig = node.env.kubeconfig.display().to_string();
    helm_ok(&[
        "upgrade",
        RELEASE,
        CHART,
        "--namespace",
        SYSTEM,
        "--reuse-values",
        "--set",
        "logLevel=debug",
        "--kubeconfig",
        &kubeconfig,
        "--wait",
        "--timeout=180s",
    ]);
    let upgraded = upgrade.elapsed();
    // Until the old pods are gone (helm --wait returns once the new ones are ready).
    within(120, "the old replicas to go", || async {
        let now: BTreeSet<String> = controller_pods(&client)
            .await
            .iter()
            .map(|p| p.name_any())
            .collect();
        (now.is_disjoint(&before) && now.len() == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (admitted, refused) = creator.await.expect("creator");
    assert!(
        refused.is_empty(),
        "{} of {} opted-in pods refused during the rollout: {refused:?}",
        refused.len(),
        admitted + refused.len()
    );
    println!(
        "(f) helm upgrade (rolling update) took {} ms; {admitted} opted-in pods created during it, 0 refused",
        upgraded.as_millis()
    );

    // (d) The leader pod deleted: another replica leads within the lease.
    let leases: Api<Lease> = Api::namespaced(client.clone(), SYSTEM);
    let holder = within(60, "a leader after the upgrade", || async {
        let h = lease_holder(&leases).await?;
        controller_pods(&client)
            .await
            .iter()
            .any(|p| p.name_any() == h)
            .then_some(h)
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM);
    let deleted = Instant::now();
    pods.delete(&holder, &Default::default())
        .await
        .expect("delete the leader pod");
    let next = within(60, "another replica to lead", || async {
        let h = lease_holder(&leases).await?;
        (h != holder).then_some(h)
    })
    .await;
    println!(
        "(d) leader pod {holder} deleted; {next} leads {} ms later (lease 15 s)",
        deleted.elapsed().as_millis()
    );

    // (d) The kubelet and containerd restarted under the running apps.
    let restarted = Instant::now();
    node.restart_kubelet_and_containerd().await;
    println!(
        "(d) kubelet and containerd restarted; node Ready again after {} ms",
        restarted.elapsed().as_millis()
    );
}

/// (e) The AWSIAMRole deleted with the real garbage collector running: the Secret goes (by the
/// garbage collector or the janitor), and a new pod of the app waits again.
async fn deletion(node: &Node) {
    let client = node.client().await;
    let ns = "promise";
    let roles: Api<AWSIAMRole> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let deleted = Instant::now();
    roles
        .delete("promise-role", &Default::default())
        .await
        .expect("delete the AWSIAMRole");
    within(120, "the Secret to go", || async {
        secrets
            .get_opt("promise-role")
            .await
            .ok()
            .flatten()
            .is_none()
            .then_some(())
    })
    .await;
    let gone = deleted.elapsed();
    let old = app_pod(&client, ns, "cli").await.expect("app pod");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.delete(&old.name_any(), &Default::default())
        .await
        .expect("delete the app pod");
    let new = within(60, "the app's new pod to wait for its Secret", || async {
        let p = app_pod(&client, ns, "cli").await?;
        (p.name_any() != old.name_any()
            && waiting_reason(&p).as_deref() == Some("ContainerCreating"))
        .then_some(p)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let still = pods.get(&new.name_any()).await.expect("pod");
    assert!(!running(&still), "the new pod started without a Secret");
    for p in controller_pods(&client).await {
        let text = logs(&client, SYSTEM, &p.name_any()).await;
        let errors: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("ERROR") && l.contains("promise-role"))
            .collect();
        assert!(
            errors.is_empty(),
            "{} logged errors about the deleted role: {errors:?}",
            p.name_any()
        );
    }
    println!(
        "(e) AWSIAMRole deleted: its Secret gone after {} ms; the app's new pod waits in ContainerCreating; no errors logged",
        gone.as_millis()
    );
}

/// (g) `helm uninstall`: what is left and why, and how soon a reinstall leads again.
async fn uninstall_and_reinstall(node: &Node, sts: &StsDouble) {
    let client = node.client().await;
    let kubeconfig = node.env.kubeconfig.display().to_string();
    helm_ok(&[
        "uninstall",
        RELEASE,
        "--namespace",
        SYSTEM,
        "--kubeconfig",
        &kubeconfig,
        "--wait",
    ]);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM);
    let tls = format!("{RELEASE}-webhook-tls");
    within(
        60,
        "the webhook's TLS Secret to go with its configuration",
        || async {
            secrets
                .get_opt(&tls)
                .await
                .ok()
                .flatten()
                .is_none()
                .then_some(())
        },
    )
    .await;
    within(60, "the controller's pods to go", || async {
        controller_pods(&client).await.is_empty().then_some(())
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), SYSTEM);
    let lease = leases.get_opt(RELEASE).await.expect("get Lease");
    let holder = lease
        .as_ref()
        .and_then(|l| l.spec.as_ref()?.holder_identity.clone())
        .unwrap_or_default();
    // What README's "Uninstalling" says is left: the Lease, still naming the last leader (its
    // release on shutdown is refused once Helm has deleted the chart's RBAC in the same
    // second); a reinstall waits for it to expire.
    println!(
        "(g) helm uninstall: the webhook's TLS Secret deleted by the garbage collector; left: {}",
        match &lease {
            Some(_) if !holder.is_empty() => format!("the Lease, held by the last leader {holder}"),
            Some(_) => "the Lease, released".to_string(),
            None => "nothing".to_string(),
        }
    );
    let reinstall = Instant::now();
    let installed = install(node, sts).await;
    println!(
        "(g) reinstall: helm install --wait {} ms, {} leads {} ms after the install began",
        installed.took.as_millis(),
        installed.leader,
        reinstall.elapsed().as_millis()
    );
}
