//! The last value read for each dependency, and which files depend on what. Pure: no I/O.

use std::collections::BTreeSet;
use std::collections::hash_map::Entry;

// foldhash, seeded per process: several times cheaper than SipHash for the short paths a
// render looks up (1,000 lookups per change for a file of 1,000 keys), and still resistant to
// chosen collisions (znode names come from ZooKeeper, which others may write).
use foldhash::HashMap;

use crate::config::TargetId;
use crate::model::{Dep, DepKey, DepKind, Update, Value};
use crate::render::Snapshot;

/// Dependency values and the reverse index dependency -> files.
///
/// `Clone` only so that the core can share it with renders through an `Arc` and still
/// mutate it in place (`Arc::make_mut`); it is never actually cloned.
#[derive(Debug, Default, Clone)]
pub struct Store {
    values: HashMap<Dep, Value>,
    dependents: HashMap<Dep, Users>,
}

/// The files that depend on one dependency. Almost always one, kept without an allocation: a
/// `BTreeSet` per dependency was a 112-byte node each, 1.2 MiB at 10,500 dependencies.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Users {
    One(TargetId),
    /// Two or more, sorted, without repeats.
    Many(Vec<TargetId>),
}

impl Users {
    fn insert(&mut self, id: TargetId) {
        match self {
            Users::One(one) if *one == id => {}
            Users::One(one) => *self = Users::Many(if *one < id { vec![*one, id] } else { vec![id, *one] }),
            Users::Many(ids) => {
                if let Err(at) = ids.binary_search(&id) {
                    ids.insert(at, id);
                }
            }
        }
    }

    /// Removes `id`; true when nobody is left.
    fn remove(&mut self, id: TargetId) -> bool {
        match self {
            Users::One(one) => *one == id,
            Users::Many(ids) => {
                if let Ok(at) = ids.binary_search(&id) {
                    ids.remove(at);
                }
                if let [one] = ids[..] {
                    *self = Users::One(one);
                }
                false
            }
        }
    }

    /// In ascending order.
    fn ids(&self) -> &[TargetId] {
        match self {
            Users::One(one) => std::slice::from_ref(one),
            Users::Many(ids) => ids,
        }
    }
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a value; returns the files to re-render, empty when nothing changed (the same
    /// value read again, e.g. after a resync or a new session) or nobody depends on it.
    pub fn apply(&mut self, update: Update) -> Vec<TargetId> {
        let Some(targets) = self.dependents.get(&update.dep) else {
            // Nobody depends on it any more (an unwatch crossed this read): drop it.
            return Vec::new();
        };
        if self.values.get(&update.dep) == Some(&update.value) {
            return Vec::new();
        }
        let targets = targets.ids().to_vec();
        self.values.insert(update.dep, update.value);
        targets
    }

    /// Sets the dependencies of `target` to `deps`. Returns (dependencies nobody watched
    /// before, dependencies nobody needs any more), for the source.
    pub fn set_deps(
        &mut self,
        target: TargetId,
        old: &BTreeSet<Dep>,
        new: &BTreeSet<Dep>,
    ) -> (Vec<Dep>, Vec<Dep>) {
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for dep in new.difference(old) {
            match self.dependents.entry(dep.clone()) {
                Entry::Vacant(entry) => {
                    entry.insert(Users::One(target));
                    added.push(dep.clone());
                }
                Entry::Occupied(mut entry) => entry.get_mut().insert(target),
            }
        }
        for dep in old.difference(new) {
            if let Some(users) = self.dependents.get_mut(dep)
                && users.remove(target)
            {
                self.dependents.remove(dep);
                self.values.remove(dep);
                removed.push(dep.clone());
            }
        }
        (added, removed)
    }

    /// Takes the values of `old` (nobody depends on them yet): after a config reload the new
    /// files render at once from what was already read, without asking ZooKeeper again.
    pub fn adopt_values(&mut self, old: Store) {
        self.values = old.values;
    }

    /// Drops values nobody depends on (after the first cycle of an adopted store).
    pub fn forget_unused(&mut self) {
        let dependents = &self.dependents;
        self.values.retain(|dep, _| dependents.contains_key(dep));
    }

    /// True when every one of `deps` has been read at least once.
    pub fn all_known(&self, deps: &BTreeSet<Dep>) -> bool {
        deps.iter().all(|d| self.values.contains_key(d))
    }

    /// Every dependency anyone needs.
    pub fn deps(&self) -> impl Iterator<Item = &Dep> {
        self.dependents.keys()
    }
}

impl Snapshot for Store {
    fn entry(&self, dep: &Dep) -> Option<(&Dep, &Value)> {
        self.values.get_key_value(dep)
    }

    fn entry_at(&self, znode: &str, kind: DepKind) -> Option<(&Dep, &Value)> {
        self.values.get_key_value(&(znode, kind) as &dyn DepKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ZnodePath;

    fn dep(p: &str) -> Dep {
        Dep::data(ZnodePath::parse(p).unwrap())
    }
    fn data(s: &str, v: i32) -> Value {
        Value::Data { data: s.as_bytes().to_vec(), mzxid: v as i64, version: v }
    }

    #[test]
    fn same_value_twice_touches_nothing() {
        let mut s = Store::new();
        s.set_deps(0, &BTreeSet::new(), &[dep("/a")].into());
        assert_eq!(s.apply(Update { dep: dep("/a"), value: data("x", 1) }), vec![0]);
        assert!(s.apply(Update { dep: dep("/a"), value: data("x", 1) }).is_empty());
        assert_eq!(s.apply(Update { dep: dep("/a"), value: Value::Missing }), vec![0]);
    }

    #[test]
    fn shared_dep_is_watched_once_and_released_by_last_user() {
        let mut s = Store::new();
        let a: BTreeSet<Dep> = [dep("/a")].into();
        assert_eq!(s.set_deps(0, &BTreeSet::new(), &a).0, vec![dep("/a")]);
        assert!(s.set_deps(1, &BTreeSet::new(), &a).0.is_empty());
        assert!(s.set_deps(0, &a, &BTreeSet::new()).1.is_empty());
        assert_eq!(s.set_deps(1, &a, &BTreeSet::new()).1, vec![dep("/a")]);
    }

    #[test]
    fn users_stay_sorted_without_repeats_and_shrink_back_to_one() {
        let mut u = Users::One(5);
        u.insert(5);
        assert_eq!(u, Users::One(5));
        u.insert(2);
        u.insert(9);
        u.insert(2);
        assert_eq!(u.ids(), [2, 5, 9]);
        assert!(!u.remove(7), "not a user: nothing changes");
        assert!(!u.remove(5));
        assert!(!u.remove(2));
        assert_eq!(u, Users::One(9));
        assert!(!u.remove(2));
        assert!(u.remove(9), "the last user");
    }

    #[test]
    fn a_change_re_renders_every_user_in_order() {
        let mut s = Store::new();
        let a: BTreeSet<Dep> = [dep("/a")].into();
        for target in [3, 1, 2] {
            s.set_deps(target, &BTreeSet::new(), &a);
        }
        assert_eq!(s.apply(Update { dep: dep("/a"), value: data("x", 1) }), vec![1, 2, 3]);
        s.set_deps(2, &a, &BTreeSet::new());
        assert_eq!(s.apply(Update { dep: dep("/a"), value: data("y", 2) }), vec![1, 3]);
    }

    #[test]
    fn update_for_unwatched_dep_is_dropped() {
        let mut s = Store::new();
        assert!(s.apply(Update { dep: dep("/a"), value: data("x", 1) }).is_empty());
        assert!(!s.all_known(&[dep("/a")].into()));
    }
}
