/**
 * How long loading a model holds the event loop: the longest gap between ticks of a 1 ms interval while
 * `loadModel` + `createContext` + the first `tokenize` run, ours and then llama.cpp's (node-llama-cpp 3.21.1,
 * prebuilt CPU: getLlama + loadModel + createContext + tokenize) on the same GGUF, one after the other. Each
 * engine loads `--runs` times (the first run also reads the file into the page cache, so the later ones show the
 * engine's own work); prints the longest stall and the total time per run.
 *   npx tsx bench/load-stall.bench.ts [--model bench/results/qwen2-0.5b-shape-q8_0.gguf] [--runs 3]
 * (the default model is written by `npm run bench`)
 */
import { existsSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { getLlama, LlamaLogLevel } from 'node-llama-cpp';
import { loadModel } from '../lib/index.js';

const { values } = parseArgs({ options: { model: { type: 'string', default: 'bench/results/qwen2-0.5b-shape-q8_0.gguf' }, runs: { type: 'string', default: '3' } } });
if (!existsSync(values.model)) {
  console.error(`${values.model} not found: run \`npm run bench\` once (it writes the Qwen2-shape models), or pass --model`);
  process.exit(1);
}
const runs = Number(values.runs);
const text = 'The quick brown fox jumps over the lazy dog. '.repeat(20);

// The longest gap between 1 ms interval ticks while `work` runs (a blocked loop shows as one long gap).
async function stall(work: () => Promise<void>): Promise<{ maxGapMs: number; totalMs: number }> {
  let last = performance.now(), maxGap = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    maxGap = Math.max(maxGap, now - last);
    last = now;
  }, 1);
  const t0 = performance.now();
  await work();
  const totalMs = performance.now() - t0;
  await new Promise((r) => setTimeout(r, 5));  // (a last tick measures a stall at the very end)
  clearInterval(timer);
  return { maxGapMs: maxGap, totalMs };
}

console.log(`${values.model}: longest event-loop stall during load + context + first tokenize (1 ms interval), ${runs} runs per engine`);
console.log('engine       run   longest stall     total');
for (let r = 0; r < runs; r++) {
  const m = await stall(async () => {
    const model = await loadModel({ path: values.model });
    const ctx = await model.createContext({ contextSize: 2048 });
    model.tokenize(text);
    await ctx.dispose();
    await model.dispose();
  });
  console.log(`thinkcache   ${String(r + 1).padStart(3)}   ${m.maxGapMs.toFixed(1).padStart(9)} ms   ${m.totalMs.toFixed(0).padStart(6)} ms`);
}
const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
for (let r = 0; r < runs; r++) {
  const m = await stall(async () => {
    const model = await llama.loadModel({ modelPath: values.model, gpuLayers: 0 });
    const ctx = await model.createContext({ contextSize: 2048 });
    model.tokenize(text);
    await ctx.dispose();
    await model.dispose();
  });
  console.log(`llama.cpp    ${String(r + 1).padStart(3)}   ${m.maxGapMs.toFixed(1).padStart(9)} ms   ${m.totalMs.toFixed(0).padStart(6)} ms`);
}
