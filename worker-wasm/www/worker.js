// The Web Worker: runs the Rust worker loop (wasm) off the page's thread, so the page
// never freezes. The page sends commands (start, pause, resume, visibility, throttle);
// the worker posts events (ready, progress, done, wait, paused, error).
//
// Pausing: the Rust loop calls `control` after every training step and waits on the
// promise it returns, so a pause (or a hidden tab) stops work within one step. The
// throttle rests after each step so that work takes `share` of the wall time.

import init, { BrowserWorker, public_key, cpu_known_answer_class, bench_step_ms } from './pkg/lupus_worker.js';

let ready = null;
let worker = null;
let running = false;
let paused = false;
let visible = true;
let share = 1.0;
let waiters = [];
let lastStepEnd = 0;
let wasm = null;

const post = (m) => self.postMessage(m);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const canWork = () => running && !paused && visible;

// Yields to the event loop (a macrotask), so that commands the page sent while a step
// ran (pause, visibility, throttle) are handled before the next step starts. A resolved
// promise would not do: it continues in a microtask, before any message is handled.
const channel = new MessageChannel();
const yieldToEvents = () => new Promise((r) => {
  channel.port1.onmessage = () => r();
  channel.port2.postMessage(0);
});

function loadWasm() {
  if (!ready) ready = init().then((w) => (wasm = w));
  return ready;
}

function wake() {
  if (!canWork()) return;
  const w = waiters;
  waiters = [];
  for (const f of w) f();
}

function allowed() {
  if (canWork()) return Promise.resolve();
  return new Promise((r) => waiters.push(r));
}

async function fetchFn(method, url, headers, body) {
  const init = { method, headers };
  if (method !== 'GET') init.body = body;
  const r = await fetch(url, init);
  return { status: r.status, body: new Uint8Array(await r.arrayBuffer()) };
}

async function control(ev) {
  const now = performance.now();
  const ms = now - lastStepEnd;
  post({ ev: 'progress', ...ev, ms, wasmBytes: wasm ? wasm.memory.buffer.byteLength : 0 });
  await yieldToEvents();
  if (share < 1) await sleep((ms * (1 - share)) / share);
  if (!canWork()) {
    post({ ev: 'paused' });
    await allowed();
    post({ ev: 'resumed' });
  }
  lastStepEnd = performance.now();
  return true;
}

async function connect(seed, name, useGpu) {
  for (;;) {
    try {
      return await BrowserWorker.connect(self.location.origin, seed, name, fetchFn, useGpu);
    } catch (e) {
      post({ ev: 'error', message: `cannot start: ${e.message || e}`, transient: true });
      await sleep(3000);
    }
  }
}

async function loop() {
  for (;;) {
    await allowed();
    lastStepEnd = performance.now();
    try {
      const r = await worker.turn(control);
      if (r.kind === 'wait') {
        post({ ev: 'wait', reason: r.reason });
        await sleep(Math.min(Math.max(r.ms, 200), 5000));
      } else if (r.kind === 'done') {
        post({ ev: 'done', task: r.task, round: r.round, loss: r.loss, challenged: r.challenged });
      }
    } catch (e) {
      post({ ev: 'error', message: e.message || String(e), transient: !!e.transient });
      await sleep(e.transient ? 2000 : 5000);
    }
  }
}

self.onmessage = async ({ data }) => {
  switch (data.cmd) {
    case 'pubkey':
      await loadWasm();
      post({ ev: 'pubkey', key: public_key(data.seed) });
      break;
    case 'start':
      running = true;
      paused = false;
      if (worker) {
        wake();
        break;
      }
      await loadWasm();
      if (data.useGpu && !('gpu' in navigator)) {
        post({ ev: 'notice', message: 'WebGPU is not available in this browser: training on the CPU in WebAssembly (slower, same results).' });
      }
      post({ ev: 'connecting' });
      worker = await connect(data.seed, data.name, data.useGpu && 'gpu' in navigator);
      post({ ev: 'ready', device: worker.device, class: worker.class, key: worker.key, job: worker.job_name });
      loop();
      break;
    case 'pause':
      paused = true;
      break;
    case 'resume':
      paused = false;
      wake();
      break;
    case 'visible':
      visible = data.visible;
      wake();
      break;
    case 'throttle':
      share = Math.min(1, Math.max(0.05, data.share));
      break;
    case 'bench': {
      // Step time of the job's model on the CPU path in wasm and on WebGPU.
      await loadWasm();
      const out = { job: data.job, steps: data.steps };
      out.cpu = await bench_step_ms(data.job, data.steps, false);
      out.wasmBytes = wasm.memory.buffer.byteLength;
      if ('gpu' in navigator) {
        try {
          out.gpu = await bench_step_ms(data.job, data.steps, true);
        } catch (e) {
          out.gpuError = String(e);
        }
      }
      out.wasmBytesAfter = wasm.memory.buffer.byteLength;
      post({ ev: 'bench', result: out });
      break;
    }
    case 'kat-cpu':
      await loadWasm();
      post({ ev: 'kat-cpu', class: cpu_known_answer_class() });
      break;
  }
};
