//! Authentication and scopes: every refusal with its code and reason.

use std::time::Duration;

use agenda::api::{CreateContactRequest, GetContactRequest};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tonic::Code;

use crate::helpers::{Backend, SECRET, assert_error, spawn_app, spawn_app_with, token};

on_both_backends!(
    a_missing_token_is_unauthenticated,
    a_malformed_header_is_unauthenticated,
    an_expired_token_is_unauthenticated,
    a_wrong_signature_is_unauthenticated,
    alg_none_is_refused,
    key_type_confusion_is_refused,
    a_token_without_tenant_is_refused,
    a_missing_scope_is_permission_denied,
    write_implies_read,
    jwks_keys_verify_rs256_es256_and_eddsa,
    the_jwks_file_is_reloaded_when_it_changes,
    issuer_and_audience_are_checked_when_configured,
    an_unknown_method_is_unimplemented,
    a_short_hs256_secret_is_refused_at_start_up,
);

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
}

fn claims(exp: u64) -> serde_json::Value {
    json!({"sub": "user-1", "tenant": "t1", "scope": "contacts.write", "exp": exp})
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &serde_json::Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture")
}

fn get(id: &str) -> GetContactRequest {
    GetContactRequest { id: id.to_string(), read_mask: None }
}

const SOME_ID: &str = "01930000-0000-7000-8000-000000000000";

async fn a_missing_token_is_unauthenticated(backend: Backend) {
    let app = spawn_app(backend).await;
    let status = app.contacts_with(None).get_contact(get(SOME_ID)).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "TOKEN_MISSING");
}

async fn a_malformed_header_is_unauthenticated(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = agenda::api::contact_service_client::ContactServiceClient::new(app.channel.clone());
    for header in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer not.a.jwt", "Bearer a.b"] {
        let mut request = tonic::Request::new(get(SOME_ID));
        request.metadata_mut().insert("authorization", header.parse().expect("ascii"));
        let status = client.get_contact(request).await.unwrap_err();
        assert_error(&status, Code::Unauthenticated, "TOKEN_INVALID");
    }
}

async fn an_expired_token_is_unauthenticated(backend: Backend) {
    let app = spawn_app(backend).await;
    let expired = sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()), None, &claims(now() - 3600));
    let status = app.contacts_with(Some(&expired)).get_contact(get(SOME_ID)).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "TOKEN_EXPIRED");
}

async fn a_wrong_signature_is_unauthenticated(backend: Backend) {
    let app = spawn_app(backend).await;
    let forged = sign(Algorithm::HS256, &EncodingKey::from_secret(b"another-secret"), None, &claims(now() + 3600));
    let status = app.contacts_with(Some(&forged)).get_contact(get(SOME_ID)).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "TOKEN_INVALID");
    // A valid token with one character of its signature changed.
    let mut tampered = token("t1", "contacts.read");
    let last = tampered.pop().expect("non-empty");
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let status = app.contacts_with(Some(&tampered)).get_contact(get(SOME_ID)).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "TOKEN_INVALID");
}

async fn alg_none_is_refused(backend: Backend) {
    use base64::Engine;
    let app = spawn_app(backend).await;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = b64.encode(claims(now() + 3600).to_string());
    for unsigned in [format!("{header}.{body}."), format!("{header}.{body}")] {
        let status = app.contacts_with(Some(&unsigned)).get_contact(get(SOME_ID)).await.unwrap_err();
        assert_error(&status, Code::Unauthenticated, "TOKEN_INVALID");
        // agenda's own sentence, not the JWT library's ("unknown variant `none`, expected one of …").
        assert!(!status.message().contains("variant") && !status.message().contains("expected"), "{status:?}");
        assert!(status.message().contains("signed JWT"), "{status:?}");
    }
}

async fn key_type_confusion_is_refused(backend: Backend) {
    let jwks = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(jwks.path(), fixture("jwks.json")).expect("write jwks");
    let path = jwks.path().to_path_buf();
    // HS256 and JWKS both configured: an HS256 token "signed" with the RSA
    // public key as its HMAC secret must not pass.
    let app = spawn_app_with(backend, |o| o.auth_jwks_file = Some(path)).await;
    let public_pem = fixture("rsa.pub.pem");
    let confused = sign(Algorithm::HS256, &EncodingKey::from_secret(&public_pem), Some("rsa-1"), &claims(now() + 3600));
    let status = app.contacts_with(Some(&confused)).get_contact(get(SOME_ID)).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "TOKEN_INVALID");
    // An RS256 token claiming the EC key's kid finds no RS256 key under it.
    let rsa = EncodingKey::from_rsa_pem(&fixture("rsa.pem")).expect("rsa key");
    let mislabelled = sign(Algorithm::RS256, &rsa, Some("ec-1"), &claims(now() + 3600));
    let status = app.contacts_with(Some(&mislabelled)).get_contact(get(SOME_ID)).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "TOKEN_INVALID");

    // Without a JWKS file, an RS256 token is refused outright.
    let app = spawn_app(backend).await;
    let rs = sign(Algorithm::RS256, &rsa, Some("rsa-1"), &claims(now() + 3600));
    let status = app.contacts_with(Some(&rs)).get_contact(get(SOME_ID)).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "TOKEN_INVALID");
}

async fn a_token_without_tenant_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    for claims in [
        json!({"sub": "user-1", "scope": "contacts.read", "exp": now() + 3600}),
        json!({"sub": "user-1", "tenant": "", "scope": "contacts.read", "exp": now() + 3600}),
        json!({"tenant": "t1", "scope": "contacts.read", "exp": now() + 3600}),
        json!({"sub": "user-1", "tenant": "t1", "scope": "contacts.read"}),
        json!({"sub": "user-1", "tenant": "t1", "scope": "contacts.read", "exp": now() + 3600, "nbf": now() + 600}),
    ] {
        let token = sign(Algorithm::HS256, &key, None, &claims);
        let status = app.contacts_with(Some(&token)).get_contact(get(SOME_ID)).await.unwrap_err();
        assert_error(&status, Code::Unauthenticated, "TOKEN_INVALID");
    }
}

async fn a_missing_scope_is_permission_denied(backend: Backend) {
    let app = spawn_app(backend).await;
    let reader = token("t1", "contacts.read tasks.write admin");
    let request = CreateContactRequest { contact: Some(Default::default()), request_id: String::new() };
    let status = app.contacts_with(Some(&reader)).create_contact(request).await.unwrap_err();
    let info = assert_error(&status, Code::PermissionDenied, "SCOPE_MISSING");
    assert_eq!(info.metadata.get("required_scope").map(String::as_str), Some("contacts.write"));
    // The message names the scope as tokens spell it, not as the code does.
    assert!(
        status.message().contains("\"contacts.write\"") && !status.message().contains("ContactsWrite"),
        "{status:?}"
    );

    let nothing = token("t1", "");
    let status = app.contacts_with(Some(&nothing)).get_contact(get(SOME_ID)).await.unwrap_err();
    let info = assert_error(&status, Code::PermissionDenied, "SCOPE_MISSING");
    assert_eq!(info.metadata.get("required_scope").map(String::as_str), Some("contacts.read"));
}

async fn write_implies_read(backend: Backend) {
    let app = spawn_app(backend).await;
    let writer = token("t1", "contacts.write");
    let status = app.contacts_with(Some(&writer)).get_contact(get(SOME_ID)).await.unwrap_err();
    // Past auth: the contact simply does not exist.
    assert_error(&status, Code::NotFound, "NOT_FOUND");
}

async fn jwks_keys_verify_rs256_es256_and_eddsa(backend: Backend) {
    let jwks = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(jwks.path(), fixture("jwks.json")).expect("write jwks");
    let path = jwks.path().to_path_buf();
    let app = spawn_app_with(backend, |o| {
        o.auth_hs256_secret = None;
        o.auth_jwks_file = Some(path);
    })
    .await;
    let keys = [
        (Algorithm::RS256, EncodingKey::from_rsa_pem(&fixture("rsa.pem")).expect("rsa"), "rsa-1"),
        (Algorithm::ES256, EncodingKey::from_ec_pem(&fixture("ec.pem")).expect("ec"), "ec-1"),
        (Algorithm::EdDSA, EncodingKey::from_ed_pem(&fixture("ed25519.pem")).expect("ed"), "ed-1"),
    ];
    for (alg, key, kid) in &keys {
        for kid in [Some(*kid), None] {
            let token = sign(*alg, key, kid, &claims(now() + 3600));
            let status = app.contacts_with(Some(&token)).get_contact(get(SOME_ID)).await.unwrap_err();
            assert_error(&status, Code::NotFound, "NOT_FOUND");
        }
    }
    // HS256 is not accepted when only a JWKS is configured.
    let status = app.contacts_with(Some(&token("t1", "contacts.read"))).get_contact(get(SOME_ID)).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "TOKEN_INVALID");
    // A key that is not in the set.
    let other = EncodingKey::from_rsa_pem(&fixture("rsa-other.pem")).expect("rsa");
    let status = app
        .contacts_with(Some(&sign(Algorithm::RS256, &other, Some("rsa-1"), &claims(now() + 3600))))
        .get_contact(get(SOME_ID))
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "TOKEN_INVALID");
}

async fn the_jwks_file_is_reloaded_when_it_changes(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, fixture("jwks.json")).expect("write jwks");
    let jwks_path = path.clone();
    let app = spawn_app_with(backend, |o| {
        o.auth_hs256_secret = None;
        o.auth_jwks_file = Some(jwks_path);
    })
    .await;
    let other = EncodingKey::from_rsa_pem(&fixture("rsa-other.pem")).expect("rsa");
    let new_token = sign(Algorithm::RS256, &other, Some("rsa-2"), &claims(now() + 3600));
    let status = app.contacts_with(Some(&new_token)).get_contact(get(SOME_ID)).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "TOKEN_INVALID");

    // Rotate: the new key joins the set (written to a new file and renamed
    // into place, as Kubernetes does with a mounted Secret).
    let mut set: serde_json::Value = serde_json::from_slice(&fixture("jwks.json")).expect("json");
    let new_key: serde_json::Value = serde_json::from_slice(&fixture("rsa-other.jwk.json")).expect("json");
    set["keys"].as_array_mut().expect("keys").push(new_key);
    let staging = dir.path().join("jwks.json.new");
    std::fs::write(&staging, set.to_string()).expect("write");
    std::fs::rename(&staging, &path).expect("rename");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = app.contacts_with(Some(&new_token)).get_contact(get(SOME_ID)).await.unwrap_err();
        if status.code() == Code::NotFound {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the new JWKS key was not picked up: {status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn issuer_and_audience_are_checked_when_configured(backend: Backend) {
    let app = spawn_app_with(backend, |o| {
        o.auth_issuer = Some("https://issuer.example".into());
        o.auth_audience = Some("agenda".into());
    })
    .await;
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let base = json!({"sub": "u", "tenant": "t1", "scope": "contacts.read", "exp": now() + 3600});
    let with = |iss: Option<&str>, aud: Option<&str>| {
        let mut c = base.clone();
        if let Some(iss) = iss {
            c["iss"] = json!(iss);
        }
        if let Some(aud) = aud {
            c["aud"] = json!(aud);
        }
        sign(Algorithm::HS256, &key, None, &c)
    };
    let good = with(Some("https://issuer.example"), Some("agenda"));
    let status = app.contacts_with(Some(&good)).get_contact(get(SOME_ID)).await.unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND");
    for bad in [
        with(Some("https://evil.example"), Some("agenda")),
        with(Some("https://issuer.example"), Some("other")),
        with(None, Some("agenda")),
        with(Some("https://issuer.example"), None),
    ] {
        let status = app.contacts_with(Some(&bad)).get_contact(get(SOME_ID)).await.unwrap_err();
        assert_error(&status, Code::Unauthenticated, "TOKEN_INVALID");
    }
}

async fn an_unknown_method_is_unimplemented(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());
    grpc.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<agenda::api::GetContactRequest, agenda::api::Contact>::default();
    let path = http::uri::PathAndQuery::from_static("/agenda.v1.ContactService/StealContacts");
    let status = grpc.unary(tonic::Request::new(get(SOME_ID)), path, codec).await.unwrap_err();
    // agenda's own answer (tonic's router would say UNIMPLEMENTED without a reason).
    assert_error(&status, Code::Unimplemented, "METHOD_UNKNOWN");
}

async fn a_short_hs256_secret_is_refused_at_start_up(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let database_url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("agenda.db").display()),
        Backend::Postgres => crate::helpers::postgres().new_database().await,
    };
    for (secret, accepted) in [("x", false), (&"k".repeat(31)[..], false), (&"k".repeat(32)[..], true)] {
        let options = agenda::config::Options {
            database_url: Some(database_url.clone()),
            auth_hs256_secret: Some(secret.to_string()),
            ..Default::default()
        };
        match agenda::config::Settings::resolve(options) {
            Ok(_) => assert!(accepted, "a {}-byte secret was accepted", secret.len()),
            Err(why) => {
                assert!(!accepted, "a {}-byte secret was refused: {why}", secret.len());
                assert!(why.contains("AGENDA_AUTH_HS256_SECRET") && why.contains("at least 32 bytes"), "{why}");
            }
        }
    }
}
