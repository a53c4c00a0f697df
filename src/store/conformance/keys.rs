//! The conformance cases of signing keys and server secrets.

use std::sync::Arc;

use crate::store::{KeyRecord, KeySlot, Store};

pub async fn keys_and_secrets(store: Arc<dyn Store>) {
    let key = KeyRecord {
        kid: "d-1".into(),
        alg: "EdDSA".into(),
        private_key: vec![1, 2, 3],
        created_at_ms: 1,
        signs_from_ms: 1,
        max_token_lifetime_ms: 10,
        max_jwt_exp_ms: 0,
        is_static: false,
    };
    store.put_key(&key).await.unwrap();
    assert_eq!(store.keys().await.unwrap(), std::slice::from_ref(&key));
    store.delete_key("d-1").await.unwrap();
    assert!(store.keys().await.unwrap().is_empty());

    let first = store.secret("s", &mut || vec![9; 4]).await.unwrap();
    let again = store.secret("s", &mut || vec![7; 4]).await.unwrap();
    assert_eq!(first, vec![9; 4]);
    assert_eq!(again, first, "a secret is made once");
    assert!(
        !store.replace_secret("s", &[7; 4], &[1; 4]).await.unwrap(),
        "only the current value is replaced"
    );
    assert!(
        !store
            .replace_secret("none", &[9; 4], &[1; 4])
            .await
            .unwrap()
    );
    assert!(store.replace_secret("s", &first, &[1; 4]).await.unwrap());
    assert_eq!(
        store.secret("s", &mut || vec![7; 4]).await.unwrap(),
        vec![1; 4]
    );
    assert_eq!(
        store.secret("none", &mut || vec![5; 4]).await.unwrap(),
        vec![5; 4],
        "a refused replacement creates nothing"
    );
    store.durable().await.unwrap();
}

pub async fn keys_are_added_once_per_place(store: Arc<dyn Store>) {
    let key = |kid: &str, signs_from_ms: u64, is_static: bool| KeyRecord {
        kid: kid.into(),
        alg: "ES256".into(),
        private_key: kid.as_bytes().to_vec(),
        created_at_ms: signs_from_ms,
        signs_from_ms,
        max_token_lifetime_ms: 10,
        max_jwt_exp_ms: 0,
        is_static,
    };
    // Eight processes race to make a new store's keys: one of each.
    let race = async |slot: KeySlot<'static>, make: &dyn Fn(usize) -> KeyRecord| {
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                let key = make(i);
                tokio::spawn(async move { store.add_key(&key, slot).await.unwrap() })
            })
            .collect();
        let mut added = 0;
        for call in calls {
            added += usize::from(call.await.unwrap());
        }
        added
    };
    let added = race(KeySlot::Static, &|i| key(&format!("s-{i}"), 1, true)).await;
    assert_eq!(added, 1, "one static key");
    let added = race(KeySlot::After(None), &|i| key(&format!("d-1{i}"), 1, false)).await;
    assert_eq!(added, 1, "one first rotating key");
    let keys = store.keys().await.unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let first = crate::store::newest_rotating(&keys).unwrap().kid.clone();

    // A successor follows the newest key only while it is the newest.
    assert!(
        !store
            .add_key(&key("d-2", 5, false), KeySlot::After(None))
            .await
            .unwrap()
    );
    assert!(
        !store
            .add_key(&key("s-x", 5, true), KeySlot::Static)
            .await
            .unwrap()
    );
    let after_first = KeySlot::After(Some(first.as_str()));
    assert!(
        store
            .add_key(&key("d-2", 5, false), after_first)
            .await
            .unwrap()
    );
    assert!(
        !store
            .add_key(&key("d-3", 6, false), after_first)
            .await
            .unwrap(),
        "the place after the first key is taken"
    );
    assert!(
        store
            .add_key(&key("d-3", 6, false), KeySlot::After(Some("d-2")))
            .await
            .unwrap()
    );
    assert_eq!(store.keys().await.unwrap().len(), 4);

    // A key's verification window only grows, whoever writes it.
    let mut noted = key("d-2", 5, false);
    noted.max_jwt_exp_ms = 500;
    noted.max_token_lifetime_ms = 20;
    store.put_key(&noted).await.unwrap();
    store.put_key(&key("d-2", 5, false)).await.unwrap();
    let stored = store.keys().await.unwrap();
    let stored = stored.iter().find(|k| k.kid == "d-2").unwrap();
    assert_eq!(
        (stored.max_jwt_exp_ms, stored.max_token_lifetime_ms),
        (500, 20)
    );
    store.durable().await.unwrap();
}
