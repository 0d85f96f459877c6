// The volunteer page: identity (IndexedDB), controls, and what the coordinator says
// about the round, my tasks and my stake. Training runs in worker.js (a Web Worker).
//
// `/?autostart=1` starts working without a click (kiosks, embedding, tests);
// By default the worker times a few steps of the job on WebGPU and on the CPU path in
// wasm and trains on the faster (the device line shows both figures); `/?gpu=0` trains
// on the CPU path even where WebGPU exists; `/?gpu=1` uses WebGPU even where it is slower
// (a software adapter such as SwiftShader: the tests use it to exercise the kernels).

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = {
  seed: null,
  key: null,
  running: false,
  paused: false,
  tasks: new Map(), // task id -> {round, state, reason}
  statement: null,
};

// ---- messages --------------------------------------------------------------
const shown = new Map();
function message(id, text, error = false) {
  let el = shown.get(id);
  if (!text) {
    if (el) el.remove();
    shown.delete(id);
    return;
  }
  if (!el) {
    el = document.createElement('div');
    $('messages').append(el);
    shown.set(id, el);
  }
  el.textContent = text;
  el.className = error ? 'error' : '';
}

// ---- identity in IndexedDB ---------------------------------------------------
function db() {
  return new Promise((resolve, reject) => {
    const r = indexedDB.open('lupus', 1);
    r.onupgradeneeded = () => r.result.createObjectStore('keys');
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}
async function idb(mode, f) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const req = f(d.transaction('keys', mode).objectStore('keys'));
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}
const loadSeed = () => idb('readonly', (s) => s.get('worker-seed'));
const saveSeed = (seed) => idb('readwrite', (s) => s.put(seed, 'worker-seed'));
const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');

async function identity() {
  let seed = await loadSeed();
  if (!seed) {
    seed = hex(crypto.getRandomValues(new Uint8Array(32)));
    await saveSeed(seed);
  }
  return seed;
}

// ---- the Web Worker ------------------------------------------------------------
const worker = new Worker(new URL('worker.js', import.meta.url), { type: 'module' });
worker.onmessage = ({ data }) => {
  switch (data.ev) {
    case 'pubkey':
      state.key = data.key;
      $('pubkey').textContent = data.key;
      refresh();
      break;
    case 'connecting':
      setState('connecting', 'Connecting...');
      break;
    case 'ready':
      $('device').textContent = data.device;
      $('class').textContent = data.class;
      message('error', null);
      if ($('use-gpu').checked && data.device === 'CPU (the reference kernels in WebAssembly)' && 'gpu' in navigator) {
        message('gpu', 'WebGPU could not open a device here: training on the CPU in WebAssembly (slower, same results).');
      }
      setState('working', 'Working');
      break;
    case 'notice':
      message('gpu', data.message);
      break;
    case 'progress': {
      $('task').textContent = `#${data.task} (round ${data.round})`;
      $('step').textContent = `${data.step} / ${data.steps}`;
      $('loss').textContent = data.loss.toFixed(4);
      $('progress').max = data.steps;
      $('progress').value = data.step;
      document.body.dataset.step = data.step;
      document.body.dataset.steps = data.done;
      document.body.dataset.wasmMemory = data.wasmBytes;
      $('step-time').textContent = `${data.ms.toFixed(0)} ms`;
      if (!state.tasks.has(data.task)) {
        state.tasks.set(data.task, { round: data.round, state: 'training', reason: '' });
        saveTasks();
        renderTasks();
      }
      if (!state.paused && document.visibilityState === 'visible') setState('working', 'Working');
      message('error', null);
      break;
    }
    case 'paused':
      setState(document.visibilityState === 'visible' ? 'paused' : 'hidden',
        document.visibilityState === 'visible' ? 'Paused' : 'Paused while the tab is hidden');
      break;
    case 'pausing':
      document.body.dataset.pausedAt = data.at;
      break;
    case 'resumed':
      setState('working', 'Working');
      break;
    case 'done': {
      const t = state.tasks.get(data.task) || { round: data.round };
      t.state = 'submitted';
      state.tasks.set(data.task, t);
      saveTasks();
      renderTasks();
      refresh();
      break;
    }
    case 'wait':
      setState('waiting', `Waiting for work: ${data.reason}`);
      message('error', null);
      break;
    case 'error':
      message('error', /unreachable|cannot reach|Failed to fetch|NetworkError/i.test(data.message)
        ? `The coordinator is unreachable (${data.message}). Retrying...`
        : data.message, true);
      break;
    case 'bench':
      document.body.dataset.bench = JSON.stringify(data.result);
      break;
    case 'kat-cpu':
      document.body.dataset.katCpu = data.class;
      break;
  }
};

function setState(s, text) {
  $('state').dataset.state = s;
  $('state').textContent = text;
}

function start() {
  state.running = true;
  state.paused = false;
  $('start').disabled = true;
  $('pause').disabled = false;
  worker.postMessage({ cmd: 'visible', visible: document.visibilityState === 'visible' });
  worker.postMessage({
    cmd: 'start',
    seed: state.seed,
    name: `browser ${navigator.userAgent.match(/(Chrom\w*|Firefox|Safari)\/[\d.]+/)?.[0] || ''}`.trim(),
    gpu: !$('use-gpu').checked || params.get('gpu') === '0' ? 'off' : params.get('gpu') === '1' ? 'force' : 'auto',
  });
}

function pause() {
  state.paused = !state.paused;
  worker.postMessage({ cmd: state.paused ? 'pause' : 'resume' });
  $('pause').textContent = state.paused ? 'Resume' : 'Pause';
  if (state.paused) setState('paused', 'Pausing after this step');
}

// ---- my tasks (kept per key in localStorage; states from the coordinator) ---------
function tasksKey() {
  return `lupus-tasks-${state.key}`;
}
function saveTasks() {
  if (state.key) localStorage.setItem(tasksKey(), JSON.stringify([...state.tasks]));
}
function loadTasks() {
  try {
    state.tasks = new Map(JSON.parse(localStorage.getItem(tasksKey()) || '[]'));
  } catch {
    state.tasks = new Map();
  }
}
function renderTasks() {
  const rows = [...state.tasks].sort((a, b) => b[0] - a[0]).slice(0, 50);
  $('tasks').replaceChildren(...rows.map(([id, t]) => {
    const tr = document.createElement('tr');
    tr.dataset.task = id;
    for (const [text, cls] of [[`#${id}`], [t.round ?? '-'], [t.state, t.state], [t.reason || '']]) {
      const td = document.createElement('td');
      td.textContent = text;
      if (cls) td.className = cls;
      tr.append(td);
    }
    return tr;
  }));
  const count = (s) => [...state.tasks.values()].filter((t) => t.state === s).length;
  const pending = state.tasks.size - count('accepted') - count('rejected');
  $('task-counts').textContent =
    `${count('accepted')} accepted, ${pending} pending, ${count('rejected')} rejected`;
  document.body.dataset.accepted = count('accepted');
}

// ---- polling the coordinator ------------------------------------------------------
async function getJson(path) {
  const r = await fetch(path);
  if (!r.ok) throw Object.assign(new Error(`${path}: HTTP ${r.status}`), { status: r.status });
  return r.json();
}

async function refresh() {
  try {
    const [list, current] = await Promise.all([getJson('/v1/rounds'), getJson('/v1/rounds/current').catch(() => null)]);
    drawChart(list.rounds || []);
    if (current) {
      $('round').textContent = `${current.round} (${current.phase})`;
      $('round-tasks').textContent =
        `${current.accepted} accepted of ${current.target_tasks}, ${current.committed} committed, ${current.rejected} rejected`;
    }
    message('unreachable', null);
  } catch (e) {
    if (!e.status) message('unreachable', 'The coordinator is unreachable. Retrying...', true);
  }
  if (!state.key) return;
  for (const [id, t] of state.tasks) {
    if (t.state === 'accepted' || t.state === 'rejected' || t.state === 'expired') continue;
    try {
      const s = await getJson(`/v1/tasks/${id}`);
      t.state = s.state;
      t.round = s.round;
      const bad = (s.verdicts || []).find((v) => !v.accepted);
      t.reason = bad ? bad.reason : '';
      if (s.state === 'rejected') {
        message(`rejected-${id}`, `Task #${id} was rejected: ${t.reason || 'see the log'}`, true);
      }
    } catch {
      // The task may not be known yet (still training); try again later.
    }
  }
  saveTasks();
  renderTasks();
  // A key has no stake statement (404) until a task of it is accepted: do not ask.
  if (!state.statement && ![...state.tasks.values()].some((t) => t.state === 'accepted')) return;
  try {
    const st = await getJson(`/v1/stake/${state.key}`);
    state.statement = st;
    const balance = BigInt(st.balance);
    const total = BigInt(st.total);
    $('balance').textContent = balance.toString();
    $('percent').textContent = total > 0n ? `${(Number((balance * 1000000n) / total) / 10000).toFixed(4)}%` : '0%';
    $('epoch').textContent = st.epoch;
    $('statement').disabled = false;
    document.body.dataset.balance = balance.toString();
  } catch {
    // No shares epoch includes this key yet.
  }
}

function drawChart(rounds) {
  const pts = rounds.filter((r) => r.val_loss != null).map((r) => [r.round, r.val_loss]);
  const c = $('chart');
  const g = c.getContext('2d');
  g.clearRect(0, 0, c.width, c.height);
  g.fillStyle = getComputedStyle(document.body).color;
  g.font = '12px system-ui';
  if (pts.length === 0) {
    g.fillText('no closed round yet', 12, 20);
    return;
  }
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)];
  const [y0, y1] = [Math.min(...ys), Math.max(...ys, Math.min(...ys) + 1e-3)];
  const px = (x) => 40 + ((x - x0) / (x1 - x0)) * (c.width - 50);
  const py = (y) => c.height - 20 - ((y - y0) / (y1 - y0)) * (c.height - 40);
  g.fillText(y1.toFixed(3), 2, 14);
  g.fillText(y0.toFixed(3), 2, c.height - 22);
  g.strokeStyle = '#6b4fbb';
  g.lineWidth = 2;
  g.beginPath();
  pts.forEach(([x, y], i) => (i ? g.lineTo(px(x), py(y)) : g.moveTo(px(x), py(y))));
  g.stroke();
  for (const [x, y] of pts) g.fillRect(px(x) - 2, py(y) - 2, 4, 4);
  document.body.dataset.rounds = pts.length;
}

function download(name, text, type) {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([text], { type }));
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

// ---- wiring ---------------------------------------------------------------------
async function main() {
  const built = await fetch('pkg/lupus_worker_bg.wasm', { method: 'HEAD' }).then((r) => r.ok, () => false);
  if (!built) {
    message('fatal', 'The web worker is not built on this server: run worker-wasm/build.sh, then reload.', true);
    $('start').disabled = true;
    return;
  }
  state.seed = await identity();
  worker.postMessage({ cmd: 'pubkey', seed: state.seed });
  await new Promise((r) => {
    const t = setInterval(() => state.key && (clearInterval(t), r()), 20);
  });
  loadTasks();
  renderTasks();
  document.body.dataset.key = state.key;
  $('start').onclick = start;
  $('pause').onclick = pause;
  $('throttle').oninput = () => {
    const v = Number($('throttle').value);
    $('throttle-value').textContent = `${v}%`;
    worker.postMessage({ cmd: 'throttle', share: v / 100 });
  };
  document.addEventListener('visibilitychange', () => {
    worker.postMessage({ cmd: 'visible', visible: document.visibilityState === 'visible' });
  });
  $('export').onclick = () => download(`lupus-${state.key.slice(0, 8)}.key`, `${state.seed}\n`, 'text/plain');
  $('import').onchange = async () => {
    const f = $('import').files[0];
    if (!f) return;
    const text = (await f.text()).trim();
    if (!/^[0-9a-f]{64}$/i.test(text)) {
      message('import', 'That file is not a Lupus key (64 hex digits, as `lupus keygen` writes).', true);
      return;
    }
    await saveSeed(text.toLowerCase());
    message('import', 'Key imported. Reloading with the new identity...');
    setTimeout(() => location.reload(), 600);
  };
  $('statement').onclick = () => {
    if (state.statement) {
      download(`lupus-stake-${state.key.slice(0, 8)}.json`, JSON.stringify(state.statement, null, 2), 'application/json');
    }
  };
  document.body.dataset.loaded = '1';
  if (params.get('kat') === 'cpu') worker.postMessage({ cmd: 'kat-cpu' });
  if (params.get('bench')) {
    worker.postMessage({ cmd: 'bench', job: params.get('bench'), steps: Number(params.get('steps') || 5) });
    return;
  }
  refresh();
  setInterval(refresh, 3000);
  if (params.get('autostart') === '1') start();
}

main().catch((e) => message('fatal', `The page could not start: ${e.message || e}`, true));
