/**
 * Training-free head profile (ALGORITHMS.md §1.12 (b), window-substitution error): the model writes
 * its own greedy traces with the full cache, then each trace is re-read in one teacher-forced pass
 * while the native attention measures, per (layer, KV head), how much the output would change if the
 * head saw only its S sinks and R most recent tokens. Scores are ranks in [0, 1] (higher = needs the
 * full cache), written in the RLKV/DuoAttention TSV layout so §1.4 applies unchanged.
 */
import type { Model } from '../Model.js';
import type { HeadProfile } from './head-profile.js';

export interface CalibrateOptions {
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
  /** Mean window-substitution error per head (row-major [layer][kvHead]). */
  meanError: Float64Array;
  /** Mean attention mass outside the window per head (diagnostic). */
  meanOutMass: Float64Array;
  /** Query (position, head) pairs measured per KV head. */
  samples: Float64Array;
  traces: number;
  tokens: number;
}

export async function calibrateHeadProfile(model: Model, opts: CalibrateOptions): Promise<CalibrationResult> {
  const sinks = opts.sinks ?? 16, recent = opts.recent ?? 64;
  const contextSize = opts.contextSize ?? Math.min(model.info.nCtxTrain || 4096, 4096);
  await using ctx = await model.createContext({ contextSize, ...(opts.threads ? { threads: opts.threads } : {}) });
  const seq = ctx.acquireSequence();
  const traces: number[][] = [];
  let done = 0;
  for (const prompt of opts.prompts) {
    const tokens = typeof prompt === 'string' ? model.tokenize(prompt) : [...prompt];
    let gen: number[] = [];
    for await (const ev of seq.generate(tokens, { maxTokens: Math.min(opts.maxTokens, contextSize - tokens.length - 1), stopAtEog: false })) {
      if (ev.type === 'finish') gen = ev.tokens;
    }
    traces.push([...tokens, ...gen]);
    opts.onProgress?.(++done, opts.prompts.length * 2);
  }
  seq.clear();
  seq._native.setCalibration(sinks, recent);
  let tokens = 0;
  for (const t of traces) {
    seq.clear();
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
  if (c.count.every((x) => x === 0)) {
    throw new RangeError(`calibrateHeadProfile: no position reached sinks + recent = ${sinks + recent}; use longer traces (maxTokens) or a smaller window`);
  }
  // ranks in [0, 1]: rank / (N − 1), ties by flat index (stable)
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => meanError[a]! - meanError[b]! || a - b);
  const scores = new Float64Array(n);
  order.forEach((idx, r) => { scores[idx] = n > 1 ? r / (n - 1) : 1; });
  return {
    profile: { nLayer: model.info.nLayer, nHeadKv: model.info.nHeadKv, scores, source: `wse(S=${sinks},R=${recent},traces=${traces.length})` },
    meanError, meanOutMass, samples: c.count, traces: traces.length, tokens,
  };
}
