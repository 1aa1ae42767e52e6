//! One suite, two backends: every test below runs against SQLite (a file in a temp dir)
//! and against a real PostgreSQL (the shared throwaway server from gate-test-support, one
//! fresh database per test). The `both_backends!` macro generates the pair.

use gate_store::*;
use gate_test_support::postgres::PgServer;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;
use uuid::Uuid;

/// A store on a fresh database, plus what a test needs to look at the raw storage.
struct TestDb {
    store: Store,
    kind: Kind,
}

enum Kind {
    Sqlite { dir: tempfile::TempDir },
    Postgres { db: String },
}

impl TestDb {
    async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("nested/gate.db").display());
        let store = Store::connect(&StoreOptions::new(url)).await.unwrap();
        assert_eq!(store.backend(), Backend::Sqlite);
        TestDb {
            store,
            kind: Kind::Sqlite { dir },
        }
    }

    async fn postgres() -> TestDb {
        let db = format!("gate_store_{}", Uuid::new_v4().simple());
        let url = tokio::task::spawn_blocking({
            let db = db.clone();
            move || {
                let pg = PgServer::shared();
                pg.superuser_psql(
                    "postgres",
                    &format!("CREATE DATABASE {db} OWNER {};", pg.app_user()),
                )
                .unwrap();
                format!(
                    "postgres://{}:{}@{}:{}/{db}",
                    pg.app_user(),
                    pg.app_password(),
                    pg.host(),
                    pg.port()
                )
            }
        })
        .await
        .unwrap();
        let mut options = StoreOptions::new(url);
        options.max_open_conns = 5;
        let store = Store::connect(&options).await.unwrap();
        assert_eq!(store.backend(), Backend::Postgres);
        TestDb {
            store,
            kind: Kind::Postgres { db },
        }
    }

    /// Everything the database holds, as bytes: the SQLite files (main, WAL, shared
    /// memory) or a psql dump of the credential tables.
    async fn raw_contents(&self) -> Vec<u8> {
        match &self.kind {
            Kind::Sqlite { dir } => {
                let mut out = Vec::new();
                for entry in std::fs::read_dir(dir.path().join("nested")).unwrap() {
                    out.extend(std::fs::read(entry.unwrap().path()).unwrap());
                }
                out
            }
            Kind::Postgres { db } => {
                let db = db.clone();
                tokio::task::spawn_blocking(move || {
                    PgServer::shared()
                        .superuser_psql(
                            &db,
                            "SELECT * FROM api_keys; SELECT * FROM registration_tokens; \
                             SELECT * FROM connectors;",
                        )
                        .unwrap()
                        .into_bytes()
                })
                .await
                .unwrap()
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(super::TestDb::sqlite().await).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(super::TestDb::postgres().await).await;
                }
            }
        )*
    };
}

both_backends!(
    orgs,
    resources_crud_and_uniqueness,
    cross_org_isolation,
    api_keys,
    policy_versions,
    identities_and_groups,
    revision_and_snapshot,
    registration_tokens,
    concurrent_redeem,
    connectors,
    audit_dedup,
    audit_filters_and_paging,
    audit_purge_and_admin_events,
    migrations,
    access_request_transitions,
    access_concurrent_approve_and_deny,
    access_expiry_and_grants_in_snapshot,
    approval_rules,
    webhooks,
);

fn resource(name: &str) -> ResourceInput {
    ResourceInput {
        name: name.into(),
        protocol: "postgres".into(),
        host: "db.internal".into(),
        port: 5432,
        database: Some("app".into()),
        spec: json!({"credentials": {"secret_ref": "vault:db/app"}, "pool": {"max": 10}}),
    }
}

fn policy(name: &str, state: PolicyState) -> PolicyInput {
    PolicyInput {
        name: name.into(),
        description: "no drops".into(),
        stages: vec!["pre_request".into()],
        targets: vec!["prod-*".into()],
        state,
        rego: format!("package gate.{}\nimport rego.v1\n", name.replace('-', "_")),
    }
}

fn identity(name: &str, groups: &[&str]) -> IdentityInput {
    IdentityInput {
        name: name.into(),
        email: Some(format!("{name}@example.com")),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        ssh_public_keys: vec!["ssh-ed25519 AAAAC3Nza test".into()],
        token_sha256: None,
        disabled: false,
    }
}

fn is_not_found<T: std::fmt::Debug>(r: Result<T>) -> bool {
    matches!(r, Err(StoreError::NotFound { .. }))
}

fn is_conflict<T: std::fmt::Debug>(r: Result<T>) -> bool {
    matches!(r, Err(StoreError::Conflict { .. }))
}

async fn orgs(db: TestDb) {
    let s = &db.store;
    let acme = s.create_org("acme").await.unwrap();
    let globex = s.create_org("globex").await.unwrap();
    assert!(is_conflict(s.create_org("acme").await));
    assert!(matches!(
        s.create_org("").await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(s.get_org(acme.id).await.unwrap(), acme);
    assert_eq!(s.get_org_by_name("globex").await.unwrap(), globex);
    let names: Vec<_> = s
        .list_orgs()
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(names, ["acme", "globex"]);

    let renamed = s.rename_org(acme.id, "acme-corp").await.unwrap();
    assert_eq!(renamed.name, "acme-corp");
    assert_eq!(renamed.created_at, acme.created_at);
    assert!(is_conflict(s.rename_org(acme.id, "globex").await));
    assert!(is_not_found(s.rename_org(OrgId::new(), "x").await));

    // Not empty: refused, and the message says why.
    s.create_resource(acme.id, &resource("prod-db"))
        .await
        .unwrap();
    let (key, _) = s
        .create_api_key(acme.id, "ci", ApiKeyRole::Admin)
        .await
        .unwrap();
    match s.delete_org(acme.id).await {
        Err(StoreError::Conflict { what }) => {
            assert!(what.contains("1 resources"), "{what}");
            assert!(what.contains("1 API keys"), "{what}");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    s.delete_resource_by_name(acme.id, "prod-db").await.unwrap();
    s.revoke_api_key(acme.id, key.id).await.unwrap();
    s.create_registration_token(acme.id, "edge", DEFAULT_REGISTRATION_TTL)
        .await
        .unwrap();
    // Audit is kept across the org's deletion.
    s.append_admin_event(acme.id, "root", "org.delete", "acme-corp", json!({}))
        .await
        .unwrap();
    s.delete_org(acme.id).await.unwrap();
    assert!(is_not_found(s.get_org(acme.id).await));
    assert!(is_not_found(s.delete_org(acme.id).await));
    assert_eq!(
        s.count_audit(acme.id, &AuditQuery::default())
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.list_orgs().await.unwrap(), vec![globex]);
}

async fn resources_crud_and_uniqueness(db: TestDb) {
    let s = &db.store;
    let a = s.create_org("a").await.unwrap().id;
    let b = s.create_org("b").await.unwrap().id;

    let r = s.create_resource(a, &resource("prod-db")).await.unwrap();
    assert_eq!(r.port, 5432);
    assert_eq!(s.get_resource(a, r.id).await.unwrap(), r);
    assert_eq!(s.get_resource_by_name(a, "prod-db").await.unwrap(), r);
    // Unique per org, not globally.
    assert!(is_conflict(
        s.create_resource(a, &resource("prod-db")).await
    ));
    let rb = s.create_resource(b, &resource("prod-db")).await.unwrap();
    assert_ne!(rb.id, r.id);

    let ssh = ResourceInput {
        name: "bastion".into(),
        protocol: "ssh".into(),
        host: "10.0.0.5".into(),
        port: 22,
        database: None,
        spec: json!({"host_key_fingerprint": "SHA256:abc"}),
    };
    let bastion = s.create_resource(a, &ssh).await.unwrap();
    assert_eq!(bastion.database, None);
    let list: Vec<_> = s
        .list_resources(a)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(list, ["bastion", "prod-db"]);

    let mut changed = resource("prod-db-2");
    changed.port = 6432;
    changed.spec = json!({"listen_port": 15432});
    let updated = s.update_resource(a, r.id, &changed).await.unwrap();
    assert_eq!(updated.id, r.id);
    assert_eq!(updated.name, "prod-db-2");
    assert_eq!(updated.port, 6432);
    assert_eq!(updated.spec, json!({"listen_port": 15432}));
    assert_eq!(updated.created_at, r.created_at);
    assert!(updated.updated_at >= r.updated_at);
    assert_eq!(s.get_resource(a, r.id).await.unwrap(), updated);
    // Renaming onto an existing name conflicts.
    let mut clash = changed.clone();
    clash.name = "bastion".into();
    assert!(is_conflict(s.update_resource(a, r.id, &clash).await));

    let mut by_name = ssh.clone();
    by_name.host = "10.0.0.6".into();
    let b2 = s
        .update_resource_by_name(a, "bastion", &by_name)
        .await
        .unwrap();
    assert_eq!(b2.host, "10.0.0.6");
    assert!(is_not_found(
        s.update_resource_by_name(a, "nope", &by_name).await
    ));

    let mut invalid = resource(" padded");
    assert!(matches!(
        s.create_resource(a, &invalid).await,
        Err(StoreError::Invalid(_))
    ));
    invalid.name = "ok".into();
    invalid.protocol = "".into();
    assert!(matches!(
        s.create_resource(a, &invalid).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(is_not_found(
        s.create_resource(OrgId::new(), &resource("x")).await
    ));

    s.delete_resource(a, r.id).await.unwrap();
    assert!(is_not_found(s.get_resource(a, r.id).await));
    assert!(is_not_found(s.delete_resource(a, r.id).await));
    s.delete_resource_by_name(a, "bastion").await.unwrap();
    assert!(s.list_resources(a).await.unwrap().is_empty());
    // Org b's resource of the same name is untouched.
    assert_eq!(s.get_resource(b, rb.id).await.unwrap(), rb);
}

async fn cross_org_isolation(db: TestDb) {
    let s = &db.store;
    let a = s.create_org("a").await.unwrap().id;
    let b = s.create_org("b").await.unwrap().id;

    let res = s.create_resource(a, &resource("prod-db")).await.unwrap();
    let pol = s
        .create_policy(a, &policy("p", PolicyState::Active), "alice")
        .await
        .unwrap();
    let ident = s
        .create_identity(a, &identity("alice", &["dba"]))
        .await
        .unwrap();
    let group = s.create_group(a, "dba", "").await.unwrap();
    let (key, _) = s.create_api_key(a, "ci", ApiKeyRole::Editor).await.unwrap();
    let (_, token) = s
        .create_registration_token(a, "edge", DEFAULT_REGISTRATION_TTL)
        .await
        .unwrap();
    let (conn, _) = s.redeem_registration_token(&token, "1.0").await.unwrap();
    let before = s.snapshot(a).await.unwrap();

    // Reads by id from org b find nothing.
    assert!(is_not_found(s.get_resource(b, res.id).await));
    assert!(is_not_found(s.get_resource_by_name(b, "prod-db").await));
    assert!(is_not_found(s.get_policy(b, pol.id).await));
    assert!(is_not_found(s.list_policy_versions(b, pol.id).await));
    assert!(is_not_found(s.get_policy_version(b, pol.id, 1).await));
    assert!(is_not_found(s.get_identity(b, ident.id).await));
    assert!(is_not_found(s.get_group(b, group.id).await));
    assert!(is_not_found(s.get_api_key(b, key.id).await));
    assert!(is_not_found(s.get_connector(b, conn.id).await));
    // Updates and deletes from org b change nothing.
    assert!(is_not_found(
        s.update_resource(b, res.id, &resource("stolen")).await
    ));
    assert!(is_not_found(
        s.update_policy(
            b,
            pol.id,
            &PolicyUpdate {
                rego: Some("package evil".into()),
                ..Default::default()
            },
            "mallory"
        )
        .await
    ));
    assert!(is_not_found(
        s.set_policy_state(b, pol.id, PolicyState::Draft).await
    ));
    assert!(is_not_found(
        s.update_identity(b, ident.id, &identity("mallory", &[]))
            .await
    ));
    assert!(is_not_found(s.update_group(b, group.id, "x", "").await));
    assert!(is_not_found(s.revoke_api_key(b, key.id).await));
    assert!(is_not_found(
        s.heartbeat(b, conn.id, &Heartbeat::default()).await
    ));
    assert!(is_not_found(s.deregister_connector(b, conn.id).await));
    assert!(is_not_found(s.delete_resource(b, res.id).await));
    assert!(is_not_found(s.delete_policy(b, pol.id).await));
    assert!(is_not_found(s.delete_identity(b, ident.id).await));
    assert!(is_not_found(s.delete_group(b, group.id).await));
    assert!(is_not_found(s.ingest_audit(b, Some(conn.id), &[]).await));
    // Lists of b are empty.
    assert!(s.list_resources(b).await.unwrap().is_empty());
    assert!(s.list_policies(b).await.unwrap().is_empty());
    assert!(s.list_identities(b).await.unwrap().is_empty());
    assert!(s.list_groups(b).await.unwrap().is_empty());
    assert!(s.list_api_keys(b).await.unwrap().is_empty());
    assert!(s.list_connectors(b, 0).await.unwrap().is_empty());
    assert!(s.list_registration_tokens(b).await.unwrap().is_empty());
    // And org a is exactly as it was.
    assert_eq!(s.snapshot(a).await.unwrap(), before);
    assert!(s.get_api_key(a, key.id).await.unwrap().revoked_at.is_none());
    assert!(
        s.get_connector(a, conn.id)
            .await
            .unwrap()
            .deregistered_at
            .is_none()
    );
}

async fn api_keys(db: TestDb) {
    let s = &db.store;
    let org = s.create_org("acme").await.unwrap().id;
    let (key, secret) = s
        .create_api_key(org, "deploy", ApiKeyRole::Editor)
        .await
        .unwrap();
    assert!(secret.starts_with(API_KEY_PREFIX));
    assert!(secret.len() >= 40);
    assert_eq!(key.prefix, secret[..8]);
    assert_eq!(key.role, ApiKeyRole::Editor);
    assert_eq!(key.last_used_at, None);

    // The secret is nowhere in storage; its digest is.
    let raw = db.raw_contents().await;
    let digest = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(secret.as_bytes()))
    };
    assert!(contains(&raw, &digest), "the dump should show the digest");
    assert!(!contains(&raw, &secret), "the secret must never be stored");
    assert!(!contains(&raw, &secret[8..]));

    let authed = s.authenticate_api_key(&secret).await.unwrap().unwrap();
    assert_eq!(authed.id, key.id);
    assert_eq!(authed.org_id, org);
    let used = authed.last_used_at.unwrap();
    assert_eq!(
        s.get_api_key(org, key.id).await.unwrap().last_used_at,
        Some(used)
    );
    // Within the minute: no new write.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = s.authenticate_api_key(&secret).await.unwrap().unwrap();
    assert_eq!(again.last_used_at, Some(used));
    assert_eq!(
        s.get_api_key(org, key.id).await.unwrap().last_used_at,
        Some(used)
    );

    // Near misses are refused.
    assert!(s.authenticate_api_key("gk_nope").await.unwrap().is_none());
    assert!(s.authenticate_api_key("").await.unwrap().is_none());
    let mut tampered = secret.clone();
    tampered.pop();
    tampered.push(if secret.ends_with('A') { 'B' } else { 'A' });
    assert!(s.authenticate_api_key(&tampered).await.unwrap().is_none());
    assert!(s.authenticate_api_key(&digest).await.unwrap().is_none());

    // Names are unique among live keys.
    assert!(is_conflict(
        s.create_api_key(org, "deploy", ApiKeyRole::Admin).await
    ));
    let revoked = s.revoke_api_key(org, key.id).await.unwrap();
    let revoked_at = revoked.revoked_at.unwrap();
    assert!(s.authenticate_api_key(&secret).await.unwrap().is_none());
    // Idempotent: the first revocation time stays.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        s.revoke_api_key(org, key.id).await.unwrap().revoked_at,
        Some(revoked_at)
    );
    let (key2, secret2) = s
        .create_api_key(org, "deploy", ApiKeyRole::Readonly)
        .await
        .unwrap();
    assert_ne!(secret2, secret);
    let listed = s.list_api_keys(org).await.unwrap();
    assert_eq!(
        listed.iter().map(|k| k.id).collect::<Vec<_>>(),
        [key.id, key2.id]
    );
    assert!(is_not_found(s.revoke_api_key(org, Uuid::now_v7()).await));
    assert!(is_not_found(
        s.create_api_key(OrgId::new(), "x", ApiKeyRole::Admin).await
    ));
}

async fn policy_versions(db: TestDb) {
    let s = &db.store;
    let org = s.create_org("acme").await.unwrap().id;
    let p = s
        .create_policy(org, &policy("no-drops", PolicyState::Draft), "alice")
        .await
        .unwrap();
    assert_eq!(p.version, 1);
    assert_eq!(p.targets, ["prod-*"]);
    assert!(p.applies_to("prod-db"));
    assert!(!p.applies_to("staging-db"));
    assert!(is_conflict(
        s.create_policy(org, &policy("no-drops", PolicyState::Draft), "alice")
            .await
    ));
    let mut empty = policy("empty", PolicyState::Draft);
    empty.rego = "  ".into();
    assert!(matches!(
        s.create_policy(org, &empty, "alice").await,
        Err(StoreError::Invalid(_))
    ));

    // Description only: no new version.
    let p1 = s
        .update_policy(
            org,
            p.id,
            &PolicyUpdate {
                description: Some("blocks DROP".into()),
                ..Default::default()
            },
            "bob",
        )
        .await
        .unwrap();
    assert_eq!(p1.version, 1);
    assert_eq!(p1.description, "blocks DROP");

    let rego2 = "package gate.no_drops\nimport rego.v1\ndefault allow := true\n";
    let p2 = s
        .update_policy(
            org,
            p.id,
            &PolicyUpdate {
                rego: Some(rego2.into()),
                ..Default::default()
            },
            "bob",
        )
        .await
        .unwrap();
    assert_eq!(p2.version, 2);
    assert_eq!(p2.rego, rego2);

    let p3 = s
        .update_policy(
            org,
            p.id,
            &PolicyUpdate {
                targets: Some(vec!["prod-*".into(), "db-??".into()]),
                stages: Some(vec!["session".into(), "pre_request".into()]),
                ..Default::default()
            },
            "carol",
        )
        .await
        .unwrap();
    assert_eq!(p3.version, 3);
    assert!(p3.applies_to("db-01"));

    // Same content again: nothing changes.
    let same = s
        .update_policy(
            org,
            p.id,
            &PolicyUpdate {
                rego: Some(rego2.into()),
                ..Default::default()
            },
            "dave",
        )
        .await
        .unwrap();
    assert_eq!(same, p3);

    // State changes are not versions.
    let active = s
        .set_policy_state(org, p.id, PolicyState::Active)
        .await
        .unwrap();
    assert_eq!(active.state, PolicyState::Active);
    assert_eq!(active.version, 3);
    assert_eq!(s.get_policy(org, p.id).await.unwrap(), active);
    assert_eq!(s.get_policy_by_name(org, "no-drops").await.unwrap(), active);

    let versions = s.list_policy_versions(org, p.id).await.unwrap();
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [3, 2, 1]
    );
    assert_eq!(
        versions
            .iter()
            .map(|v| v.created_by.as_str())
            .collect::<Vec<_>>(),
        ["carol", "bob", "alice"]
    );
    let v1 = s.get_policy_version(org, p.id, 1).await.unwrap();
    assert_eq!(v1.rego, p.rego);
    assert_eq!(v1.targets, ["prod-*"]);
    assert_eq!(v1.state, PolicyState::Draft);
    assert_eq!(v1.policy_id, p.id);
    let v3 = s.get_policy_version(org, p.id, 3).await.unwrap();
    assert_eq!(v3.stages, ["session", "pre_request"]);
    assert_eq!(v3.rego, rego2);
    assert!(is_not_found(s.get_policy_version(org, p.id, 4).await));

    // Renames keep the history; a rename onto another policy's name conflicts.
    s.create_policy(org, &policy("other", PolicyState::Draft), "alice")
        .await
        .unwrap();
    assert!(is_conflict(
        s.update_policy(
            org,
            p.id,
            &PolicyUpdate {
                name: Some("other".into()),
                ..Default::default()
            },
            "bob"
        )
        .await
    ));
    let listed: Vec<_> = s
        .list_policies(org)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(listed, ["no-drops", "other"]);

    s.delete_policy(org, p.id).await.unwrap();
    assert!(is_not_found(s.get_policy(org, p.id).await));
    assert!(is_not_found(s.list_policy_versions(org, p.id).await));
    assert!(is_not_found(s.get_policy_version(org, p.id, 1).await));
}

async fn identities_and_groups(db: TestDb) {
    let s = &db.store;
    let org = s.create_org("acme").await.unwrap().id;
    let dba = s.create_group(org, "dba", "database admins").await.unwrap();
    let ops = s.create_group(org, "ops", "").await.unwrap();
    assert!(is_conflict(s.create_group(org, "dba", "again").await));
    assert_eq!(s.get_group_by_name(org, "dba").await.unwrap(), dba);

    let mut alice_in = identity("alice", &["dba", "ops", "dba", " "]);
    alice_in.token_sha256 = Some("ab".repeat(32));
    let alice = s.create_identity(org, &alice_in).await.unwrap();
    assert_eq!(alice.groups, ["dba", "ops"]);
    assert_eq!(
        alice.token_sha256.as_deref(),
        Some("ab".repeat(32).as_str())
    );
    let bob = s
        .create_identity(org, &identity("bob", &["ops"]))
        .await
        .unwrap();
    assert!(is_conflict(
        s.create_identity(org, &identity("alice", &[])).await
    ));
    let mut bad_token = identity("carol", &[]);
    bad_token.token_sha256 = Some("not-a-digest".into());
    assert!(matches!(
        s.create_identity(org, &bad_token).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(s.get_identity(org, alice.id).await.unwrap(), alice);
    assert_eq!(s.get_identity_by_name(org, "bob").await.unwrap(), bob);

    // An identity's Gate token signs it in; another token, or a disabled identity, does not.
    let digest = |t: &str| {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(t.as_bytes()))
    };
    let mut with_token = identity("dora", &["ops"]);
    with_token.token_sha256 = Some(digest("gate-token-of-dora"));
    let dora = s.create_identity(org, &with_token).await.unwrap();
    assert_eq!(
        s.authenticate_identity("gate-token-of-dora").await.unwrap(),
        Some(dora.clone())
    );
    assert_eq!(
        s.authenticate_identity("another-token").await.unwrap(),
        None
    );
    with_token.disabled = true;
    s.update_identity(org, dora.id, &with_token).await.unwrap();
    assert_eq!(
        s.authenticate_identity("gate-token-of-dora").await.unwrap(),
        None
    );
    s.delete_identity(org, dora.id).await.unwrap();

    let mut disabled = identity("alice", &["dba"]);
    disabled.disabled = true;
    disabled.email = None;
    let alice2 = s.update_identity(org, alice.id, &disabled).await.unwrap();
    assert!(alice2.disabled);
    assert_eq!(alice2.email, None);
    assert_eq!(alice2.token_sha256, None);
    assert_eq!(alice2.created_at, alice.created_at);
    assert!(is_conflict(
        s.update_identity(org, bob.id, &identity("alice", &[]))
            .await
    ));

    // Renaming a group renames it in members' lists.
    let platform = s
        .update_group(org, ops.id, "platform", "platform team")
        .await
        .unwrap();
    assert_eq!(platform.name, "platform");
    assert_eq!(
        s.get_identity(org, bob.id).await.unwrap().groups,
        ["platform"]
    );
    assert!(is_conflict(s.update_group(org, ops.id, "dba", "").await));

    // Deleting a group removes it from every identity.
    s.delete_group(org, dba.id).await.unwrap();
    assert!(is_not_found(s.get_group(org, dba.id).await));
    assert!(
        s.get_identity(org, alice.id)
            .await
            .unwrap()
            .groups
            .is_empty()
    );
    assert_eq!(
        s.list_groups(org)
            .await
            .unwrap()
            .into_iter()
            .map(|g| g.name)
            .collect::<Vec<_>>(),
        ["platform"]
    );

    s.delete_identity(org, bob.id).await.unwrap();
    assert!(is_not_found(s.get_identity(org, bob.id).await));
    assert_eq!(
        s.list_identities(org)
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect::<Vec<_>>(),
        ["alice"]
    );
}

async fn revision_and_snapshot(db: TestDb) {
    let s = &db.store;
    let org = s.create_org("acme").await.unwrap().id;
    let other = s.create_org("other").await.unwrap().id;
    assert_eq!(s.revision(org).await.unwrap(), 0);
    assert!(is_not_found(s.revision(OrgId::new()).await));

    let mut expected = 0;
    // Asserts the revision after a step; `true` if the step must have bumped it.
    macro_rules! check {
        ($changed:expr) => {
            if $changed {
                expected += 1;
            }
            assert_eq!(s.revision(org).await.unwrap(), expected);
        };
    }
    let r = s.create_resource(org, &resource("prod-db")).await.unwrap();
    check!(true);
    s.update_resource(org, r.id, &resource("prod-db"))
        .await
        .unwrap();
    check!(true);
    let _ = s
        .create_resource(org, &resource("prod-db"))
        .await
        .unwrap_err();
    check!(false); // a failed change rolls its bump back
    let draft = s
        .create_policy(org, &policy("draft", PolicyState::Draft), "a")
        .await
        .unwrap();
    check!(true);
    let dry = s
        .create_policy(org, &policy("dry", PolicyState::DryRun), "a")
        .await
        .unwrap();
    check!(true);
    let active = s
        .create_policy(org, &policy("active", PolicyState::Draft), "a")
        .await
        .unwrap();
    check!(true);
    s.set_policy_state(org, active.id, PolicyState::Active)
        .await
        .unwrap();
    check!(true);
    s.update_policy(
        org,
        dry.id,
        &PolicyUpdate {
            rego: Some("package gate.dry2".into()),
            ..Default::default()
        },
        "a",
    )
    .await
    .unwrap();
    check!(true);
    s.update_policy(org, dry.id, &PolicyUpdate::default(), "a")
        .await
        .unwrap();
    check!(false); // nothing changed
    let i = s
        .create_identity(org, &identity("alice", &["dba"]))
        .await
        .unwrap();
    check!(true);
    let g = s.create_group(org, "dba", "").await.unwrap();
    check!(true);
    // Not config: no bump.
    s.create_api_key(org, "k", ApiKeyRole::Admin).await.unwrap();
    s.create_registration_token(org, "c", DEFAULT_REGISTRATION_TTL)
        .await
        .unwrap();
    s.append_admin_event(org, "a", "x", "y", Value::Null)
        .await
        .unwrap();
    check!(false);
    assert_eq!(s.revision(other).await.unwrap(), 0);

    let snap = s.snapshot(org).await.unwrap();
    assert_eq!(snap.org_id, org);
    assert_eq!(snap.revision, expected);
    assert_eq!(snap.resources.len(), 1);
    let names: Vec<_> = snap.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["active", "dry"]);
    assert_eq!(snap.policies[1].rego, "package gate.dry2");
    assert!(!names.contains(&draft.name.as_str()));
    assert_eq!(snap.identities.len(), 1);
    assert_eq!(snap.groups.len(), 1);

    s.delete_group(org, g.id).await.unwrap();
    check!(true);
    s.delete_identity(org, i.id).await.unwrap();
    check!(true);
    s.delete_policy(org, draft.id).await.unwrap();
    check!(true);
    s.delete_resource(org, r.id).await.unwrap();
    check!(true);
    let _ = s.delete_resource(org, r.id).await.unwrap_err();
    check!(false);
    let empty = s.snapshot(org).await.unwrap();
    assert_eq!(empty.revision, expected);
    assert!(empty.resources.is_empty() && empty.identities.is_empty());
    assert!(is_not_found(s.snapshot(OrgId::new()).await));
}

async fn registration_tokens(db: TestDb) {
    let s = &db.store;
    let org = s.create_org("acme").await.unwrap().id;
    let (token, secret) = s
        .create_registration_token(org, "edge-1", DEFAULT_REGISTRATION_TTL)
        .await
        .unwrap();
    assert!(secret.starts_with(REGISTRATION_TOKEN_PREFIX));
    assert_eq!(token.expires_at - token.created_at, 3_600_000);
    assert_eq!(token.used_at, None);

    let (connector, connector_secret) =
        s.redeem_registration_token(&secret, "0.3.0").await.unwrap();
    assert_eq!(connector.org_id, org);
    assert_eq!(connector.name, "edge-1");
    assert_eq!(connector.version, "0.3.0");
    assert!(connector_secret.starts_with(CONNECTOR_SECRET_PREFIX));
    let listed = s.list_registration_tokens(org).await.unwrap();
    assert!(listed[0].used_at.is_some());

    assert!(matches!(
        s.redeem_registration_token(&secret, "0.3.0").await,
        Err(RedeemError::AlreadyUsed)
    ));
    assert!(matches!(
        s.redeem_registration_token("gr_unknown", "0.3.0").await,
        Err(RedeemError::Unknown)
    ));
    assert!(matches!(
        s.redeem_registration_token(&connector_secret, "0.3.0")
            .await,
        Err(RedeemError::Unknown)
    ));
    let (_, expired) = s
        .create_registration_token(org, "edge-2", Duration::ZERO)
        .await
        .unwrap();
    assert!(matches!(
        s.redeem_registration_token(&expired, "0.3.0").await,
        Err(RedeemError::Expired)
    ));

    // A registered connector keeps its name: the token is not consumed by a failed
    // registration, and works once the name is free.
    let (_, dup) = s
        .create_registration_token(org, "edge-1", DEFAULT_REGISTRATION_TTL)
        .await
        .unwrap();
    assert!(matches!(
        s.redeem_registration_token(&dup, "0.3.0").await,
        Err(RedeemError::Store(StoreError::Conflict { .. }))
    ));
    s.deregister_connector(org, connector.id).await.unwrap();
    let (again, _) = s.redeem_registration_token(&dup, "0.4.0").await.unwrap();
    assert_eq!(again.name, "edge-1");
    assert_ne!(again.id, connector.id);

    // Withdrawn tokens are unknown.
    let (withdrawn, w_secret) = s
        .create_registration_token(org, "edge-3", DEFAULT_REGISTRATION_TTL)
        .await
        .unwrap();
    s.delete_registration_token(org, withdrawn.id)
        .await
        .unwrap();
    assert!(matches!(
        s.redeem_registration_token(&w_secret, "0.3.0").await,
        Err(RedeemError::Unknown)
    ));
    assert!(is_not_found(
        s.delete_registration_token(org, withdrawn.id).await
    ));

    // Neither token secrets nor connector credentials are stored.
    let raw = db.raw_contents().await;
    for secret in [&secret, &connector_secret, &dup] {
        assert!(!contains(&raw, secret));
    }
}

async fn concurrent_redeem(db: TestDb) {
    let s = &db.store;
    let org = s.create_org("acme").await.unwrap().id;
    for round in 0..5 {
        let (_, secret) = s
            .create_registration_token(org, &format!("edge-{round}"), DEFAULT_REGISTRATION_TTL)
            .await
            .unwrap();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let store = s.clone();
                let secret = secret.clone();
                tokio::spawn(async move { store.redeem_registration_token(&secret, "1").await })
            })
            .collect();
        let mut ok = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => ok += 1,
                Err(RedeemError::AlreadyUsed) => {}
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(ok, 1, "round {round}: exactly one redemption must win");
    }
    assert_eq!(s.list_connectors(org, 0).await.unwrap().len(), 5);
}

async fn connectors(db: TestDb) {
    let s = &db.store;
    let org = s.create_org("acme").await.unwrap().id;
    let (_, token) = s
        .create_registration_token(org, "edge", DEFAULT_REGISTRATION_TTL)
        .await
        .unwrap();
    let (c, secret) = s.redeem_registration_token(&token, "1.0").await.unwrap();
    assert_eq!(
        s.authenticate_connector(&secret).await.unwrap(),
        Some(c.clone())
    );
    assert!(s.authenticate_connector("gc_nope").await.unwrap().is_none());
    assert!(s.authenticate_connector(&token).await.unwrap().is_none());

    let hb = Heartbeat {
        version: "1.1".into(),
        uptime_s: 42,
        active_sessions: 3,
        resources_served: vec!["prod-db".into(), "bastion".into()],
    };
    let after = s.heartbeat(org, c.id, &hb).await.unwrap();
    assert_eq!(after.version, "1.1");
    assert_eq!(after.uptime_s, 42);
    assert_eq!(after.active_sessions, 3);
    assert_eq!(after.resources_served, ["prod-db", "bastion"]);
    let beat = after.last_heartbeat_at.unwrap();
    assert_eq!(s.get_connector(org, c.id).await.unwrap(), after);

    let status_at = async |now: i64| {
        let list = s.list_connectors(org, now).await.unwrap();
        assert_eq!(list.len(), 1);
        list[0].status
    };
    assert_eq!(status_at(beat).await, ConnectorStatus::Connected);
    assert_eq!(status_at(beat + 89_000).await, ConnectorStatus::Connected);
    assert_eq!(status_at(beat + 100_000).await, ConnectorStatus::Stale);
    assert_eq!(status_at(beat + 9 * 60_000).await, ConnectorStatus::Stale);
    assert_eq!(
        status_at(beat + 11 * 60_000).await,
        ConnectorStatus::Disconnected
    );

    let gone = s.deregister_connector(org, c.id).await.unwrap();
    assert!(gone.deregistered_at.is_some());
    assert_eq!(status_at(beat).await, ConnectorStatus::Disconnected);
    assert!(s.authenticate_connector(&secret).await.unwrap().is_none());
    assert!(is_not_found(s.heartbeat(org, c.id, &hb).await));
    assert_eq!(
        s.deregister_connector(org, c.id)
            .await
            .unwrap()
            .deregistered_at,
        gone.deregistered_at
    );
    let info = &s.list_connectors(org, beat).await.unwrap()[0];
    assert_eq!(
        serde_json::to_value(info).unwrap()["status"],
        json!("disconnected")
    );
}

/// `n` valid events for `resource`, one second apart from `base_ms`.
fn events(n: usize, base_ms: i64, identity: &str, resource: &str) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "id": Uuid::now_v7(),
                "time": time::format_rfc3339_ms(base_ms + i as i64 * 1000),
                "kind": if i % 2 == 0 { "policy_decision" } else { "session_start" },
                "identity": {"sub": identity, "name": identity},
                "resource": resource,
                "action": if i % 3 == 0 { "block" } else { "allow" },
                "protocol": "postgres",
                "session_id": format!("s-{}", i % 4),
                "statement": format!("SELECT {i}"),
            })
        })
        .collect()
}

/// A fixed past time (2023-11-14), well before any event stamped "now".
const BASE: i64 = 1_700_000_000_000;

async fn audit_dedup(db: TestDb) {
    let s = &db.store;
    let org = s.create_org("acme").await.unwrap().id;
    let other = s.create_org("other").await.unwrap().id;
    let (_, token) = s
        .create_registration_token(org, "edge", DEFAULT_REGISTRATION_TTL)
        .await
        .unwrap();
    let (c, _) = s.redeem_registration_token(&token, "1").await.unwrap();

    let batch = events(250, BASE, "alice", "prod-db");
    let first = s.ingest_audit(org, Some(c.id), &batch).await.unwrap();
    assert_eq!(
        first,
        IngestResult {
            inserted: 250,
            duplicates: 0
        }
    );
    let second = s.ingest_audit(org, Some(c.id), &batch).await.unwrap();
    assert_eq!(
        second,
        IngestResult {
            inserted: 0,
            duplicates: 250
        }
    );
    // Part old, part new, and a repeat inside the batch.
    let mut mixed = batch[..10].to_vec();
    let fresh = events(5, BASE, "bob", "prod-db");
    mixed.extend(fresh.iter().cloned());
    mixed.push(fresh[0].clone());
    let third = s.ingest_audit(org, None, &mixed).await.unwrap();
    assert_eq!(
        third,
        IngestResult {
            inserted: 5,
            duplicates: 11
        }
    );
    assert_eq!(
        s.count_audit(org, &AuditQuery::default()).await.unwrap(),
        255
    );
    // Dedup is per org: the same ids in another org are new there.
    assert_eq!(
        s.ingest_audit(other, None, &batch[..3])
            .await
            .unwrap()
            .inserted,
        3
    );
    assert_eq!(
        s.count_audit(other, &AuditQuery::default()).await.unwrap(),
        3
    );

    // The stored record keeps the full event and the connector that shipped it.
    let rec = s
        .query_audit(
            org,
            &AuditQuery {
                identity: Some("alice".into()),
                limit: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .remove(0);
    assert_eq!(rec.connector_id, Some(c.id));
    assert_eq!(rec.event["statement"], json!("SELECT 249"));
    assert_eq!(rec.time, BASE + 249_000);

    // A malformed event refuses the whole batch.
    let mut bad = events(3, BASE, "carol", "x");
    bad[1]["time"] = json!("not a time");
    match s.ingest_audit(org, None, &bad).await {
        Err(StoreError::Invalid(msg)) => assert!(msg.contains("event 1"), "{msg}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(
        s.count_audit(
            org,
            &AuditQuery {
                identity: Some("carol".into()),
                ..Default::default()
            }
        )
        .await
        .unwrap(),
        0
    );
    assert!(is_not_found(
        s.ingest_audit(org, Some(Uuid::now_v7()), &batch).await
    ));
    assert!(is_not_found(
        s.ingest_audit(OrgId::new(), None, &batch).await
    ));
    assert_eq!(
        s.ingest_audit(org, None, &[]).await.unwrap(),
        IngestResult::default()
    );
}

async fn audit_filters_and_paging(db: TestDb) {
    let s = &db.store;
    let org = s.create_org("acme").await.unwrap().id;
    let mut all = events(30, BASE, "alice", "prod-db");
    all.extend(events(12, BASE + 500, "bob", "staging-db"));
    // Several events at the very same millisecond: ordered by id, still paged exactly.
    let mut same_ms = events(7, BASE + 100_000_000, "carol", "prod-db");
    for e in &mut same_ms {
        e["time"] = json!(time::format_rfc3339_ms(BASE + 100_000_000));
    }
    all.extend(same_ms);
    s.ingest_audit(org, None, &all).await.unwrap();

    let q = |f: fn(&mut AuditQuery)| {
        let mut q = AuditQuery::default();
        f(&mut q);
        q
    };
    let count = async |query: AuditQuery| s.count_audit(org, &query).await.unwrap();
    assert_eq!(count(q(|_| {})).await, 49);
    assert_eq!(count(q(|q| q.identity = Some("bob".into()))).await, 12);
    assert_eq!(count(q(|q| q.resource = Some("prod-db".into()))).await, 37);
    assert_eq!(
        count(q(|q| q.kind = Some("session_start".into()))).await,
        15 + 6 + 3
    );
    assert_eq!(
        count(q(|q| q.action = Some("block".into()))).await,
        10 + 4 + 3
    );
    assert_eq!(
        count(q(|q| q.session_id = Some("s-1".into()))).await,
        8 + 3 + 2
    );
    assert_eq!(
        count(q(|q| {
            q.from = Some(BASE + 10_000);
            q.to = Some(BASE + 20_000);
        }))
        .await,
        10 + 2
    );
    assert_eq!(
        count(q(|q| {
            q.identity = Some("alice".into());
            q.action = Some("block".into());
            q.to = Some(BASE + 15_000);
        }))
        .await,
        5
    );
    assert_eq!(count(q(|q| q.identity = Some("nobody".into()))).await, 0);

    // Filtered query: newest first, fields as indexed.
    let bobs = s
        .query_audit(org, &q(|q| q.identity = Some("bob".into())))
        .await
        .unwrap();
    assert_eq!(bobs.len(), 12);
    assert!(bobs.iter().all(|r| r.identity.as_deref() == Some("bob")
        && r.resource.as_deref() == Some("staging-db")
        && r.protocol.as_deref() == Some("postgres")));
    assert!(bobs.windows(2).all(|w| w[0].time > w[1].time));

    // Cursor paging over everything: no repeats, no gaps, newest first, stable order.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = s
            .query_audit(
                org,
                &AuditQuery {
                    limit: Some(10),
                    before_cursor: cursor.clone(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        cursor = Some(page.last().unwrap().cursor());
        seen.extend(page);
        // New events arriving while paging land at the top, not in later pages.
        if seen.len() == 10 {
            s.ingest_audit(org, None, &events(2, BASE + 200_000_000, "late", "x"))
                .await
                .unwrap();
        }
    }
    assert_eq!(seen.len(), 49);
    let ids: HashSet<_> = seen.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 49);
    assert!(
        seen.windows(2)
            .all(|w| (w[0].time, w[0].id) > (w[1].time, w[1].id))
    );
    assert_eq!(
        seen[..7]
            .iter()
            .filter(|r| r.identity.as_deref() == Some("carol"))
            .count(),
        7
    );

    // Paging combined with a filter.
    let first = s
        .query_audit(
            org,
            &q(|q| {
                q.identity = Some("alice".into());
                q.limit = Some(25);
            }),
        )
        .await
        .unwrap();
    let rest = s
        .query_audit(
            org,
            &AuditQuery {
                identity: Some("alice".into()),
                before_cursor: Some(first.last().unwrap().cursor()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((first.len(), rest.len()), (25, 5));

    // Limits: default 100, capped at 10 000.
    assert_eq!(s.query_audit(org, &q(|_| {})).await.unwrap().len(), 51);
    assert_eq!(
        s.query_audit(org, &q(|q| q.limit = Some(1_000_000)))
            .await
            .unwrap()
            .len(),
        51
    );
    assert!(matches!(
        s.query_audit(org, &q(|q| q.before_cursor = Some("garbage".into())))
            .await,
        Err(StoreError::Invalid(_))
    ));
}

async fn audit_purge_and_admin_events(db: TestDb) {
    let s = &db.store;
    let org = s.create_org("acme").await.unwrap().id;
    let other = s.create_org("other").await.unwrap().id;
    s.ingest_audit(org, None, &events(20, BASE, "alice", "prod-db"))
        .await
        .unwrap();
    s.ingest_audit(other, None, &events(20, BASE, "alice", "prod-db"))
        .await
        .unwrap();

    let rec = s
        .append_admin_event(
            org,
            "admin@acme",
            "policy.update",
            "no-drops",
            json!({"version": 2}),
        )
        .await
        .unwrap();
    assert_eq!(rec.kind, ADMIN_CHANGE_KIND);
    assert_eq!(rec.identity.as_deref(), Some("admin@acme"));
    assert_eq!(rec.action.as_deref(), Some("policy.update"));
    assert_eq!(rec.event["target"], json!("no-drops"));
    assert_eq!(rec.event["details"]["version"], json!(2));
    assert!((rec.time - time::now_ms()).abs() < 60_000);
    let admin = s
        .query_audit(
            org,
            &AuditQuery {
                kind: Some(ADMIN_CHANGE_KIND.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(admin, vec![rec.clone()]);

    // Purge by event time, per org.
    let purged = s.purge_audit_before(org, BASE + 5_000).await.unwrap();
    assert_eq!(purged, 5);
    assert_eq!(
        s.count_audit(org, &AuditQuery::default()).await.unwrap(),
        16
    );
    assert_eq!(
        s.count_audit(other, &AuditQuery::default()).await.unwrap(),
        20
    );
    assert_eq!(s.purge_audit_before(org, BASE + 5_000).await.unwrap(), 0);
    assert_eq!(
        s.purge_audit_before(org, time::now_ms() + 60_000)
            .await
            .unwrap(),
        16
    );
    assert_eq!(s.count_audit(org, &AuditQuery::default()).await.unwrap(), 0);
}

async fn migrations(db: TestDb) {
    let s = &db.store;
    let org = s.create_org("acme").await.unwrap().id;
    s.create_resource(org, &resource("prod-db")).await.unwrap();
    // Connecting again (as a second control plane would) finds everything migrated and
    // the data intact; so does connecting with the development migrations directory,
    // whose checksums must match the embedded ones.
    let url = match &db.kind {
        Kind::Sqlite { dir } => {
            format!("sqlite://{}", dir.path().join("nested/gate.db").display())
        }
        Kind::Postgres { db } => {
            let pg = PgServer::shared();
            format!(
                "postgres://{}:{}@{}:{}/{db}",
                pg.app_user(),
                pg.app_password(),
                pg.host(),
                pg.port()
            )
        }
    };
    let again = Store::connect(&StoreOptions::new(url.clone()))
        .await
        .unwrap();
    assert_eq!(again.list_resources(org).await.unwrap().len(), 1);
    let mut dev = StoreOptions::new(url);
    dev.migrations_path = Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations"));
    dev.min_conns = 1;
    let from_dir = Store::connect(&dev).await.unwrap();
    assert_eq!(from_dir.revision(org).await.unwrap(), 1);
    from_dir.close().await;
    again.close().await;
    if let Kind::Sqlite { .. } = &db.kind {
        // The settings every SQLite connection gets.
        let mut conn = s.pool().acquire().await.unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(fk, 1);
        let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(busy, 5000);
    }
    // A directory that does not exist is an error, not an empty migration set.
    let mut missing = StoreOptions::new(match &db.kind {
        Kind::Sqlite { dir } => format!("sqlite://{}", dir.path().join("other.db").display()),
        Kind::Postgres { .. } => return,
    });
    missing.migrations_path = Some("/nonexistent/migrations".into());
    assert!(Store::connect(&missing).await.is_err());
}

#[tokio::test]
async fn sqlite_in_memory() {
    let store = Store::connect(&StoreOptions::new("sqlite::memory:"))
        .await
        .unwrap();
    let org = store.create_org("mem").await.unwrap().id;
    store.create_resource(org, &resource("r")).await.unwrap();
    assert_eq!(store.list_resources(org).await.unwrap().len(), 1);
    assert_eq!(store.revision(org).await.unwrap(), 1);
}

#[tokio::test]
async fn bad_urls() {
    assert!(matches!(
        Store::connect(&StoreOptions::new("mysql://localhost/x")).await,
        Err(StoreError::Invalid(_))
    ));
}

fn access_input(requester: &str, resource: &str, duration_s: i64) -> AccessRequestInput {
    AccessRequestInput {
        requester: requester.into(),
        resource: resource.into(),
        reason: "incident 42".into(),
        requested_duration_s: duration_s,
        scopes: json!({"operation": "read"}),
    }
}

async fn access_request_transitions(db: TestDb) {
    let s = &db.store;
    let org = s.create_org("acme").await.unwrap().id;
    let other = s.create_org("other").await.unwrap().id;
    let now = 1_000_000_000;

    // Bad input is refused.
    assert!(matches!(
        s.create_access_request(org, &access_input("alice", "db", 0), 3600, now)
            .await,
        Err(StoreError::Invalid(_))
    ));
    let mut bad = access_input("alice", "db", 60);
    bad.scopes = json!(["read"]);
    assert!(matches!(
        s.create_access_request(org, &bad, 3600, now).await,
        Err(StoreError::Invalid(_))
    ));

    let rev0 = s.revision(org).await.unwrap();
    let a = s
        .create_access_request(org, &access_input("alice", "db", 3600), 600, now)
        .await
        .unwrap();
    assert_eq!(a.status, AccessStatus::Pending);
    assert_eq!(a.pending_expires_at, now + 600_000);
    assert_eq!(a.scopes, json!({"operation": "read"}));
    assert_eq!(
        s.revision(org).await.unwrap(),
        rev0,
        "pending grants nothing"
    );
    assert_eq!(s.get_access_request(org, a.id).await.unwrap(), a);
    assert!(is_not_found(s.get_access_request(other, a.id).await));

    // Self-approval is refused and changes nothing.
    assert!(is_conflict(
        s.approve_access_request(org, a.id, "alice", "me", now, None)
            .await
    ));
    assert_eq!(s.revision(org).await.unwrap(), rev0);
    // Another org cannot decide it.
    assert!(
        s.approve_access_request(other, a.id, "bob", "ok", now, None)
            .await
            .is_err()
    );

    // Approve, capped by the max duration.
    let approved = s
        .approve_access_request(org, a.id, "bob", "looks fine", now + 5, Some(1800))
        .await
        .unwrap();
    assert_eq!(approved.status, AccessStatus::Approved);
    assert_eq!(approved.decided_by.as_deref(), Some("bob"));
    assert_eq!(approved.decision_reason.as_deref(), Some("looks fine"));
    assert_eq!(approved.decided_at, Some(now + 5));
    assert_eq!(approved.expires_at, Some(now + 5 + 1_800_000));
    assert_eq!(s.revision(org).await.unwrap(), rev0 + 1);
    // Decided once: a second approve, a deny or a cancel all conflict.
    assert!(is_conflict(
        s.approve_access_request(org, a.id, "bob", "again", now, None)
            .await
    ));
    assert!(is_conflict(
        s.deny_access_request(org, a.id, "bob", "no", now).await
    ));
    assert!(is_conflict(
        s.cancel_access_request(org, a.id, "alice", "no", now).await
    ));
    assert_eq!(s.revision(org).await.unwrap(), rev0 + 1);

    // Without a cap the requested duration holds.
    let b = s
        .create_access_request(org, &access_input("carol", "db", 60), 600, now)
        .await
        .unwrap();
    let b = s
        .approve_access_request(org, b.id, "bob", "", now, Some(3600))
        .await
        .unwrap();
    assert_eq!(b.expires_at, Some(now + 60_000));

    // Revoke an active grant; only once.
    let revoked = s
        .revoke_access_request(org, a.id, "bob", "done early", now + 10)
        .await
        .unwrap();
    assert_eq!(revoked.status, AccessStatus::Revoked);
    assert_eq!(revoked.revoked_by.as_deref(), Some("bob"));
    assert_eq!(revoked.revoke_reason.as_deref(), Some("done early"));
    assert_eq!(revoked.decided_by.as_deref(), Some("bob"));
    assert!(is_conflict(
        s.revoke_access_request(org, a.id, "bob", "", now + 10)
            .await
    ));
    // A pending request cannot be revoked.
    let c = s
        .create_access_request(org, &access_input("alice", "cache", 60), 600, now)
        .await
        .unwrap();
    assert!(is_conflict(
        s.revoke_access_request(org, c.id, "bob", "", now).await
    ));

    // Deny.
    let denied = s
        .deny_access_request(org, c.id, "bob", "not today", now)
        .await
        .unwrap();
    assert_eq!(denied.status, AccessStatus::Denied);
    assert_eq!(denied.decision_reason.as_deref(), Some("not today"));

    // Cancel: only by the requester.
    let d = s
        .create_access_request(org, &access_input("alice", "db", 60), 600, now)
        .await
        .unwrap();
    assert!(is_conflict(
        s.cancel_access_request(org, d.id, "bob", "", now).await
    ));
    let rev = s.revision(org).await.unwrap();
    let cancelled = s
        .cancel_access_request(org, d.id, "alice", "not needed", now)
        .await
        .unwrap();
    assert_eq!(cancelled.status, AccessStatus::Cancelled);
    assert_eq!(s.revision(org).await.unwrap(), rev + 1);

    // Filters.
    let all = s
        .list_access_requests(org, &AccessRequestFilter::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[0].id, d.id, "newest first");
    let alice = s
        .list_access_requests(
            org,
            &AccessRequestFilter {
                requester: Some("alice".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(alice.len(), 3);
    let alice_db_cancelled = s
        .list_access_requests(
            org,
            &AccessRequestFilter {
                requester: Some("alice".into()),
                status: Some(AccessStatus::Cancelled),
                resource: Some("db".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(alice_db_cancelled.len(), 1);
    assert_eq!(alice_db_cancelled[0].id, d.id);
    assert!(
        s.list_access_requests(other, &AccessRequestFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
}

async fn access_concurrent_approve_and_deny(db: TestDb) {
    let s = &db.store;
    let org = s.create_org("acme").await.unwrap().id;
    let now = time::now_ms();
    for round in 0..5 {
        let r = s
            .create_access_request(org, &access_input("alice", "db", 60), 600, now)
            .await
            .unwrap();
        let rev = s.revision(org).await.unwrap();
        let (s1, s2) = (s.clone(), s.clone());
        let approve = tokio::spawn(async move {
            s1.approve_access_request(org, r.id, "bob", "yes", now, None)
                .await
        });
        let deny =
            tokio::spawn(
                async move { s2.deny_access_request(org, r.id, "carol", "no", now).await },
            );
        let (a, d) = (approve.await.unwrap(), deny.await.unwrap());
        assert!(
            a.is_ok() != d.is_ok(),
            "round {round}: exactly one decision wins: {a:?} / {d:?}"
        );
        let approved = a.is_ok();
        let loser = if approved {
            d.unwrap_err()
        } else {
            a.unwrap_err()
        };
        assert!(matches!(loser, StoreError::Conflict { .. }), "{loser:?}");
        let stored = s.get_access_request(org, r.id).await.unwrap();
        let expected = if approved {
            AccessStatus::Approved
        } else {
            AccessStatus::Denied
        };
        assert_eq!(stored.status, expected);
        assert_eq!(s.revision(org).await.unwrap(), rev + 1, "one bump only");
    }
}

async fn access_expiry_and_grants_in_snapshot(db: TestDb) {
    let s = &db.store;
    let org = s.create_org("acme").await.unwrap().id;
    let now = time::now_ms();
    // A grant that runs 60 s, one whose pending TTL is 10 s, one that stays pending.
    let g = s
        .create_access_request(org, &access_input("alice", "db", 60), 600, now)
        .await
        .unwrap();
    let g = s
        .approve_access_request(org, g.id, "bob", "ok", now, None)
        .await
        .unwrap();
    let p = s
        .create_access_request(org, &access_input("carol", "db", 60), 10, now)
        .await
        .unwrap();
    let long = s
        .create_access_request(org, &access_input("dave", "db", 60), 3600, now)
        .await
        .unwrap();

    let snap = s.snapshot(org).await.unwrap();
    assert_eq!(snap.grants.len(), 1);
    assert_eq!(snap.grants[0].id, g.id);
    assert_eq!(s.active_grants(org, now).await.unwrap().len(), 1);
    assert!(s.active_grants(org, now + 60_000).await.unwrap().is_empty());

    // Nothing due yet: no change, no bump.
    let rev = s.revision(org).await.unwrap();
    assert!(
        s.expire_due_access_requests(org, now + 1000)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.revision(org).await.unwrap(), rev);

    // The pending TTL passes first.
    assert_eq!(
        s.expire_due_access_requests(org, now + 10_000)
            .await
            .unwrap(),
        vec![p.id]
    );
    assert_eq!(s.revision(org).await.unwrap(), rev + 1);
    let expired = s.get_access_request(org, p.id).await.unwrap();
    assert_eq!(expired.status, AccessStatus::Expired);
    assert_eq!(expired.decided_at, Some(now + 10_000));
    assert!(is_conflict(
        s.approve_access_request(org, p.id, "bob", "late", now + 10_000, None)
            .await
    ));

    // Then the grant.
    assert_eq!(
        s.expire_due_access_requests(org, now + 60_000)
            .await
            .unwrap(),
        vec![g.id]
    );
    assert_eq!(s.revision(org).await.unwrap(), rev + 2);
    let g2 = s.get_access_request(org, g.id).await.unwrap();
    assert_eq!(g2.status, AccessStatus::Expired);
    assert_eq!(
        g2.decided_by.as_deref(),
        Some("bob"),
        "the decision is kept"
    );
    assert_eq!(
        s.get_access_request(org, long.id).await.unwrap().status,
        AccessStatus::Pending
    );
    // Expired grants cannot be revoked.
    assert!(is_conflict(
        s.revoke_access_request(org, g.id, "bob", "", now + 60_000)
            .await
    ));
    // A grant whose time passed but was not swept yet is not in the snapshot either
    // (covered by `active_grants(now)`); after the sweep the snapshot is empty.
    assert!(s.snapshot(org).await.unwrap().grants.is_empty());
}

async fn approval_rules(db: TestDb) {
    let s = &db.store;
    let org = s.create_org("acme").await.unwrap().id;
    let rules = s.get_approval_rules(org).await.unwrap();
    assert_eq!(rules, ApprovalRules::default());
    assert_eq!(rules.pending_ttl_s, DEFAULT_PENDING_TTL_S);

    let rules: ApprovalRules = serde_json::from_value(json!({
        "default_approver_groups": ["sre"],
        "pending_ttl_s": 900,
        "resources": {"prod-db": {"approver_groups": ["dba"], "max_duration_s": 7200}}
    }))
    .unwrap();
    s.set_approval_rules(org, &rules).await.unwrap();
    let got = s.get_approval_rules(org).await.unwrap();
    assert_eq!(got, rules);
    assert_eq!(got.approver_groups("prod-db"), ["dba".to_string()]);
    assert_eq!(got.approver_groups("other"), ["sre".to_string()]);
    assert_eq!(got.max_duration_s("prod-db"), Some(7200));
    assert_eq!(got.max_duration_s("other"), None);

    // Replaced, not merged.
    s.set_approval_rules(org, &ApprovalRules::default())
        .await
        .unwrap();
    assert_eq!(
        s.get_approval_rules(org).await.unwrap(),
        ApprovalRules::default()
    );
    let bad = ApprovalRules {
        pending_ttl_s: 0,
        ..Default::default()
    };
    assert!(matches!(
        s.set_approval_rules(org, &bad).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(is_not_found(s.get_approval_rules(OrgId::new()).await));
}

fn webhook_input(url: &str, events: Option<&[&str]>) -> WebhookEndpointInput {
    WebhookEndpointInput {
        url: url.into(),
        description: "test receiver".into(),
        events: events.map(|e| e.iter().map(|s| s.to_string()).collect()),
    }
}

async fn webhooks(db: TestDb) {
    let s = &db.store;
    let org = s.create_org("acme").await.unwrap().id;
    let other = s.create_org("other").await.unwrap().id;

    // Create: the secret is returned once, in the Standard Webhooks shape, and never shown by
    // the endpoint itself.
    let (ep, secret) = s
        .create_webhook_endpoint(org, &webhook_input("https://hooks.example/a", None))
        .await
        .unwrap();
    assert!(secret.starts_with(WEBHOOK_SECRET_PREFIX), "{secret}");
    assert_eq!(ep.events, ["*"]);
    assert!(!ep.disabled);
    let shown = serde_json::to_string(&s.list_webhook_endpoints(org).await.unwrap()).unwrap();
    assert!(!shown.contains(&secret[6..]), "{shown}");
    assert!(matches!(
        s.create_webhook_endpoint(org, &webhook_input("", None))
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.create_webhook_endpoint(org, &webhook_input("https://x", Some(&[])))
            .await,
        Err(StoreError::Invalid(_))
    ));
    let (ep2, secret2) = s
        .create_webhook_endpoint(
            org,
            &webhook_input("https://hooks.example/b", Some(&["access.approved"])),
        )
        .await
        .unwrap();
    assert_ne!(secret, secret2);
    let (_url, disabled, keys) = s.webhook_target(org, ep.id, now()).await.unwrap();
    assert!(!disabled);
    assert_eq!(keys.current, secret);
    assert_eq!(keys.previous, None);

    // Another org sees nothing and cannot queue into these endpoints.
    assert!(is_not_found(s.get_webhook_endpoint(other, ep.id).await));
    assert!(s.list_webhook_endpoints(other).await.unwrap().is_empty());
    assert!(is_not_found(s.webhook_target(other, ep.id, now()).await));
    assert_eq!(
        s.enqueue_webhook_deliveries(other, &[ep.id], "evt_x", "access.approved", "{}")
            .await
            .unwrap(),
        0
    );
    assert!(is_not_found(
        s.list_webhook_deliveries(other, ep.id, None, 10).await
    ));
    assert!(is_not_found(s.delete_webhook_endpoint(other, ep.id).await));

    // Update.
    let updated = s
        .update_webhook_endpoint(
            org,
            ep2.id,
            &WebhookEndpointUpdate {
                events: Some(vec!["access.*".into(), " access.* ".into()]),
                disabled: Some(true),
                ..Default::default()
            },
            "disabled by api_key:ad",
        )
        .await
        .unwrap();
    assert_eq!(updated.events, ["access.*"]);
    assert!(updated.disabled);
    assert_eq!(
        updated.disabled_reason.as_deref(),
        Some("disabled by api_key:ad")
    );
    assert_eq!(updated.url, "https://hooks.example/b");

    // Queue: once per (endpoint, event), however often it is published.
    let payload = r#"{"type":"access.approved","timestamp":"t","data":{}}"#;
    let n = s
        .enqueue_webhook_deliveries(org, &[ep.id, ep2.id], "evt_1", "access.approved", payload)
        .await
        .unwrap();
    assert_eq!(n, 2);
    let n = s
        .enqueue_webhook_deliveries(org, &[ep.id, ep2.id], "evt_1", "access.approved", payload)
        .await
        .unwrap();
    assert_eq!(n, 0);
    // Only deliveries of enabled endpoints are due.
    let due = s.due_webhook_deliveries(now(), 100).await.unwrap();
    let mine: Vec<_> = due.iter().filter(|(o, _, _)| *o == org).collect();
    assert_eq!(mine.len(), 1);
    let (_, id, due_at) = *mine[0];

    // Claim: exactly one of two claims of the same listing wins.
    let lease = now() + 60_000;
    let claimed = s
        .claim_webhook_delivery(org, id, due_at, lease)
        .await
        .unwrap()
        .expect("claimed");
    assert_eq!(claimed.attempts, 1);
    assert_eq!(claimed.event_id, "evt_1");
    assert_eq!(claimed.payload, payload);
    assert!(
        s.claim_webhook_delivery(org, id, due_at, lease)
            .await
            .unwrap()
            .is_none()
    );
    // While leased it is not due.
    assert!(
        !s.due_webhook_deliveries(now(), 100)
            .await
            .unwrap()
            .iter()
            .any(|(_, d, _)| *d == id)
    );
    // A failure with attempts left: due again later; a stale report (wrong attempt) is ignored.
    let retry_at = now() - 1;
    let after = s
        .record_webhook_attempt(
            &claimed,
            &DeliveryOutcome::Retry {
                status: Some(503),
                error: "HTTP 503".into(),
                next_attempt_at: retry_at,
            },
        )
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(after.status, DeliveryStatus::Pending);
    assert_eq!(after.last_status, Some(503));
    assert!(
        s.record_webhook_attempt(&claimed, &DeliveryOutcome::Delivered { status: 200 })
            .await
            .unwrap()
            .is_none(),
        "the attempt was recorded already and nobody claimed it again"
    );
    let claimed = s
        .claim_webhook_delivery(org, id, retry_at, now() + 60_000)
        .await
        .unwrap()
        .expect("claimed again");
    assert_eq!(claimed.attempts, 2);
    let dead = s
        .record_webhook_attempt(
            &claimed,
            &DeliveryOutcome::Dead {
                status: None,
                error: "connection refused".into(),
            },
        )
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(dead.status, DeliveryStatus::Dead);
    assert_eq!(dead.last_status, None);
    assert_eq!(
        s.list_webhook_deliveries(org, ep.id, Some(DeliveryStatus::Dead), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        s.list_webhook_deliveries(org, ep.id, Some(DeliveryStatus::Pending), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Redelivery: pending again with a fresh count, same event id; a pending one refuses.
    let again = s.redeliver_webhook_delivery(org, ep.id, id).await.unwrap();
    assert_eq!(again.status, DeliveryStatus::Pending);
    assert_eq!(again.attempts, 0);
    assert_eq!(again.event_id, "evt_1");
    assert!(is_conflict(
        s.redeliver_webhook_delivery(org, ep.id, id).await
    ));
    assert!(is_not_found(
        s.redeliver_webhook_delivery(org, ep2.id, id).await
    ));
    assert!(is_not_found(
        s.redeliver_webhook_delivery(other, ep.id, id).await
    ));
    let claimed = s
        .claim_webhook_delivery(org, id, again.next_attempt_at, now() + 60_000)
        .await
        .unwrap()
        .expect("claimed after redelivery");
    let delivered = s
        .record_webhook_attempt(&claimed, &DeliveryOutcome::Delivered { status: 204 })
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(delivered.status, DeliveryStatus::Delivered);
    assert!(delivered.delivered_at.is_some());
    assert_eq!(
        s.get_webhook_delivery(org, ep.id, id).await.unwrap(),
        delivered
    );
    assert!(is_not_found(s.get_webhook_delivery(other, ep.id, id).await));

    // Rotation: the new secret signs, the old one too until the grace period ends; a
    // rotation without grace drops it.
    let (rotated, secret_b) = s
        .rotate_webhook_secret(org, ep.id, 3_600_000)
        .await
        .unwrap();
    assert_ne!(secret_b, secret);
    assert!(rotated.previous_secret_expires_at.unwrap() > now());
    let (_, _, keys) = s.webhook_target(org, ep.id, now()).await.unwrap();
    assert_eq!(keys.current, secret_b);
    assert_eq!(keys.previous.as_deref(), Some(secret.as_str()));
    assert!(!format!("{keys:?}").contains(&secret[6..]));
    // Past the grace period only the current one signs.
    let (_, _, later) = s
        .webhook_target(org, ep.id, now() + 3_700_000)
        .await
        .unwrap();
    assert_eq!(later.previous, None);
    let (_, secret_c) = s.rotate_webhook_secret(org, ep.id, 0).await.unwrap();
    let (_, _, keys) = s.webhook_target(org, ep.id, now()).await.unwrap();
    assert_eq!(keys.current, secret_c);
    assert_eq!(keys.previous, None);
    assert!(is_not_found(s.rotate_webhook_secret(other, ep.id, 0).await));

    // 410 Gone disables once.
    assert!(
        s.disable_webhook_endpoint(org, ep.id, "receiver answered 410 Gone")
            .await
            .unwrap()
    );
    assert!(
        !s.disable_webhook_endpoint(org, ep.id, "again")
            .await
            .unwrap()
    );
    let (_, disabled, _) = s.webhook_target(org, ep.id, now()).await.unwrap();
    assert!(disabled);

    // Retention removes old delivered rows only.
    s.enqueue_webhook_deliveries(org, &[ep.id], "evt_2", "access.denied", payload)
        .await
        .unwrap();
    assert!(s.purge_webhook_deliveries(now() + 1000).await.unwrap() >= 1);
    let left = s
        .list_webhook_deliveries(org, ep.id, None, 10)
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].event_id, "evt_2");

    // An org with endpoints cannot be deleted; deleting an endpoint deletes its deliveries.
    assert!(is_conflict(s.delete_org(org).await));
    s.delete_webhook_endpoint(org, ep.id).await.unwrap();
    s.delete_webhook_endpoint(org, ep2.id).await.unwrap();
    assert!(is_not_found(s.delete_webhook_endpoint(org, ep.id).await));
    assert!(is_not_found(
        s.list_webhook_deliveries(org, ep.id, None, 10).await
    ));
    s.delete_org(org).await.unwrap();

    // Audit ingestion says which events are new, so each is acted on once.
    let batch = events(3, 1_800_000_000_000, "alice", "db");
    let (first, new_ids) = s.ingest_audit_new_ids(other, None, &batch).await.unwrap();
    assert_eq!(first.inserted, 3);
    assert_eq!(new_ids.len(), 3);
    let mut more = batch.clone();
    more.extend(events(1, 1_800_000_100_000, "bob", "db"));
    let (second, new_ids) = s.ingest_audit_new_ids(other, None, &more).await.unwrap();
    assert_eq!((second.inserted, second.duplicates), (1, 3));
    assert_eq!(new_ids.len(), 1);
    assert_eq!(new_ids[0].to_string(), more[3]["id"].as_str().unwrap());
}

fn now() -> i64 {
    gate_store::time::now_ms()
}
