//! The webhook's own CA and serving certificate: what is stored in the Secret, the pure rotation
//! plan (stage a new CA, publish it next to the old one, only then sign with it, retire the old
//! one after an overlap), and certificate generation with rcgen.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};

/// Secret data key holding [`Material`] as JSON (the source of truth).
pub const STATE_KEY: &str = "state.json";

/// A CA the webhook created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ca {
    pub cert: String,
    pub key: String,
    /// Its subject common name (unique per CA), to sign with it again.
    pub common_name: String,
    pub not_after: DateTime<Utc>,
    /// When the leader saw it in the webhook configuration's `caBundle` (a staged CA is
    /// signed with only an overlap after this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<DateTime<Utc>>,
    /// When it started signing (the CA before it is retired an overlap after this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_since: Option<DateTime<Utc>>,
}

/// The serving certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Serving {
    pub cert: String,
    pub key: String,
    pub issuer: String,
    pub sans: Vec<String>,
    pub not_after: DateTime<Utc>,
}

/// Everything in the webhook's TLS Secret.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Material {
    /// The CA that signs the serving certificate.
    pub ca: Option<Ca>,
    /// A new CA, trusted (in the bundle) but not yet signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_ca: Option<Ca>,
    /// The CA that signed until the last promotion, still trusted for an overlap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_ca: Option<String>,
    pub serving: Option<Serving>,
}

impl Material {
    /// The PEM bundle the API server must trust: previous, current and next CA.
    pub fn bundle(&self) -> String {
        let mut out = String::new();
        for pem in [
            self.previous_ca.as_deref(),
            self.ca.as_ref().map(|c| c.cert.as_str()),
            self.next_ca.as_ref().map(|c| c.cert.as_str()),
        ]
        .into_iter()
        .flatten()
        {
            out.push_str(pem.trim_end());
            out.push('\n');
        }
        out
    }
}

/// How long certificates live and how long both CAs stay trusted around a switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    pub ca: Duration,
    pub serving: Duration,
    /// From publishing a new CA until signing with it, and from signing with it until the old
    /// one leaves the bundle: long enough for every API server and every replica to see it.
    pub overlap: Duration,
}

impl Lifetimes {
    /// Each certificate is renewed when a third of its life is left; the overlaps must fit.
    pub fn validate(&self) -> Result<(), String> {
        if self.overlap.is_zero()
            || self.overlap * 2 >= self.ca / 3
            || self.overlap >= self.serving / 3
        {
            return Err(format!(
                "webhook certificate overlap {:?} must be > 0, under a sixth of the CA lifetime {:?} and a third of the serving lifetime {:?}",
                self.overlap, self.ca, self.serving
            ));
        }
        Ok(())
    }
}

/// What the leader does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing usable: a fresh CA and serving certificate.
    Create,
    /// The CA nears expiry: create the next one and publish it beside the current one.
    StageCa,
    /// The next CA has been trusted for an overlap: sign the serving certificate with it.
    PromoteCa,
    /// The new CA has signed for an overlap: drop the old one from the bundle.
    RetireCa,
    /// The serving certificate nears expiry, or its names changed.
    Reissue,
    Nothing,
}

fn renew_due(not_after: DateTime<Utc>, lifetime: Duration, now: DateTime<Utc>) -> bool {
    let third = chrono::Duration::from_std(lifetime / 3).unwrap_or(chrono::Duration::MAX);
    now >= not_after - third
}

fn after(t: Option<DateTime<Utc>>, overlap: Duration, now: DateTime<Utc>) -> bool {
    let d = chrono::Duration::from_std(overlap).unwrap_or(chrono::Duration::MAX);
    t.is_some_and(|t| now >= t + d)
}

/// The next rotation step for the stored material.
pub fn plan(m: &Material, sans: &[String], now: DateTime<Utc>, l: &Lifetimes) -> Step {
    let Some(ca) = &m.ca else {
        return Step::Create;
    };
    if now >= ca.not_after {
        return Step::Create;
    }
    if m.previous_ca.is_some() {
        return if after(ca.signing_since, l.overlap, now) {
            Step::RetireCa
        } else {
            Step::Nothing
        };
    }
    if let Some(next) = &m.next_ca {
        return if after(next.published_at, l.overlap, now) {
            Step::PromoteCa
        } else {
            Step::Nothing
        };
    }
    if renew_due(ca.not_after, l.ca, now) {
        return Step::StageCa;
    }
    match &m.serving {
        None => Step::Reissue,
        Some(s)
            if renew_due(s.not_after, l.serving, now)
                || s.sans != sans
                || s.issuer != ca.common_name =>
        {
            Step::Reissue
        }
        Some(_) => Step::Nothing,
    }
}

/// Carries out `step`, generating what it needs.
pub fn apply(
    step: &Step,
    m: &Material,
    sans: &[String],
    now: DateTime<Utc>,
    l: &Lifetimes,
) -> Result<Material, rcgen::Error> {
    let mut m = m.clone();
    match step {
        Step::Nothing => {}
        Step::Create => {
            let mut ca = new_ca(now, l.ca)?;
            ca.signing_since = Some(now);
            m = Material {
                serving: Some(new_serving(&ca, sans, now, l.serving)?),
                ca: Some(ca),
                next_ca: None,
                previous_ca: None,
            };
        }
        Step::StageCa => m.next_ca = Some(new_ca(now, l.ca)?),
        Step::PromoteCa => {
            if let Some(mut next) = m.next_ca.take() {
                next.signing_since = Some(now);
                m.serving = Some(new_serving(&next, sans, now, l.serving)?);
                m.previous_ca = m.ca.take().map(|c| c.cert);
                m.ca = Some(next);
            }
        }
        Step::RetireCa => m.previous_ca = None,
        Step::Reissue => {
            if let Some(ca) = &m.ca {
                m.serving = Some(new_serving(ca, sans, now, l.serving)?);
            }
        }
    }
    Ok(m)
}

fn validity(p: &mut CertificateParams, now: DateTime<Utc>, lifetime: Duration) {
    // Five minutes of slack for clocks that are a little behind.
    let start = now.timestamp() - 300;
    let end = now.timestamp() + i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2);
    if let (Ok(s), Ok(e)) = (
        time::OffsetDateTime::from_unix_timestamp(start),
        time::OffsetDateTime::from_unix_timestamp(end),
    ) {
        p.not_before = s;
        p.not_after = e;
    }
}

fn ca_params(common_name: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, common_name);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(p)
}

fn new_ca(now: DateTime<Utc>, lifetime: Duration) -> Result<Ca, rcgen::Error> {
    let common_name = format!(
        "kube-aws-iam-controller-webhook-ca-{}",
        now.format("%Y%m%d%H%M%S%3f")
    );
    let key = KeyPair::generate()?;
    let mut p = ca_params(&common_name)?;
    validity(&mut p, now, lifetime);
    let cert = p.self_signed(&key)?;
    Ok(Ca {
        cert: cert.pem(),
        key: key.serialize_pem(),
        common_name,
        not_after: now
            + chrono::Duration::from_std(lifetime).unwrap_or(chrono::Duration::days(365)),
        published_at: None,
        signing_since: None,
    })
}

fn new_serving(
    ca: &Ca,
    sans: &[String],
    now: DateTime<Utc>,
    lifetime: Duration,
) -> Result<Serving, rcgen::Error> {
    let issuer = Issuer::new(ca_params(&ca.common_name)?, KeyPair::from_pem(&ca.key)?);
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(sans.to_vec())?;
    p.distinguished_name
        .push(DnType::CommonName, "kube-aws-iam-controller-webhook");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut p, now, lifetime);
    let cert = p.signed_by(&key, &issuer)?;
    Ok(Serving {
        cert: cert.pem(),
        key: key.serialize_pem(),
        issuer: ca.common_name.clone(),
        sans: sans.to_vec(),
        not_after: now + chrono::Duration::from_std(lifetime).unwrap_or(chrono::Duration::days(30)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifetimes() -> Lifetimes {
        Lifetimes {
            ca: Duration::from_secs(120),
            serving: Duration::from_secs(30),
            overlap: Duration::from_secs(5),
        }
    }

    fn sans() -> Vec<String> {
        vec!["127.0.0.1".into(), "svc.ns.svc".into()]
    }

    /// Runs the leader's loop (plan, apply, mark published) once a second for `seconds`.
    /// Returns, per second, the bundle and the PEM of the CA that signed the serving certificate.
    fn simulate(seconds: i64) -> (Vec<(String, String)>, Vec<Step>) {
        let l = lifetimes();
        let t0 = Utc::now();
        let mut m = Material::default();
        let mut signer = String::new();
        let mut timeline = Vec::new();
        let mut steps = Vec::new();
        for s in 0..seconds {
            let now = t0 + chrono::Duration::seconds(s);
            let step = plan(&m, &sans(), now, &l);
            let mut next = apply(&step, &m, &sans(), now, &l).expect("apply");
            if let Some(n) = next.next_ca.as_mut()
                && n.published_at.is_none()
            {
                n.published_at = Some(now);
            }
            if next.serving != m.serving {
                signer = next.ca.as_ref().map(|c| c.cert.clone()).unwrap_or_default();
            }
            if step != Step::Nothing {
                steps.push(step);
            }
            m = next;
            timeline.push((m.bundle(), signer.clone()));
        }
        (timeline, steps)
    }

    #[test]
    fn rotation_always_serves_a_certificate_every_recent_bundle_trusts() {
        let (timeline, steps) = simulate(400);
        for kind in [
            Step::StageCa,
            Step::PromoteCa,
            Step::RetireCa,
            Step::Reissue,
        ] {
            assert!(steps.contains(&kind), "{kind:?} never happened: {steps:?}");
        }
        assert_eq!(steps[0], Step::Create);
        assert_eq!(
            steps.iter().filter(|s| **s == Step::Create).count(),
            1,
            "a CA is never replaced without overlap"
        );
        // An API server may use a bundle up to an overlap old, a replica may serve a
        // certificate up to an overlap old: every such pair must fit.
        let overlap = lifetimes().overlap.as_secs() as usize;
        for t in overlap..timeline.len() {
            for (bundle, _) in &timeline[t - overlap..=t] {
                for (_, signer) in &timeline[t - overlap..=t] {
                    assert!(bundle.contains(signer.trim_end()), "second {t}");
                }
            }
        }
    }

    #[test]
    fn changed_names_or_an_expired_ca_are_acted_on() {
        let l = lifetimes();
        let now = Utc::now();
        let m = apply(&Step::Create, &Material::default(), &sans(), now, &l).expect("create");
        assert_eq!(plan(&m, &sans(), now, &l), Step::Nothing);
        assert_eq!(plan(&m, &["other".to_string()], now, &l), Step::Reissue);
        let late = now + chrono::Duration::seconds(121);
        assert_eq!(plan(&m, &sans(), late, &l), Step::Create);
        assert!(m.bundle().starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn overlaps_that_do_not_fit_the_lifetimes_are_rejected() {
        assert!(lifetimes().validate().is_ok());
        let mut l = lifetimes();
        l.overlap = Duration::from_secs(20);
        assert!(l.validate().is_err());
        l.overlap = Duration::ZERO;
        assert!(l.validate().is_err());
    }
}
