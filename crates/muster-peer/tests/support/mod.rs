//! Services and settings the peer's test binaries share.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use muster_core::DiscoveryOptions;
use muster_peer::ServiceBuilder;
use muster_peer::wire::JsError;

/// Discovery that notices changes quickly and lets nothing expire during a test.
pub(crate) fn options() -> DiscoveryOptions {
    DiscoveryOptions {
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_ttl: Duration::from_secs(5),
        retry_delay: Duration::from_millis(100),
        ..DiscoveryOptions::default()
    }
}

/// `calculator@1.0.0` with `add(a, b)`.
pub(crate) fn calculator() -> Arc<muster_peer::Service> {
    ServiceBuilder::new("calculator", "1.0.0")
        .unwrap()
        .method("add", &["Number", "Number"], "Number", |(a, b): (i64, i64)| async move {
            Ok::<_, JsError>(a + b)
        })
        .build()
}

/// `bank@1.0.0` whose `open(owner)` returns a new `account` service with `owner()`.
pub(crate) fn bank() -> Arc<muster_peer::Service> {
    ServiceBuilder::new("bank", "1.0.0")
        .unwrap()
        .service_method("open", &["String"], "Account", |owner: String| async move {
            Ok(ServiceBuilder::new("account", "")
                .unwrap()
                .method("owner", &[], "String", move |(): ()| {
                    let owner = owner.clone();
                    async move { Ok::<_, JsError>(owner) }
                })
                .build())
        })
        .build()
}
