// Runs the known-answer suite compiled to wasm32 (src/lib.rs beside this file) and compares
// its digest with the digest of the native reference pins. Exit 0 only when equal.
// Usage: node kat.mjs path/to/lupus_kat_wasm.wasm
import { readFile } from "node:fs/promises";

const path = process.argv[2];
if (!path) {
  console.error("usage: node kat.mjs <kat_wasm.wasm>");
  process.exit(2);
}
const { instance } = await WebAssembly.instantiate(await readFile(path), {});
const e = instance.exports;
const hex = (f) =>
  Array.from({ length: 32 }, (_, i) => f(i).toString(16).padStart(2, "0")).join("");
const exact = e.kat_run() === 1;
const got = hex(e.kat_digest_byte);
const want = hex(e.kat_expected_digest_byte);
console.log(`wasm32 digest:    ${got}`);
console.log(`native reference: ${want}`);
if (exact && got === want) {
  console.log("1 passed, 0 failed: wasm32 is in the exact class");
} else {
  console.log("0 passed, 1 failed: wasm32 differs from the native reference");
  process.exit(1);
}
