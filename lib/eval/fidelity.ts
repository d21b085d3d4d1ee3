/**
 * Teacher-forced fidelity of a compressed KV configuration (ALGORITHMS.md §5, P1): greedy reference
 * traces are generated with the full cache and replayed token by token, in decode mode, through each
 * compressed configuration in lockstep; at every generated position we record KL(full ‖ compressed)
 * over the whole vocabulary (float64 log-softmax), top-1 agreement with the reference token, the NLL of
 * the reference token under both, and its rank. KV bytes are read from each sequence at the end of
 * every trace, so methods can be compared at matched bytes.
 */
import type { Context } from '../Context.js';
import type { Model } from '../Model.js';
import type { KvOptions } from '../kv/kv-options.js';
import type { EffectiveKv } from '../kv/kv-options.js';

export interface FidelityOptions {
  /** Configurations to compare with the full cache (the full cache itself is row 0). */
  configs: { label: string; kv: KvOptions }[];
  /** Prompts (text is tokenized with the model's BOS rule; token arrays are used as is). */
  prompts: (string | readonly number[])[];
  /** Generated tokens per trace. */
  maxTokens: number;
  contextSize?: number;
  threads?: number;
  /** Number of position bins in the curves (default 16). */
  bins?: number;
  /**
   * End each trace after the full cache's greedy token is end-of-generation (default false: exactly
   * maxTokens positions per trace). What a model writes after its answer is not a chain of thought.
   */
  stopAtEog?: boolean;
  onProgress?: (done: number, total: number) => void;
}

export interface FidelityCurvePoint { from: number; to: number; klMean: number; top1: number }

export interface FidelityResult {
  label: string;
  kv: KvOptions;
  effective: EffectiveKv;
  traces: number;
  positions: number;
  klMean: number;
  klP95: number;
  top1Agreement: number;
  /** mean NLL(reference token | compressed) − mean NLL(reference token | full). */
  deltaNll: number;
  nllFull: number;
  meanRank: number;
  /**
   * KV bytes used, averaged over every generated position of every trace (policies that evict every W
   * steps oscillate, so the mean is the fair "matched bytes" number); the full cache's; their ratio;
   * and the bytes at the end of the traces.
   */
  kvBytes: number;
  kvBytesFull: number;
  kvFraction: number;
  kvBytesEnd: number;
  curve: FidelityCurvePoint[];
  /**
   * ALGORITHMS.md §6.2 C2: for an evicting configuration with storage codecs, the Jaccard overlap of its
   * kept token sets with those of its f16 twin in the same run (the configuration with the same heads and
   * eviction and no codecs), per (layer, head) at the end of every trace: mean and minimum. Below ~0.9 the
   * quantization noise changes what the policy keeps.
   */
  keepJaccard?: { vs: string; mean: number; min: number };
}

/** The configuration with the same heads and eviction and f16 storage, if the list has one. */
function f16Twin(kv: KvOptions, all: { label: string; kv: KvOptions }[]): number {
  const st = kv.storage;
  if (!kv.eviction || !st || ((st.key ?? 'f16') === 'f16' && (st.value ?? 'f16') === 'f16')) return -1;
  const key = (o: KvOptions) => JSON.stringify([o.heads ?? null, o.eviction ?? null]);
  return all.findIndex((o) => key(o.kv) === key(kv) && (!o.kv.storage || ((o.kv.storage.key ?? 'f16') === 'f16' && (o.kv.storage.value ?? 'f16') === 'f16')));
}

function jaccard(a: Int32Array, b: Int32Array): number {
  let i = 0, j = 0, both = 0;
  while (i < a.length && j < b.length) {
    if (a[i] === b[j]) { both++; i++; j++; } else if (a[i]! < b[j]!) i++; else j++;
  }
  const union = a.length + b.length - both;
  return union ? both / union : 1;
}

function logSoftmax(x: Float32Array): Float64Array {
  let mx = -Infinity;
  for (let i = 0; i < x.length; i++) if (x[i]! > mx) mx = x[i]!;
  let s = 0;
  for (let i = 0; i < x.length; i++) s += Math.exp(x[i]! - mx);
  const lse = mx + Math.log(s);
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i]! - lse;
  return out;
}

function argmax(x: Float32Array): number {
  let b = 0;
  for (let i = 1; i < x.length; i++) if (x[i]! > x[b]!) b = i;
  return b;
}

interface Acc { kl: number[]; top1: number[]; nllC: number[]; rank: number[]; kvBytes: number[]; kvBytesEnd: number[]; pos: number[]; jaccard: number[] }

/** Runs the harness; results[0] is the full cache itself (KL 0). */
export async function runFidelity(model: Model, opts: FidelityOptions): Promise<FidelityResult[]> {
  const contextSize = opts.contextSize ?? Math.min(model.info.nCtxTrain || 4096, 4096);
  const threads = opts.threads;
  const all = [{ label: 'full', kv: {} as KvOptions }, ...opts.configs];
  const contexts: Context[] = [];
  for (const c of all) contexts.push(await model.createContext({ contextSize, ...(threads ? { threads } : {}), kv: c.kv }));
  try {
    const seqs = contexts.map((c) => c.acquireSequence());
    const acc: Acc[] = all.map(() => ({ kl: [], top1: [], nllC: [], rank: [], kvBytes: [], kvBytesEnd: [], pos: [], jaccard: [] }));
    const twins = all.map((c) => f16Twin(c.kv, all));
    const cacheHeads = (i: number) => {
      const e = contexts[i]!.effective.kv;
      return { layers: e.heads.retention.length, heads: e.heads.retention[0]?.length ?? 0 };
    };
    const nllFull: number[] = [];
    const total = opts.prompts.length * opts.maxTokens;
    let done = 0;
    for (const prompt of opts.prompts) {
      const tokens = typeof prompt === 'string' ? model.tokenize(prompt) : [...prompt];
      if (tokens.length + opts.maxTokens > contextSize) throw new RangeError(`fidelity: prompt + maxTokens (${tokens.length + opts.maxTokens}) exceed contextSize ${contextSize}`);
      await Promise.all(seqs.map((s) => s.clear()));
      let logits = await Promise.all(seqs.map((s) => s.evaluate(tokens)));
      for (let i = 0; i < opts.maxTokens; i++) {
        const ref = argmax(logits[0]!);  // the full cache's greedy token drives every configuration
        const lsF = logSoftmax(logits[0]!);
        nllFull.push(-lsF[ref]!);
        for (let c = 0; c < all.length; c++) {
          const lsC = c === 0 ? lsF : logSoftmax(logits[c]!);
          let kl = 0;
          for (let v = 0; v < lsF.length; v++) {
            const p = Math.exp(lsF[v]!);
            if (p > 0) kl += p * (lsF[v]! - lsC[v]!);
          }
          let rank = 0;
          for (let v = 0; v < lsC.length; v++) if (lsC[v]! > lsC[ref]!) rank++;
          const a = acc[c]!;
          a.kl.push(Math.max(0, kl));
          a.top1.push(argmax(logits[c]!) === ref ? 1 : 0);
          a.nllC.push(-lsC[ref]!);
          a.rank.push(rank);
          a.pos.push(i);
          a.kvBytes.push(seqs[c]!.memory().bytesUsed);
        }
        done++;
        opts.onProgress?.(done, total);
        if (opts.stopAtEog && model.tokenizer.isEog(ref)) break;
        if (i + 1 < opts.maxTokens) logits = await Promise.all(seqs.map((s) => s.evaluate([ref])));
      }
      seqs.forEach((s, c) => acc[c]!.kvBytesEnd.push(s.memory().bytesUsed));
      twins.forEach((t, c) => {
        if (t < 0) return;
        const { layers, heads } = cacheHeads(c);
        for (let l = 0; l < layers; l++) for (let h = 0; h < heads; h++) acc[c]!.jaccard.push(jaccard(seqs[c]!.heldPositions(l, h), seqs[t]!.heldPositions(l, h)));
      });
    }
    const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0);
    const p95 = (xs: number[]) => {
      if (!xs.length) return 0;
      const s = [...xs].sort((a, b) => a - b);
      return s[Math.min(s.length - 1, Math.floor(0.95 * (s.length - 1)))]!;
    };
    const bins = Math.max(1, Math.min(opts.bins ?? 16, opts.maxTokens));
    const kvBytesFull = mean(acc[0]!.kvBytes);
    return all.map((c, i) => {
      const a = acc[i]!;
      const curve: FidelityCurvePoint[] = [];
      for (let b = 0; b < bins; b++) {
        const from = Math.floor((b * opts.maxTokens) / bins), to = Math.floor(((b + 1) * opts.maxTokens) / bins);
        const idx = a.pos.map((p, j) => (p >= from && p < to ? j : -1)).filter((j) => j >= 0);
        curve.push({ from, to, klMean: mean(idx.map((j) => a.kl[j]!)), top1: mean(idx.map((j) => a.top1[j]!)) });
      }
      const kvBytes = mean(a.kvBytes);
      return {
        label: c.label, kv: c.kv, effective: contexts[i]!.effective.kv, traces: opts.prompts.length, positions: a.kl.length,
        klMean: mean(a.kl), klP95: p95(a.kl), top1Agreement: mean(a.top1), deltaNll: mean(a.nllC) - mean(nllFull), nllFull: mean(nllFull),
        meanRank: mean(a.rank), kvBytes, kvBytesFull, kvFraction: kvBytesFull ? kvBytes / kvBytesFull : 1, kvBytesEnd: mean(a.kvBytesEnd), curve,
        ...(twins[i]! >= 0 ? { keepJaccard: { vs: all[twins[i]!]!.label, mean: mean(a.jaccard), min: Math.min(...a.jaccard) } } : {}),
      };
    });
  } finally {
    for (const c of contexts) await c.dispose();
  }
}

/** Built-in prompts for models without a task set (story and general English openings). */
export const DEFAULT_PROMPTS = [
  'Once upon a time', 'One day, a little girl named Lily', 'The sun was shining and', 'Tom had a big red ball',
  'There was a dog who', 'In a small town there lived', 'Sam wanted to play with', 'The bird flew over the',
  'Mom said to Ben', 'A little cat found a', 'It was a cold winter day', 'The boy and his friend',
  'Lucy loved to read', 'The old man had a', 'Max saw a big tree', 'Once there was a happy',
];

/** A plain SVG line chart of mean KL over position, one line per configuration. */
export function fidelityChartSvg(results: FidelityResult[], title = 'KL(full ‖ compressed) over generated position'): string {
  const W = 720, H = 400, L = 70, R = 220, T = 40, B = 50;
  const xs = results[0]?.curve.map((p) => (p.from + p.to) / 2) ?? [0];
  const xmax = Math.max(1, ...xs);
  const ymax = Math.max(1e-9, ...results.flatMap((r) => r.curve.map((p) => p.klMean))) * 1.1;
  const x = (v: number) => L + ((W - L - R) * v) / xmax;
  const y = (v: number) => H - B - ((H - T - B) * v) / ymax;
  const colors = ['#444', '#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#8c564b', '#e377c2', '#bcbd22'];
  const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;');
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${L}" y="22" font-size="14">${esc(title)}</text>`,
    `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="black"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="black"/>`,
    `<text x="${(L + W - R) / 2}" y="${H - 15}" text-anchor="middle">generated position</text>`,
    `<text x="15" y="${(T + H - B) / 2}" transform="rotate(-90 15 ${(T + H - B) / 2})" text-anchor="middle">mean KL (nats)</text>`,
  ];
  for (let i = 0; i <= 4; i++) {
    const v = (ymax * i) / 4;
    parts.push(`<text x="${L - 6}" y="${y(v) + 4}" text-anchor="end">${v.toExponential(1)}</text>`);
    const xv = (xmax * i) / 4;
    parts.push(`<text x="${x(xv)}" y="${H - B + 16}" text-anchor="middle">${Math.round(xv)}</text>`);
  }
  results.forEach((r, i) => {
    const c = colors[i % colors.length];
    const pts = r.curve.map((p) => `${x((p.from + p.to) / 2).toFixed(1)},${y(p.klMean).toFixed(1)}`).join(' ');
    parts.push(`<polyline fill="none" stroke="${c}" stroke-width="2" points="${pts}"/>`);
    parts.push(`<text x="${W - R + 10}" y="${T + 16 * i + 10}" fill="${c}">${esc(r.label)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n');
}
