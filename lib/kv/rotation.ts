/**
 * RotateKV's key channel permutation (ALGORITHMS.md §3.3), calibrated per model: over calibration text, the
 * signed per-channel sum of the rotated pre-RoPE keys (normalized FWHT of each head's key, after biases and
 * k-norm) is accumulated, and each (layer, KV head) stores its rotated channels in ascending order of that
 * sum, so that every quantization group collects channels with similar offsets. Rotation is per head
 * (G = 1, §6.2 C1 option a), so the permutation is per head too. Because the FWHT is linear, the sum of
 * rotated keys is the rotation of the summed keys: one pass of key sums suffices.
 *
 * Stored in a small JSON sidecar keyed by the model's fingerprint (`thinkcache calibrate-rotation`), or
 * computed when a context with rot keys is created, from built-in calibration text (once per loaded model).
 */
import { createHash } from 'node:crypto';
import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync, writeFileSync } from 'node:fs';
import { InvalidOptionsError } from '../errors.js';
import type { Model } from '../Model.js';
import { greedyTraces } from './calibrate.js';

export const ROTATION_SIDECAR_FORMAT = 'thinkcache-rotkv-permutation';

export interface RotationCalibration {
  nLayer: number;
  nHeadKv: number;
  headDim: number;
  /** [nLayer][nHeadKv][headDim]: stored channel c of head (l, h) holds rotated channel perm[c]. */
  perm: Int32Array;
  /** [nLayer][nHeadKv][headDim]: mean of each rotated channel over the calibration tokens. */
  rotatedMean: Float64Array;
  tokens: number;
  /** What it was computed from (e.g. "built-in text (412 tokens)", "16 traces"). */
  source: string;
  /** modelFingerprint() of the model it belongs to. */
  fingerprint: string;
}

/**
 * A cheap, stable identity of a GGUF file: SHA-256 over its size and its first, middle and last MiB (the
 * header and tensor index sit at the start; any re-quantization or fine-tune changes the sampled data).
 */
export function modelFingerprint(path: string): string {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    const h = createHash('sha256');
    h.update(`size:${size};`);
    const chunk = 1 << 20;
    const buf = Buffer.alloc(chunk);
    for (const at of [0, Math.max(0, Math.floor(size / 2) - chunk / 2), Math.max(0, size - chunk)]) {
      const n = readSync(fd, buf, 0, Math.min(chunk, size), at);
      h.update(buf.subarray(0, n));
    }
    return `sha256:${h.digest('hex').slice(0, 32)}`;
  } finally {
    closeSync(fd);
  }
}

/** Normalized Walsh–Hadamard transform in place (the native fwht_ref's definition: H·H = I). */
export function fwht(x: Float64Array): Float64Array {
  const n = x.length;
  if (n & (n - 1)) throw new RangeError(`fwht: length ${n} is not a power of two`);
  for (let len = 1; len < n; len <<= 1) {
    for (let i = 0; i < n; i += len << 1) {
      for (let j = i; j < i + len; j++) {
        const a = x[j]!, b = x[j + len]!;
        x[j] = a + b;
        x[j + len] = a - b;
      }
    }
  }
  const s = 1 / Math.sqrt(n);
  for (let i = 0; i < n; i++) x[i] = x[i]! * s;
  return x;
}

/** Permutations from per-head pre-RoPE key sums: argsort (ascending, stable) of each head's rotated sum. */
export function rotationFromKeySums(kSum: Float64Array, tokens: number, shape: { nLayer: number; nHeadKv: number; headDim: number }): { perm: Int32Array; rotatedMean: Float64Array } {
  const { nLayer, nHeadKv, headDim: D } = shape;
  if (kSum.length !== nLayer * nHeadKv * D) throw new RangeError(`rotationFromKeySums: ${kSum.length} sums for ${nLayer}×${nHeadKv}×${D}`);
  const perm = new Int32Array(kSum.length);
  const rotatedMean = new Float64Array(kSum.length);
  for (let lh = 0; lh < nLayer * nHeadKv; lh++) {
    const r = fwht(Float64Array.from(kSum.subarray(lh * D, (lh + 1) * D), (v) => v / Math.max(1, tokens)));
    rotatedMean.set(r, lh * D);
    const order = Array.from({ length: D }, (_, i) => i).sort((a, b) => r[a]! - r[b]! || a - b);
    perm.set(order, lh * D);
  }
  return { perm, rotatedMean };
}

/**
 * The permutation for grouped key rotation (rotationGroup G): where `grouped` marks a group rotated together,
 * slot h of the group stores D channels of FWHT_{G·D} of the group's concatenated keys, whose mean is
 * (1/√G)·Σ_s (−1)^popcount(h & s)·rotatedMean_s (H_{G·D} = H_G ⊗ H_D, and the mean of a linear map is the map
 * of the mean); each slot is sorted by that mean. Heads outside grouped groups keep their per-head permutation.
 */
export function groupedPermutation(cal: RotationCalibration, G: number, grouped: Uint8Array): Int32Array {
  const { nLayer, nHeadKv, headDim: D } = cal;
  const perm = Int32Array.from(cal.perm);
  if (G <= 1 || !grouped.some((g) => g === 1)) return perm;
  if (cal.rotatedMean.length !== nLayer * nHeadKv * D) {
    throw new InvalidOptionsError(`kv.storage.rotationGroup: the permutation from ${cal.source} has no channel means (a version-1 sidecar); recalibrate with \`thinkcache calibrate-rotation\``);
  }
  const s = 1 / Math.sqrt(G);
  for (let g0 = 0; g0 < nLayer * nHeadKv; g0 += G) {
    if (!grouped[g0]) continue;
    for (let h = 0; h < G; h++) {
      const mean = new Float64Array(D);
      for (let sl = 0; sl < G; sl++) {
        const sign = popcount(h & sl) & 1 ? -s : s;
        const src = cal.rotatedMean.subarray((g0 + sl) * D, (g0 + sl + 1) * D);
        for (let d = 0; d < D; d++) mean[d] = mean[d]! + sign * src[d]!;
      }
      const order = Array.from({ length: D }, (_, i) => i).sort((a, b) => mean[a]! - mean[b]! || a - b);
      perm.set(order, (g0 + h) * D);
    }
  }
  return perm;
}

function popcount(x: number): number {
  let c = 0;
  for (; x; x &= x - 1) c++;
  return c;
}

/**
 * Built-in calibration text: mixed prose, arithmetic worked step by step, a short program and a list —
 * the kinds of tokens a reasoning trace holds. Written for this project.
 */
export const BUILTIN_CALIBRATION_TEXT = [
  'The train left the station at a quarter past nine and reached the coast shortly before noon. Along the way, the',
  'passengers watched fields give way to low hills, then to a long grey line of water. Nobody spoke much; a child',
  'counted the tunnels out loud, and when she lost track she started again from one.',
  '',
  'Question: a shop sells pencils in boxes of 12. Maria needs 150 pencils. How many boxes must she buy?',
  'Let me think step by step. 12 × 12 = 144, which is less than 150. 12 × 13 = 156, which is at least 150.',
  'So 12 boxes are not enough and 13 boxes are. Check: 156 − 150 = 6 pencils left over. The answer is 13.',
  '',
  'Wait, let me double-check the multiplication: 13 × 12 = 130 + 26 = 156. Yes. So she buys 13 boxes.',
  '',
  'function mean(values) {',
  '  if (values.length === 0) return NaN;',
  '  let total = 0;',
  '  for (const v of values) total += v;',
  '  return total / values.length;',
  '}',
  '',
  'Steps to solve x^2 - 5x + 6 = 0: factor as (x - 2)(x - 3) = 0, so x = 2 or x = 3. Substituting x = 2 gives',
  '4 - 10 + 6 = 0, and x = 3 gives 9 - 15 + 6 = 0, so both roots check out.',
  '',
  '1. Read the problem twice. 2. Write down what is known. 3. Decide what is asked. 4. Solve a smaller case first.',
  '5. Look back: does the answer make sense? Hmm, in the last example the units were minutes, not hours.',
].join('\n');

/**
 * Calibrates the permutation: evaluates each prompt (text or token ids) in a plain full-cache context,
 * optionally generating `maxTokens` more tokens first so the statistic covers the model's own output.
 */
export async function calibrateRotation(model: Model, opts: {
  prompts?: (string | readonly number[])[]; maxTokens?: number; threads?: number; contextSize?: number; source?: string;
  onProgress?: (done: number, total: number) => void;
} = {}): Promise<RotationCalibration> {
  const info = model.info;
  const D = info.headDim;
  if (D & (D - 1)) throw new InvalidOptionsError(`calibrateRotation: the FWHT needs a power-of-two head size, ${model.path} has ${D}`);
  const prompts = opts.prompts ?? [BUILTIN_CALIBRATION_TEXT];
  const maxTokens = opts.maxTokens ?? 0;
  const token = prompts.map((p) => (typeof p === 'string' ? model.tokenize(p) : [...p]));
  const contextSize = opts.contextSize ?? Math.max(64, Math.min(model.info.nCtxTrain || 4096, Math.max(...token.map((t) => t.length)) + maxTokens + 1));
  // (on the CPU also for a model on CUDA: the key statistics come from the CPU engine's calibration hook)
  await using ctx = await model.createContext({ contextSize, backend: 'cpu', ...(opts.threads ? { threads: opts.threads } : {}), kv: { storage: { permutation: 'none' } } });
  await using seq = ctx.acquireSequence();
  const traces = await greedyTraces(model, seq, token, maxTokens, contextSize, (d) => opts.onProgress?.(d, token.length * 2));
  let done = traces.length;
  seq._native.setCalibration(0, 1, true);
  try {
    for (const t of traces) {
      await seq.clear();
      await seq.evaluate(t);
      opts.onProgress?.(++done, token.length * 2);
    }
    const c = seq._native.getCalibration()!;
    const { perm, rotatedMean } = rotationFromKeySums(c.kSum, c.tokens, { nLayer: info.nLayer, nHeadKv: info.nHeadKv, headDim: D });
    return {
      nLayer: info.nLayer, nHeadKv: info.nHeadKv, headDim: D, perm, rotatedMean, tokens: c.tokens,
      source: opts.source ?? `${traces.length} trace${traces.length === 1 ? '' : 's'} (${c.tokens} tokens)`, fingerprint: modelFingerprint(model.path),
    };
  } finally {
    seq._native.setCalibration(null);
  }
}

/** Writes the sidecar (JSON: format, model fingerprint and shape, source, one permutation row per head). */
export function saveRotationSidecar(file: string, cal: RotationCalibration, modelPath: string): void {
  const rows: number[][] = [], means: number[][] = [];
  for (let lh = 0; lh < cal.nLayer * cal.nHeadKv; lh++) {
    rows.push(Array.from(cal.perm.subarray(lh * cal.headDim, (lh + 1) * cal.headDim)));
    if (cal.rotatedMean.length) means.push(Array.from(cal.rotatedMean.subarray(lh * cal.headDim, (lh + 1) * cal.headDim), (v) => Number(v.toPrecision(7))));
  }
  // version 2 adds the rotated channel means, from which grouped rotation (rotationGroup > 1) derives its permutation
  writeFileSync(file, JSON.stringify({
    format: ROTATION_SIDECAR_FORMAT, version: 2, model: modelPath.split(/[\\/]/).pop(), fingerprint: cal.fingerprint,
    nLayer: cal.nLayer, nHeadKv: cal.nHeadKv, headDim: cal.headDim, statistic: 'signed-sum', rotation: 'per-head FWHT (G = 1)',
    source: cal.source, tokens: cal.tokens, perm: rows, ...(means.length ? { mean: means } : {}),
  }) + '\n');
}

/** Reads and validates a sidecar for `model` (format, fingerprint, shape, every row a permutation). */
export function loadRotationSidecar(file: string, model: Model): RotationCalibration {
  const bad = (why: string) => new InvalidOptionsError(`kv.storage.permutation: ${file}: ${why}`);
  let o: Record<string, unknown>;
  try { o = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>; } catch (e) { throw bad(`cannot read it as JSON (${(e as Error).message})`); }
  if (o.format !== ROTATION_SIDECAR_FORMAT) throw bad(`not a rotation sidecar (format ${JSON.stringify(o.format)}, expected "${ROTATION_SIDECAR_FORMAT}")`);
  const { nLayer, nHeadKv, headDim } = model.info;
  if (o.nLayer !== nLayer || o.nHeadKv !== nHeadKv || o.headDim !== headDim) {
    throw bad(`shape ${String(o.nLayer)}×${String(o.nHeadKv)}×${String(o.headDim)} does not match the model's ${nLayer}×${nHeadKv}×${headDim}`);
  }
  const fp = modelFingerprint(model.path);
  if (o.fingerprint !== fp) throw bad(`made for another model file (fingerprint ${String(o.fingerprint)}, this model ${fp}); recalibrate with \`thinkcache calibrate-rotation\``);
  const rows = o.perm;
  if (!Array.isArray(rows) || rows.length !== nLayer * nHeadKv) throw bad(`expected ${nLayer * nHeadKv} permutation rows`);
  const perm = new Int32Array(nLayer * nHeadKv * headDim);
  rows.forEach((r: unknown, i) => {
    if (!Array.isArray(r) || r.length !== headDim) throw bad(`row ${i} has ${Array.isArray(r) ? r.length : 'no'} entries, expected ${headDim}`);
    const seen = new Uint8Array(headDim);
    r.forEach((v: unknown, d) => {
      if (!Number.isInteger(v) || (v as number) < 0 || (v as number) >= headDim || seen[v as number]) throw bad(`row ${i} (layer ${Math.floor(i / nHeadKv)}, head ${i % nHeadKv}) is not a permutation of 0..${headDim - 1}`);
      seen[v as number] = 1;
      perm[i * headDim + d] = v as number;
    });
  });
  let rotatedMean = new Float64Array(0);
  if (o.mean !== undefined) {
    const m = o.mean;
    if (!Array.isArray(m) || m.length !== nLayer * nHeadKv) throw bad(`expected ${nLayer * nHeadKv} mean rows`);
    rotatedMean = new Float64Array(nLayer * nHeadKv * headDim);
    m.forEach((r: unknown, i) => {
      if (!Array.isArray(r) || r.length !== headDim || !r.every((v) => typeof v === 'number' && Number.isFinite(v))) throw bad(`mean row ${i} is not ${headDim} finite numbers`);
      rotatedMean.set(r as number[], i * headDim);
    });
  }
  return { nLayer, nHeadKv, headDim, perm, rotatedMean, tokens: Number(o.tokens ?? 0), source: `sidecar ${file} (${String(o.source ?? '?')})`, fingerprint: fp };
}

/** Default sidecar location: next to the model. */
export const defaultSidecarPath = (modelPath: string): string => `${modelPath}.rotkv.json`;

/** Sidecar next to the model when present, else the built-in calibration (computed once per model). */
export async function resolvePermutation(model: Model, setting: string): Promise<RotationCalibration | null> {
  if (setting === 'none') return null;
  if (setting !== 'auto') return loadRotationSidecar(setting, model);
  const side = defaultSidecarPath(model.path);
  if (existsSync(side)) return loadRotationSidecar(side, model);
  return model._builtinRotation();
}
