//! The seed-003 routes, with their exact JSON shapes.

use serde_json::{Value, json};

use crate::{client, send};
use reqwest::Method;

fn is_iso(value: &Value) -> bool {
    value.as_str().is_some_and(|s| s.len() == 24 && s.ends_with('Z') && s.as_bytes()[10] == b'T')
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

crate::on_both_stores! {
    async fn register_heartbeat_resolve_services_stats_health_delete(server: TestServer) {
        let body = json!({"name": "user-service", "ip": "127.0.0.1", "port": 3001, "metadata": {"version": "1.0.0", "environment": "development"}});
        let response = client().post(server.url("/register")).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 201);
        let registered: Value = response.json().await.unwrap();
        assert_eq!(keys(&registered), ["instance", "message", "timestamp"]);
        assert_eq!(registered["message"], "Service registered successfully");
        assert_eq!(keys(&registered["instance"]), ["id", "ip", "name", "port", "registeredAt", "status"]);
        assert_eq!(registered["instance"]["status"], "healthy");
        assert!(is_iso(&registered["instance"]["registeredAt"]) && is_iso(&registered["timestamp"]));
        let id = registered["instance"]["id"].clone();
        // Registering the same instance again keeps its id.
        let again: Value =
            client().post(server.url("/register")).json(&body).send().await.unwrap().json().await.unwrap();
        assert_eq!(again["instance"]["id"], id);

        let heartbeat = |port: u16| {
            send(&server, Method::POST, "/heartbeat", json!({"name": "user-service", "ip": "127.0.0.1", "port": port}))
        };
        let (status, beat) = heartbeat(3001).await;
        assert_eq!(status, 200);
        assert_eq!(beat["message"], "Heartbeat updated");
        assert_eq!(keys(&beat["instance"]), ["id", "ip", "lastHeartbeat", "name", "port", "status"]);
        let (status, missing) = heartbeat(9999).await;
        assert_eq!(status, 404);
        assert_eq!(missing["error"]["code"], "not_found");
        assert!(is_iso(&missing["timestamp"]), "seed-003 errors carry a timestamp");

        let resolved: Value =
            client().get(server.url("/resolve/user-service")).send().await.unwrap().json().await.unwrap();
        assert_eq!(keys(&resolved), ["instanceCount", "instances", "serviceName", "timestamp"]);
        assert_eq!(
            (resolved["serviceName"].clone(), resolved["instanceCount"].clone()),
            (json!("user-service"), json!(1))
        );
        let instance = &resolved["instances"][0];
        assert_eq!(keys(instance), ["id", "ip", "lastHeartbeat", "metadata", "port", "registeredAt", "status"]);
        assert_eq!(instance["metadata"], json!({"environment": "development", "version": "1.0.0"}));
        assert_eq!(client().get(server.url("/resolve/nobody")).send().await.unwrap().status(), 404);

        let services: Value = client().get(server.url("/services")).send().await.unwrap().json().await.unwrap();
        assert_eq!(
            keys(&services),
            ["services", "timestamp", "totalHealthyInstances", "totalInstances", "totalServices"]
        );
        assert_eq!(services["services"]["user-service"]["instanceCount"], 1);
        assert_eq!(services["services"]["user-service"]["healthyCount"], 1);

        let stats: Value = client().get(server.url("/stats")).send().await.unwrap().json().await.unwrap();
        assert_eq!(
            keys(&stats),
            [
                "activeInstances",
                "activeServices",
                "cleanupInterval",
                "heartbeatTimeout",
                "selfPreservation",
                "services",
                "timestamp",
                "totalCleanups",
                "totalHeartbeats",
                "totalRegistrations",
                "uptime"
            ]
        );
        assert_eq!((stats["totalRegistrations"].clone(), stats["totalHeartbeats"].clone()), (json!(2), json!(1)));
        assert_eq!(
            (stats["heartbeatTimeout"].clone(), stats["cleanupInterval"].clone()),
            (json!("10s"), json!("5s"))
        );

        let health: Value = client().get(server.url("/health")).send().await.unwrap().json().await.unwrap();
        assert_eq!(keys(&health), ["service", "status", "timestamp", "uptime", "version"]);

        let response = client()
            .delete(server.url("/services/user-service/instances?ip=127.0.0.1&port=3001"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.json::<Value>().await.unwrap()["id"], id);
        assert_eq!(client().get(server.url("/resolve/user-service")).send().await.unwrap().status(), 404);
        let instances = "/services/user-service/instances";
        let (status, _) = send(&server, Method::DELETE, &format!("{instances}?ip=127.0.0.1&port=3001"), Value::Null).await;
        assert_eq!(status, 404);
        let (status, _) = send(&server, Method::DELETE, &format!("{instances}?ip=127.0.0.1"), Value::Null).await;
        assert_eq!(status, 400);
}
}

crate::on_both_stores! {
    async fn bad_requests_get_400_with_timestamp(server: TestServer) {
        for body in [
            json!({"name": "svc", "ip": "127.0.0.1"}),
            json!({"name": "", "ip": "127.0.0.1", "port": 1}),
            json!({"name": "svc", "ip": "not a host", "port": 1}),
            json!({"name": "svc", "ip": "127.0.0.1", "port": 0}),
        ] {
            let response = client().post(server.url("/register")).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 400, "{body}");
            let answer: Value = response.json().await.unwrap();
            assert!(is_iso(&answer["timestamp"]), "{answer}");
        }
        let stats: Value = client().get(server.url("/stats")).send().await.unwrap().json().await.unwrap();
        assert_eq!(stats["activeInstances"], 0);
}
}
