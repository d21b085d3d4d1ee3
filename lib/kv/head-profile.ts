/**
 * Head profiles: one score per (layer, KV head), higher = more important for reasoning (RLKV /
 * DuoAttention `full_attention_heads.tsv` / `adapter_weights.tsv` layout: one row per layer, one
 * tab-separated column per KV head, in the model's KV-head order). ALGORITHMS.md §1.2, §1.4.
 */
import { readFileSync } from 'node:fs';
import { InvalidOptionsError } from '../errors.js';

export interface HeadProfile {
  nLayer: number;
  nHeadKv: number;
  /** [nLayer * nHeadKv] scores clipped to [0, 1], row-major (layer, head). */
  scores: Float64Array;
  source: string;
}

/**
 * Parses a profile TSV. Values are clipped to [0, 1] (released files slightly exceed the range); a
 * shape other than nLayer × nHeadKv is an error — never a silent transpose.
 */
export function parseHeadProfile(text: string, shape: { nLayer: number; nHeadKv: number }, source = 'inline'): HeadProfile {
  const rows = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l.length > 0 && !l.startsWith('#'));
  const cells = rows.map((r) => r.split(/[\t ,]+/));
  const cols = new Set(cells.map((c) => c.length));
  if (rows.length !== shape.nLayer || cols.size !== 1 || !cols.has(shape.nHeadKv)) {
    const seen = `${rows.length} rows × ${[...cols].join('/')} columns`;
    const transposed = rows.length === shape.nHeadKv && cols.size === 1 && cols.has(shape.nLayer) ? ' (it looks transposed; it is not transposed automatically)' : '';
    throw new InvalidOptionsError(
      `head profile ${source}: has ${seen}, but the model has ${shape.nLayer} layers × ${shape.nHeadKv} KV heads (one row per layer, one column per KV head)${transposed}`,
    );
  }
  const scores = new Float64Array(shape.nLayer * shape.nHeadKv);
  cells.forEach((c, l) =>
    c.forEach((v, h) => {
      const x = Number(v);
      if (!Number.isFinite(x)) throw new InvalidOptionsError(`head profile ${source}: row ${l + 1}, column ${h + 1} is "${v}", not a number`);
      scores[l * shape.nHeadKv + h] = Math.min(1, Math.max(0, x));
    }),
  );
  return { ...shape, scores, source };
}

export function loadHeadProfile(path: string, shape: { nLayer: number; nHeadKv: number }): HeadProfile {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new InvalidOptionsError(`head profile: cannot read ${path}: ${(err as Error).message}`);
  }
  return parseHeadProfile(text, shape, path);
}

/** Writes a profile in the same TSV layout (18-digit scientific notation, as the released files). */
export function formatHeadProfile(p: HeadProfile): string {
  const lines: string[] = [];
  for (let l = 0; l < p.nLayer; l++) {
    const row: string[] = [];
    for (let h = 0; h < p.nHeadKv; h++) row.push(p.scores[l * p.nHeadKv + h]!.toExponential(18));
    lines.push(row.join('\t'));
  }
  return lines.join('\n') + '\n';
}

/**
 * §1.4, deterministic form: sort all scores ascending (ties: smaller flat index first) and make the
 * first round(s · N) heads STREAM. Returns [nLayer * nHeadKv] with 1 = stream, 0 = full.
 */
export function selectStreamHeads(profile: HeadProfile, sparsity: number): Uint8Array {
  const n = profile.scores.length;
  const mask = new Uint8Array(n);
  const k = sparsity <= 0 ? 0 : sparsity >= 1 ? n : Math.round(sparsity * n);
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => profile.scores[a]! - profile.scores[b]! || a - b);
  for (let i = 0; i < k; i++) mask[order[i]!] = 1;
  return mask;
}
