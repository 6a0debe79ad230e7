//! Waiting for the cluster to reach a state, and reading what the controller reports.

use super::*;

pub fn rand_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..6)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect()
}

/// Polls `f` every 200 ms until it returns `Some`; panics after a generous 90 s.
pub async fn wait_for<T, F, Fut>(what: &str, f: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for_within(what, Duration::from_secs(90), f).await
}

pub async fn wait_for_within<T, F, Fut>(what: &str, limit: Duration, f: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The value of `series` (name with its labels, as rendered) in Prometheus text; panics when
/// the series is absent, so a renamed metric fails the test instead of reading as 0.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("{series}: value {v:?}: {e}"))
        })
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

/// Waits until `name`'s Ready condition has `status` (and `reason`, when given).
pub async fn ready_role(
    api: &Api<AWSIAMRole>,
    name: &str,
    status: &str,
    reason: Option<&str>,
) -> AWSIAMRole {
    wait_for(&format!("{name} Ready={status} {reason:?}"), || async {
        let r = api.get(name).await.ok()?;
        let c = r.ready_condition()?;
        (c.status == status && reason.is_none_or(|x| c.reason == x)).then_some(r)
    })
    .await
}

/// The reasons of the core/v1 Events about object `name` in `ns`, with their counts.
pub async fn event_reasons(client: &Client, ns: &str, name: &str) -> Vec<(String, i32)> {
    let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    api.list(&Default::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.count.unwrap_or(1).max(1)))
        .collect()
}

/// Waits for the Secret `name` to exist and returns it.
pub async fn secret(api: &Api<Secret>, name: &str) -> Secret {
    secret_where(api, name, |_| true).await
}

/// Waits for the Secret `name` to exist and satisfy `pred`, and returns it.
pub async fn secret_where(api: &Api<Secret>, name: &str, pred: impl Fn(&Secret) -> bool) -> Secret {
    wait_for(&format!("secret {name}"), || async {
        api.get_opt(name).await.ok().flatten().filter(|s| pred(s))
    })
    .await
}
