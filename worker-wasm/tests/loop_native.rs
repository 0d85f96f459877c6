//! The worker loop against an in-memory coordinator that checks what a real one checks:
//! request signatures (the `lupus-api` scheme), the join signature, the signed
//! `WorkCommitted` entry, the final-leaf opening of the delta, and finally a replay of the
//! challenged steps with the prover's verifier. A pause (the control hook refusing to go
//! on) abandons the task after the step in progress.

use std::cell::RefCell;

use ed25519_dalek::SigningKey;
use lupus_api::model::{encode_model, model_hash};
use lupus_api::sign::verify_request;
use lupus_api::types::{
    Challenge, JobInfo, OpeningReceipt, Submission, SubmissionReceipt, TaskDescription, TaskOffer,
};
use lupus_ledger::entry::{Digest, Entry, EntryBody, PublicKey, Round, TaskId};
use lupus_prover::challenge::{beacon_commitment, challenge_steps};
use lupus_prover::data::Corpus;
use lupus_prover::model::init_params;
use lupus_prover::prf::derive_task_seed;
use lupus_prover::quant::QuantDelta;
use lupus_prover::spec::JobSpec;
use lupus_prover::task::Opening;
use lupus_prover::trace::Commitment;
use lupus_prover::verify::{DeviceClass, verify_opening, verify_submission};
use lupus_worker::worker::{Backend, Control, Participant, Request, Response, Transport, Turn};

const TINY: &str = include_str!("../../jobs/tiny-test.toml");
const BEACON: [u8; 32] = [9; 32];

struct Fake {
    job: JobSpec,
    corpus: Corpus,
    model: Vec<u8>,
    worker: PublicKey,
    commitment: RefCell<Option<(Commitment, Vec<u32>)>>,
    accepted: RefCell<u32>,
    next_task: RefCell<u64>,
    nonces: RefCell<Vec<[u8; 16]>>,
}

fn json(status: u16, v: &impl serde::Serialize) -> Response {
    Response {
        status,
        body: serde_json::to_vec(v).unwrap(),
    }
}

impl Fake {
    fn new(worker: PublicKey) -> Fake {
        let job = JobSpec::parse(TINY).unwrap();
        let params = init_params(&job.model, [1; 32]).unwrap();
        Fake {
            corpus: Corpus::generated(7, 20_000),
            model: encode_model(&params),
            job,
            worker,
            commitment: RefCell::new(None),
            accepted: RefCell::new(0),
            next_task: RefCell::new(1),
            nonces: RefCell::new(Vec::new()),
        }
    }

    fn task(&self, id: u64) -> TaskDescription {
        let bc = beacon_commitment(&BEACON);
        TaskDescription {
            task_id: TaskId(id),
            round: Round(1),
            worker: self.worker,
            base_model: model_hash(&self.model),
            seed: Digest(derive_task_seed(id, &self.worker.0, &bc)),
            inner_steps: self.job.inner.steps,
            batch_size: self.job.inner.batch_size,
            job_hash: self.job.hash(),
            beacon_commitment: bc,
            deadline_ms: u64::MAX,
            entry_index: 1,
        }
    }

    fn handle(&self, req: &Request) -> Response {
        if req.method == "POST" {
            let v = verify_request(
                |name| {
                    req.headers
                        .iter()
                        .find(|(k, _)| *k == name)
                        .map(|(_, v)| v.as_str())
                },
                req.method,
                &req.path,
                &req.body,
                1_700_000_000_000,
            )
            .expect("every POST is signed with the worker's key");
            assert_eq!(v.key, self.worker);
            let mut seen = self.nonces.borrow_mut();
            assert!(!seen.contains(&v.nonce), "a nonce was reused");
            seen.push(v.nonce);
        }
        let data_hash = Digest::of(self.corpus.bytes());
        match (req.method, req.path.as_str()) {
            ("GET", "/v1/job") => json(
                200,
                &JobInfo {
                    job_spec: TINY.to_owned(),
                    job_hash: self.job.hash(),
                    dataset_root: Digest(
                        self.corpus
                            .dataset_root(self.job.dataset.chunk_size)
                            .unwrap()
                            .0,
                    ),
                    dataset_blob: data_hash,
                    dataset_len: self.corpus.len() as u64,
                    log_key: String::new(),
                    keep_openings: None,
                },
            ),
            ("GET", p) if p == format!("/v1/blobs/{data_hash}") => Response {
                status: 200,
                body: self.corpus.bytes().to_vec(),
            },
            ("GET", p) if p == format!("/v1/blobs/{}", model_hash(&self.model)) => Response {
                status: 200,
                body: self.model.clone(),
            },
            ("POST", "/v1/join") => json(200, &serde_json::json!({"ok": true})),
            ("POST", "/v1/tasks/next") => {
                let mut n = self.next_task.borrow_mut();
                let id = *n;
                *n += 1;
                json(200, &TaskOffer::Task(self.task(id)))
            }
            ("POST", p) if p.ends_with("/submit") => {
                let s: Submission = serde_json::from_slice(&req.body).unwrap();
                let entry = Entry::decode(&s.work_committed.0).expect("a valid signed entry");
                let EntryBody::WorkCommitted {
                    worker,
                    trace_root,
                    final_state,
                    delta,
                    task,
                } = entry.body().clone()
                else {
                    panic!("not a WorkCommitted entry");
                };
                assert_eq!(worker, self.worker);
                let c = Commitment {
                    trace_root,
                    final_state_hash: final_state,
                    delta_hash: delta,
                };
                let q = QuantDelta::from_bytes(&s.delta.0).unwrap();
                assert_eq!(q.hash(), c.delta_hash.0);
                verify_submission(self.job.inner.steps, &c, &s.final_opening, &c.delta_hash)
                    .expect("the final opening proves the delta");
                let steps = challenge_steps(
                    &BEACON,
                    &c.trace_root,
                    self.job.inner.steps,
                    self.job.verify.challenges,
                )
                .unwrap();
                *self.commitment.borrow_mut() = Some((c, steps.clone()));
                json(
                    200,
                    &SubmissionReceipt {
                        task_id: task,
                        entry_index: 2,
                        receipt: String::new(),
                        challenge: Challenge {
                            task_id: task,
                            steps,
                            tolerant: false,
                        },
                    },
                )
            }
            ("POST", p) if p.ends_with("/opening") => {
                assert!(
                    req.headers
                        .iter()
                        .any(|(k, v)| *k == "content-type" && v == "application/octet-stream")
                );
                let opening = Opening::from_bytes(&req.body).expect("the canonical encoding");
                let (c, steps) = self.commitment.borrow().clone().expect("submitted first");
                let id: u64 = p.split('/').nth(3).unwrap().parse().unwrap();
                let task = self.task(id);
                let params = lupus_api::model::decode_model(&self.model, &self.job).unwrap();
                let verdict = verify_opening(
                    &self.job,
                    &self.corpus,
                    &params,
                    &task.seed.0,
                    &c,
                    &task.worker.0,
                    &steps,
                    &opening,
                    DeviceClass::Exact,
                )
                .unwrap();
                assert!(verdict.is_accept(), "{verdict:?}");
                *self.accepted.borrow_mut() += 1;
                json(
                    200,
                    &OpeningReceipt {
                        task_id: TaskId(id),
                        opening_blob: Digest([0; 32]),
                        entry_index: None,
                        receipt: String::new(),
                    },
                )
            }
            other => panic!("unexpected request {other:?}"),
        }
    }
}

struct FakeTransport<'a>(&'a Fake, RefCell<u64>);

#[async_trait::async_trait(?Send)]
impl Transport for FakeTransport<'_> {
    async fn send(&self, req: Request) -> Result<Response, String> {
        Ok(self.0.handle(&req))
    }
    fn now_ms(&self) -> u64 {
        1_700_000_000_000
    }
    fn nonce(&self) -> [u8; 16] {
        let mut c = self.1.borrow_mut();
        *c += 1;
        let mut n = [0u8; 16];
        n[..8].copy_from_slice(&c.to_le_bytes());
        n
    }
    async fn sleep(&self, _: u64) {}
}

/// Counts steps; refuses to go on after `stop_after` steps.
struct Steps {
    seen: Vec<(u32, f32)>,
    stop_after: Option<u32>,
}

#[async_trait::async_trait(?Send)]
impl Control for Steps {
    async fn after_step(&mut self, _: &TaskDescription, step: u32, _: u32, loss: f32) -> bool {
        self.seen.push((step, loss));
        self.stop_after != Some(step)
    }
}

#[test]
fn two_tasks_pass_their_challenges() {
    let key = SigningKey::from_bytes(&[5; 32]);
    let fake = Fake::new(PublicKey::from(&key));
    pollster::block_on(async {
        let t = FakeTransport(&fake, RefCell::new(0));
        let mut p = Participant::connect(t, key, "test").await.unwrap();
        for n in 1..=2u64 {
            let mut c = Steps {
                seen: Vec::new(),
                stop_after: None,
            };
            let turn = p.turn(&Backend::Cpu, &mut c).await.unwrap();
            let Turn::Done { task, .. } = turn else {
                panic!("{turn:?}");
            };
            assert_eq!(task.task_id, TaskId(n));
            let h = fake.job.inner.steps;
            assert_eq!(
                c.seen.iter().map(|s| s.0).collect::<Vec<_>>(),
                (1..=h).collect::<Vec<_>>()
            );
        }
    });
    assert_eq!(*fake.accepted.borrow(), 2);
}

#[test]
fn a_pause_stops_within_one_step() {
    let key = SigningKey::from_bytes(&[6; 32]);
    let fake = Fake::new(PublicKey::from(&key));
    pollster::block_on(async {
        let t = FakeTransport(&fake, RefCell::new(0));
        let mut p = Participant::connect(t, key, "test").await.unwrap();
        let mut c = Steps {
            seen: Vec::new(),
            stop_after: Some(3),
        };
        let turn = p.turn(&Backend::Cpu, &mut c).await.unwrap();
        assert!(matches!(turn, Turn::Abandoned { .. }), "{turn:?}");
        assert_eq!(
            c.seen.len(),
            3,
            "no step runs after the control hook says stop"
        );
    });
    assert!(fake.commitment.borrow().is_none());
}
