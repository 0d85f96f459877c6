//! The shares fold: ownership shares as a pure function of the log's entries.
//!
//! DESIGN.md, "The loop" step 6 and "Ledger" (shares): anyone who replays the log gets
//! the same table. [`SharesFold::apply`] takes the entries in log order and keeps the
//! balances; an auditor runs it over the whole log, a coordinator runs it to write
//! `SharesEpoch` entries, and both must agree byte for byte.
//!
//! # Rules
//!
//! 1. **Order.** Entries are applied in log order, starting at index 0 with no gaps
//!    ([`FoldError::OutOfOrder`]). Entry 0 must be `Genesis`, and no other entry may
//!    be ([`FoldError::MissingGenesis`], [`FoldError::GenesisNotFirst`]).
//! 2. **Rounds.** A round is opened once by `RoundOpened` and closed once by
//!    `RoundClosed`; opening it again, or closing a round that is not open, is an
//!    error.
//! 3. **Credits are pending until their round closes.** A `Credit` must name a round
//!    that is open ([`FoldError::RoundNotOpen`]); a credit for a round already closed
//!    is [`FoldError::RoundAlreadyClosed`]. `CreditKind::Verification` counts exactly
//!    like `CreditKind::Work`. When the round's `RoundClosed` arrives, its pending
//!    credits become final balances.
//! 4. **Slashing forfeits everything.** `Slashed` removes every credit of the key,
//!    pending and final, and marks the key: a later credit to it is
//!    [`FoldError::CreditToSlashed`] (an error rather than a silent skip, so an
//!    auditor flags a coordinator that pays a known fraudster). Slashing a key twice
//!    is allowed (two fraud proofs against one key are plausible) and changes nothing.
//! 5. **Accounts.** The final balances hold only keys with a positive balance: a
//!    slashed key disappears, and zero-amount credits create no account.
//! 6. **Epochs commit the balances.** A `SharesEpoch` must name a round already
//!    closed, use an epoch number above every earlier one, and commit exactly the
//!    [`SumTree`] root, total and account count of the final balances at that point;
//!    otherwise [`FoldError::EpochMismatch`]. [`SharesFold::expected_epoch`] gives the
//!    body a coordinator writes.
//! 7. **Arithmetic is checked.** Any sum passing `u64::MAX` is [`FoldError::Overflow`].
//! 8. **Not opening forfeits unvested credit.** A `TaskEnded { reason: not_opened }`
//!    removes every pending credit of the task's worker (named by its `TaskAssigned`),
//!    as a slash does, but keeps its final balance and does not mark it: a worker that
//!    commits work and then declines to open it (having seen its challenges) loses
//!    whatever it earned in the rounds still open. Credits vest when their round
//!    closes.
//!
//! The fold does not cross-check credits against verdicts (that a `Work` credit
//! follows an accepted `Verdict` for its task, and that its amount matches the job
//! spec's FLOPs): those checks need the job spec's cost model, which lives in the
//! prover crate, so the auditor does them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use lupus_ledger::entry::{Amount, EndReason, Entry, EntryBody, Epoch, PublicKey, Round, TaskId};
use lupus_ledger::sumtree::{SumTree, SumTreeError};

/// Why an entry cannot be folded. Each names the entry's log index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FoldError {
    /// Entries must be applied in order without gaps.
    #[error("entry {got} applied out of order: the fold expects entry {expected} next")]
    OutOfOrder { expected: u64, got: u64 },
    /// Entry 0 is not a genesis entry.
    #[error("entry 0 must be the genesis entry")]
    MissingGenesis,
    /// A second genesis entry.
    #[error("entry {index} is a genesis entry, but only entry 0 may be")]
    GenesisNotFirst { index: u64 },
    /// `RoundOpened` for a round that was already opened.
    #[error("entry {index} opens round {round}, which was already opened")]
    RoundAlreadyOpened { index: u64, round: Round },
    /// A credit or close for a round that was never opened.
    #[error("entry {index} refers to round {round}, which is not open")]
    RoundNotOpen { index: u64, round: Round },
    /// A credit or close for a round already closed.
    #[error("entry {index} refers to round {round}, which is already closed")]
    RoundAlreadyClosed { index: u64, round: Round },
    /// A credit to a key that was slashed.
    #[error("entry {index} credits {key}, which was slashed for fraud and may earn nothing")]
    CreditToSlashed { index: u64, key: PublicKey },
    /// A sum passed `u64::MAX`.
    #[error("entry {index} makes a balance or total overflow u64")]
    Overflow { index: u64 },
    /// An epoch names a round that has not closed.
    #[error("entry {index} commits epoch for round {round}, which has not closed")]
    EpochRoundNotClosed { index: u64, round: Round },
    /// Epoch numbers must increase.
    #[error("entry {index} is epoch {epoch}, not above the previous epoch {previous}")]
    EpochNotIncreasing {
        index: u64,
        epoch: Epoch,
        previous: Epoch,
    },
    /// The epoch does not commit the balances the fold computed.
    #[error(
        "entry {index} commits shares root {found_root} (total {found_total}, {found_accounts} accounts), \
         but the balances give root {expected_root} (total {expected_total}, {expected_accounts} accounts)"
    )]
    EpochMismatch {
        index: u64,
        expected_root: lupus_ledger::entry::Digest,
        expected_total: Amount,
        expected_accounts: u64,
        found_root: lupus_ledger::entry::Digest,
        found_total: Amount,
        found_accounts: u64,
    },
    /// The balances could not be put in a sum tree.
    #[error("entry {index}: {source}")]
    SumTree { index: u64, source: SumTreeError },
}

/// The most recent `SharesEpoch` the fold checked, with the tree it committed, so
/// stake statements can be built against it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochState {
    /// The epoch number.
    pub epoch: Epoch,
    /// The round whose close it follows.
    pub round: Round,
    /// The epoch entry's log index.
    pub index: u64,
    /// The balances' sum tree as committed.
    pub tree: SumTree,
}

/// The running state of the shares fold. Start with [`SharesFold::new`] and apply
/// every entry of the log in order.
///
/// Serialisable so an auditor can persist the fold between runs and resume where it
/// stopped instead of replaying the whole log.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SharesFold {
    next_index: u64,
    open: BTreeSet<Round>,
    closed: BTreeSet<Round>,
    /// Pending credits per open round.
    pending_by_round: BTreeMap<Round, BTreeMap<PublicKey, Amount>>,
    /// Pending credits per key, over all open rounds.
    pending: BTreeMap<PublicKey, Amount>,
    balances: BTreeMap<PublicKey, Amount>,
    total: Amount,
    slashed: BTreeSet<PublicKey>,
    latest_epoch: Option<EpochState>,
    /// The worker of each task of an open round (for rule 8).
    #[serde(default)]
    task_workers: BTreeMap<TaskId, (Round, PublicKey)>,
}

impl SharesFold {
    /// An empty fold, expecting entry 0 (the genesis entry) next.
    pub fn new() -> SharesFold {
        SharesFold::default()
    }

    /// Applies entry `index`. On error the fold is unchanged, so a caller may report
    /// and stop, or skip nothing and stop: the log is invalid from that entry on.
    pub fn apply(&mut self, index: u64, entry: &Entry) -> Result<(), FoldError> {
        if index != self.next_index {
            return Err(FoldError::OutOfOrder {
                expected: self.next_index,
                got: index,
            });
        }
        let is_genesis = matches!(entry.body(), EntryBody::Genesis { .. });
        match (index, is_genesis) {
            (0, false) => return Err(FoldError::MissingGenesis),
            (1.., true) => return Err(FoldError::GenesisNotFirst { index }),
            _ => {}
        }
        match entry.body() {
            EntryBody::RoundOpened { round, .. } => {
                if self.open.contains(round) || self.closed.contains(round) {
                    return Err(FoldError::RoundAlreadyOpened {
                        index,
                        round: *round,
                    });
                }
                self.open.insert(*round);
            }
            EntryBody::Credit {
                round, key, amount, ..
            } => self.credit(index, *round, *key, *amount)?,
            EntryBody::RoundClosed { round, .. } => self.close(index, *round)?,
            EntryBody::Slashed { key, .. } => self.slash(index, *key)?,
            EntryBody::TaskAssigned {
                task,
                round,
                worker,
                ..
            } if self.open.contains(round) => {
                self.task_workers.insert(*task, (*round, *worker));
            }
            EntryBody::TaskEnded {
                task,
                reason: EndReason::NotOpened,
            } => {
                if let Some((_, worker)) = self.task_workers.get(task).copied() {
                    self.forfeit_pending(&worker);
                }
            }
            EntryBody::SharesEpoch {
                epoch,
                round,
                root,
                total,
                accounts,
            } => self.check_epoch(index, *epoch, *round, root, *total, *accounts)?,
            // The other kinds do not move shares.
            _ => {}
        }
        self.next_index += 1;
        Ok(())
    }

    fn credit(
        &mut self,
        index: u64,
        round: Round,
        key: PublicKey,
        amount: Amount,
    ) -> Result<(), FoldError> {
        if self.closed.contains(&round) {
            return Err(FoldError::RoundAlreadyClosed { index, round });
        }
        if !self.open.contains(&round) {
            return Err(FoldError::RoundNotOpen { index, round });
        }
        if self.slashed.contains(&key) {
            return Err(FoldError::CreditToSlashed { index, key });
        }
        if amount == Amount::ZERO {
            return Ok(());
        }
        let overflow = FoldError::Overflow { index };
        // Compute both new values before writing either, so an error changes nothing.
        let in_round = self
            .pending_by_round
            .get(&round)
            .and_then(|m| m.get(&key))
            .copied()
            .unwrap_or_default()
            .checked_add(amount)
            .ok_or(overflow.clone())?;
        let overall = self
            .pending
            .get(&key)
            .copied()
            .unwrap_or_default()
            .checked_add(amount)
            .ok_or(overflow)?;
        self.pending_by_round
            .entry(round)
            .or_default()
            .insert(key, in_round);
        self.pending.insert(key, overall);
        Ok(())
    }

    fn close(&mut self, index: u64, round: Round) -> Result<(), FoldError> {
        if self.closed.contains(&round) {
            return Err(FoldError::RoundAlreadyClosed { index, round });
        }
        if !self.open.contains(&round) {
            return Err(FoldError::RoundNotOpen { index, round });
        }
        // Compute every new value before writing any, so an overflow leaves the fold
        // unchanged. Cost is the round's credits, not the whole table.
        let credits = self.pending_by_round.get(&round);
        let mut total = self.total;
        let mut updates = Vec::with_capacity(credits.map_or(0, BTreeMap::len));
        for (key, amount) in credits.into_iter().flatten() {
            let overflow = FoldError::Overflow { index };
            let balance = self.balances.get(key).copied().unwrap_or_default();
            let balance = balance.checked_add(*amount).ok_or(overflow.clone())?;
            total = total.checked_add(*amount).ok_or(overflow.clone())?;
            // Per-round pending amounts are parts of the per-key sum, so this cannot
            // underflow; the checked form keeps that an error rather than a panic.
            let pending = self.pending.get(key).copied().unwrap_or_default();
            let rest = pending.checked_sub(*amount).ok_or(overflow)?;
            updates.push((*key, balance, rest));
        }
        for (key, balance, rest) in updates {
            self.balances.insert(key, balance);
            if rest == Amount::ZERO {
                self.pending.remove(&key);
            } else {
                self.pending.insert(key, rest);
            }
        }
        self.total = total;
        self.pending_by_round.remove(&round);
        self.task_workers.retain(|_, (r, _)| *r != round);
        self.open.remove(&round);
        self.closed.insert(round);
        Ok(())
    }

    /// Drops every pending credit of `key` (rule 8): what it earned in rounds still
    /// open never becomes a balance.
    fn forfeit_pending(&mut self, key: &PublicKey) {
        self.pending.remove(key);
        for credits in self.pending_by_round.values_mut() {
            credits.remove(key);
        }
    }

    fn slash(&mut self, index: u64, key: PublicKey) -> Result<(), FoldError> {
        if let Some(balance) = self.balances.get(&key).copied() {
            // The total is the sum of the balances, so it is at least this one.
            self.total = self
                .total
                .checked_sub(balance)
                .ok_or(FoldError::Overflow { index })?;
            self.balances.remove(&key);
        }
        self.forfeit_pending(&key);
        self.slashed.insert(key);
        Ok(())
    }

    fn check_epoch(
        &mut self,
        index: u64,
        epoch: Epoch,
        round: Round,
        root: &lupus_ledger::entry::Digest,
        total: Amount,
        accounts: u64,
    ) -> Result<(), FoldError> {
        if !self.closed.contains(&round) {
            return Err(FoldError::EpochRoundNotClosed { index, round });
        }
        if let Some(previous) = &self.latest_epoch
            && epoch <= previous.epoch
        {
            return Err(FoldError::EpochNotIncreasing {
                index,
                epoch,
                previous: previous.epoch,
            });
        }
        let tree = SumTree::build(&self.balances)
            .map_err(|source| FoldError::SumTree { index, source })?;
        let (expected_root, expected_total) = tree.root();
        let expected_accounts = tree.accounts();
        if (expected_root, expected_total, expected_accounts) != (*root, total, accounts) {
            return Err(FoldError::EpochMismatch {
                index,
                expected_root,
                expected_total,
                expected_accounts,
                found_root: *root,
                found_total: total,
                found_accounts: accounts,
            });
        }
        self.latest_epoch = Some(EpochState {
            epoch,
            round,
            index,
            tree,
        });
        Ok(())
    }

    /// Final balances: every key with a positive balance, after every closed round.
    pub fn balances(&self) -> &BTreeMap<PublicKey, Amount> {
        &self.balances
    }

    /// Pending credits per key: earned in rounds that have not closed yet.
    pub fn pending(&self) -> &BTreeMap<PublicKey, Amount> {
        &self.pending
    }

    /// The sum of the final balances.
    pub fn total(&self) -> Amount {
        self.total
    }

    /// Whether `key` was slashed.
    pub fn is_slashed(&self, key: &PublicKey) -> bool {
        self.slashed.contains(key)
    }

    /// The index the next applied entry must have.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// The most recent epoch the fold verified, with its sum tree.
    pub fn latest_epoch(&self) -> Option<&EpochState> {
        self.latest_epoch.as_ref()
    }

    /// The sum tree of the current final balances.
    pub fn sum_tree(&self) -> Result<SumTree, SumTreeError> {
        SumTree::build(&self.balances)
    }

    /// The `SharesEpoch` body that commits the current final balances, for a
    /// coordinator to write after `round` closes. Applying it next succeeds if
    /// `round` is closed and `epoch` is above the previous epoch.
    pub fn expected_epoch(&self, epoch: Epoch, round: Round) -> Result<EntryBody, SumTreeError> {
        let tree = self.sum_tree()?;
        let (root, total) = tree.root();
        Ok(EntryBody::SharesEpoch {
            epoch,
            round,
            root,
            total,
            accounts: tree.accounts(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lupus_ledger::entry::{CreditKind, Digest, TaskId};

    fn pk(b: u8) -> PublicKey {
        PublicKey([b; 32])
    }

    fn genesis() -> Entry {
        Entry::unsigned(EntryBody::Genesis {
            job_spec: "[job]".into(),
            job_hash: Digest([1; 32]),
            dataset_root: Digest([2; 32]),
            log_key: pk(9),
            coordinator_note_key: "lupus+00000000+AA".into(),
            created_ms: 0,
        })
        .unwrap()
    }

    fn open(r: u64) -> Entry {
        Entry::unsigned(EntryBody::RoundOpened {
            round: Round(r),
            base_model: Digest([3; 32]),
            beacon_commitment: Digest([4; 32]),
            inner_steps: 10,
            deadline_ms: 0,
        })
        .unwrap()
    }

    fn close(r: u64) -> Entry {
        Entry::unsigned(EntryBody::RoundClosed {
            round: Round(r),
            beacon: Digest([5; 32]),
            new_model: Digest([6; 32]),
            val_loss_bits: 0,
            accepted_tasks: 1,
            val_windows: 0,
            momentum: None,
            merged: Vec::new(),
        })
        .unwrap()
    }

    fn credit(r: u64, key: u8, amount: u64, kind: CreditKind) -> Entry {
        Entry::unsigned(EntryBody::Credit {
            round: Round(r),
            key: pk(key),
            amount: Amount(amount),
            task: TaskId(1),
            kind,
        })
        .unwrap()
    }

    fn slash(key: u8) -> Entry {
        Entry::unsigned(EntryBody::Slashed {
            key: pk(key),
            task: TaskId(1),
            reason: "fraud".into(),
            evidence: None,
        })
        .unwrap()
    }

    /// Applies entries after genesis and returns the fold, or the first error.
    fn run(entries: &[Entry]) -> Result<SharesFold, FoldError> {
        let mut fold = SharesFold::new();
        fold.apply(0, &genesis())?;
        for (i, e) in entries.iter().enumerate() {
            fold.apply(i as u64 + 1, e)?;
        }
        Ok(fold)
    }

    fn map(items: &[(u8, u64)]) -> BTreeMap<PublicKey, Amount> {
        items.iter().map(|(k, a)| (pk(*k), Amount(*a))).collect()
    }

    #[test]
    fn credits_are_pending_until_their_round_closes() {
        let fold = run(&[open(1), credit(1, 1, 10, CreditKind::Work)]).unwrap();
        assert!(fold.balances().is_empty());
        assert_eq!(fold.pending(), &map(&[(1, 10)]));
        assert_eq!(fold.total(), Amount::ZERO);
        let fold = run(&[open(1), credit(1, 1, 10, CreditKind::Work), close(1)]).unwrap();
        assert_eq!(fold.balances(), &map(&[(1, 10)]));
        assert!(fold.pending().is_empty());
        assert_eq!(fold.total(), Amount(10));
    }

    #[test]
    fn closing_one_round_leaves_another_pending() {
        let fold = run(&[
            open(1),
            open(2),
            credit(1, 1, 10, CreditKind::Work),
            credit(2, 1, 5, CreditKind::Work),
            close(1),
        ])
        .unwrap();
        assert_eq!(fold.balances(), &map(&[(1, 10)]));
        assert_eq!(fold.pending(), &map(&[(1, 5)]));
    }

    #[test]
    fn verification_credits_count_like_work() {
        let fold = run(&[
            open(1),
            credit(1, 1, 10, CreditKind::Work),
            credit(1, 2, 3, CreditKind::Verification),
            credit(1, 2, 4, CreditKind::Work),
            close(1),
        ])
        .unwrap();
        assert_eq!(fold.balances(), &map(&[(1, 10), (2, 7)]));
        assert_eq!(fold.total(), Amount(17));
    }

    #[test]
    fn credit_for_a_closed_or_unknown_round_is_an_error() {
        assert_eq!(
            run(&[open(1), close(1), credit(1, 1, 10, CreditKind::Work)]).unwrap_err(),
            FoldError::RoundAlreadyClosed {
                index: 3,
                round: Round(1)
            }
        );
        assert_eq!(
            run(&[credit(4, 1, 10, CreditKind::Work)]).unwrap_err(),
            FoldError::RoundNotOpen {
                index: 1,
                round: Round(4)
            }
        );
        assert_eq!(
            run(&[open(1), close(1), close(1)]).unwrap_err(),
            FoldError::RoundAlreadyClosed {
                index: 3,
                round: Round(1)
            }
        );
        assert_eq!(
            run(&[open(1), open(1)]).unwrap_err(),
            FoldError::RoundAlreadyOpened {
                index: 2,
                round: Round(1)
            }
        );
    }

    #[test]
    fn slashing_forfeits_pending_credits() {
        let fold = run(&[
            open(1),
            credit(1, 1, 10, CreditKind::Work),
            credit(1, 2, 7, CreditKind::Work),
            slash(1),
            close(1),
        ])
        .unwrap();
        assert_eq!(fold.balances(), &map(&[(2, 7)]));
        assert_eq!(fold.total(), Amount(7));
        assert!(fold.is_slashed(&pk(1)));
    }

    #[test]
    fn slashing_after_finalisation_forfeits_final_and_pending_credits() {
        let fold = run(&[
            open(1),
            credit(1, 1, 10, CreditKind::Work),
            credit(1, 2, 7, CreditKind::Work),
            close(1),
            open(2),
            credit(2, 1, 4, CreditKind::Verification),
            slash(1),
            slash(1),
            close(2),
        ])
        .unwrap();
        assert_eq!(fold.balances(), &map(&[(2, 7)]));
        assert!(fold.pending().is_empty());
        assert_eq!(fold.total(), Amount(7));
    }

    #[test]
    fn a_credit_to_a_slashed_key_is_refused() {
        assert_eq!(
            run(&[open(1), slash(1), credit(1, 1, 10, CreditKind::Work)]).unwrap_err(),
            FoldError::CreditToSlashed {
                index: 3,
                key: pk(1)
            }
        );
    }

    #[test]
    fn overflow_is_an_error_and_changes_nothing() {
        let mut fold = run(&[
            open(1),
            credit(1, 1, u64::MAX, CreditKind::Work),
            close(1),
            open(2),
            credit(2, 1, 1, CreditKind::Work),
        ])
        .unwrap();
        let before = (
            fold.balances().clone(),
            fold.pending().clone(),
            fold.total(),
        );
        assert_eq!(
            fold.apply(6, &close(2)),
            Err(FoldError::Overflow { index: 6 })
        );
        assert_eq!(
            (
                fold.balances().clone(),
                fold.pending().clone(),
                fold.total()
            ),
            before
        );
        assert_eq!(fold.next_index(), 6);
    }

    #[test]
    fn order_and_genesis_are_enforced() {
        let mut fold = SharesFold::new();
        assert_eq!(fold.apply(0, &open(1)), Err(FoldError::MissingGenesis));
        assert_eq!(
            fold.apply(1, &genesis()),
            Err(FoldError::OutOfOrder {
                expected: 0,
                got: 1
            })
        );
        fold.apply(0, &genesis()).unwrap();
        assert_eq!(
            fold.apply(1, &genesis()),
            Err(FoldError::GenesisNotFirst { index: 1 })
        );
    }

    #[test]
    fn an_epoch_must_commit_the_folded_balances() {
        let mut fold = run(&[
            open(1),
            credit(1, 1, 10, CreditKind::Work),
            credit(1, 2, 5, CreditKind::Verification),
            close(1),
        ])
        .unwrap();
        let good = fold.expected_epoch(Epoch(1), Round(1)).unwrap();
        let EntryBody::SharesEpoch {
            root,
            total,
            accounts,
            ..
        } = good.clone()
        else {
            panic!("expected_epoch returns a SharesEpoch body");
        };
        assert_eq!((total, accounts), (Amount(15), 2));
        // A wrong total (or root, or count) is a mismatch naming the entry.
        let bad = Entry::unsigned(EntryBody::SharesEpoch {
            epoch: Epoch(1),
            round: Round(1),
            root,
            total: Amount(16),
            accounts,
        })
        .unwrap();
        assert!(matches!(
            fold.apply(5, &bad),
            Err(FoldError::EpochMismatch { index: 5, .. })
        ));
        let bad_root = Entry::unsigned(EntryBody::SharesEpoch {
            epoch: Epoch(1),
            round: Round(1),
            root: Digest([0; 32]),
            total,
            accounts,
        })
        .unwrap();
        assert!(matches!(
            fold.apply(5, &bad_root),
            Err(FoldError::EpochMismatch { index: 5, .. })
        ));
        fold.apply(5, &Entry::unsigned(good.clone()).unwrap())
            .unwrap();
        let state = fold.latest_epoch().unwrap();
        assert_eq!((state.epoch, state.index), (Epoch(1), 5));
        assert_eq!(state.tree.root(), (root, total));
        // The same epoch number again is refused.
        assert_eq!(
            fold.apply(6, &Entry::unsigned(good).unwrap()),
            Err(FoldError::EpochNotIncreasing {
                index: 6,
                epoch: Epoch(1),
                previous: Epoch(1)
            })
        );
        // An epoch for a round that has not closed is refused.
        fold.apply(6, &open(2)).unwrap();
        let early = fold.expected_epoch(Epoch(2), Round(2)).unwrap();
        assert_eq!(
            fold.apply(7, &Entry::unsigned(early).unwrap()),
            Err(FoldError::EpochRoundNotClosed {
                index: 7,
                round: Round(2)
            })
        );
    }

    #[test]
    fn an_epoch_after_a_slash_commits_the_reduced_balances() {
        let mut fold = run(&[
            open(1),
            credit(1, 1, 10, CreditKind::Work),
            credit(1, 2, 5, CreditKind::Work),
            close(1),
            slash(2),
        ])
        .unwrap();
        let body = fold.expected_epoch(Epoch(0), Round(1)).unwrap();
        assert!(matches!(
            body,
            EntryBody::SharesEpoch {
                total: Amount(10),
                accounts: 1,
                ..
            }
        ));
        fold.apply(6, &Entry::unsigned(body).unwrap()).unwrap();
    }

    #[derive(Debug, Clone)]
    enum Op {
        Credit(u8, u64),
        Close,
        Slash(u8),
    }

    fn arb_op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u8..5, 0u64..1000).prop_map(|(k, a)| Op::Credit(k, a)),
            1 => Just(Op::Close),
            1 => (0u8..5).prop_map(Op::Slash),
        ]
    }

    proptest::proptest! {
        /// Over random sequences of credits, round closes and slashes, the fold's
        /// final balances equal a direct model (credits of closed rounds to keys never
        /// slashed), the total is their sum, credits to slashed keys are refused, and
        /// the epoch the fold proposes after each close is accepted.
        #[test]
        fn fold_matches_a_direct_model(ops in proptest::collection::vec(arb_op(), 0..60)) {
            let mut fold = run(&[open(1)]).unwrap();
            let mut index = 2;
            let mut apply = |fold: &mut SharesFold, e: Entry| {
                let r = fold.apply(index, &e);
                if r.is_ok() {
                    index += 1;
                }
                r
            };
            let (mut round, mut epoch) = (1u64, 0u64);
            let mut credits: Vec<(u64, u8, u64)> = Vec::new();
            let mut slashed = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Credit(k, a) => {
                        let r = apply(&mut fold, credit(round, k, a, CreditKind::Work));
                        if slashed.contains(&k) {
                            let refused = matches!(r, Err(FoldError::CreditToSlashed { .. }));
                            proptest::prop_assert!(refused, "credit to slashed key was not refused");
                        } else {
                            proptest::prop_assert_eq!(r, Ok(()));
                            credits.push((round, k, a));
                        }
                    }
                    Op::Close => {
                        apply(&mut fold, close(round)).unwrap();
                        epoch += 1;
                        let body = fold.expected_epoch(Epoch(epoch), Round(round)).unwrap();
                        apply(&mut fold, Entry::unsigned(body).unwrap()).unwrap();
                        round += 1;
                        apply(&mut fold, open(round)).unwrap();
                    }
                    Op::Slash(k) => {
                        apply(&mut fold, slash(k)).unwrap();
                        slashed.insert(k);
                    }
                }
            }
            let mut model: BTreeMap<PublicKey, Amount> = BTreeMap::new();
            for (r, k, a) in &credits {
                if *r < round && !slashed.contains(k) && *a > 0 {
                    model.entry(pk(*k)).or_default().0 += a;
                }
            }
            proptest::prop_assert_eq!(fold.balances(), &model);
            let sum: u64 = model.values().map(|a| a.0).sum();
            proptest::prop_assert_eq!(fold.total(), Amount(sum));
            let pending: u64 = fold.pending().values().map(|a| a.0).sum();
            let model_pending: u64 = credits
                .iter()
                .filter(|(r, k, _)| *r == round && !slashed.contains(k))
                .map(|(_, _, a)| a)
                .sum();
            proptest::prop_assert_eq!(pending, model_pending);
        }
    }
}
