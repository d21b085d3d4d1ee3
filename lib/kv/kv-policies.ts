/**
 * Eviction policies as zod schemas, one entry per native registry row (native/kv/policies/*.cpp);
 * test/lib/kv-policies.test.ts checks that the two lists agree.
 */
import { z } from 'zod';

const common = {
  /** Tokens a head keeps after an eviction (protected sinks and the recent window included). */
  capacity: z.number().int().min(2).max(1 << 24),
  /** The first `protect` positions are never evicted (attention sinks). */
  protect: z.number().int().min(0).max(1 << 20).default(0),
  /**
   * Also never evict massive-activation sinks: per layer, the tokens holding the 20 largest |values| of
   * the layer input during prefill (RotateKV's detection, ALGORITHMS.md §3.5), plus token 0.
   */
  protectSinks: z.boolean().default(false),
};

export const LazyPolicySchema = z.strictObject({
  policy: z.literal('lazy'),
  ...common,
  /** W: eviction period and protected recent window (LazyEviction's observation window). */
  window: z.number().int().min(1).max(1 << 20).default(128),
  /** A token is "attended" when max over its group's query heads of p >= alpha. */
  alpha: z.number().gt(0).lt(1).default(1e-4),
  /** Ratio mode: capacity = prompt + max(W, floor(ratio · t)) at each check (t = decode steps). */
  ratio: z.number().gt(0).max(1).optional(),
  /**
   * Reference mode for A/B: one token set and one last/mri pair per *query* head, as the official code
   * (KV copied per query head: g× the memory). Default: per KV head with group-max (ALGORITHMS.md §2.7).
   */
  perQueryHead: z.boolean().default(false),
}).refine((o) => o.ratio !== undefined || o.capacity > o.window, {
  message: 'lazy eviction needs capacity > window (C > W): it keeps the W newest tokens plus C − W chosen ones',
  path: ['capacity'],
});

export const H2oPolicySchema = z.strictObject({
  policy: z.literal('h2o'),
  ...common,
  /** Newest tokens always kept (the rest of the budget goes to heavy hitters). */
  window: z.number().int().min(1).max(1 << 20).default(32),
});

export const TovaPolicySchema = z.strictObject({ policy: z.literal('tova'), ...common });

export const StreamingPolicySchema = z.strictObject({
  policy: z.literal('streaming'),
  ...common,
  protect: z.number().int().min(0).max(1 << 20).default(4),
});

const qkCommon = {
  ...common,
  /** w: the last w queries score the keys, and the w newest tokens are always kept. */
  window: z.number().int().min(1).max(4096).default(8),
  /** Compress every `interval` decode steps (the R-KV repo's buffer). */
  interval: z.number().int().min(1).max(1 << 20).default(128),
  /** 1-D max-pool kernel over token scores (odd). */
  pool: z.number().int().min(1).max(63).default(7),
};

export const SnapKvPolicySchema = z.strictObject({ policy: z.literal('snapkv'), ...qkCommon });

export const RkvPolicySchema = z.strictObject({
  policy: z.literal('rkv'),
  ...qkCommon,
  /** Weight of attention importance against key redundancy (0.1 in the paper). */
  lambda: z.number().min(0).max(1).default(0.1),
});

export const EvictionOptionsSchema = z.union([LazyPolicySchema, H2oPolicySchema, TovaPolicySchema, StreamingPolicySchema, SnapKvPolicySchema, RkvPolicySchema]);
export type EvictionOptions = z.input<typeof EvictionOptionsSchema>;

/** Policy names accepted here (must equal the native registry). */
export const EVICTION_POLICIES = ['lazy', 'h2o', 'tova', 'streaming', 'snapkv', 'rkv'] as const;
