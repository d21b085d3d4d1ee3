/**
 * KV cache configuration (zod) and its resolution into what the native cache applies. The same object
 * is accepted by `model.createContext({ kv })` and by `thinkcache eval --kv '<json>'`.
 */
import { z } from 'zod';
import { InvalidOptionsError } from '../errors.js';
import { loadHeadProfile, parseHeadProfile, selectStreamHeads, type HeadProfile } from './head-profile.js';
import { EvictionOptionsSchema } from './kv-policies.js';

const headRef = z.tuple([z.number().int().min(0), z.number().int().min(0)]);

export const KvHeadsOptionsSchema = z.strictObject({
  /**
   * Head scores: a TSV path (RLKV/DuoAttention layout), a matrix [layer][kvHead], or 'calibrate': the
   * training-free window-substitution calibration (ALGORITHMS.md §1.12 b, as `thinkcache profile-heads`) run
   * on the model's own greedy traces of built-in prompts when the context is created, once per model and
   * window (a path named "calibrate" is written ./calibrate). Higher = keep the full cache.
   */
  profile: z.union([z.string().min(1), z.array(z.array(z.number()))]).optional(),
  /** Fraction of all (layer, KV head) pairs that become STREAM heads (ALGORITHMS.md §1.4). */
  sparsity: z.number().min(0).max(1).default(0),
  /**
   * Instead of `sparsity`: the key + value bytes one sequence may hold at `contextSize` tokens. The fewest
   * STREAM heads (lowest profile scores first) whose estimate fits are chosen; `ctx.effective.kv.heads` shows
   * the sparsity and the estimate (the memory report measures). Not with kv.eviction.
   */
  byteBudget: z.number().positive().optional(),
  /**
   * With `kv.eviction`: fraction of all heads (the highest-scoring) that keep the full cache; the
   * heads between the stream and full tiers use the eviction policy (three tiers, ALGORITHMS.md §6.1).
   * Default 0: every non-stream head evicts.
   */
  full: z.number().min(0).max(1).default(0),
  /** STREAM heads keep the first `sinks` tokens and the `recent` newest. */
  stream: z.strictObject({ sinks: z.number().int().min(0).max(65536).default(16), recent: z.number().int().min(1).max(1 << 20).default(64) }).default({ sinks: 16, recent: 64 }),
  /** Per-layer override: every head of the layer becomes full or stream. */
  layers: z.record(z.string().regex(/^\d+$/), z.enum(['full', 'stream'])).optional(),
  /** Explicit [layer, kvHead] pairs forced to STREAM / FULL (applied last). */
  streamHeads: z.array(headRef).optional(),
  fullHeads: z.array(headRef).optional(),
});

/** Storage codecs (ALGORITHMS.md §3, §4.1; native/kv/codecs/). f16 is llama.cpp's cache layout. */
export const KV_CODECS = ['f16', 'q8', 'q4', 'kivi2', 'kivi4', 'rot2', 'rot3', 'rot4'] as const;
export type KvCodec = (typeof KV_CODECS)[number];

/**
 * How FULL and evicting heads store keys and values (STREAM heads stay f16). Tokens older than the staging
 * window, other than the first `protectFirst` positions, are quantized in blocks; attention reads the codes.
 * Evicting heads keep at least the policy's window W in f16 (ALGORITHMS.md §6.2 C5), need a per-token
 * codec (not KIVI, §6.2 C7) and a policy that scores from attention (lazy, h2o, tova, streaming).
 * @example { key: 'rot2', value: 'rot2', stagingTokens: 64, protectFirst: 16 }
 */
export const KvStorageOptionsSchema = z.strictObject({
  key: z.enum(KV_CODECS).default('f16'),
  value: z.enum(KV_CODECS).default('f16'),
  /** Newest tokens per head kept in f16 (the staging window; KIVI's residual). */
  stagingTokens: z.number().int().min(0).max(1 << 20).default(64),
  /** Positions < protectFirst are never quantized (attention sinks). */
  protectFirst: z.number().int().min(0).max(1 << 20).default(16),
  /** Massive-activation sinks detected at prefill (ALGORITHMS.md §3.5) are never quantized either. */
  protectSinks: z.boolean().default(true),
  /** rot clip ratio c (default 0.8 for rot2, 1.0 otherwise, as RotateKV). */
  clip: z.number().gt(0).max(1).optional(),
  /** Channels per quantization group (rot, KIVI values); KIVI keys: tokens per group. q8/q4 use 32. */
  groupSize: z.number().int().min(8).max(1024).default(32),
  /** rot keys: rotate before RoPE (RotateKV, RoPE re-applied in attention) or after it (§6.2 C6). */
  variant: z.enum(['pre-rope', 'post-rope']).default('pre-rope'),
  /**
   * rot keys: the calibrated channel permutation (§3.3). 'auto': the sidecar `<model>.rotkv.json` when it
   * exists (made by `thinkcache calibrate-rotation`), else calibrated on built-in text when the context is
   * created (once per model) — pre-RoPE keys only, the post-RoPE variant stays unpermuted; a path: that
   * sidecar; 'none': identity.
   */
  permutation: z.union([z.literal('auto'), z.literal('none'), z.string().min(1)]).default('auto'),
  /**
   * rot keys, pre-RoPE: KV heads whose keys are rotated together by one FWHT of size G·headDim (RotateKV's
   * grouped-head rotation, ALGORITHMS.md §3.2; its default is 4). A power of two dividing the model's KV
   * heads. Only groups whose heads all keep the full cache rotate together (§6.2 C1 b: a head's key must not
   * depend on tokens another head evicted); the others rotate per head. 1: per head.
   */
  rotationGroup: z.number().int().min(1).max(8).refine((g) => (g & (g - 1)) === 0, { message: 'must be a power of two (1, 2, 4 or 8)' }).default(1),
});

export const KvOptionsSchema = z
  .strictObject({
    storage: KvStorageOptionsSchema.optional(),
    heads: KvHeadsOptionsSchema.optional(),
    /** Token eviction for the heads that are neither STREAM nor kept FULL (see heads.full). */
    eviction: EvictionOptionsSchema.optional(),
  })
  .superRefine((kv, ctx) => {
    const st = kv.storage;
    if (!st || !kv.eviction || (st.key === 'f16' && st.value === 'f16')) return;
    for (const side of ['key', 'value'] as const) {
      if (st[side].startsWith('kivi')) {
        ctx.addIssue({
          code: 'custom', path: ['storage', side],
          message: `${st[side]} groups tokens into blocks that per-token eviction cannot split (ALGORITHMS.md §6.2 C7); with eviction use rot2/rot3/rot4, q8 or q4`,
        });
      }
    }
    if (kv.eviction.policy === 'snapkv' || kv.eviction.policy === 'rkv') {
      ctx.addIssue({
        code: 'custom', path: ['eviction', 'policy'],
        message: `${kv.eviction.policy} scores from f16 keys; combine storage codecs with lazy, h2o, tova or streaming`,
      });
    }
  });
export type KvOptions = z.input<typeof KvOptionsSchema>;

/** Exactly what the cache applies (ctx.effective.kv). */
export interface EffectiveKv {
  storage: {
    key: KvCodec; value: KvCodec; stagingTokens: number; protectFirst: number; protectSinks: boolean;
    /** The settings as given (null: the codec's default). What each side applies is in keyClip / keyGroupSize / …. */
    clip: number | null; groupSize: number;
    /** rot codecs' clip ratio as applied (rot2 0.8, rot3/rot4 1.0 unless set); null for a codec without one. */
    keyClip: number | null; valueClip: number | null;
    /**
     * As applied: channels per scale and zero-point (rot, q8/q4: always 32, KIVI values; a group that does not divide
     * the head size becomes the whole head), or tokens per block of a KIVI key; null for f16.
     */
    keyGroupSize: number | null; valueGroupSize: number | null;
    variant: 'pre-rope' | 'post-rope';
    /** rot keys: where the channel permutation came from ('none (identity)' when not permuted); else the setting. */
    permutation: string;
    /** KV heads per key rotation group (the setting) and how many heads are in groups rotated together. */
    rotationGroup: number;
    groupedHeads: number;
  };
  heads: {
    nLayer: number;
    nHeadKv: number;
    /** [layer][kvHead] retention actually applied. */
    retention: ('full' | 'stream' | 'evict')[][];
    streamHeads: number;
    fullHeads: number;
    evictHeads: number;
    requestedSparsity: number;
    /** streamHeads / (nLayer · nHeadKv). */
    realizedSparsity: number;
    sinks: number;
    recent: number;
    profile: string | null;
    /** heads.byteBudget as given, and the key + value bytes at contextSize the chosen heads are estimated to hold. */
    byteBudget: number | null;
    estimatedBytes: number | null;
  };
  eviction: z.output<typeof EvictionOptionsSchema> | null;
}

export interface ResolvedKv {
  effective: EffectiveKv;
  /** [nLayer * nHeadKv], 0 full, 1 stream, 2 evict. */
  retention: Uint8Array;
  eviction: z.output<typeof EvictionOptionsSchema> | null;
}

/**
 * [nLayer · nHeadKv]: 1 where a head's key rotation group (G consecutive KV heads) is rotated together, which
 * the native cache does where every head of the group keeps the full cache (retention 0).
 */
export function rotationGroupedMask(retention: Uint8Array, G: number): Uint8Array {
  const out = new Uint8Array(retention.length);
  if (G <= 1) return out;
  for (let g0 = 0; g0 + G <= retention.length; g0 += G) {
    if (retention.subarray(g0, g0 + G).every((r) => r === 0)) out.fill(1, g0, g0 + G);
  }
  return out;
}

// Key + value bytes one head holds at contextSize tokens (heads.byteBudget): a stream head min(ctx, S + R)
// f16 tokens; a full head, with codecs, its protected first tokens, up to 20 sinks and the staging window in
// f16 and the rest in codec blocks (whole blocks: KIVI keys round up to their token group).
function headByteEstimate(storage: z.output<typeof KvStorageOptionsSchema>, stream: { sinks: number; recent: number },
  shape: { headDim: number; headDimV?: number; budget?: KvBudgetShape }): { full: number; stream: number } {
  const ctx = shape.budget!.contextSize, D = shape.headDim, DV = shape.headDimV ?? shape.headDim;
  const f16 = 2 * (D + DV);
  const streamBytes = Math.min(ctx, stream.sinks + stream.recent) * f16;
  if (storage.key === 'f16' && storage.value === 'f16') return { full: ctx * f16, stream: streamBytes };
  const plain = Math.min(ctx, storage.protectFirst + (storage.protectSinks ? 20 : 0) + storage.stagingTokens);
  const coded = ctx - plain;
  const side = (codec: KvCodec, dim: number, key: boolean) => {
    if (codec === 'f16') return coded * 2 * dim;
    const b = shape.budget!.codecBlock(codec, dim, storage.groupSize, key);
    return Math.ceil(coded / b.blockTokens) * b.blockBytes;
  };
  return { full: plain * f16 + side(storage.key, D, true) + side(storage.value, DV, false), stream: streamBytes };
}

// Channels per scale group as the native codecs apply it (kv_codec_group): q8/q4 always 32; a group that does
// not divide the head size covers the whole head.
function appliedGroup(codec: KvCodec, dim: number | undefined, group: number): number {
  const g = codec === 'q8' || codec === 'q4' ? 32 : group;
  return dim === undefined ? g : g <= 0 || g > dim || dim % g !== 0 ? dim : g;
}

/** What a byte budget needs to know: the context length and one codec block's size (the addon's kvCodecBlock). */
export interface KvBudgetShape {
  contextSize: number;
  codecBlock: (codec: KvCodec, dim: number, group: number, key: boolean) => { blockTokens: number; blockBytes: number };
}

/**
 * shape.headDim / headDimV (the model's): the groups and clips each side applies (without them, the settings);
 * shape.budget: needed for heads.byteBudget.
 */
export function resolveKvOptions(kv: z.output<typeof KvOptionsSchema> | undefined,
  shape: { nLayer: number; nHeadKv: number; headDim?: number; headDimV?: number; budget?: KvBudgetShape }): ResolvedKv {
  const heads = kv?.heads ?? KvHeadsOptionsSchema.parse({});
  const storage = kv?.storage ?? KvStorageOptionsSchema.parse({});
  if ((storage.key.startsWith('kivi') || storage.value.startsWith('kivi')) && storage.groupSize % 16 !== 0) {
    throw new InvalidOptionsError(`kv.storage.groupSize: KIVI groups whole 16-token tiles; got ${storage.groupSize}, expected a multiple of 16`);
  }
  const n = shape.nLayer * shape.nHeadKv;
  let profile: HeadProfile | undefined;
  if (typeof heads.profile === 'string') profile = loadHeadProfile(heads.profile, shape);
  else if (heads.profile) profile = parseHeadProfile(heads.profile.map((r) => r.join('\t')).join('\n'), shape, 'kv.heads.profile');
  let retention: Uint8Array = new Uint8Array(n);
  if (heads.byteBudget !== undefined) {
    if (heads.sparsity > 0) throw new InvalidOptionsError('kv.heads: give either sparsity or byteBudget, not both');
    if (kv?.eviction) throw new InvalidOptionsError('kv.heads.byteBudget chooses between full and stream heads; with kv.eviction set kv.heads.sparsity');
    if (!profile) throw new InvalidOptionsError('kv.heads.byteBudget needs kv.heads.profile to know which heads can stream');
    if (!shape.budget || shape.headDim === undefined) throw new InvalidOptionsError('kv.heads.byteBudget needs the model (createContext)');
  }
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
  // three tiers: with eviction, the heads that are neither STREAM nor among the top `full` fraction evict
  const eviction = kv?.eviction ?? null;
  if (eviction) {
    const nFull = Math.round(heads.full * n);
    const byScore = Array.from({ length: n }, (_, i) => i).sort((a, b) => (profile ? profile.scores[b]! - profile.scores[a]! : 0) || a - b);
    if (nFull > 0 && !profile) throw new InvalidOptionsError('kv.heads.full needs kv.heads.profile to know which heads to keep in full');
    const keepFull = new Set(byScore.slice(0, nFull));
    for (let i = 0; i < n; i++) if (retention[i] === 0 && !keepFull.has(i)) retention[i] = 2;
  } else if (heads.full > 0) {
    throw new InvalidOptionsError('kv.heads.full only applies with kv.eviction (it chooses which heads keep the full cache instead of evicting)');
  }
  const overrides = (r: Uint8Array) => {
    for (const [l, h] of heads.streamHeads ?? []) { check(l, h, 'streamHeads'); r[l * shape.nHeadKv + h] = 1; }
    for (const [l, h] of heads.fullHeads ?? []) { check(l, h, 'fullHeads'); r[l * shape.nHeadKv + h] = 0; }
  };
  overrides(retention);
  let estimatedBytes: number | null = null;
  if (heads.byteBudget !== undefined) {
    // the fewest stream heads, lowest scores first, whose estimate fits (the layer and head overrides apply to each)
    const perHead = headByteEstimate(storage, heads.stream, shape as Required<Pick<typeof shape, 'headDim'>> & typeof shape);
    const estimate = (r: Uint8Array) => r.reduce((a, x) => a + (x === 1 ? perHead.stream : perHead.full), 0);
    let chosen: Uint8Array | undefined;
    for (let k = 0; k <= n && !chosen; k++) {
      const r = selectStreamHeads(profile!, k / n);
      for (const [layer, mode] of Object.entries(heads.layers ?? {})) {
        for (let h = 0; h < shape.nHeadKv; h++) r[Number(layer) * shape.nHeadKv + h] = mode === 'stream' ? 1 : 0;
      }
      overrides(r);
      if (estimate(r) <= heads.byteBudget) chosen = r;
    }
    if (!chosen) {
      const all = new Uint8Array(n).fill(1);
      overrides(all);
      throw new InvalidOptionsError(`kv.heads.byteBudget: ${heads.byteBudget} bytes do not hold even every head streaming ` +
        `(${estimate(all)} bytes at contextSize ${shape.budget!.contextSize}: ${perHead.stream} per stream head, ${perHead.full} per full head)`);
    }
    retention = chosen;
    estimatedBytes = estimate(retention);
  }
  let streamHeads = 0, evictHeads = 0;
  for (const r of retention) { if (r === 1) streamHeads++; else if (r === 2) evictHeads++; }
  const G = storage.rotationGroup;
  let groupedHeads = 0;
  if (G > 1) {
    if (!storage.key.startsWith('rot') || storage.variant !== 'pre-rope') {
      throw new InvalidOptionsError(`kv.storage.rotationGroup: grouped rotation applies to rot keys rotated before RoPE; got key ${storage.key}, variant ${storage.variant}`);
    }
    if (shape.nHeadKv % G !== 0) throw new InvalidOptionsError(`kv.storage.rotationGroup: ${G} does not divide the model's ${shape.nHeadKv} KV heads`);
    if (eviction?.policy === 'lazy' && eviction.perQueryHead) {
      throw new InvalidOptionsError('kv.storage.rotationGroup: per-query-head lazy caches rotate per head; use rotationGroup 1 or perQueryHead false');
    }
    groupedHeads = rotationGroupedMask(retention, G).reduce((a, b) => a + b, 0);
  }
  const names = ['full', 'stream', 'evict'] as const;
  const rows: ('full' | 'stream' | 'evict')[][] = [];
  for (let l = 0; l < shape.nLayer; l++) {
    rows.push(Array.from(retention.subarray(l * shape.nHeadKv, (l + 1) * shape.nHeadKv), (r) => names[r]!));
  }
  return {
    retention,
    eviction,
    effective: {
      storage: {
        ...storage, clip: storage.clip ?? null, groupedHeads,
        keyClip: storage.key.startsWith('rot') ? storage.clip ?? (storage.key === 'rot2' ? 0.8 : 1) : null,
        valueClip: storage.value.startsWith('rot') ? storage.clip ?? (storage.value === 'rot2' ? 0.8 : 1) : null,
        keyGroupSize: storage.key === 'f16' ? null : storage.key.startsWith('kivi') ? storage.groupSize : appliedGroup(storage.key, shape.headDim, storage.groupSize),
        valueGroupSize: storage.value === 'f16' ? null : appliedGroup(storage.value, shape.headDimV ?? shape.headDim, storage.groupSize),
      },
      eviction,
      heads: {
        nLayer: shape.nLayer, nHeadKv: shape.nHeadKv, retention: rows, streamHeads, fullHeads: n - streamHeads - evictHeads, evictHeads,
        requestedSparsity: heads.sparsity, realizedSparsity: streamHeads / n,
        sinks: heads.stream.sinks, recent: heads.stream.recent, profile: profile?.source ?? null,
        byteBudget: heads.byteBudget ?? null, estimatedBytes,
      },
    },
  };
}
