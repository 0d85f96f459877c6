// Browser benchmark: step time of a job's model on WebGPU and on the CPU path in wasm,
// in the same headless Chromium; the wasm size gzipped; the tab's memory while training.
// The native baseline is `cargo run --release -p lupus-bench --features gpu -- worker --steps 5`.
//
//   node bench.mjs [gpt|mlp|tiny] [STEPS]
//
// Serves worker-wasm/www and worker-wasm/pkg itself (no coordinator is needed) and opens
// `/?bench=<job>&steps=<n>`, which runs `bench_step_ms` in the page's Web Worker.

import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { join, resolve, dirname, extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const www = resolve(here, '../www');
const pkg = resolve(here, '../pkg');
const job = process.argv[2] || 'mlp';
const steps = Number(process.argv[3] || 5);
const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm' };

const server = createServer(async (req, res) => {
  const path = new URL(req.url, 'http://x').pathname;
  const file = path === '/' ? join(www, 'index.html')
    : path.startsWith('/pkg/') ? join(pkg, path.slice(5)) : join(www, path.slice(1));
  try {
    const body = await readFile(file);
    res.writeHead(200, { 'content-type': types[extname(file)] || 'application/octet-stream' });
    res.end(req.method === 'HEAD' ? undefined : body);
  } catch {
    res.writeHead(404);
    res.end();
  }
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const base = `http://127.0.0.1:${server.address().port}`;

const wasm = readFileSync(join(pkg, 'lupus_worker_bg.wasm'));
const js = readFileSync(join(pkg, 'lupus_worker.js'));
const gz = gzipSync(wasm, { level: 9 }).length + gzipSync(js, { level: 9 }).length;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--enable-unsafe-webgpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});
try {
  const page = await browser.newPage();
  await page.goto(`${base}/?bench=${job}&steps=${steps}`);
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Performance.enable');
  let peakHeap = 0;
  let result = null;
  const t0 = Date.now();
  while (!result && Date.now() - t0 < 600_000) {
    const m = Object.fromEntries((await cdp.send('Performance.getMetrics')).metrics.map((x) => [x.name, x.value]));
    peakHeap = Math.max(peakHeap, m.JSHeapUsedSize || 0);
    result = await page.evaluate(() => document.body.dataset.bench);
    if (!result) await new Promise((r) => setTimeout(r, 200));
  }
  if (!result) throw new Error('the benchmark did not finish');
  const r = JSON.parse(result);
  const mib = (b) => (b / 2 ** 20).toFixed(1);
  console.log(`job ${job}, median of ${steps} steps after one warm-up, headless Chromium`);
  console.log(`  wasm CPU path : ${r.cpu.ms.toFixed(2)} ms/step`);
  if (r.gpu) console.log(`  WebGPU        : ${r.gpu.ms.toFixed(2)} ms/step on ${r.gpu.device}, ${r.gpu.path} (${(r.gpu.ms / r.cpu.ms).toFixed(2)}x the wasm CPU path)`);
  else console.log(`  WebGPU        : unavailable (${r.gpuError || 'no navigator.gpu'})`);
  console.log(`  wasm size     : ${wasm.length} bytes, ${gz} bytes gzipped with its JS glue (target < 1 MB)`);
  console.log(`  tab memory    : wasm linear memory ${mib(r.wasmBytes)} MiB after the CPU run, ${mib(r.wasmBytesAfter)} MiB after both; page JS heap peak ${mib(peakHeap)} MiB`);
} finally {
  await browser.close();
  server.close();
}
