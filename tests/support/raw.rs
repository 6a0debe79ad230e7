//! Requests whose response headers matter (admission warnings), which kube's typed API drops.

use serde_json::Value;

/// POSTs `body` to `path` and returns the status code, the `Warning` headers and the body.
pub async fn post(client: &kube::Client, path: &str, body: &Value) -> (u16, Vec<String>, String) {
    use http_body_util::BodyExt;
    let req = http::Request::post(path)
        .header("content-type", "application/json")
        .body(kube::client::Body::from(
            serde_json::to_vec(body).expect("json"),
        ))
        .expect("request");
    let res = client.send(req).await.expect("send");
    let status = res.status().as_u16();
    let warnings = res
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        warnings,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}
