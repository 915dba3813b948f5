// Reads libm_exp.c's doubles and compares each with Math.exp over the same xorshift sequence (see run.sh).

import { execSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";

const [bin, out] = process.argv.slice(2);
const b = readFileSync(bin);
const c = new Float64Array(b.buffer, b.byteOffset, b.length / 8);
let s = 0x9e3779b97f4a7c15n;
const M = (1n << 64n) - 1n;
let doubles = 0;
let fp32 = 0;
for (let i = 0; i < c.length; i++) {
  s ^= (s << 13n) & M;
  s ^= s >> 7n;
  s ^= (s << 17n) & M;
  const u = Number(s >> 11n) / 9007199254740992;
  const x = i & 1 ? (u - 0.5) * 40 : -40 * u;
  const v = Math.exp(x);
  if (v !== c[i]) {
    doubles++;
    if (Math.fround(v) !== Math.fround(c[i])) fp32++;
  }
}
const glibc = execSync("ldd --version").toString().split("\n")[0];
const result = {
  date: new Date().toISOString(),
  node: process.version,
  libc: glibc,
  samples: c.length,
  doubles_differ: doubles,
  fp32_differ: fp32,
};
writeFileSync(out, `${JSON.stringify(result, null, 1)}\n`);
console.log(result);
