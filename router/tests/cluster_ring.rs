//! Hash ring: stability, balance and how many keys move when workers come and go.

use spindle_router::cluster::HashRing;

fn nodes(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("http://10.0.0.{}:8081", i + 1))
        .collect()
}

fn keys() -> Vec<String> {
    (0..20_000).map(|i| format!("conv:{i}")).collect()
}

#[test]
fn same_members_same_owner_regardless_of_order() {
    let a = HashRing::new(nodes(5), 160);
    let mut rev = nodes(5);
    rev.reverse();
    let b = HashRing::new(rev, 160);
    for k in keys().iter().take(2000) {
        assert_eq!(a.get(k), b.get(k));
        let c = a.candidates(k);
        assert_eq!(c.len(), 5, "every worker is a candidate once");
        assert_eq!(c[0], a.get(k).unwrap());
    }
}

#[test]
fn load_is_balanced_with_virtual_nodes() {
    let ring = HashRing::new(nodes(4), 160);
    let keys = keys();
    let mut counts = std::collections::HashMap::new();
    for k in &keys {
        *counts.entry(ring.get(k).unwrap()).or_insert(0usize) += 1;
    }
    for (n, c) in counts {
        let share = c as f64 / keys.len() as f64;
        assert!((0.17..0.33).contains(&share), "{n} owns {share:.3}");
    }
}

#[test]
fn join_moves_about_one_nth_of_keys_all_to_the_new_worker() {
    let before = HashRing::new(nodes(4), 160);
    let after = HashRing::new(nodes(5), 160);
    let new = nodes(5).pop().unwrap();
    let keys = keys();
    let mut moved = 0;
    for k in &keys {
        let (a, b) = (before.get(k).unwrap(), after.get(k).unwrap());
        if a != b {
            moved += 1;
            assert_eq!(b, new, "a key moved between two old workers");
        }
    }
    let frac = moved as f64 / keys.len() as f64;
    println!("join 4→5: {frac:.3} of keys moved (ideal 0.200)");
    assert!((0.13..0.27).contains(&frac), "moved {frac}");
}

#[test]
fn leave_moves_only_the_leavers_keys() {
    let all = nodes(5);
    let before = HashRing::new(all.clone(), 160);
    let gone = all[2].clone();
    let after = HashRing::new(all.into_iter().filter(|n| *n != gone), 160);
    let keys = keys();
    let mut moved = 0;
    for k in &keys {
        let (a, b) = (before.get(k).unwrap(), after.get(k).unwrap());
        if a != b {
            moved += 1;
            assert_eq!(a, gone, "a key of a staying worker moved");
        } else {
            assert_ne!(a, gone);
        }
    }
    let frac = moved as f64 / keys.len() as f64;
    println!("leave 5→4: {frac:.3} of keys moved (ideal 0.200)");
    assert!((0.13..0.27).contains(&frac), "moved {frac}");
}

#[test]
fn empty_ring_has_no_owner() {
    let ring = HashRing::new(Vec::new(), 160);
    assert!(ring.is_empty());
    assert_eq!(ring.get("k"), None);
    assert!(ring.candidates("k").is_empty());
}
