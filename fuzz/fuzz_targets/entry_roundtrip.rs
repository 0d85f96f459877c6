//! Entries built from structured fuzz input (every kind, every field), signed with a
//! fixed participant key where the kind requires it.
//!
//! Properties: `decode(encode(e)) == e`; the JSON form of the body round-trips; a
//! single flipped byte either fails to decode or decodes to an entry whose encoding is
//! the flipped bytes (one encoding per entry, so no two byte strings mean the same
//! entry); no strict prefix decodes.

#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use lupus_api::lupus_ledger::entry::{
    Amount, CreditKind, Digest, EndReason, Entry, EntryBody, Epoch, PublicKey, Role, Round, TaskId,
};
use lupus_fuzz::{public, worker_key};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok((body, flip)) = body(&mut u).and_then(|b| Ok((b, u.arbitrary::<(usize, u8)>()?))) else {
        return;
    };
    let key = worker_key();
    let entry = match body.signer() {
        Some(_) => Entry::signed(body, &key),
        None => Entry::unsigned(body),
    };
    // Bodies over a field limit or with unsorted steps are refused when built.
    let Ok(entry) = entry else { return };
    let bytes = entry.encode();
    assert_eq!(Entry::decode(&bytes).as_ref(), Ok(&entry));
    let json = serde_json::to_string(entry.body()).expect("a body serialises");
    let back: EntryBody = serde_json::from_str(&json).expect("a body's JSON parses");
    assert_eq!(&back, entry.body());
    for n in 0..bytes.len() {
        assert!(
            Entry::decode(&bytes[..n]).is_err(),
            "a prefix of {n} bytes decoded"
        );
    }
    let (pos, mask) = flip;
    let mut flipped = bytes.clone();
    if let Some(b) = flipped.get_mut(pos % bytes.len().max(1)) {
        *b ^= mask.max(1);
    }
    if let Ok(other) = Entry::decode(&flipped) {
        assert_eq!(other.as_bytes(), flipped.as_slice());
        assert_ne!(other, entry);
    }
});

fn key_or_signer(u: &mut Unstructured, signer: bool) -> Result<PublicKey> {
    if signer {
        Ok(public(&worker_key()))
    } else {
        Ok(PublicKey(u.arbitrary()?))
    }
}

fn digest(u: &mut Unstructured) -> Result<Digest> {
    Ok(Digest(u.arbitrary()?))
}

fn steps(u: &mut Unstructured) -> Result<Vec<u32>> {
    // Mostly ascending lists (what the encoder accepts), sometimes arbitrary ones.
    let mut s: Vec<u32> = u.arbitrary()?;
    if u.arbitrary::<bool>()? {
        s.sort_unstable();
        s.dedup();
    }
    Ok(s)
}

fn body(u: &mut Unstructured) -> Result<EntryBody> {
    // The signed kinds normally name the fixed key; sometimes another one, which
    // `Entry::signed` must refuse.
    let own = !u.ratio(1, 16)?;
    Ok(match u.int_in_range(1u8..=13)? {
        1 => EntryBody::Genesis {
            job_spec: u.arbitrary()?,
            job_hash: digest(u)?,
            dataset_root: digest(u)?,
            log_key: PublicKey(u.arbitrary()?),
            coordinator_note_key: u.arbitrary()?,
            created_ms: u.arbitrary()?,
        },
        2 => EntryBody::ParticipantJoined {
            key: key_or_signer(u, own)?,
            role: if u.arbitrary()? {
                Role::Worker
            } else {
                Role::Verifier
            },
            name: u.arbitrary()?,
        },
        3 => EntryBody::RoundOpened {
            round: Round(u.arbitrary()?),
            base_model: digest(u)?,
            beacon_commitment: digest(u)?,
            inner_steps: u.arbitrary()?,
            deadline_ms: u.arbitrary()?,
        },
        4 => EntryBody::TaskAssigned {
            task: TaskId(u.arbitrary()?),
            round: Round(u.arbitrary()?),
            worker: PublicKey(u.arbitrary()?),
            seed: digest(u)?,
            inner_steps: u.arbitrary()?,
            batch_size: u.arbitrary()?,
        },
        5 => EntryBody::WorkCommitted {
            task: TaskId(u.arbitrary()?),
            worker: key_or_signer(u, own)?,
            trace_root: digest(u)?,
            final_state: digest(u)?,
            delta: digest(u)?,
        },
        6 => EntryBody::ChallengeIssued {
            task: TaskId(u.arbitrary()?),
            verifier: PublicKey(u.arbitrary()?),
            steps: steps(u)?,
        },
        7 => EntryBody::Verdict {
            task: TaskId(u.arbitrary()?),
            verifier: key_or_signer(u, own)?,
            accepted: u.arbitrary()?,
            steps: steps(u)?,
            reason: u.arbitrary()?,
            evidence: if u.arbitrary()? {
                Some(digest(u)?)
            } else {
                None
            },
        },
        8 => EntryBody::RoundClosed {
            round: Round(u.arbitrary()?),
            beacon: digest(u)?,
            new_model: digest(u)?,
            val_loss_bits: u.arbitrary()?,
            accepted_tasks: u.arbitrary()?,
            val_windows: 0,
            momentum: None,
            merged: Vec::new(),
        },
        9 => EntryBody::Credit {
            round: Round(u.arbitrary()?),
            key: PublicKey(u.arbitrary()?),
            amount: Amount(u.arbitrary()?),
            task: TaskId(u.arbitrary()?),
            kind: if u.arbitrary()? {
                CreditKind::Work
            } else {
                CreditKind::Verification
            },
        },
        10 => EntryBody::Slashed {
            key: PublicKey(u.arbitrary()?),
            task: TaskId(u.arbitrary()?),
            reason: u.arbitrary()?,
            evidence: if u.arbitrary()? {
                Some(digest(u)?)
            } else {
                None
            },
        },
        12 => EntryBody::TaskOpened {
            task: TaskId(u.arbitrary()?),
            worker: PublicKey(u.arbitrary()?),
            opening: digest(u)?,
        },
        13 => EntryBody::TaskEnded {
            task: TaskId(u.arbitrary()?),
            reason: match u.int_in_range(0u8..=2)? {
                0 => EndReason::NotOpened,
                1 => EndReason::NotJudged,
                _ => EndReason::WorkerSlashed,
            },
        },
        _ => EntryBody::SharesEpoch {
            epoch: Epoch(u.arbitrary()?),
            round: Round(u.arbitrary()?),
            root: digest(u)?,
            total: Amount(u.arbitrary()?),
            accounts: u.arbitrary()?,
        },
    })
}
