/**
 * Training-free head profile (ALGORITHMS.md §1.12 (b), window-substitution error): the model writes
 * its own greedy traces with the full cache, then each trace is re-read in one teacher-forced pass
 * while the native attention measures, per (layer, KV head), how much the output would change if the
 * head saw only its S sinks and R most recent tokens. Scores are ranks in [0, 1] (higher = needs the
 * full cache), written in the RLKV/DuoAttention TSV layout so §1.4 applies unchanged.
 *
 * 'ablation' measures the end-to-end effect instead: every KV head is streamed alone (S sinks + R recent,
 * all other heads full) in lockstep with the full cache over the same greedy traces (the fidelity
 * harness, §5 P1), and its score is the mean KL(full ‖ ablated) of the next-token distribution. It costs
 * one decode pass per KV head (n_layer · n_head_kv + 1 caches side by side), but sees what the window
 * error cannot: a head whose small attention change is amplified downstream, or a large change that later
 * layers ignore. On the tiny reasoner the window-error ranking was unrelated to the heads' effect on
 * accuracy (tiny/README.md); the ablation ranking follows it.
 */
import { runFidelity } from '../eval/fidelity.js';
import type { Model } from '../Model.js';
import type { Sequence } from '../Sequence.js';
import type { HeadProfile } from './head-profile.js';

export type CalibrationMethod = 'wse' | 'mean-qk' | 'ablation';

export interface CalibrateOptions {
  /**
   * 'wse' (default, §1.12 b): window-substitution error of each head on the traces.
   * 'mean-qk' (§1.12 a, kvpress's "duo_attention_on_the_fly"): the mean query and mean key of each head
   * over the traces, repeated at positions 0..499 with RoPE; score = mean of the last query's cumulative
   * attention curve (high = attends early/far = retrieval head). Cheap, but measures positional bias.
   * 'ablation': mean KL(full ‖ this head streamed alone) over the traces (one decode pass per KV head).
   */
  method?: CalibrationMethod;
  prompts: (string | readonly number[])[];
  /** Tokens generated per trace (the trace is prompt + generation). */
  maxTokens: number;
  sinks?: number;
  recent?: number;
  threads?: number;
  contextSize?: number;
  onProgress?: (done: number, total: number) => void;
}

export interface CalibrationResult {
  profile: HeadProfile;
  method: CalibrationMethod;
  /** The method's per-head score before ranking. */
  rawScores: Float64Array;
  /** Mean window-substitution error per head (row-major [layer][kvHead]). */
  meanError: Float64Array;
  /** Mean attention mass outside the window per head (diagnostic). */
  meanOutMass: Float64Array;
  /** Query (position, head) pairs measured per KV head. */
  samples: Float64Array;
  traces: number;
  tokens: number;
}

/**
 * The calibration traces: each prompt (text with the model's BOS rule, or token ids) followed by up to
 * `maxTokens` greedy tokens (EOG does not stop it), cut to fit `contextSize`; `seq` is left cleared.
 */
export async function greedyTraces(model: Model, seq: Sequence, prompts: readonly (string | readonly number[])[], maxTokens: number, contextSize: number,
  onProgress?: (done: number) => void): Promise<number[][]> {
  const traces: number[][] = [];
  for (const prompt of prompts) {
    const tokens = (typeof prompt === 'string' ? model.tokenize(prompt) : [...prompt]).slice(0, contextSize - 1);
    let gen: number[] = [];
    const room = Math.min(maxTokens, contextSize - 1 - tokens.length);
    if (room > 0) {
      for await (const ev of seq.generate(tokens, { maxTokens: room, stopAtEog: false, checkpoint: false })) if (ev.type === 'finish') gen = ev.tokens;
      await seq.clear();
    }
    traces.push([...tokens, ...gen]);
    onProgress?.(traces.length);
  }
  return traces;
}

export async function calibrateHeadProfile(model: Model, opts: CalibrateOptions): Promise<CalibrationResult> {
  const sinks = opts.sinks ?? 16, recent = opts.recent ?? 64;
  const contextSize = opts.contextSize ?? Math.min(model.info.nCtxTrain || 4096, 4096);
  if (opts.method === 'ablation') return ablationProfile(model, opts, sinks, recent, contextSize);
  // (on the CPU also for a model on CUDA: the window-substitution error comes from the CPU engine's calibration hook)
  await using ctx = await model.createContext({ contextSize, backend: 'cpu', ...(opts.threads ? { threads: opts.threads } : {}) });
  const seq = ctx.acquireSequence();
  const traces = await greedyTraces(model, seq, opts.prompts, opts.maxTokens, contextSize, (d) => opts.onProgress?.(d, opts.prompts.length * 2));
  let done = traces.length;
  await seq.clear();
  seq._native.setCalibration(sinks, recent);
  let tokens = 0;
  for (const t of traces) {
    await seq.clear();
    await seq.evaluate(t);
    tokens += t.length;
    opts.onProgress?.(++done, opts.prompts.length * 2);
  }
  const c = seq._native.getCalibration()!;
  seq._native.setCalibration(null);
  const n = c.errSum.length;
  const meanError = new Float64Array(n), meanOutMass = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    meanError[i] = c.count[i]! > 0 ? c.errSum[i]! / c.count[i]! : 0;
    meanOutMass[i] = c.count[i]! > 0 ? c.outMassSum[i]! / c.count[i]! : 0;
  }
  const method = opts.method ?? 'wse';
  if (method === 'wse' && c.count.every((x) => x === 0)) {
    throw new RangeError(`calibrateHeadProfile: no position reached sinks + recent = ${sinks + recent}; use longer traces (maxTokens) or a smaller window`);
  }
  const raw = method === 'wse' ? meanError : meanQkScores(model, c.qSum, c.kSum, c.tokens);
  const scores = rankScores(raw);
  return {
    profile: {
      nLayer: model.info.nLayer, nHeadKv: model.info.nHeadKv, scores,
      source: method === 'wse' ? `wse(S=${sinks},R=${recent},traces=${traces.length})` : `mean-qk(positions=${MEAN_QK_POSITIONS},traces=${traces.length})`,
    },
    method, rawScores: raw, meanError, meanOutMass, samples: c.count, traces: traces.length, tokens,
  };
}

/** Ranks in [0, 1]: rank / (N − 1), ties by flat index (stable); higher raw score = higher rank. */
function rankScores(raw: Float64Array): Float64Array {
  const n = raw.length;
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => raw[a]! - raw[b]! || a - b);
  const scores = new Float64Array(n);
  order.forEach((idx, r) => { scores[idx] = n > 1 ? r / (n - 1) : 1; });
  return scores;
}

async function ablationProfile(model: Model, opts: CalibrateOptions, sinks: number, recent: number, contextSize: number): Promise<CalibrationResult> {
  const { nLayer, nHeadKv } = model.info;
  const n = nLayer * nHeadKv;
  const configs = [];
  for (let l = 0; l < nLayer; l++) {
    for (let h = 0; h < nHeadKv; h++) configs.push({ label: `${l},${h}`, kv: { heads: { streamHeads: [[l, h] as [number, number]], stream: { sinks, recent } } } });
  }
  // traces end at the model's end of generation: what it writes after an answer is no chain of thought
  const res = await runFidelity(model, {
    configs, prompts: opts.prompts, maxTokens: opts.maxTokens, contextSize, stopAtEog: true, ...(opts.threads ? { threads: opts.threads } : {}),
    onProgress: opts.onProgress,
  });
  const raw = new Float64Array(n);
  for (let i = 0; i < n; i++) raw[i] = res[i + 1]!.klMean;
  const positions = res[0]!.positions;
  return {
    profile: { nLayer, nHeadKv, scores: rankScores(raw), source: `ablation(S=${sinks},R=${recent},traces=${opts.prompts.length})` },
    method: 'ablation', rawScores: raw, meanError: raw, meanOutMass: new Float64Array(n), samples: new Float64Array(n).fill(positions),
    traces: opts.prompts.length, tokens: positions,
  };
}

const MEAN_QK_POSITIONS = 500;

/** RoPE of one head vector at `pos`, in the model's style (llama: adjacent pairs; qwen: halves). */
function rope(x: Float64Array, pos: number, nRot: number, base: number, neox: boolean): Float64Array {
  const y = Float64Array.from(x);
  for (let i = 0; i < nRot / 2; i++) {
    const theta = pos * Math.pow(base, (-2 * i) / nRot);
    const c = Math.cos(theta), s = Math.sin(theta);
    const a = neox ? i : 2 * i, b = neox ? i + nRot / 2 : 2 * i + 1;
    y[a] = x[a]! * c - x[b]! * s;
    y[b] = x[a]! * s + x[b]! * c;
  }
  return y;
}

/** §1.12 (a): per KV head, the mean over its query heads of the mean cumulative attention curve. */
function meanQkScores(model: Model, qSum: Float64Array, kSum: Float64Array, tokens: number): Float64Array {
  const { nLayer, nHead, nHeadKv, headDim: D, nRot, ropeFreqBase, architecture } = model.info;
  const neox = architecture !== 'llama';
  const G = nHead / nHeadKv, P = MEAN_QK_POSITIONS;
  const out = new Float64Array(nLayer * nHeadKv);
  const scale = 1 / Math.sqrt(D);
  for (let l = 0; l < nLayer; l++) {
    for (let h = 0; h < nHeadKv; h++) {
      const kMean = new Float64Array(D);
      for (let d = 0; d < D; d++) kMean[d] = kSum[(l * nHeadKv + h) * D + d]! / Math.max(1, tokens);
      const keys = Array.from({ length: P }, (_, j) => rope(kMean, j, nRot, ropeFreqBase, neox));
      let total = 0;
      for (let g = 0; g < G; g++) {
        const qh = h * G + g;
        const qMean = new Float64Array(D);
        for (let d = 0; d < D; d++) qMean[d] = qSum[(l * nHead + qh) * D + d]! / Math.max(1, tokens);
        const q = rope(qMean, P - 1, nRot, ropeFreqBase, neox);
        const logits = keys.map((k) => { let s = 0; for (let d = 0; d < D; d++) s += q[d]! * k[d]!; return s * scale; });
        const mx = Math.max(...logits);
        const p = logits.map((x) => Math.exp(x - mx));
        const z = p.reduce((a, b) => a + b, 0);
        let cum = 0, area = 0;
        for (const pj of p) { cum += pj / z; area += cum; }
        total += area / P;
      }
      out[l * nHeadKv + h] = total / G;
    }
  }
  return out;
}
