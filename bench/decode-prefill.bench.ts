/**
 * Decode and prefill speed, ours vs llama.cpp (node-llama-cpp 3.21.1, prebuilt CPU), on the same GGUF
 * in the same run, one engine after the other, same thread count, plus a roofline line per decode row.
 *
 *   npm run bench                      # Qwen2-0.5B shape, Q8_0, contexts 64/1K/4K/8K, prefill 512, 2 threads
 *   npm run bench -- --shapes qwen2-0.5b,qwen2-1.5b --types q8_0,q4_k_m,q6_k --contexts 64,1024 --threads 2
 *
 * Files are generated once (seeded random weights; speed does not depend on the values) into bench/results/
 * (gitignored): the Q8_0 file by the fixture generator, the other types by OUR quantizer from it
 * (`thinkcache quantize`), so both engines read identical bytes.
 * Roofline: bytes read per decoded token (every weight matrix once — the tied output matrix included —
 * plus the f16 K and V of every cached position) ÷ time per token, against the read bandwidth measured
 * here (memcmp of two 512 MiB buffers). Results: a table on stdout and JSON lines in bench/results/.
 */
import { appendFileSync, existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { getLlama, LlamaLogLevel } from 'node-llama-cpp';
import { readGgufInfo, quantizeGguf } from '../lib/gguf.js';
import { loadModel } from '../lib/index.js';
import { makeTinyGguf } from '../test/fixtures/make-tiny-gguf.js';

const here = dirname(fileURLToPath(import.meta.url));
const resultsDir = join(here, 'results');

const { values } = parseArgs({
  options: {
    shapes: { type: 'string', default: 'qwen2-0.5b' },
    types: { type: 'string', default: 'q8_0' },
    type: { type: 'string' }, // old spelling of --types
    contexts: { type: 'string', default: '64,1024,4096,8192' },
    threads: { type: 'string', default: '2' },
    decode: { type: 'string', default: '32' },
    prefill: { type: 'string', default: '512' },
    engines: { type: 'string', default: 'thinkcache,llama.cpp' },
  },
});
const contexts = values.contexts.split(',').map(Number);
const threads = Number(values.threads);
const nDecode = Number(values.decode);
const nPrefill = Number(values.prefill);
const types = (values.type ?? values.types).split(',');
const engines = values.engines.split(',');

interface Shape { nEmbd: number; nLayer: number; nHead: number; nHeadKv: number; headDim: number; nFf: number; nCtxTrain: number; tiedOutput: boolean }
// Qwen2 shapes: 151936 vocab, tied embeddings (as the real 0.5B and 1.5B)
const SHAPES: Record<string, Shape> = {
  'qwen2-0.5b': { nEmbd: 896, nLayer: 24, nHead: 14, nHeadKv: 2, headDim: 64, nFf: 4864, nCtxTrain: 32768, tiedOutput: true },
  'qwen2-1.5b': { nEmbd: 1536, nLayer: 28, nHead: 12, nHeadKv: 2, headDim: 128, nFf: 8960, nCtxTrain: 32768, tiedOutput: true },
};

async function modelFile(shapeName: string, type: string): Promise<string> {
  const shape = SHAPES[shapeName];
  if (!shape) throw new Error(`unknown shape ${shapeName} (known: ${Object.keys(SHAPES).join(', ')})`);
  mkdirSync(resultsDir, { recursive: true });
  const q8 = join(resultsDir, `${shapeName}-shape-q8_0.gguf`);
  if (!existsSync(q8)) {
    process.stderr.write(`generating ${q8} ...\n`);
    makeTinyGguf({ arch: 'qwen2', type: 'q8_0', seed: 7, outPath: q8, ...shape });
  }
  if (type === 'q8_0') return q8;
  const path = join(resultsDir, `${shapeName}-shape-${type}.gguf`);
  if (!existsSync(path)) {
    process.stderr.write(`quantizing ${path} ...\n`);
    await quantizeGguf(q8, path, { type, threads });
  }
  return path;
}

/** Bytes a decode step reads: each matrix once (the tied token_embd is the output matrix), one embedding row, f16 KV of `ctx` positions. */
async function bytesPerToken(path: string, shape: Shape, ctx: number): Promise<number> {
  const info = await readGgufInfo(path);
  const weights = info.tensors.reduce((s, t) => s + t.bytes, 0);
  const kv = ctx * shape.nLayer * shape.nHeadKv * shape.headDim * 2 * 2;
  return weights + kv;
}

/** Read bandwidth of this machine: memcmp over two equal 512 MiB buffers, best of 3 (GB/s). */
function measureBandwidth(): number {
  const n = 512 << 20;
  const a = Buffer.alloc(n, 1), b = Buffer.alloc(n, 1);
  let best = Infinity;
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now();
    if (Buffer.compare(a, b) !== 0) throw new Error('unexpected');
    best = Math.min(best, performance.now() - t0);
  }
  return (2 * n) / (best / 1000) / 1e9;
}

// the same pseudo-random prompt for both engines (ordinary token ids, no specials)
function promptTokens(n: number, seed: number): number[] {
  let s = seed >>> 0;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out.push(1000 + (s % 100000));
  }
  return out;
}

interface Row { engine: string; shape: string; type: string; scenario: string; context: number; tokensPerSecond: number }
const rows: Row[] = [];

async function benchOurs(path: string, shape: string, type: string): Promise<void> {
  const model = await loadModel({ path });
  const maxCtx = Math.max(...contexts, nPrefill) + nDecode + 8;
  const ctx = await model.createContext({ contextSize: maxCtx, threads, batchSize: 512 });
  const seq = ctx.acquireSequence();
  const run = async (prompt: number[], maxTokens: number) => {
    await seq.clear();
    for await (const ev of seq.generate(prompt, { maxTokens, stopAtEog: false })) if (ev.type === 'finish') return ev;
    throw new Error('no finish');
  };
  await run(promptTokens(16, 1), 4); // warm-up (page in the weights)
  const pf = await run(promptTokens(nPrefill, 2), 1);
  rows.push({ engine: 'thinkcache', shape, type, scenario: `prefill ${nPrefill}`, context: nPrefill, tokensPerSecond: pf.timings.prefillTokensPerSecond });
  for (const c of contexts) {
    const ev = await run(promptTokens(c, 3 + c), nDecode + 1);
    rows.push({ engine: 'thinkcache', shape, type, scenario: 'decode', context: c, tokensPerSecond: ev.timings.decodeTokensPerSecond });
  }
  await model.dispose();
}

async function benchLlamaCpp(path: string, shape: string, type: string): Promise<void> {
  const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath: path, gpuLayers: 0 });
  const maxCtx = Math.max(...contexts, nPrefill) + nDecode + 8;
  const ctx = await model.createContext({ contextSize: maxCtx, threads, batchSize: 512 });
  const seq = ctx.getSequence();
  const run = async (prompt: number[], maxTokens: number) => {
    await seq.clearHistory();
    const t0 = performance.now();
    let tFirst = 0;
    let n = 0;
    for await (const _tok of seq.evaluate(prompt as never, { temperature: 0 })) {
      n++;
      if (n === 1) tFirst = performance.now();
      if (n >= maxTokens) break;
    }
    const tEnd = performance.now();
    return { prefillTps: (prompt.length / (tFirst - t0)) * 1000, decodeTps: n > 1 ? ((n - 1) / (tEnd - tFirst)) * 1000 : 0 };
  };
  await run(promptTokens(16, 1), 4);
  const pf = await run(promptTokens(nPrefill, 2), 1);
  rows.push({ engine: 'llama.cpp', shape, type, scenario: `prefill ${nPrefill}`, context: nPrefill, tokensPerSecond: pf.prefillTps });
  for (const c of contexts) {
    const r = await run(promptTokens(c, 3 + c), nDecode + 1);
    rows.push({ engine: 'llama.cpp', shape, type, scenario: 'decode', context: c, tokensPerSecond: r.decodeTps });
  }
  await ctx.dispose();
  await model.dispose();
}

const bandwidth = measureBandwidth();
const stamp = new Date().toISOString();
console.log(`\nthreads ${threads}, decode ${nDecode} tokens per context, prefill ${nPrefill}; measured read bandwidth ${bandwidth.toFixed(1)} GB/s`);
for (const shapeName of values.shapes.split(',')) {
  for (const type of types) {
    const path = await modelFile(shapeName, type);
    if (engines.includes('thinkcache')) await benchOurs(path, shapeName, type);
    if (engines.includes('llama.cpp')) await benchLlamaCpp(path, shapeName, type);
    const mine = rows.filter((r) => r.shape === shapeName && r.type === type);
    console.log(`\n${shapeName} ${type}: ${path}`);
    console.log('scenario            context   thinkcache tok/s   llama.cpp tok/s   ratio   roofline (ours: GB/s read, % of measured)');
    for (const key of [...new Set(mine.map((r) => `${r.scenario}@${r.context}`))]) {
      const ours = mine.find((r) => `${r.scenario}@${r.context}` === key && r.engine === 'thinkcache');
      const ref = mine.find((r) => `${r.scenario}@${r.context}` === key && r.engine === 'llama.cpp');
      const [scenario, context] = key.split('@') as [string, string];
      const ratio = ours && ref ? (ours.tokensPerSecond / ref.tokensPerSecond).toFixed(2) + 'x' : '-';
      let roof = '';
      if (scenario === 'decode') {
        const bytes = await bytesPerToken(path, SHAPES[shapeName]!, Number(context));
        const gbs = (t?: Row) => (t ? (bytes * t.tokensPerSecond) / 1e9 : NaN);
        roof = `${(bytes / 1e6).toFixed(0)} MB/token: ours ${gbs(ours).toFixed(1)} GB/s (${((100 * gbs(ours)) / bandwidth).toFixed(0)}%), ` +
          `llama.cpp ${gbs(ref).toFixed(1)} GB/s (${((100 * gbs(ref)) / bandwidth).toFixed(0)}%); bound ${(bandwidth * 1e9 / bytes).toFixed(1)} tok/s`;
      }
      console.log(`${scenario.padEnd(18)}  ${context.padStart(7)}   ${(ours?.tokensPerSecond.toFixed(1) ?? '-').padStart(16)}   ${(ref?.tokensPerSecond.toFixed(1) ?? '-').padStart(15)}   ${ratio.padStart(5)}   ${roof}`);
    }
    for (const r of mine) appendFileSync(join(resultsDir, 'decode-prefill.jsonl'), JSON.stringify({ time: stamp, threads, bandwidthGBs: bandwidth, ...r, model: `${r.shape}-shape` }) + '\n');
  }
}
