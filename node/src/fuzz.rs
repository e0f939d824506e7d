//! Fuzz targets: the parsers that read bytes someone else wrote. Each function takes
//! arbitrary bytes and must return (an error is fine) without panicking, hanging or
//! allocating what the input merely claims.
//!
//! - [`command_decoder`]: a Raft log entry and a command as a peer or the disk hands them
//!   over (the value codec, postcard), and the peer protocol's message.
//! - [`snapshot_reader`]: a snapshot file as a leader sends it (header, records, checksum).
//! - [`jwt`] and [`jwks`]: a bearer token as a client sends it, and a key set as an OIDC
//!   issuer serves it.
//! - [`search_query`]: a user's search query, built into a full-text query and run.
//!
//! `fuzz/` runs them under libFuzzer (`cargo fuzz run TARGET`; docs/design.md, "Fuzzing");
//! `tests/fuzz_smoke.rs` runs each over seeds and seeded mutations in every test run.

use std::sync::OnceLock;

use crate::command::{Command, Nexus};
use crate::store::codec;

/// A log entry, a command and a peer message, decoded.
pub fn command_decoder(data: &[u8]) {
    let _ = codec::decode::<crate::cluster::types::Entry<Nexus>>(data);
    if let Ok(command) = codec::decode::<Command>(data) {
        // What the proposer and the audit log compute from a decoded command.
        let _ = command.approx_size();
        let _ = command.op.resource(&command.tenant);
        let _ = command.to_string();
    }
    let _ = <nexus_proto::raft::v1::RaftMessage as prost::Message>::decode(data);
}

/// A snapshot file, read through as an install reads it before changing anything.
pub fn snapshot_reader(data: &[u8]) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "nexus-fuzz-snapshot-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    if std::fs::write(&path, data).is_ok() {
        let _ = crate::cluster::snapshot::verify_file(&path, crate::store::SM_FAMILIES);
    }
    let _ = std::fs::remove_file(&path);
}

/// A bearer token: what the authenticator reads of it before and while verifying it.
pub fn jwt(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::auth::oidc::looks_like_jwt(token);
    let _ = crate::auth::oidc::unverified_issuer(token);
    if let Ok(header) = jsonwebtoken::decode_header(token) {
        let _ = header.kid;
    }
    // Verification with a key: the signature fails, but the parts are decoded first.
    static KEY: OnceLock<jsonwebtoken::DecodingKey> = OnceLock::new();
    let key = KEY.get_or_init(|| jsonwebtoken::DecodingKey::from_secret(b"fuzz"));
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let _ = jsonwebtoken::decode::<serde_json::Value>(token, key, &validation);
}

/// A JWKS document, as an issuer's `jwks_uri` serves it.
pub fn jwks(data: &[u8]) {
    if let Ok(set) = serde_json::from_slice::<jsonwebtoken::jwk::JwkSet>(data) {
        use jsonwebtoken::Algorithm as A;
        let _ =
            crate::auth::oidc::signing_keys("https://fuzz.example", &[A::RS256, A::ES256], &set);
    }
}

/// A user's search query: built as the full-text search builds it, and run on an index.
pub fn search_query(data: &[u8]) {
    use tantivy::schema::{Schema, TEXT};
    struct Searchable {
        index: tantivy::Index,
        body: tantivy::schema::Field,
        reader: tantivy::IndexReader,
    }
    static INDEX: OnceLock<Option<Searchable>> = OnceLock::new();
    let Some(s) = INDEX.get_or_init(|| {
        let mut b = Schema::builder();
        let body = b.add_text_field("body", TEXT);
        let index = tantivy::Index::create_in_ram(b.build());
        let mut writer: tantivy::IndexWriter = index.writer_with_num_threads(1, 15_000_000).ok()?;
        for text in [
            "the launch was postponed",
            "a deadline on friday",
            "naïve café ☕",
        ] {
            writer.add_document(tantivy::doc!(body => text)).ok()?;
        }
        writer.commit().ok()?;
        let reader = index.reader().ok()?;
        Some(Searchable {
            index,
            body,
            reader,
        })
    }) else {
        return;
    };
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut tokenizer) = s.index.tokenizer_for_field(s.body) else {
        return;
    };
    if let Ok(crate::search::query::TextQuery { query, .. }) =
        crate::search::query::build(text, s.body, &mut tokenizer)
    {
        let _ = s.reader.searcher().search(
            &query,
            &tantivy::collector::TopDocs::with_limit(10).order_by_score(),
        );
    }
}

/// A fuzz target: arbitrary bytes in, nothing out.
pub type Target = fn(&[u8]);

/// Every target, by name (the names of `fuzz/fuzz_targets/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("command_decoder", command_decoder),
    ("snapshot_reader", snapshot_reader),
    ("jwt", jwt),
    ("jwks", jwks),
    ("search_query", search_query),
];

/// Valid inputs of each target, for the fuzzers' corpora and the smoke test's mutations.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    use crate::command::Op;
    use crate::memory::kv::KvOp;
    match target {
        "command_decoder" => {
            let put = Command {
                tenant: "acme".into(),
                op: Op::Kv(KvOp::Delete {
                    namespace: "notes".into(),
                    key: "k".into(),
                    expected_version: Some(3),
                    now_ms: 1,
                }),
            };
            let audited = Command {
                tenant: "acme".into(),
                op: Op::Audited {
                    context: crate::audit::AuditContext {
                        request_id: "r1".into(),
                        principal: "sa:bot".into(),
                        tenant: "acme".into(),
                        action: "memory.delete".into(),
                        at_ms: 1,
                    },
                    op: Box::new(put.op.clone()),
                },
            };
            let trim = Command {
                tenant: String::new(),
                op: Op::AuditTrim(crate::audit::AuditTrimOp {
                    incarnation: 0,
                    through_seq: 9,
                }),
            };
            let message = nexus_proto::raft::v1::RaftMessage {
                payload: codec::encode(&put),
                group: 0,
            };
            vec![
                codec::encode(&put),
                codec::encode(&audited),
                codec::encode(&trim),
                prost::Message::encode_to_vec(&message),
            ]
        }
        "snapshot_reader" => {
            let (magic, meta) = (b"NXSNAP01", codec::encode(&crate::cluster::types::SnapshotMeta::default()));
            let mut file = magic.to_vec();
            file.extend_from_slice(&(meta.len() as u32).to_be_bytes());
            file.extend_from_slice(&meta);
            for (family, key, value) in [(1u8, &b"k1"[..], &b"v1"[..]), (2, b"k2", b"")] {
                file.push(family);
                file.extend_from_slice(&(key.len() as u32).to_be_bytes());
                file.extend_from_slice(key);
                file.extend_from_slice(&(value.len() as u32).to_be_bytes());
                file.extend_from_slice(value);
            }
            file.push(0);
            let crc = crc32fast::hash(&file);
            file.extend_from_slice(&crc.to_be_bytes());
            vec![file]
        }
        "jwt" => vec![
            // {"alg":"HS256","kid":"k1"} . {"iss":"https://id.example","sub":"u","exp":1} . sig
            b"eyJhbGciOiJIUzI1NiIsImtpZCI6ImsxIn0.eyJpc3MiOiJodHRwczovL2lkLmV4YW1wbGUiLCJzdWIiOiJ1IiwiZXhwIjoxfQ.c2ln".to_vec(),
            b"nxk_0123456789abcdef_secret".to_vec(),
        ],
        "jwks" => vec![br#"{"keys":[{"kty":"RSA","kid":"k1","use":"sig","alg":"RS256","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"},{"kty":"EC","kid":"k2","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#.to_vec()],
        "search_query" => vec![
            b"launch postponed".to_vec(),
            br#""a deadline" -friday +launch"#.to_vec(),
            // An excluded phrase that matches nothing (tantivy debug-asserted on it).
            br#""a deadline" -"friday launch""#.to_vec(),
            "café ☕ \"naïve".as_bytes().to_vec(),
        ],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: the same mutations every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// One mutation, as libFuzzer's simplest ones: flip, set, insert, delete, splice a
    /// boundary value, truncate.
    fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
        let at = rng.below(input.len() + 1);
        let last = at.min(input.len().saturating_sub(1));
        match rng.below(6) {
            0 if !input.is_empty() => input[last] ^= 1 << rng.below(8),
            1 if !input.is_empty() => input[last] = rng.next() as u8,
            2 => input.insert(at, rng.next() as u8),
            3 if !input.is_empty() => {
                input.remove(last);
            }
            4 => {
                let v: [u8; 4] =
                    [[0xFF; 4], [0; 4], [0x7F, 0xFF, 0xFF, 0xFF], [0, 0, 0, 1]][rng.below(4)];
                let end = (at + 4).min(input.len());
                input.splice(at..end, v);
            }
            _ => input.truncate(at),
        }
    }

    /// Every target over its seeds, 400 mutants of them and random bytes: none panics.
    /// (A crash here is reproduced by `cargo fuzz run TARGET` on the printed input.)
    #[test]
    fn every_target_survives_mutated_input() {
        for (name, target) in TARGETS {
            let seeds = seeds(name);
            assert!(!seeds.is_empty(), "{name} has seeds");
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ name.len() as u64);
            for seed in &seeds {
                target(seed);
            }
            for i in 0..400 {
                let mut input = if i % 10 == 9 {
                    (0..rng.below(256)).map(|_| rng.next() as u8).collect()
                } else {
                    seeds[rng.below(seeds.len())].clone()
                };
                for _ in 0..1 + rng.below(8) {
                    mutate(&mut rng, &mut input);
                }
                let result = std::panic::catch_unwind(|| target(&input));
                assert!(result.is_ok(), "{name} panicked on {input:?}");
            }
        }
    }

    #[test]
    fn the_seeds_are_what_they_claim() {
        let commands = seeds("command_decoder");
        assert!(codec::decode::<Command>(&commands[0]).is_ok());
        let snapshot = &seeds("snapshot_reader")[0];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, snapshot).unwrap();
        let (_, records) =
            crate::cluster::snapshot::verify_file(&path, crate::store::SM_FAMILIES).unwrap();
        assert_eq!(records, 2);
        let jwt = std::str::from_utf8(&seeds("jwt")[0]).unwrap().to_string();
        assert_eq!(
            crate::auth::oidc::unverified_issuer(&jwt).as_deref(),
            Some("https://id.example")
        );
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&seeds("jwks")[0]).unwrap();
        use jsonwebtoken::Algorithm as A;
        assert_eq!(
            crate::auth::oidc::signing_keys("i", &[A::RS256, A::ES256], &set).len(),
            2
        );
    }
}
