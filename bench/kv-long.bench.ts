/**
 * Long-context decode with compressed KV caches vs the full cache and llama.cpp's f16 and q4_0 caches, on
 * the Qwen2-0.5B-shaped Q8_0 file: decode tok/s and KV bytes at growing contexts. Each engine prefills to a
 * context, decodes `settle` steps (so lagged policies have evicted), then times `decode` steps. One engine
 * after the other, same threads.
 *
 *   node --expose-gc --import tsx bench/kv-long.bench.ts [--contexts 1024,4096,8192] [--threads 2]
 *        [--configs full,lazy,rlkv75,llama.cpp] [--capacity 2048] [--window 128]
 *   configs: full lazy rlkv50 rlkv75 rlkv50+lazy rot2 rot2-g32 rot2-grouped rot2-post rot3 rot4 q4 q8 rot2+lazy llama.cpp llama.cpp-q4_0 llama.cpp-q8_0
 *   (rot* use RotateKV's group of 128 channels, i.e. the whole 64-channel head here, unless -g32)
 *
 * By default each engine grows one sequence through the contexts (fill up to the next context, settle, time,
 * go on), so the largest context is prefilled once; --fresh clears and refills for every context.
 * Results: table on stdout, JSON lines in bench/results/kv-long.jsonl.
 */
import { appendFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { getLlama, LlamaLogLevel } from 'node-llama-cpp';
import { loadModel, type KvOptions } from '../lib/index.js';
import { makeTinyGguf } from '../test/fixtures/make-tiny-gguf.js';

const here = dirname(fileURLToPath(import.meta.url));
const { values } = parseArgs({
  options: {
    contexts: { type: 'string', default: '1024,4096,8192' },
    threads: { type: 'string', default: '2' },
    configs: { type: 'string', default: 'full,lazy,rlkv75,llama.cpp' },
    capacity: { type: 'string', default: '2048' },
    window: { type: 'string', default: '128' },
    decode: { type: 'string', default: '16' },
    fresh: { type: 'boolean', default: false },
  },
});
const contexts = values.contexts.split(',').map(Number);
const threads = Number(values.threads);
const nDecode = Number(values.decode);
const C = Number(values.capacity), W = Number(values.window);
const modelPath = join(here, 'results', 'qwen2-0.5b-shape-q8_0.gguf');
if (!existsSync(modelPath)) {
  makeTinyGguf({ arch: 'qwen2', type: 'q8_0', seed: 7, outPath: modelPath, nEmbd: 896, nLayer: 24, nHead: 14, nHeadKv: 2, headDim: 64, nFf: 4864, nCtxTrain: 32768, tiedOutput: true });
}
const maxCtx = Math.max(...contexts) + (values.fresh ? 1 : contexts.length) * (W + nDecode + 1) + 16;
const tokens = (n: number, seed: number) => { let s = seed >>> 0; return Array.from({ length: n }, () => 1000 + ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) % 100000)); };
const profile = (L: number, H: number) => { let s = 99; return Array.from({ length: L }, () => Array.from({ length: H }, () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296))); };

const CONFIGS: Record<string, (L: number, H: number) => KvOptions | undefined> = {
  full: () => undefined,
  lazy: () => ({ eviction: { policy: 'lazy', capacity: C, window: W, protect: 4 } }),
  rlkv50: (L, H) => ({ heads: { profile: profile(L, H), sparsity: 0.5, stream: { sinks: 16, recent: 64 } } }),
  rlkv75: (L, H) => ({ heads: { profile: profile(L, H), sparsity: 0.75, stream: { sinks: 16, recent: 64 } } }),
  'rlkv50+lazy': (L, H) => ({ heads: { profile: profile(L, H), sparsity: 0.5, stream: { sinks: 16, recent: 64 } }, eviction: { policy: 'lazy', capacity: C, window: W, protect: 4 } }),
  rot2: () => ({ storage: { key: 'rot2', value: 'rot2', groupSize: 64 } }),
  'rot2-g32': () => ({ storage: { key: 'rot2', value: 'rot2', groupSize: 32 } }),
  // RotateKV's grouped-head key rotation over both KV heads of the Qwen2 shape (FWHT of 2·64 channels)
  'rot2-grouped': () => ({ storage: { key: 'rot2', value: 'rot2', groupSize: 64, rotationGroup: 2 } }),
  'rot2-post': () => ({ storage: { key: 'rot2', value: 'rot2', groupSize: 64, variant: 'post-rope' } }),
  rot3: () => ({ storage: { key: 'rot3', value: 'rot3', groupSize: 64 } }),
  rot4: () => ({ storage: { key: 'rot4', value: 'rot4', groupSize: 64 } }),
  q4: () => ({ storage: { key: 'q4', value: 'q4' } }),
  q8: () => ({ storage: { key: 'q8', value: 'q8' } }),
  // lazy's kept tokens as 2-bit codes past its window W (codes on evicting heads, ALGORITHMS.md §6.2 C5)
  'rot2+lazy': () => ({ storage: { key: 'rot2', value: 'rot2', groupSize: 64 }, eviction: { policy: 'lazy', capacity: C, window: W, protect: 4 } }),
};

// llama.cpp caches: bytes per element (f16 2; q4_0 18 B per 32; q8_0 34 B per 32)
const LLAMA_KV: Record<string, { type?: 'Q4_0' | 'Q8_0'; bytesPerElement: number; label: string }> = {
  'llama.cpp': { bytesPerElement: 2, label: 'llama.cpp f16' },
  'llama.cpp-q4_0': { type: 'Q4_0', bytesPerElement: 18 / 32, label: 'llama.cpp q4_0' },
  'llama.cpp-q8_0': { type: 'Q8_0', bytesPerElement: 34 / 32, label: 'llama.cpp q8_0' },
};

interface Row { engine: string; context: number; decodeTokensPerSecond: number; kvBytes: number; kvAllocated: number }
const rows: Row[] = [];

for (const name of values.configs.split(',')) {
  const lk = LLAMA_KV[name];
  if (lk) {
    const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
    const model = await llama.loadModel({ modelPath, gpuLayers: 0 });
    const ctx = await model.createContext({
      contextSize: maxCtx, threads, batchSize: 512,
      ...(lk.type ? { experimentalKvCacheKeyType: lk.type, experimentalKvCacheValueType: lk.type, flashAttention: true } : {}),
    });
    const seq = ctx.getSequence();
    for (const c of contexts) {
      if (values.fresh) await seq.clearHistory();
      const have = seq.nextTokenIndex;
      const fill = tokens(Math.max(1, c - have), c);
      const gen = seq.evaluate(fill as never, { temperature: 0 });
      let n = 0, t0 = 0;
      for await (const _ of gen) {
        n++;
        if (n === W + 1) t0 = performance.now();
        if (n >= W + 1 + nDecode) break;
      }
      const dt = (performance.now() - t0) / nDecode;
      // K + V of every token held: layers × KV heads × head_dim × 2 tensors × bytes per element (analytic;
      // llama.cpp allocates the whole context up front and pads cells to 256, so its allocation is larger)
      const kvBytes = 24 * 2 * 64 * 2 * lk.bytesPerElement * seq.nextTokenIndex;
      rows.push({ engine: lk.label, context: c, decodeTokensPerSecond: 1000 / dt, kvBytes, kvAllocated: 24 * 2 * 64 * 2 * lk.bytesPerElement * maxCtx });
    }
    await ctx.dispose();
    await model.dispose();
    continue;
  }
  const make = CONFIGS[name];
  if (!make) throw new Error(`unknown config ${name} (known: ${Object.keys(CONFIGS).join(', ')}, ${Object.keys(LLAMA_KV).join(', ')})`);
  const model = await loadModel({ path: modelPath });
  const kv = make(model.info.nLayer, model.info.nHeadKv);
  const ctx = await model.createContext({ contextSize: maxCtx, threads, batchSize: 512, ...(kv ? { kv } : {}) });
  const seq = ctx.acquireSequence();
  for (const c of contexts) {
    if (values.fresh) await seq.clear();
    const fill = tokens(Math.max(1, c - seq.memory().logicalTokens), c);
    for (let i = 0; i < fill.length; i += 512) await seq.evaluate(fill.slice(i, i + 512));
    let next = 7;
    for (let i = 0; i < W; i++) await seq.evaluate([1000 + (next = (next * 31 + i) % 90000)]);
    const t0 = performance.now();
    for (let i = 0; i < nDecode; i++) await seq.evaluate([1000 + (next = (next * 31 + i) % 90000)]);
    const dt = (performance.now() - t0) / nDecode;
    const mem = seq.memory();
    rows.push({ engine: `thinkcache ${name}`, context: c, decodeTokensPerSecond: 1000 / dt, kvBytes: mem.bytesUsed, kvAllocated: mem.bytesAllocated });
  }
  await ctx.dispose();
  await model.dispose();
}

const stamp = new Date().toISOString();
console.log(`model ${modelPath} (Qwen2-0.5B shape, Q8_0), threads ${threads}; lazy C=${C} W=${W}; decode timed after ${W} settling steps` +
  (values.fresh ? '; fresh sequence per context' : '; one growing sequence per engine (contexts are the prefill targets)'));
console.log('engine                     context  decode tok/s   KV bytes used   KV allocated   vs llama.cpp f16 (speed, bytes)');
for (const r of rows) {
  const ref = rows.find((x) => x.engine === 'llama.cpp f16' && x.context === r.context);
  const vs = ref ? `${(r.decodeTokensPerSecond / ref.decodeTokensPerSecond).toFixed(2)}×, ${(r.kvBytes / ref.kvBytes).toFixed(3)}` : '';
  console.log(`${r.engine.padEnd(26)} ${String(r.context).padStart(7)}  ${r.decodeTokensPerSecond.toFixed(1).padStart(12)}  ${(r.kvBytes / 1048576).toFixed(1).padStart(10)} MiB  ${(r.kvAllocated / 1048576).toFixed(1).padStart(9)} MiB   ${vs}`);
  appendFileSync(join(here, 'results', 'kv-long.jsonl'), JSON.stringify({ time: stamp, threads, C, W, ...r }) + '\n');
}
