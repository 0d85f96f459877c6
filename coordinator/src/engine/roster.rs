//! Who joined in which role and who was slashed, readable without the state lock: the
//! signed-request extractor refuses a key that may not use a route before it reads a
//! byte of the body. A copy of the state's, updated as entries are sequenced and
//! copied whole whenever the state is rebuilt; the engine checks again under the lock,
//! so the copy only decides how early a stranger is turned away.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

/// The participants and the slashed keys.
#[derive(Debug, Default)]
pub(super) struct Roster {
    participants: BTreeMap<PublicKey, Role>,
    slashed: BTreeSet<PublicKey>,
}

impl Roster {
    pub(super) fn of(state: &State) -> Roster {
        Roster {
            participants: state.participants.clone(),
            slashed: state.slashed.clone(),
        }
    }
}

impl Coordinator {
    /// Whether `key` may act as `role`, as far as the roster knows: the check the
    /// signed-request extractor makes before reading a body (403).
    pub fn may_act(&self, key: &PublicKey, role: Role) -> Result<(), Error> {
        let roster = self
            .roster
            .read()
            .map_err(|_| Error::Internal("the roster's lock is poisoned".into()))?;
        rules::standing(&roster.participants, &roster.slashed, key, role)
    }

    /// Copies the state's participants and slashes after `entries` were applied.
    pub(super) fn roster_after(&self, state: &State, entries: &[Entry]) {
        let keys: Vec<PublicKey> = entries
            .iter()
            .filter_map(|e| match e.body() {
                EntryBody::ParticipantJoined { key, .. } | EntryBody::Slashed { key, .. } => {
                    Some(*key)
                }
                _ => None,
            })
            .collect();
        if keys.is_empty() {
            return;
        }
        let Ok(mut roster) = self.roster.write() else {
            return;
        };
        for key in keys {
            match state.participants.get(&key) {
                Some(role) => roster.participants.insert(key, *role),
                None => roster.participants.remove(&key),
            };
            if state.slashed.contains(&key) {
                roster.slashed.insert(key);
            } else {
                roster.slashed.remove(&key);
            }
        }
    }

    /// Replaces the roster with the state's (after a replay or a rebuild).
    pub(super) fn publish_roster(&self, state: &State) {
        if let Ok(mut roster) = self.roster.write() {
            *roster = Roster::of(state);
        }
    }
}
