/**
 * KV cache configuration (zod) and its resolution into what the native cache applies. The same object
 * is accepted by `model.createContext({ kv })` and by `thinkcache eval --kv '<json>'`.
 */
import { z } from 'zod';
import { InvalidOptionsError } from '../errors.js';
import { loadHeadProfile, parseHeadProfile, selectStreamHeads, type HeadProfile } from './head-profile.js';

const headRef = z.tuple([z.number().int().min(0), z.number().int().min(0)]);

export const KvHeadsOptionsSchema = z.strictObject({
  /**
   * Head scores: a TSV path (RLKV/DuoAttention layout), or a matrix [layer][kvHead]. Higher = keep the
   * full cache.
   */
  profile: z.union([z.string().min(1), z.array(z.array(z.number()))]).optional(),
  /** Fraction of all (layer, KV head) pairs that become STREAM heads (ALGORITHMS.md §1.4). */
  sparsity: z.number().min(0).max(1).default(0),
  /** STREAM heads keep the first `sinks` tokens and the `recent` newest. */
  stream: z.strictObject({ sinks: z.number().int().min(0).max(65536).default(16), recent: z.number().int().min(1).max(1 << 20).default(64) }).default({ sinks: 16, recent: 64 }),
  /** Per-layer override: every head of the layer becomes full or stream. */
  layers: z.record(z.string().regex(/^\d+$/), z.enum(['full', 'stream'])).optional(),
  /** Explicit [layer, kvHead] pairs forced to STREAM / FULL (applied last). */
  streamHeads: z.array(headRef).optional(),
  fullHeads: z.array(headRef).optional(),
});

export const KvOptionsSchema = z.strictObject({
  heads: KvHeadsOptionsSchema.optional(),
});
export type KvOptions = z.input<typeof KvOptionsSchema>;

/** Exactly what the cache applies (ctx.effective.kv). */
export interface EffectiveKv {
  storage: { key: 'f16'; value: 'f16' };
  heads: {
    nLayer: number;
    nHeadKv: number;
    /** [layer][kvHead] retention actually applied. */
    retention: ('full' | 'stream')[][];
    streamHeads: number;
    fullHeads: number;
    requestedSparsity: number;
    /** streamHeads / (nLayer · nHeadKv). */
    realizedSparsity: number;
    sinks: number;
    recent: number;
    profile: string | null;
  };
}

export interface ResolvedKv {
  effective: EffectiveKv;
  /** [nLayer * nHeadKv], 0 full, 1 stream. */
  retention: Uint8Array;
}

export function resolveKvOptions(kv: z.output<typeof KvOptionsSchema> | undefined, shape: { nLayer: number; nHeadKv: number }): ResolvedKv {
  const heads = kv?.heads ?? KvHeadsOptionsSchema.parse({});
  const n = shape.nLayer * shape.nHeadKv;
  let profile: HeadProfile | undefined;
  if (typeof heads.profile === 'string') profile = loadHeadProfile(heads.profile, shape);
  else if (heads.profile) profile = parseHeadProfile(heads.profile.map((r) => r.join('\t')).join('\n'), shape, 'kv.heads.profile');
  let retention: Uint8Array = new Uint8Array(n);
  if (heads.sparsity > 0) {
    if (!profile) {
      throw new InvalidOptionsError(
        'kv.heads.sparsity needs kv.heads.profile: a TSV path (RLKV/DuoAttention format, or one made by `thinkcache profile-heads`) or a score matrix',
      );
    }
    retention = selectStreamHeads(profile, heads.sparsity);
  }
  const check = (l: number, h: number, what: string) => {
    if (l >= shape.nLayer || h >= shape.nHeadKv) {
      throw new InvalidOptionsError(`kv.heads.${what}: [${l}, ${h}] is outside the model's ${shape.nLayer} layers × ${shape.nHeadKv} KV heads`);
    }
  };
  for (const [layer, mode] of Object.entries(heads.layers ?? {})) {
    const l = Number(layer);
    check(l, 0, 'layers');
    for (let h = 0; h < shape.nHeadKv; h++) retention[l * shape.nHeadKv + h] = mode === 'stream' ? 1 : 0;
  }
  for (const [l, h] of heads.streamHeads ?? []) { check(l, h, 'streamHeads'); retention[l * shape.nHeadKv + h] = 1; }
  for (const [l, h] of heads.fullHeads ?? []) { check(l, h, 'fullHeads'); retention[l * shape.nHeadKv + h] = 0; }
  const streamHeads = retention.reduce((s, r) => s + r, 0);
  const rows: ('full' | 'stream')[][] = [];
  for (let l = 0; l < shape.nLayer; l++) {
    rows.push(Array.from(retention.subarray(l * shape.nHeadKv, (l + 1) * shape.nHeadKv), (r) => (r ? 'stream' : 'full')));
  }
  return {
    retention,
    effective: {
      storage: { key: 'f16', value: 'f16' },
      heads: {
        nLayer: shape.nLayer, nHeadKv: shape.nHeadKv, retention: rows, streamHeads, fullHeads: n - streamHeads,
        requestedSparsity: heads.sparsity, realizedSparsity: streamHeads / n,
        sinks: heads.stream.sinks, recent: heads.stream.recent, profile: profile?.source ?? null,
      },
    },
  };
}
