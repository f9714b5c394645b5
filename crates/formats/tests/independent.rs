//! The ledger's formats checked against implementations that are not ours:
//! the published RFC 6962 test vectors (from Certificate Transparency's
//! reference test data), and the `tlog_tiles` and `signed_note` crates,
//! which implement Go's `golang.org/x/mod/sumdb/tlog` and `note`.

use std::collections::HashMap;

use custody_formats::checkpoint::{Checkpoint, NoteVerifier};
use custody_formats::keys::{KeyRole, ServiceKey};
use custody_formats::merkle::{self, Frontier, Hash, NodeId};
use signed_note::{Note, StandardVerifier, VerifierList};

fn hex(s: &str) -> Hash {
    let bytes: Vec<u8> = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect();
    bytes.try_into().unwrap()
}

/// The eight leaves of the RFC 6962 reference tree.
fn reference_leaves() -> Vec<Vec<u8>> {
    ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
        .iter()
        .map(|s| (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect())
        .collect()
}

/// A tree built by our frontier: its stored nodes, by our id and by tlog's index.
struct Tree {
    leaves: Vec<Hash>,
    nodes: HashMap<NodeId, Hash>,
    by_tlog_index: HashMap<u64, tlog_tiles::Hash>,
}

impl Tree {
    fn of(leaves: Vec<Hash>) -> Tree {
        let mut frontier = Frontier::default();
        let mut nodes = HashMap::new();
        for leaf in &leaves {
            frontier.push(*leaf, |id, hash| {
                nodes.insert(id, hash);
            });
        }
        let by_tlog_index = nodes
            .iter()
            .map(|(&(level, n), &h)| (tlog_tiles::stored_hash_index(level, n), tlog_tiles::Hash(h)))
            .collect();
        Tree { leaves, nodes, by_tlog_index }
    }

    fn node(&self) -> impl FnMut(NodeId) -> Option<Hash> + '_ {
        |id| self.nodes.get(&id).copied()
    }
}

impl tlog_tiles::HashReader for Tree {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog_tiles::Hash>, tlog_tiles::Error> {
        indexes.iter().map(|i| self.by_tlog_index.get(i).copied().ok_or(tlog_tiles::Error::IndexesNotInTree)).collect()
    }
}

fn ours(proof: &[tlog_tiles::Hash]) -> Vec<Hash> {
    proof.iter().map(|h| h.0).collect()
}

fn theirs(proof: &[Hash]) -> Vec<tlog_tiles::Hash> {
    proof.iter().map(|h| tlog_tiles::Hash(*h)).collect()
}

#[test]
fn tree_heads_and_proofs_match_the_rfc_6962_reference_vectors() {
    let roots = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    let leaves: Vec<Hash> = reference_leaves().iter().map(|l| merkle::leaf_hash(l)).collect();
    for (size, expected) in roots.iter().enumerate() {
        assert_eq!(merkle::root(&leaves[..size]), hex(expected), "tree head of size {size}");
    }
    let tree = Tree::of(leaves.clone());
    let inclusion: [(u64, [&str; 3]); 2] = [
        (
            0,
            [
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            [
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];
    for (index, expected) in inclusion {
        let proof = merkle::inclusion_proof(index, 8, tree.node()).unwrap();
        assert_eq!(proof, expected.map(hex).to_vec(), "inclusion proof of leaf {index} in 8");
    }
    let consistency: [(u64, &[&str]); 3] = [
        (
            1,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
    ];
    for (old, expected) in consistency {
        let proof = merkle::consistency_proof(old, 8, tree.node()).unwrap();
        assert_eq!(proof, expected.iter().map(|h| hex(h)).collect::<Vec<_>>(), "consistency proof from {old} to 8");
    }
}

#[test]
fn our_proofs_verify_with_go_tlog_and_theirs_verify_with_ours() {
    for size in [1u64, 2, 3, 7, 8, 9, 31, 64, 100, 257] {
        let leaves: Vec<Hash> = (0..size).map(|i| merkle::leaf_hash(format!("event {i}").as_bytes())).collect();
        let tree = Tree::of(leaves);
        let head = merkle::root(&tree.leaves);
        assert_eq!(tlog_tiles::tree_hash(size, &tree).unwrap().0, head, "tree head of size {size}");
        for index in (0..size).step_by(((size / 13) as usize).max(1)) {
            let leaf = tree.leaves[index as usize];
            let proof = merkle::inclusion_proof(index, size, tree.node()).unwrap();
            tlog_tiles::check_record(&theirs(&proof), size, tlog_tiles::Hash(head), index, tlog_tiles::Hash(leaf))
                .unwrap_or_else(|e| panic!("tlog refuses our proof of {index} in {size}: {e:?}"));
            let their_proof = tlog_tiles::prove_record(size, index, &tree).unwrap();
            merkle::verify_inclusion(&leaf, index, size, &ours(&their_proof), &head).unwrap();
        }
        for old in (1..=size).step_by(((size / 11) as usize).max(1)) {
            let old_head = merkle::root(&tree.leaves[..old as usize]);
            let proof = merkle::consistency_proof(old, size, tree.node()).unwrap();
            tlog_tiles::check_tree(&theirs(&proof), size, tlog_tiles::Hash(head), old, tlog_tiles::Hash(old_head))
                .unwrap_or_else(|e| panic!("tlog refuses our consistency proof {old} → {size}: {e:?}"));
            let their_proof = tlog_tiles::prove_tree(size, old, &tree).unwrap();
            merkle::verify_consistency(old, size, &old_head, &head, &ours(&their_proof)).unwrap();
        }
    }
}

#[test]
fn a_signed_checkpoint_is_a_valid_c2sp_signed_note_and_tlog_checkpoint() {
    let key = ServiceKey::generate(KeyRole::Ledger);
    let checkpoint =
        Checkpoint { origin: "custody.example.com/ledger".into(), size: 1234, root: merkle::leaf_hash(b"r") };
    let note = checkpoint.sign(&key).unwrap();
    let verifier = NoteVerifier::new(&checkpoint.origin, &key.public()).unwrap();

    let theirs = StandardVerifier::new(&verifier.to_vkey()).expect("signed_note reads our verifier key");
    let parsed = Note::from_bytes(note.as_bytes()).expect("signed_note parses our note");
    let (verified, unverified) = parsed.verify(&VerifierList::new(vec![Box::new(theirs)])).expect("and verifies it");
    assert_eq!((verified.len(), unverified.len()), (1, 0));
    let body = tlog_tiles::Checkpoint::from_bytes(parsed.text()).expect("tlog reads our checkpoint body");
    assert_eq!((body.origin(), body.size(), body.hash().0), ("custody.example.com/ledger", 1234, checkpoint.root));

    // A tampered size breaks the signature for them too.
    let tampered = note.replacen("\n1234\n", "\n1233\n", 1);
    let theirs = StandardVerifier::new(&verifier.to_vkey()).unwrap();
    assert!(Note::from_bytes(tampered.as_bytes()).unwrap().verify(&VerifierList::new(vec![Box::new(theirs)])).is_err());
}

#[test]
fn a_note_signed_by_the_go_compatible_signer_opens_with_our_verifier() {
    let (skey, vkey) = signed_note::generate_key(&mut rand::rngs::OsRng, "custody.example");
    let signer = signed_note::StandardSigner::new(&skey).unwrap();
    let body = Checkpoint { origin: "custody.example".into(), size: 9, root: merkle::leaf_hash(b"x") }.body();
    let mut note = Note::new(body.as_bytes(), &[]).unwrap();
    note.add_sigs(&[&signer]).unwrap();
    let text = String::from_utf8(note.to_bytes()).unwrap();
    let opened = NoteVerifier::parse(&vkey).unwrap().open(&text).unwrap();
    assert_eq!((opened.origin.as_str(), opened.size), ("custody.example", 9));
}

#[test]
fn a_ledger_key_handover_is_a_c2sp_checkpoint_both_keys_signed() {
    let (old, new) = (ServiceKey::generate(KeyRole::Ledger), ServiceKey::generate(KeyRole::Ledger));
    let checkpoint = Checkpoint { origin: "custody.example.com".into(), size: 77, root: merkle::leaf_hash(b"h") };
    let note = custody_formats::checkpoint::Handover::sign(&checkpoint, &old, &new).unwrap();
    let vkey = |key: &ServiceKey| NoteVerifier::new(&checkpoint.origin, &key.public()).unwrap().to_vkey();
    let parsed = Note::from_bytes(note.as_bytes()).expect("signed_note parses the handover");
    let verifiers = VerifierList::new(vec![
        Box::new(StandardVerifier::new(&vkey(&old)).unwrap()),
        Box::new(StandardVerifier::new(&vkey(&new)).unwrap()),
    ]);
    let (verified, unverified) = parsed.verify(&verifiers).expect("both signatures verify");
    assert_eq!((verified.len(), unverified.len()), (2, 0));
    // The keys' lines are extension lines of an ordinary checkpoint.
    let body = tlog_tiles::Checkpoint::from_bytes(parsed.text()).expect("tlog reads the handover's body");
    assert_eq!((body.size(), body.hash().0), (77, checkpoint.root));
    assert_eq!(
        body.extension(),
        format!("custody-ledger-key-from {}\ncustody-ledger-key-to {}\n", vkey(&old), vkey(&new))
    );
}
