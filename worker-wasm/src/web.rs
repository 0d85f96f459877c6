//! The browser side: wasm-bindgen exports that the Web Worker (`www/worker.js`) drives.
//!
//! The page keeps the volunteer's key (IndexedDB) and hands its 32-byte seed to the Web
//! Worker, which builds a [`BrowserWorker`] and calls [`BrowserWorker::turn`] in a loop.
//! Requests go through a JS `fetch` wrapper; between training steps the loop awaits the
//! JS control function, which holds the promise while the volunteer has paused, the tab
//! is hidden or the throttle asks for rest, so work stops within one step.

use std::cell::RefCell;
use std::rc::Rc;

use ed25519_dalek::SigningKey;
use js_sys::{Array, Function, Promise, Reflect, Uint8Array};
use lupus_api::types::TaskDescription;
use lupus_ledger::entry::PublicKey;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

#[cfg(feature = "gpu")]
use crate::pick::Pick;
use crate::worker::{Backend, Control, Participant, Request, Response, Transport, Turn};

/// Parses a 64-hex-digit Ed25519 seed.
fn signing_key(seed_hex: &str) -> Result<SigningKey, JsValue> {
    let mut seed = [0u8; 32];
    hex::decode_to_slice(seed_hex.trim(), &mut seed)
        .map_err(|_| JsValue::from_str("the key must be 64 hex digits (an Ed25519 seed)"))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The public key (64 hex digits) of a seed.
#[wasm_bindgen]
pub fn public_key(seed_hex: &str) -> Result<String, JsValue> {
    Ok(PublicKey::from(&signing_key(seed_hex)?).to_string())
}

struct JsTransport {
    base: String,
    fetch: Function,
    counter: RefCell<u64>,
}

#[async_trait::async_trait(?Send)]
impl Transport for JsTransport {
    async fn send(&self, req: Request) -> Result<Response, String> {
        let headers = Array::new();
        for (k, v) in &req.headers {
            headers.push(&Array::of2(&JsValue::from_str(k), &JsValue::from_str(v)));
        }
        let url = format!("{}{}", self.base, req.path);
        let body = Uint8Array::from(req.body.as_slice());
        let args = Array::of4(
            &JsValue::from_str(req.method),
            &JsValue::from_str(&url),
            &headers,
            &body,
        );
        let promise = self
            .fetch
            .apply(&JsValue::NULL, &args)
            .map_err(|e| format!("{e:?}"))?;
        let answer = JsFuture::from(Promise::from(promise))
            .await
            .map_err(|e| e.as_string().unwrap_or_else(|| format!("{e:?}")))?;
        let status = Reflect::get(&answer, &JsValue::from_str("status"))
            .ok()
            .and_then(|s| s.as_f64())
            .unwrap_or(0.0) as u16;
        let body = Reflect::get(&answer, &JsValue::from_str("body"))
            .map(|b| Uint8Array::new(&b).to_vec())
            .unwrap_or_default();
        Ok(Response { status, body })
    }

    fn now_ms(&self) -> u64 {
        js_sys::Date::now() as u64
    }

    /// Unique per request: blake3 of the time, a counter and the JS random source.
    fn nonce(&self) -> [u8; 16] {
        let mut c = self.counter.borrow_mut();
        *c += 1;
        let mut h = blake3::Hasher::new_derive_key("lupus browser nonce v1");
        h.update(&c.to_le_bytes());
        h.update(&js_sys::Date::now().to_le_bytes());
        for _ in 0..4 {
            h.update(&js_sys::Math::random().to_le_bytes());
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize().as_bytes()[..16]);
        out
    }

    /// `setTimeout` of the global scope (a Window or a Worker), as a future.
    async fn sleep(&self, ms: u64) {
        let promise = Promise::new(&mut |resolve, _| {
            let global = js_sys::global();
            if let Ok(f) = Reflect::get(&global, &JsValue::from_str("setTimeout"))
                && let Some(f) = f.dyn_ref::<Function>()
            {
                let _ = f.call2(&global, &resolve, &JsValue::from_f64(ms as f64));
            }
        });
        let _ = JsFuture::from(promise).await;
    }
}

struct JsControl {
    f: Function,
}

#[async_trait::async_trait(?Send)]
impl Control for JsControl {
    async fn after_step(
        &mut self,
        task: &TaskDescription,
        step: u32,
        steps: u32,
        loss: f32,
    ) -> bool {
        let ev = js_sys::Object::new();
        let set = |k: &str, v: JsValue| {
            let _ = Reflect::set(&ev, &JsValue::from_str(k), &v);
        };
        set("task", JsValue::from_f64(task.task_id.0 as f64));
        set("round", JsValue::from_f64(task.round.0 as f64));
        set("step", JsValue::from_f64(step as f64));
        set("steps", JsValue::from_f64(steps as f64));
        set("loss", JsValue::from_f64(loss as f64));
        let Ok(p) = self.f.call1(&JsValue::NULL, &ev) else {
            return false;
        };
        match JsFuture::from(Promise::resolve(&p)).await {
            Ok(v) => v.as_bool().unwrap_or(true),
            Err(_) => false,
        }
    }
}

/// A joined volunteer worker in the browser.
#[wasm_bindgen]
pub struct BrowserWorker {
    inner: Rc<RefCell<Inner>>,
    device: String,
    class: String,
    key: String,
    job_name: String,
}

struct Inner {
    participant: Participant<JsTransport>,
    backend: Backend,
}

#[wasm_bindgen]
impl BrowserWorker {
    /// Connects to the coordinator at `base` (empty for the page's own origin), joins
    /// with the key `seed_hex`, and picks the device by `gpu`: `"auto"` uses whichever
    /// device trains the job faster, timed at start on both ([`crate::pick`]; the
    /// device line shows both figures); `"force"` uses any WebGPU adapter; `"off"`
    /// never does. The GPU's class comes from the known-answer suite.
    /// `fetch(method, url, headers, body)` must resolve to `{status, body: Uint8Array}`.
    pub async fn connect(
        base: String,
        seed_hex: String,
        name: String,
        fetch: Function,
        gpu: String,
    ) -> Result<BrowserWorker, JsValue> {
        let key = signing_key(&seed_hex)?;
        let transport = JsTransport {
            base: base.trim_end_matches('/').to_owned(),
            fetch,
            counter: RefCell::new(0),
        };
        let participant = Participant::connect(transport, key, &name)
            .await
            .map_err(|e| JsValue::from_str(&e.to_string()))?;
        let (backend, device, class) = pick_backend(&gpu, &participant.job).await;
        let key = participant.public_key().to_string();
        let job_name = participant.job.job.name.clone();
        Ok(BrowserWorker {
            inner: Rc::new(RefCell::new(Inner {
                participant,
                backend,
            })),
            device,
            class,
            key,
            job_name,
        })
    }

    /// The device the worker trains on, in words.
    #[wasm_bindgen(getter)]
    pub fn device(&self) -> String {
        self.device.clone()
    }

    /// `exact` or `tolerant (...)`.
    #[wasm_bindgen(getter)]
    pub fn class(&self) -> String {
        self.class.clone()
    }

    /// This worker's public key, hex.
    #[wasm_bindgen(getter)]
    pub fn key(&self) -> String {
        self.key.clone()
    }

    /// The job's name and inner steps, for the page.
    #[wasm_bindgen(getter)]
    pub fn job_name(&self) -> String {
        self.job_name.clone()
    }

    /// One turn of the loop. Resolves to `{kind: "wait", ms, reason}`,
    /// `{kind: "abandoned", task}` or `{kind: "done", task, round, loss, challenged}`.
    /// Call it again only after the previous promise settled.
    pub fn turn(&self, control: Function) -> Promise {
        let inner = Rc::clone(&self.inner);
        wasm_bindgen_futures::future_to_promise(async move {
            let Ok(mut guard) = inner.try_borrow_mut() else {
                return Err(JsValue::from_str("a turn is already running"));
            };
            let Inner {
                participant,
                backend,
            } = &mut *guard;
            turn(participant, backend, control).await
        })
    }
}

async fn turn(
    participant: &mut Participant<JsTransport>,
    backend: &Backend,
    control: Function,
) -> Result<JsValue, JsValue> {
    let mut c = JsControl { f: control };
    let turn = participant.turn(backend, &mut c).await.map_err(|e| {
        let o = js_sys::Object::new();
        let _ = Reflect::set(&o, &"message".into(), &JsValue::from_str(&e.to_string()));
        let _ = Reflect::set(
            &o,
            &"transient".into(),
            &JsValue::from_bool(e.is_transient()),
        );
        JsValue::from(o)
    })?;
    let o = js_sys::Object::new();
    let set = |k: &str, v: JsValue| {
        let _ = Reflect::set(&o, &JsValue::from_str(k), &v);
    };
    match turn {
        Turn::Wait { ms, reason } => {
            set("kind", "wait".into());
            set("ms", JsValue::from_f64(ms as f64));
            set("reason", reason.into());
        }
        Turn::Abandoned { task } => {
            set("kind", "abandoned".into());
            set("task", JsValue::from_f64(task.task_id.0 as f64));
        }
        Turn::Done {
            task,
            final_loss,
            challenged,
            ..
        } => {
            set("kind", "done".into());
            set("task", JsValue::from_f64(task.task_id.0 as f64));
            set("round", JsValue::from_f64(task.round.0 as f64));
            set("loss", JsValue::from_f64(final_loss as f64));
            set("challenged", JsValue::from_f64(challenged.len() as f64));
        }
    }
    Ok(o.into())
}

#[cfg(feature = "gpu")]
async fn pick_backend(mode: &str, job: &lupus_prover::spec::JobSpec) -> (Backend, String, String) {
    use lupus_prover::kat::{DeviceClass as KatClass, check_device};
    use lupus_prover::verify::DeviceClass;
    if mode == "auto" || mode == "force" {
        match crate::gpu::GpuDevice::new().await {
            Ok(device) => {
                let results = crate::gpu::run_suite_gpu(&device).await;
                let (class, words) = match check_device(&results) {
                    KatClass::Exact => (DeviceClass::Exact, "exact".to_owned()),
                    KatClass::Tolerant { mismatches } => (
                        DeviceClass::Tolerant,
                        format!(
                            "tolerant: {} of {} known-answer cases differ ({})",
                            mismatches.len(),
                            results.len(),
                            mismatches
                                .iter()
                                .take(3)
                                .copied()
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ),
                };
                let adapter = device.description.clone();
                let kat = lupus_prover::kat::combined_digest(&results);
                let gpu = Backend::Gpu { device, class, kat };
                if mode == "force" {
                    return (gpu, format!("WebGPU: {adapter}"), words);
                }
                match measure(job, &gpu).await {
                    Ok((Pick::Gpu, line)) => return (gpu, line, words),
                    Ok((Pick::Cpu, line)) => return (Backend::Cpu, line, "exact".to_owned()),
                    Err(e) => web_sys::console::warn_1(&JsValue::from_str(&format!(
                        "timing the devices failed ({e}); training on the CPU"
                    ))),
                }
            }
            Err(e) => {
                web_sys::console::warn_1(&JsValue::from_str(&e.to_string()));
            }
        }
    }
    cpu_backend()
}

/// Times the job on the CPU path and on `gpu` ([`crate::pick`]) and says which is
/// faster, with both figures in words for the page.
#[cfg(feature = "gpu")]
async fn measure(
    job: &lupus_prover::spec::JobSpec,
    gpu: &Backend,
) -> Result<(Pick, String), crate::worker::WorkerError> {
    use crate::pick::{describe, faster, gpu_budget_ms, time_steps};
    let now = || js_sys::Date::now();
    let cpu = time_steps(job, &Backend::Cpu, 3, 10_000.0, &now).await?;
    let on_gpu = time_steps(job, gpu, 3, gpu_budget_ms(&cpu), &now).await?;
    let pick = faster(&cpu, &on_gpu);
    let adapter = match gpu {
        Backend::Gpu { device, .. } => device.description.clone(),
        Backend::Cpu => String::new(),
    };
    Ok((pick, describe(pick, &cpu, &on_gpu, &adapter)))
}

#[cfg(not(feature = "gpu"))]
async fn pick_backend(
    _mode: &str,
    _job: &lupus_prover::spec::JobSpec,
) -> (Backend, String, String) {
    cpu_backend()
}

fn cpu_backend() -> (Backend, String, String) {
    (
        Backend::Cpu,
        "CPU (the reference kernels in WebAssembly)".to_owned(),
        "exact".to_owned(),
    )
}

/// Runs the known-answer suite with the CPU reference in wasm and returns the class:
/// the browser test of the CPU path.
#[wasm_bindgen]
pub fn cpu_known_answer_class() -> String {
    match lupus_prover::kat::check_device(&lupus_prover::kat::run_suite()) {
        lupus_prover::kat::DeviceClass::Exact => "exact".to_owned(),
        lupus_prover::kat::DeviceClass::Tolerant { mismatches } => {
            format!("tolerant: {mismatches:?}")
        }
    }
}

/// The benchmark's job: `"mlp"` is the Shakespeare MLP the demo trains, `"gpt"` the
/// Shakespeare GPT, `"tiny"` the test job.
fn bench_job(which: &str) -> Result<lupus_prover::spec::JobSpec, JsValue> {
    let text = match which {
        "mlp" => include_str!("../../jobs/shakespeare-mlp.toml"),
        "gpt" => include_str!("../../jobs/shakespeare-gpt.toml"),
        "tiny" => include_str!("../../jobs/tiny-test.toml"),
        other => return Err(JsValue::from_str(&format!("no benchmark job `{other}`"))),
    };
    lupus_prover::spec::JobSpec::parse(text).map_err(|e| JsValue::from_str(&e.to_string()))
}

/// Milliseconds per training step (median of `steps`, after one warm-up step) of the
/// job `which` on a generated corpus, on WebGPU (`gpu`) or on the CPU path in wasm.
/// Resolves to `{ms, device}`.
#[wasm_bindgen]
pub async fn bench_step_ms(which: String, steps: u32, gpu: bool) -> Result<JsValue, JsValue> {
    use lupus_prover::data::Corpus;
    use lupus_prover::model::init_params;
    use lupus_prover::task::TaskBuilder;
    let err = |e: &dyn std::fmt::Display| JsValue::from_str(&e.to_string());
    let job = bench_job(&which)?;
    let corpus = Corpus::generated(1, 200_000);
    let base = init_params(&job.model, [1; 32]).map_err(|e| err(&e))?;
    let (backend, device, _) = if gpu {
        pick_backend("force", &job).await
    } else {
        cpu_backend()
    };
    let mut b = TaskBuilder::new(&job, &corpus, &base, [2; 32]).map_err(|e| err(&e))?;
    // The whole step where it compiles, as `conduct::train_honestly` runs it.
    let mut trainer = crate::worker::Trainer::new(&backend, &b)
        .await
        .map_err(|e| err(&e))?;
    let mut times = Vec::new();
    for i in 0..=steps.min(job.inner.steps.saturating_sub(1)) {
        let t0 = js_sys::Date::now();
        trainer.step(&mut b).await.map_err(|e| err(&e))?;
        if i > 0 {
            times.push(js_sys::Date::now() - t0);
        }
    }
    times.sort_by(f64::total_cmp);
    let ms = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    let o = js_sys::Object::new();
    let _ = Reflect::set(&o, &"ms".into(), &JsValue::from_f64(ms));
    let _ = Reflect::set(&o, &"device".into(), &JsValue::from_str(&device));
    let _ = Reflect::set(&o, &"path".into(), &JsValue::from_str(&trainer.path()));
    Ok(o.into())
}
