// End to end: real coordinators (`lupus up`) and a native verifier; the volunteer page in
// Debian's Chromium (playwright-core) starts by itself (`/?autostart=1`), completes at
// least two tasks that pass their challenges, and its key then shows a non-zero balance
// in /v1/stake/<key> whose statement verifies offline. Then: work only while visible,
// pause stops work within one step, and a reload keeps the identity. Three volunteers:
//
// - on the default job (the Shakespeare GPT), a tab with WebGPU (SwiftShader here) that
//   picks its device by timing the job on both paths and shows both figures;
// - on the default job, a tab with WebGPU off (`/?gpu=0`): the CPU path in wasm;
// - on the tiny test job, a tab forced onto WebGPU (`/?gpu=1`), so the WGSL kernels
//   train real tasks end to end (a GPT task on SwiftShader's per-operator path would
//   take many minutes).
//
//   node e2e.mjs            (LUPUS=<path to the lupus binary>, default target/debug/lupus)
//
// Prints figures (step times, tab memory) as it goes; exits non-zero on any failure.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import net from 'node:net';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');
const lupus = process.env.LUPUS || join(root, 'target/debug/lupus');
const verifyStake = process.env.LUPUS_VERIFY_STAKE; // optional prebuilt example binary
// Optional: the `participant` example (lupus_worker::native). When given, it is the
// verifier (instead of `lupus verify`) and a native worker runs two tasks at the end.
const participant = process.env.LUPUS_PARTICIPANT;
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
const timeoutMs = Number(process.env.E2E_TIMEOUT_MS || 600_000);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const children = [];
const dirs = [];

function freePort() {
  return new Promise((res, rej) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
    s.on('error', rej);
  });
}

function start(args, name, bin = lupus) {
  const p = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  p.stdout.on('data', (d) => (log += d));
  p.stderr.on('data', (d) => (log += d));
  p.on('exit', (code) => {
    if (code && !p.stopping) console.error(`${name} exited with ${code}:\n${log.slice(-4000)}`);
  });
  p.log = () => log;
  children.push(p);
  return p;
}

async function waitFor(what, f, ms = timeoutMs) {
  const t0 = Date.now();
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await sleep(500);
  }
}

async function json(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

function check(cond, text) {
  if (!cond) throw new Error(`FAILED: ${text}`);
  console.log(`ok - ${text}`);
}

async function coordinator(job) {
  const dir = mkdtempSync(join(tmpdir(), 'lupus-e2e-'));
  dirs.push(dir);
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  start([
    'up', '--data-dir', join(dir, 'data'), ...(job ? ['--job', join(root, job)] : []),
    // A closed tab leaves its task assigned: expire it soon, not after the default 300 s,
    // but not before a slow tab finishes one (a GPT task is 128 steps of ~0.2-0.6 s in
    // wasm on a busy 2-core machine).
    '--tasks-per-round', '2', '--task-timeout', job ? '30' : '150', '--listen', `127.0.0.1:${port}`, '--web', join(root, 'worker-wasm/www'),
  ], 'coordinator');
  await waitFor('the coordinator', () => fetch(`${base}/v1/job`).then((r) => r.ok, () => false), 120_000);
  if (participant) start(['verifier', base, join(dir, 'verifier.key')], 'verifier', participant);
  else start(['verify', '--coordinator', base, '--key', join(dir, 'verifier.key')], 'verifier');
  return { base, dir };
}

async function volunteer(browser, base, dir, mode) {
  const label = { force: 'WebGPU (forced)', auto: 'device by measurement', off: 'CPU (WebGPU off)' }[mode];
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('console', (m) => m.type() === 'error' && console.log(`  [page] ${m.text()}`));
  const t0 = Date.now();
  const gpu = { force: '&gpu=1', auto: '', off: '&gpu=0' }[mode];
  await page.goto(`${base}/?autostart=1${gpu}`);
  const key = await waitFor('the page identity', () => page.evaluate(() => document.body.dataset.key));
  const device = await waitFor('the device', () => page.evaluate(() => {
    const d = document.getElementById('device').textContent;
    return d && d !== 'not started' ? d : null;
  }));
  console.log(`# ${label}: key ${key}, device ${device}, class ${await page.textContent('#class')}`);
  if (mode === 'force') check(device.startsWith('WebGPU'), `${label}: the page trains on WebGPU`);
  if (mode === 'off') check(device.startsWith('CPU'), `${label}: the page trains on the CPU path`);
  if (mode === 'auto') {
    // "<device>; measured on this job: <chosen> against <other> for <other device>",
    // each figure "N ms/step" or "gave up after a N ms first step".
    const m = device.match(/measured on this job: (\d+) ms\/step against (?:(\d+) ms\/step|gave up after a (\d+) ms first step)/);
    check(m !== null, `${label}: the page timed the job on both paths (${device})`);
    const [chosen, other, gaveUp] = [Number(m[1]), m[2] && Number(m[2]), m[3] && Number(m[3])];
    check(gaveUp ? gaveUp > chosen : chosen <= other, `${label}: it trains on the faster (${chosen} ms/step against ${other || `a ${gaveUp} ms first step`})`);
  }

  await waitFor('two accepted tasks', () => page.evaluate(() => Number(document.body.dataset.accepted || 0) >= 2));
  check(true, `${label}: the browser volunteer completed two tasks that passed their challenges (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  const stepMs = await page.textContent('#step-time');
  const mem = await page.evaluate(() => Number(document.body.dataset.wasmMemory || 0));
  const cdp = await context.newCDPSession(page);
  await cdp.send('Performance.enable');
  const metrics = Object.fromEntries((await cdp.send('Performance.getMetrics')).metrics.map((m) => [m.name, m.value]));
  console.log(`# ${label}: last step ${stepMs}; wasm memory ${(mem / 2 ** 20).toFixed(1)} MiB; page JS heap ${(metrics.JSHeapUsedSize / 2 ** 20).toFixed(1)} MiB`);

  const statement = await waitFor('a non-zero stake', async () => {
    const r = await fetch(`${base}/v1/stake/${key}`);
    if (!r.ok) return null;
    const s = await r.json();
    return BigInt(s.balance) > 0n ? s : null;
  });
  check(BigInt(statement.balance) > 0n, `${label}: /v1/stake/<key> shows ${statement.balance} of ${statement.total} shares`);
  const job = await json(`${base}/v1/job`);
  const file = join(dir, `statement-${key.slice(0, 8)}.json`);
  writeFileSync(file, JSON.stringify(statement));
  const cmd = verifyStake
    ? [verifyStake, [file, job.log_key]]
    : ['cargo', ['run', '-q', '-p', 'lupus-worker', '--example', 'verify_stake', '--', file, job.log_key]];
  const out = execFileSync(cmd[0], cmd[1], { cwd: root, encoding: 'utf8' });
  check(out.startsWith('verified'), `${label}: the statement verifies offline (${out.trim()})`);

  // Work only while the tab is visible: hide it (as the browser would, by the page's
  // visibility state), steps stop; show it again, steps resume.
  const setVisible = (v) => page.evaluate((v) => {
    Object.defineProperty(document, 'visibilityState', { value: v ? 'visible' : 'hidden', configurable: true });
    document.dispatchEvent(new Event('visibilitychange'));
  }, v);
  await setVisible(false);
  await sleep(1500);
  const h1 = await page.evaluate(() => Number(document.body.dataset.steps || 0));
  await sleep(3000);
  const h2 = await page.evaluate(() => Number(document.body.dataset.steps || 0));
  await setVisible(true);
  const resumed = await waitFor('work to resume', () => page.evaluate((h) => Number(document.body.dataset.steps || 0) > h, h2), 60_000)
    .catch(() => false);
  check(h1 === h2 && resumed, `${label}: works only while the tab is visible (no step in 3 s while hidden, resumed when shown)`);

  // Pause stops work within one step: after the click, at most the step in progress
  // completes.
  // Click while steps are running: wait for the step counter to move first.
  const moving = await page.evaluate(() => new Promise((done) => {
    const start = Number(document.body.dataset.steps || 0);
    const t0 = performance.now();
    const poll = () => {
      if (Number(document.body.dataset.steps || 0) !== start) done(true);
      else if (performance.now() - t0 > 60_000) done(false);
      else setTimeout(poll, 2);
    };
    poll();
  }));
  await page.click('#pause');
  const at = await waitFor('the pause to reach the worker', () => page.evaluate(() => document.body.dataset.pausedAt), 20_000);
  await waitFor('the pause', () => page.evaluate(() => document.getElementById('state').textContent === 'Paused'), 20_000)
    .catch(() => null);
  const s1 = await page.evaluate(() => Number(document.body.dataset.steps || 0));
  await sleep(3000);
  const s2 = await page.evaluate(() => Number(document.body.dataset.steps || 0));
  check(moving && s2 === s1 && s1 - Number(at) <= 1,
    `${label}: pause stops work within one step (clicked while training; the worker had done ${at} steps, ${s1 - Number(at)} more finished, ${s2 - s1} in the next 3 s)`);

  // Reloading keeps the identity.
  await page.reload();
  const key2 = await waitFor('the identity after reload', () => page.evaluate(() => document.body.dataset.key));
  check(key2 === key, `${label}: reloading the page keeps the identity`);
  await context.close();
}

async function main() {
  const flags = ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'];
  const main = await coordinator(null);
  const withGpu = await chromium.launch({ executablePath: chromiumPath, headless: true, args: [...flags, '--enable-unsafe-webgpu'] });
  try {
    await volunteer(withGpu, main.base, main.dir, 'auto');
    const tiny = await coordinator('jobs/tiny-test.toml');
    await volunteer(withGpu, tiny.base, tiny.dir, 'force');
  } finally {
    await withGpu.close();
  }
  const noGpu = await chromium.launch({ executablePath: chromiumPath, headless: true, args: flags });
  try {
    await volunteer(noGpu, main.base, main.dir, 'off');
  } finally {
    await noGpu.close();
  }
  if (participant) {
    const out = execFileSync(participant, ['worker', main.base, join(main.dir, 'native-worker.key'), '--max', '2'], { encoding: 'utf8', timeout: timeoutMs });
    check(/^worker: [2-9]\d* done/.test(out), `native runner (lupus_worker::native): ${out.trim()}`);
  }
}

const cleanup = () => {
  for (const c of children) {
    c.stopping = true;
    c.kill('SIGTERM');
  }
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
};
main().then(
  () => { cleanup(); console.log('e2e: all passed'); },
  (e) => { console.error(e.message); for (const c of children) console.error(c.log().slice(-3000)); cleanup(); process.exit(1); },
);
