//! Client-side pacing of `AssumeRole` calls: a token bucket (`--sts-qps`, `--sts-burst`) and a
//! cap on calls in flight (`--sts-max-in-flight`), so that a cold start with thousands of
//! AWSIAMRoles stays under the account's STS request rate. Throttling that still happens is
//! retried by the SDK (standard retry mode) and then by the per-object backoff.
//
// NOTE: the `governor` crate (default features off) would add five crates and waits on
// futures-timer's own thread instead of tokio's clock, so paused-time tests could not drive it;
// the bucket below is a few lines on `tokio::time`, plus a `tokio::sync::Semaphore`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{CredentialIssuer, IssueError, IssueRequest, IssuedCredentials};

/// What `--sts-qps`, `--sts-burst` and `--sts-max-in-flight` ask for.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RateLimit {
    /// Sustained calls per second; `None` for no rate limit.
    pub qps: Option<f64>,
    /// Calls allowed at once after a quiet period (at least 1).
    pub burst: u32,
    /// Calls in flight at once; `None` for no cap.
    pub max_in_flight: Option<usize>,
}

impl RateLimit {
    pub fn is_unlimited(&self) -> bool {
        self.qps.is_none() && self.max_in_flight.is_none()
    }
}

/// A token bucket in which every call reserves its own slot: tokens may go negative, and a
/// negative balance is the queue of calls already promised a later slot. Pure: time is passed in.
#[derive(Debug)]
pub struct Bucket {
    qps: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket. `qps` must be positive and finite; `burst` is at least 1.
    pub fn new(qps: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Bucket {
            qps,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token and returns how long the caller must wait before its call.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.qps).min(self.burst);
        self.last = now.max(self.last);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            // A rate so low that the wait does not fit a Duration waits "forever".
            Duration::try_from_secs_f64(-self.tokens / self.qps).unwrap_or(Duration::MAX)
        }
    }
}

/// A [`CredentialIssuer`] that paces another one.
pub struct LimitedIssuer {
    inner: Arc<dyn CredentialIssuer>,
    bucket: Option<Mutex<Bucket>>,
    in_flight: Option<Semaphore>,
}

impl LimitedIssuer {
    pub fn new(inner: Arc<dyn CredentialIssuer>, limit: RateLimit) -> Self {
        LimitedIssuer {
            inner,
            bucket: limit
                .qps
                .filter(|q| q.is_finite() && *q > 0.0)
                .map(|q| Mutex::new(Bucket::new(q, limit.burst, Instant::now()))),
            in_flight: limit.max_in_flight.map(|n| Semaphore::new(n.max(1))),
        }
    }

    async fn call(&self, req: IssueRequest) -> Result<IssuedCredentials, IssueError> {
        if let Some(bucket) = &self.bucket {
            let wait = match bucket.lock() {
                Ok(mut b) => b.reserve(Instant::now()),
                Err(poisoned) => poisoned.into_inner().reserve(Instant::now()),
            };
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        // The semaphore is never closed, so acquiring only fails if it were; then run unpaced.
        let _permit = match &self.in_flight {
            Some(s) => s.acquire().await.ok(),
            None => None,
        };
        self.inner.assume_role(req).await
    }
}

impl CredentialIssuer for LimitedIssuer {
    fn assume_role(
        &self,
        req: IssueRequest,
    ) -> BoxFuture<'_, Result<IssuedCredentials, IssueError>> {
        Box::pin(self.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::RequestOptions;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_full_bucket_allows_the_burst_then_spaces_calls_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2.0, 3, t0);
        let waits: Vec<Duration> = (0..6).map(|_| b.reserve(t0)).collect();
        assert_eq!(
            waits,
            vec![
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO,
                Duration::from_millis(500),
                Duration::from_millis(1000),
                Duration::from_millis(1500),
            ]
        );
    }

    #[test]
    fn an_absurdly_low_rate_waits_instead_of_panicking() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1e-300, 1, t0);
        assert_eq!(b.reserve(t0), Duration::ZERO);
        assert_eq!(b.reserve(t0), Duration::MAX);
    }

    #[test]
    fn the_bucket_refills_but_never_beyond_the_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1.0, 2, t0);
        b.reserve(t0);
        b.reserve(t0);
        assert_eq!(b.reserve(t0), Duration::from_secs(1));
        // 100 s later the bucket holds 2 tokens again, not 100.
        let later = t0 + Duration::from_secs(100);
        assert_eq!(b.reserve(later), Duration::ZERO);
        assert_eq!(b.reserve(later), Duration::ZERO);
        assert_eq!(b.reserve(later), Duration::from_secs(1));
    }

    struct Counting {
        now: AtomicUsize,
        max: AtomicUsize,
    }

    impl CredentialIssuer for Counting {
        fn assume_role(
            &self,
            _req: IssueRequest,
        ) -> BoxFuture<'_, Result<IssuedCredentials, IssueError>> {
            Box::pin(async move {
                let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
                self.max.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                self.now.fetch_sub(1, Ordering::SeqCst);
                Err(IssueError {
                    kind: crate::aws::FailureKind::Transient,
                    code: "Test".into(),
                    message: String::new(),
                })
            })
        }
    }

    fn request() -> IssueRequest {
        IssueRequest {
            role_arn: "arn:aws:iam::123456789012:role/x".parse().expect("arn"),
            session_name: "ns@x".into(),
            duration_seconds: 900,
            options: RequestOptions::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn calls_are_paced_and_capped_in_flight() {
        let inner = Arc::new(Counting {
            now: AtomicUsize::new(0),
            max: AtomicUsize::new(0),
        });
        let limited = Arc::new(LimitedIssuer::new(
            inner.clone(),
            RateLimit {
                qps: Some(10.0),
                burst: 5,
                max_in_flight: Some(2),
            },
        ));
        let start = Instant::now();
        let calls: Vec<_> = (0..25)
            .map(|_| {
                let l = limited.clone();
                tokio::spawn(async move { l.assume_role(request()).await })
            })
            .collect();
        for c in calls {
            let _ = c.await;
        }
        // 5 at once, the other 20 at 10/s: about 2 s; never more than 2 in flight.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(2000), "{took:?}");
        assert!(took < Duration::from_millis(2600), "{took:?}");
        assert_eq!(inner.max.load(Ordering::SeqCst), 2);
    }
}
