//! JWT bearer tokens from an OIDC issuer, against a test issuer served from this test on
//! loopback (discovery document and JWKS) that signs its own tokens (ES256): valid tokens map
//! their claims to tenant and roles; expired, not-yet-valid, wrong-audience, wrong-issuer,
//! unsigned (`alg: none`), unknown-kid, tampered and rotated-away tokens are refused.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use common::{create_tenants, set_tenant_state, Nexus};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nexus_client::{pb, Client};
use serde_json::{json, Value};
use tonic::Code;

const ROOT: &str = "root-key-for-oidc-tests-0123456789abcdef";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

struct Key {
    kid: String,
    pair: rcgen::KeyPair,
}

impl Key {
    fn new(kid: &str) -> Self {
        Key {
            kid: kid.into(),
            pair: rcgen::KeyPair::generate().unwrap(),
        }
    }

    fn jwk(&self) -> Value {
        self.jwk_for("sig")
    }

    /// The key as a JWKS lists it, with its `use`.
    fn jwk_for(&self, key_use: &str) -> Value {
        // P-256 public key, uncompressed: 0x04, x (32 bytes), y (32 bytes).
        let raw = self.pair.public_key_raw();
        json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": key_use, "kid": self.kid,
               "x": b64(&raw[1..33]), "y": b64(&raw[33..65])})
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_ec_der(&self.pair.serialize_der()),
        )
        .unwrap()
    }
}

/// The issuer: discovery and JWKS over HTTP on loopback; `published` is what the JWKS lists.
struct Issuer {
    url: String,
    published: Arc<Mutex<Vec<Value>>>,
}

async fn issuer() -> Issuer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let published: Arc<Mutex<Vec<Value>>> = Arc::default();
    let discovery = json!({"issuer": url, "jwks_uri": format!("{url}/jwks"),
                           "id_token_signing_alg_values_supported": ["ES256"]});
    let keys = published.clone();
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || {
                let d = discovery.clone();
                async move { Json(d) }
            }),
        )
        .route(
            "/jwks",
            get(move || {
                let keys = keys.lock().unwrap().clone();
                async move { Json(json!({"keys": keys})) }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Issuer { url, published }
}

fn now() -> i64 {
    nexus_node::memory::now_ms() / 1000
}

async fn whoami(n: &Nexus, token: &str) -> Result<pb::WhoAmIResponse, tonic::Status> {
    let mut c: Client = n.client_with(Some(token)).await;
    c.iam
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_tokens_are_verified_and_mapped_to_tenant_and_roles() {
    let iss = issuer().await;
    let k1 = Key::new("k1");
    iss.published.lock().unwrap().push(k1.jwk());
    // An encryption key in the JWKS is never used to verify signatures.
    let enc = Key::new("k-enc");
    iss.published.lock().unwrap().push(enc.jwk_for("enc"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nexus.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nenabled = true\n[[auth.oidc]]\nissuer = \"{}\"\naudience = \"nexus\"\njwks_min_refresh_ms = 100\nclock_skew_s = 30\ntenants = [\"acme\", \"nope\"]\n",
            iss.url
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let env = [("NEXUS_CONFIG", config.as_str()), ("NEXUS_ROOT_KEY", ROOT)];
    let n = Nexus::start(&dir.path().join("node"), &env).await;
    let mut root = n.client().await;
    create_tenants(&root, &["acme", "globex"]).await;
    let alice_principal = format!("user:{}#alice", iss.url);
    let claims = |extra: Value| {
        let mut c = json!({"iss": iss.url, "aud": "nexus", "sub": "alice",
                           "exp": now() + 300, "iat": now(), "nexus_tenant": "acme",
                           "nexus_roles": ["developer"]});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };

    // A valid token: tenant and roles from its claims.
    let good = k1.sign(&claims(json!({})));
    let me = whoami(&n, &good).await.unwrap();
    assert_eq!(
        (me.tenant.as_str(), me.subject.as_str()),
        ("acme", alice_principal.as_str())
    );
    assert!(me.permissions.contains(&"memory:*".to_string()), "{me:?}");
    let mut alice = n.client_with(Some(&good)).await;
    alice
        .memory
        .put(pb::PutRequest {
            namespace: "n".into(),
            key: "k".into(),
            value: "1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // Bindings of user:<sub> add to the token's roles.
    root.iam
        .create_binding(pb::CreateBindingRequest {
            tenant: "acme".into(),
            principal: alice_principal.clone(),
            role: "operator".into(),
        })
        .await
        .unwrap();
    let me = whoami(&n, &good).await.unwrap();
    assert!(me.permissions.contains(&"audit:read".to_string()), "{me:?}");

    // Each bad token is refused with UNAUTHENTICATED saying why.
    let other = Key::new("k-unknown");
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims(json!({})).to_string().as_bytes())
    );
    let mut tampered = good.clone();
    let sig_start = tampered.rfind('.').unwrap() + 1;
    let flipped = if &tampered[sig_start..sig_start + 1] == "A" {
        "B"
    } else {
        "A"
    };
    tampered.replace_range(sig_start..sig_start + 1, flipped);
    let mut forged_claims: Vec<&str> = good.split('.').collect();
    let admin_claims = b64(claims(json!({"nexus_roles": ["admin"]}))
        .to_string()
        .as_bytes());
    forged_claims[1] = &admin_claims;
    let forged = forged_claims.join(".");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            k1.sign(&claims(json!({"exp": now() - 120}))),
            "expired",
        ),
        (
            "not yet valid",
            k1.sign(&claims(json!({"nbf": now() + 600}))),
            "not valid yet",
        ),
        (
            "wrong audience",
            k1.sign(&claims(json!({"aud": "someone-else"}))),
            "audience",
        ),
        (
            "wrong issuer",
            k1.sign(&claims(json!({"iss": "http://127.0.0.1:1"}))),
            "not a configured issuer",
        ),
        ("unsigned", unsigned, "unsigned"),
        (
            "unknown kid",
            other.sign(&claims(json!({}))),
            "unknown key id",
        ),
        ("tampered signature", tampered, "signature"),
        ("forged claims", forged, "signature"),
        (
            "no tenant",
            k1.sign(&claims(json!({"nexus_tenant": null}))),
            "nexus_tenant",
        ),
        (
            "unknown tenant",
            k1.sign(&claims(json!({"nexus_tenant": "nope"}))),
            "does not exist",
        ),
        (
            "a tenant the issuer may not assert",
            k1.sign(&claims(json!({"nexus_tenant": "globex"}))),
            "may not assert tenant \"globex\" (auth.oidc.tenants)",
        ),
        (
            "a key the JWKS lists for encryption",
            enc.sign(&claims(json!({}))),
            "unknown key id",
        ),
    ];
    for (what, token, says) in &cases {
        let err = whoami(&n, token).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
        assert!(err.message().contains(says), "{what}: {}", err.message());
    }
    // Within the clock skew: accepted.
    let skewed = k1.sign(&claims(json!({"exp": now() - 10})));
    assert!(whoami(&n, &skewed).await.is_ok());

    // Rotation: the issuer publishes k2 and retires k1. A k2 token is accepted (the node
    // fetches the keys again on the unknown kid); then k1 tokens are refused.
    let k2 = Key::new("k2");
    *iss.published.lock().unwrap() = vec![k2.jwk()];
    tokio::time::sleep(Duration::from_millis(150)).await;
    let rotated = k2.sign(&claims(json!({})));
    assert_eq!(whoami(&n, &rotated).await.unwrap().subject, alice_principal);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let err = whoami(&n, &k1.sign(&claims(json!({})))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("unknown key id"),
        "{}",
        err.message()
    );

    // A suspended tenant's users are refused.
    set_tenant_state(&root, "acme", false).await;
    let err = whoami(&n, &rotated).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}
