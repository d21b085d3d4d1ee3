/**
 * Decode and prefill speed, ours vs llama.cpp (node-llama-cpp 3.21.1, prebuilt CPU), on the same GGUF
 * in the same run, one engine after the other, same thread count.
 *
 *   npm run bench                      # Qwen2-0.5B shape, Q8_0, contexts 64/1K/4K, 2 threads
 *   npm run bench -- --contexts 64,1024 --threads 2 --decode 32 --prefill 512
 *
 * The file is generated once (seeded random weights; speed does not depend on the values) into
 * bench/results/ (gitignored). Results: a table on stdout and JSON lines in bench/results/.
 */
import { appendFileSync, existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { getLlama, LlamaLogLevel } from 'node-llama-cpp';
import { loadModel } from '../lib/index.js';
import { makeTinyGguf } from '../test/fixtures/make-tiny-gguf.js';

const here = dirname(fileURLToPath(import.meta.url));
const resultsDir = join(here, 'results');

const { values } = parseArgs({
  options: {
    contexts: { type: 'string', default: '64,1024,4096' },
    threads: { type: 'string', default: '2' },
    decode: { type: 'string', default: '32' },
    prefill: { type: 'string', default: '512' },
    type: { type: 'string', default: 'q8_0' },
    engines: { type: 'string', default: 'thinkcache,llama.cpp' },
  },
});
const contexts = values.contexts.split(',').map(Number);
const threads = Number(values.threads);
const nDecode = Number(values.decode);
const nPrefill = Number(values.prefill);
const type = values.type as 'q8_0' | 'f16' | 'f32' | 'bf16';

// Qwen2-0.5B shape: 896 dim, 24 layers, 14 query / 2 KV heads (head 64), 4864 FFN, 151936 vocab, tied embeddings.
const shape = { nEmbd: 896, nLayer: 24, nHead: 14, nHeadKv: 2, headDim: 64, nFf: 4864, nCtxTrain: 32768, tiedOutput: true };
mkdirSync(resultsDir, { recursive: true });
const modelPath = join(resultsDir, `qwen2-0.5b-shape-${type}.gguf`);
if (!existsSync(modelPath)) {
  process.stderr.write(`generating ${modelPath} ...\n`);
  makeTinyGguf({ arch: 'qwen2', type, seed: 7, outPath: modelPath, ...shape });
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

interface Row { engine: string; scenario: string; context: number; tokensPerSecond: number }
const rows: Row[] = [];

async function benchOurs(): Promise<void> {
  const model = await loadModel({ path: modelPath });
  const maxCtx = Math.max(...contexts, nPrefill) + nDecode + 8;
  const ctx = await model.createContext({ contextSize: maxCtx, threads, batchSize: 512 });
  const seq = ctx.acquireSequence();
  const run = async (prompt: number[], maxTokens: number) => {
    seq.clear();
    for await (const ev of seq.generate(prompt, { maxTokens, stopAtEog: false })) if (ev.type === 'finish') return ev;
    throw new Error('no finish');
  };
  await run(promptTokens(16, 1), 4); // warm-up (page in the weights)
  const pf = await run(promptTokens(nPrefill, 2), 1);
  rows.push({ engine: 'thinkcache', scenario: `prefill ${nPrefill}`, context: nPrefill, tokensPerSecond: pf.timings.prefillTokensPerSecond });
  for (const c of contexts) {
    const ev = await run(promptTokens(c, 3 + c), nDecode + 1);
    rows.push({ engine: 'thinkcache', scenario: 'decode', context: c, tokensPerSecond: ev.timings.decodeTokensPerSecond });
  }
  await model.dispose();
}

async function benchLlamaCpp(): Promise<void> {
  const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath, gpuLayers: 0 });
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
  rows.push({ engine: 'llama.cpp', scenario: `prefill ${nPrefill}`, context: nPrefill, tokensPerSecond: pf.prefillTps });
  for (const c of contexts) {
    const r = await run(promptTokens(c, 3 + c), nDecode + 1);
    rows.push({ engine: 'llama.cpp', scenario: 'decode', context: c, tokensPerSecond: r.decodeTps });
  }
  await ctx.dispose();
  await model.dispose();
}

const engines = values.engines.split(',');
if (engines.includes('thinkcache')) await benchOurs();
if (engines.includes('llama.cpp')) await benchLlamaCpp();

const stamp = new Date().toISOString();
const scenarios = [...new Set(rows.map((r) => `${r.scenario}@${r.context}`))];
console.log(`\nmodel: ${modelPath} (${type}, Qwen2-0.5B shape), threads ${threads}, decode ${nDecode} tokens per context`);
console.log('scenario            context   thinkcache tok/s   llama.cpp tok/s   ratio');
for (const key of scenarios) {
  const ours = rows.find((r) => `${r.scenario}@${r.context}` === key && r.engine === 'thinkcache');
  const ref = rows.find((r) => `${r.scenario}@${r.context}` === key && r.engine === 'llama.cpp');
  const [scenario, context] = key.split('@');
  const ratio = ours && ref ? (ours.tokensPerSecond / ref.tokensPerSecond).toFixed(2) + 'x' : '-';
  console.log(`${scenario!.padEnd(18)}  ${context!.padStart(7)}   ${(ours?.tokensPerSecond.toFixed(1) ?? '-').padStart(16)}   ${(ref?.tokensPerSecond.toFixed(1) ?? '-').padStart(15)}   ${ratio.padStart(5)}`);
}
for (const r of rows) appendFileSync(join(resultsDir, 'decode-prefill.jsonl'), JSON.stringify({ time: stamp, model: 'qwen2-0.5b-shape', type, threads, ...r }) + '\n');
