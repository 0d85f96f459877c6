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

    /// Copies from `state` the standing of the keys `entries` join or slash.
    fn update(&mut self, state: &State, entries: &[Entry]) {
        for e in entries {
            let (EntryBody::ParticipantJoined { key, .. } | EntryBody::Slashed { key, .. }) =
                e.body()
            else {
                continue;
            };
            match state.participants.get(key) {
                Some(role) => self.participants.insert(*key, *role),
                None => self.participants.remove(key),
            };
            if state.slashed.contains(key) {
                self.slashed.insert(*key);
            } else {
                self.slashed.remove(key);
            }
        }
    }

    fn standing(&self, key: &PublicKey, role: Role) -> Result<(), Error> {
        rules::standing(&self.participants, &self.slashed, key, role)
    }
}

impl Coordinator {
    /// Whether `key` may act as `role`, as far as the roster knows: the check the
    /// signed-request extractor makes before reading a body (403).
    pub fn may_act(&self, key: &PublicKey, role: Role) -> Result<(), Error> {
        self.roster
            .read()
            .map_err(|_| Error::Internal("the roster's lock is poisoned".into()))?
            .standing(key, role)
    }

    /// Copies the state's participants and slashes after `entries` were applied.
    pub(super) fn roster_after(&self, state: &State, entries: &[Entry]) {
        let touches = |e: &Entry| {
            matches!(
                e.body(),
                EntryBody::ParticipantJoined { .. } | EntryBody::Slashed { .. }
            )
        };
        if entries.iter().any(touches)
            && let Ok(mut roster) = self.roster.write()
        {
            roster.update(state, entries);
        }
    }

    /// Replaces the roster with the state's (after a replay or a rebuild).
    pub(super) fn publish_roster(&self, state: &State) {
        if let Ok(mut roster) = self.roster.write() {
            *roster = Roster::of(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    /// The roster follows joins and slashes as they are applied: a key is turned away
    /// before its body once a slash is sequenced, and a join lets it in at once; a
    /// rebuild that lost a slash lifts it again.
    #[test]
    fn the_roster_follows_joins_and_slashes() {
        let sk = SigningKey::from_bytes(&[5; 32]);
        let key = PublicKey::from(&sk);
        let mut state = State::default();
        let mut roster = Roster::of(&state);
        assert!(matches!(
            roster.standing(&key, Role::Worker),
            Err(Error::NotAllowed(_))
        ));

        let join = Entry::signed(api::join_body(key, Role::Worker, "w"), &sk).unwrap();
        state.participants.insert(key, Role::Worker);
        roster.update(&state, std::slice::from_ref(&join));
        assert!(roster.standing(&key, Role::Worker).is_ok());
        assert!(matches!(
            roster.standing(&key, Role::Verifier),
            Err(Error::NotAllowed(_))
        ));

        let slash = Entry::unsigned(EntryBody::Slashed {
            key,
            task: TaskId(1),
            reason: "fraud".into(),
            evidence: None,
        })
        .unwrap();
        state.slashed.insert(key);
        // Entries that touch no key leave the roster as it is.
        roster.update(&state, &[]);
        assert!(roster.standing(&key, Role::Worker).is_ok());
        roster.update(&state, std::slice::from_ref(&slash));
        assert!(matches!(
            roster.standing(&key, Role::Worker),
            Err(Error::NotAllowed(m)) if m.contains("slashed")
        ));
        state.slashed.clear();
        roster.update(&state, std::slice::from_ref(&slash));
        assert!(roster.standing(&key, Role::Worker).is_ok());
    }
}
