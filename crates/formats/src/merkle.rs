//! Merkle trees with RFC 6962 hashing (as restated in RFC 9162 §2.1):
//! tree heads, inclusion proofs and consistency proofs.
//!
//! A leaf's hash is `SHA-256(0x00 || data)`, an interior node's
//! `SHA-256(0x01 || left || right)`, and the tree over `n` leaves splits at
//! the largest power of two below `n`. Only *perfect* subtrees are ever
//! stored: the node at `(level, index)` covers leaves
//! `index·2^level .. (index+1)·2^level`. Every other hash a proof needs is
//! computed from those, so a log that stores its perfect subtrees can answer
//! any proof with at most `2·log2(n)` stored hashes.
//!
//! Proof generation takes the stored nodes through a lookup function; the
//! same functions list the nodes they need ([`inclusion_nodes`],
//! [`consistency_nodes`]) so that a caller can fetch them all at once.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

/// A SHA-256 hash: a leaf, a node or a tree head.
pub type Hash = [u8; 32];

/// A stored node's position: its level (0 for leaves) and its index at that level.
pub type NodeId = (u8, u64);

/// The hash of a leaf: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(data);
    hasher.finalize().into()
}

/// The hash of an interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The head of the empty tree: the SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The tree head over `leaves` (already leaf-hashed), in linear time.
pub fn root(leaves: &[Hash]) -> Hash {
    let mut frontier = Frontier::default();
    for leaf in leaves {
        frontier.push(*leaf, |_, _| {});
    }
    frontier.root()
}

/// The right edge of a growing tree: the heads of its perfect subtrees,
/// largest (leftmost) first. Enough to append leaves and compute the tree
/// head without reading anything else.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The perfect subtrees that make up a tree of `size` leaves, leftmost first.
    pub fn node_ids(size: u64) -> Vec<NodeId> {
        let mut ids = Vec::new();
        let mut start = 0u64;
        for level in (0..64u8).rev() {
            if size & (1 << level) != 0 {
                ids.push((level, start >> level));
                start += 1 << level;
            }
        }
        ids
    }

    /// The frontier of a tree of `size` leaves from the hashes of
    /// [`Frontier::node_ids`]`(size)`, in that order.
    pub fn from_nodes(size: u64, nodes: Vec<Hash>) -> Option<Frontier> {
        (nodes.len() == size.count_ones() as usize).then_some(Frontier { size, nodes })
    }

    /// How many leaves the tree has.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The perfect subtrees' hashes, in the order of [`Frontier::node_ids`].
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// Appends a leaf hash, calling `stored(id, hash)` for the leaf and for
    /// every perfect subtree it completes, in that order.
    pub fn push(&mut self, leaf: Hash, mut stored: impl FnMut(NodeId, Hash)) {
        let (mut level, mut index) = (0u8, self.size);
        let mut hash = leaf;
        stored((level, index), hash);
        while index & 1 == 1 {
            let left = self.nodes.pop().expect("a right child has a left sibling on the frontier");
            hash = node_hash(&left, &hash);
            level += 1;
            index >>= 1;
            stored((level, index), hash);
        }
        self.nodes.push(hash);
        self.size += 1;
    }

    /// The tree head.
    pub fn root(&self) -> Hash {
        let mut nodes = self.nodes.iter().rev();
        let Some(last) = nodes.next() else { return empty_root() };
        nodes.fold(*last, |right, left| node_hash(left, &right))
    }
}

/// Why a proof could not be made or does not hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The leaf or tree size asked about is not in the tree.
    #[error("{0}")]
    OutOfRange(String),
    /// A node the proof needs is not stored.
    #[error("the node at level {0}, index {1} is missing from the stored tree")]
    MissingNode(u8, u64),
    /// The proof does not lead to the expected tree head.
    #[error("{0}")]
    Mismatch(&'static str),
}

fn largest_power_of_two_below(n: u64) -> u64 {
    debug_assert!(n > 1);
    1 << (63 - (n - 1).leading_zeros())
}

/// The head of leaves `start..end` (`start` aligned as in the RFC's
/// recursion), from stored perfect subtrees.
fn subtree<F: FnMut(NodeId) -> Option<Hash>>(start: u64, end: u64, node: &mut F) -> Result<Hash, ProofError> {
    let n = end - start;
    if n.is_power_of_two() {
        let level = n.trailing_zeros() as u8;
        let id = (level, start >> level);
        return node(id).ok_or(ProofError::MissingNode(id.0, id.1));
    }
    let k = largest_power_of_two_below(n);
    Ok(node_hash(&subtree(start, start + k, node)?, &subtree(start + k, end, node)?))
}

/// The inclusion proof (RFC 9162 §2.1.3.1 `PATH`) of leaf `index` (from 0)
/// in the tree of `size` leaves.
pub fn inclusion_proof<F>(index: u64, size: u64, mut node: F) -> Result<Vec<Hash>, ProofError>
where
    F: FnMut(NodeId) -> Option<Hash>,
{
    if index >= size {
        return Err(ProofError::OutOfRange(format!("leaf {index} is not in a tree of {size} leaves")));
    }
    let mut proof = Vec::new();
    let (mut start, mut end) = (0u64, size);
    // Walk down from the root, collecting siblings; the RFC lists them leaf first.
    while end - start > 1 {
        let k = largest_power_of_two_below(end - start);
        if index < start + k {
            proof.push(subtree(start + k, end, &mut node)?);
            end = start + k;
        } else {
            proof.push(subtree(start, start + k, &mut node)?);
            start += k;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// The consistency proof (RFC 9162 §2.1.4.1 `PROOF`) that the tree of
/// `old_size` leaves is a prefix of the tree of `new_size` leaves.
pub fn consistency_proof<F>(old_size: u64, new_size: u64, mut node: F) -> Result<Vec<Hash>, ProofError>
where
    F: FnMut(NodeId) -> Option<Hash>,
{
    if old_size > new_size {
        return Err(ProofError::OutOfRange(format!(
            "a tree of {old_size} leaves cannot be a prefix of one of {new_size}"
        )));
    }
    if old_size == 0 || old_size == new_size {
        return Ok(Vec::new());
    }
    let mut proof = Vec::new();
    let (mut m, mut start, mut end) = (old_size, 0u64, new_size);
    let mut complete = true;
    loop {
        let n = end - start;
        if m == n {
            if !complete {
                proof.push(subtree(start, end, &mut node)?);
            }
            break;
        }
        let k = largest_power_of_two_below(n);
        if m <= k {
            proof.push(subtree(start + k, end, &mut node)?);
            end = start + k;
        } else {
            proof.push(subtree(start, start + k, &mut node)?);
            m -= k;
            start += k;
            complete = false;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// The stored nodes [`inclusion_proof`] reads for leaf `index` of `size`.
pub fn inclusion_nodes(index: u64, size: u64) -> Vec<NodeId> {
    let mut needed = BTreeSet::new();
    let _ = inclusion_proof(index, size, |id| {
        needed.insert(id);
        Some([0; 32])
    });
    needed.into_iter().collect()
}

/// The stored nodes [`consistency_proof`] reads between the two sizes.
pub fn consistency_nodes(old_size: u64, new_size: u64) -> Vec<NodeId> {
    let mut needed = BTreeSet::new();
    let _ = consistency_proof(old_size, new_size, |id| {
        needed.insert(id);
        Some([0; 32])
    });
    needed.into_iter().collect()
}

/// The stored nodes a tree head of `size` leaves is computed from.
pub fn root_nodes(size: u64) -> Vec<NodeId> {
    Frontier::node_ids(size)
}

/// The tree head of `size` leaves from stored nodes.
pub fn root_from_nodes<F>(size: u64, mut node: F) -> Result<Hash, ProofError>
where
    F: FnMut(NodeId) -> Option<Hash>,
{
    if size == 0 {
        return Ok(empty_root());
    }
    subtree(0, size, &mut node)
}

/// Checks an inclusion proof (RFC 9162 §2.1.3.2): that `leaf` is leaf
/// `index` of the tree of `size` leaves whose head is `root`.
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::OutOfRange(format!("leaf {index} is not in a tree of {size} leaves")));
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(ProofError::Mismatch("the inclusion proof is longer than the tree is deep"));
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::Mismatch("the inclusion proof is shorter than the tree is deep"));
    }
    if &r != root {
        return Err(ProofError::Mismatch("the inclusion proof does not lead to the tree head"));
    }
    Ok(())
}

/// Checks a consistency proof (RFC 9162 §2.1.4.2): that the tree of
/// `old_size` leaves with head `old_root` is a prefix of the tree of
/// `new_size` leaves with head `new_root`.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::OutOfRange(format!(
            "the tree shrank from {old_size} to {new_size} leaves: history was rewritten"
        )));
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::Mismatch("a proof between equal sizes must be empty"));
        }
        if old_root != new_root {
            return Err(ProofError::Mismatch("two different tree heads for the same size"));
        }
        return Ok(());
    }
    if old_size == 0 {
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::Mismatch("a proof from the empty tree must be empty"))
        };
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::Mismatch("the consistency proof is empty"));
    };
    let (mut f, mut s) = (old_size - 1, new_size - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return Err(ProofError::Mismatch("the consistency proof is longer than the tree is deep"));
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::Mismatch("the consistency proof is shorter than the tree is deep"));
    }
    if &fr != old_root {
        return Err(ProofError::Mismatch("the consistency proof does not lead to the old tree head"));
    }
    if &sr != new_root {
        return Err(ProofError::Mismatch("the consistency proof does not lead to the new tree head"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Every stored node of a tree of `n` leaves `[i as u8]`, and its leaves.
    fn tree(n: u64) -> (HashMap<NodeId, Hash>, Vec<Hash>) {
        let mut nodes = HashMap::new();
        let mut frontier = Frontier::default();
        let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&[i as u8])).collect();
        for leaf in &leaves {
            frontier.push(*leaf, |id, h| {
                nodes.insert(id, h);
            });
        }
        assert_eq!(frontier.root(), root(&leaves));
        (nodes, leaves)
    }

    /// RFC 6962's MTH, written straight from its definition.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = largest_power_of_two_below(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn the_incremental_head_equals_the_recursive_definition() {
        for n in 0..70u64 {
            let (nodes, leaves) = tree(n);
            assert_eq!(root(&leaves), mth(&leaves), "size {n}");
            assert_eq!(root_from_nodes(n, |id| nodes.get(&id).copied()).unwrap(), mth(&leaves));
            let frontier = Frontier::from_nodes(n, Frontier::node_ids(n).iter().map(|id| nodes[id]).collect()).unwrap();
            assert_eq!(frontier.root(), mth(&leaves));
        }
    }

    #[test]
    fn every_inclusion_proof_verifies_and_a_wrong_leaf_does_not() {
        for n in 1..40u64 {
            let (nodes, leaves) = tree(n);
            let head = root(&leaves);
            for i in 0..n {
                let proof = inclusion_proof(i, n, |id| nodes.get(&id).copied()).unwrap();
                verify_inclusion(&leaves[i as usize], i, n, &proof, &head).unwrap();
                assert!(verify_inclusion(&leaf_hash(b"forged"), i, n, &proof, &head).is_err());
                if n > 1 {
                    assert!(verify_inclusion(&leaves[i as usize], (i + 1) % n, n, &proof, &head).is_err());
                }
                assert!(inclusion_nodes(i, n).len() <= 2 * 64);
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_a_rewritten_history_does_not() {
        for n in 1..40u64 {
            let (nodes, leaves) = tree(n);
            for m in 0..=n {
                let proof = consistency_proof(m, n, |id| nodes.get(&id).copied()).unwrap();
                let old = root(&leaves[..m as usize]);
                verify_consistency(m, n, &old, &root(&leaves), &proof).unwrap();
                if m > 0 && m < n {
                    let mut rewritten = leaves[..m as usize].to_vec();
                    rewritten[0] = leaf_hash(b"rewritten");
                    assert!(verify_consistency(m, n, &root(&rewritten), &root(&leaves), &proof).is_err());
                }
            }
        }
    }
}
