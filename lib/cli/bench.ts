/**
 * `thinkcache bench`: decode speed and KV memory of KV configurations on the user's own model, over a grid of
 * context lengths (DESIGN §4's `bench`). For each configuration a sequence is filled to each context with
 * synthetic tokens (teacher-forced), warmed for a few steps, then timed over `--decode` steps; the row holds
 * the engine's decode tokens/s and the KV bytes the memory report says are used and allocated.
 *   thinkcache bench --model M [--kv full --kv rot2 ...] [--profile P.tsv] [--contexts 1024,4096] [--decode 32]
 *                    [--threads N] [--backend cpu|cuda|auto] [--json]
 * Against llama.cpp on the same file: `npm run bench` in a clone of the repository (bench/, node-llama-cpp).
 */
import { parseArgs } from 'node:util';
import { LlmError } from '../errors.js';
import { kib } from '../eval/accuracy.js';
import { loadModel } from '../Model.js';
import { parseKvConfigs } from './eval.js';
import { backendOption } from './progress.js';
import { intArg } from './args.js';

export const BENCH_USAGE = `  thinkcache bench --model PATH [--kv PRESET|JSON ...] [--profile P.tsv] [--contexts 1024,4096] [--decode N]
                   [--threads N] [--backend cpu|cuda|auto] [--json]
`;

export interface BenchRow {
  config: string;
  context: number;
  decodeTokensPerSecond: number;
  kvBytesUsed: number;
  kvBytesAllocated: number;
  residentTokens: number;
  logicalTokens: number;
}

const WARMUP = 4;

export async function cmdBench(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: 'string', short: 'm' }, kv: { type: 'string', multiple: true }, profile: { type: 'string' }, contexts: { type: 'string' },
      decode: { type: 'string' }, threads: { type: 'string' }, backend: { type: 'string' }, json: { type: 'boolean' },
    },
    strict: true,
  });
  if (!values.model) throw new LlmError('thinkcache bench: --model is required', 'ERR_INVALID_OPTIONS');
  const contexts = (values.contexts ?? '1024,4096').split(',').map((c) => intArg(c.trim(), 'contexts', 0)).sort((a, b) => a - b);
  const nDecode = intArg(values.decode ?? '32', 'decode', 0);
  const threads = values.threads === undefined ? undefined : intArg(values.threads, 'threads', 0);
  const configs = parseKvConfigs(values.kv ?? ['full', 'rot2', 'lazy-50', 'rot2-lazy-50'], values.profile);
  await using model = await loadModel({ path: values.model, backend: backendOption(values.backend) });
  const maxCtx = contexts.at(-1)! + WARMUP + nDecode + 1;
  // synthetic ids away from the specials at the start of most vocabularies, spread over the vocabulary
  const V = model.info.nVocab, lo = Math.min(256, Math.floor(V / 2));
  let state = 7;
  const next = () => lo + ((state = (state * 1103515245 + 12345) >>> 0) % (V - lo));
  const rows: BenchRow[] = [];
  if (!values.json) process.stdout.write(`${'config'.padEnd(16)} ${'context'.padStart(8)} ${'decode tok/s'.padStart(13)} ${'KV used'.padStart(11)} ${'KV allocated'.padStart(13)} ${'resident/logical'.padStart(17)}\n`);
  for (const { label, kv } of configs) {
    await using ctx = await model.createContext({ contextSize: maxCtx, kv, ...(threads ? { threads } : {}) });
    const seq = ctx.acquireSequence();
    const batch = ctx.info.batchSize;
    for (const c of contexts) {
      // fill to c (continuing from the previous context length), warm up, then time nDecode single steps
      const fill = Array.from({ length: Math.max(0, c - seq.tokens.length) }, next);
      for (let i = 0; i < fill.length; i += batch) await seq.evaluate(fill.slice(i, i + batch));
      for (let i = 0; i < WARMUP; i++) await seq.evaluate([next()]);
      const t0 = performance.now();
      for (let i = 0; i < nDecode; i++) await seq.evaluate([next()]);
      const dt = (performance.now() - t0) / 1000;
      const m = seq.memory();
      const row: BenchRow = {
        config: label, context: c, decodeTokensPerSecond: nDecode / dt, kvBytesUsed: m.bytesUsed, kvBytesAllocated: m.bytesAllocated,
        residentTokens: m.residentTokens, logicalTokens: m.logicalTokens,
      };
      rows.push(row);
      if (values.json) process.stdout.write(JSON.stringify({ model: values.model, backend: model.backend, threads: ctx.threads, ...row }) + '\n');
      else {
        const heads = model.info.nLayer * (kv.eviction?.policy === 'lazy' && kv.eviction.perQueryHead ? model.info.nHead : model.info.nHeadKv);
        process.stdout.write(`${label.padEnd(16)} ${String(c).padStart(8)} ${row.decodeTokensPerSecond.toFixed(1).padStart(13)} ${kib(m.bytesUsed).padStart(11)} ` +
          `${kib(m.bytesAllocated).padStart(13)} ${`${(m.residentTokens / heads).toFixed(0)}/${m.logicalTokens}`.padStart(17)}\n`);
      }
    }
  }
  if (!values.json) process.stdout.write(`(${model.backend}, ${nDecode} decode steps per row after ${WARMUP} warm-up steps; resident = tokens held per head, on average)\n`);
  return 0;
}
