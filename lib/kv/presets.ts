/**
 * Named KV configurations, for the demo and for `--kv NAME` on the command line. Each is an ordinary
 * `KvOptions` object (what `createContext({ kv })` takes); `ctx.effective.kv` shows what it resolved to.
 * Presets with head-selective retention need a head profile (a TSV from `thinkcache profile-heads`).
 */
import { InvalidOptionsError } from '../errors.js';
import type { KvOptions } from './kv-options.js';

export interface KvPreset {
  name: string;
  description: string;
  needsProfile: boolean;
  build(profile?: string): KvOptions;
}

function needProfile(name: string, profile: string | undefined): string {
  if (!profile) throw new InvalidOptionsError(`KV preset "${name}" needs a head profile (--profile P.tsv, made by \`thinkcache profile-heads\`)`);
  return profile;
}

export const KV_PRESETS: readonly KvPreset[] = [
  { name: 'full', description: 'f16 keys and values, every token (the reference)', needsProfile: false, build: () => ({}) },
  {
    name: 'rlkv-50', description: 'half of the KV heads keep 16 sinks + 64 recent tokens, the rest everything (RLKV, s = 0.5)', needsProfile: true,
    build: (p) => ({ heads: { profile: needProfile('rlkv-50', p), sparsity: 0.5, stream: { sinks: 16, recent: 64 } } }),
  },
  {
    name: 'lazy-50', description: 'lagged eviction keeping half of the generated tokens (LazyEviction, ratio 0.5, W = 64)', needsProfile: false,
    build: () => ({ eviction: { policy: 'lazy', capacity: 128, window: 64, ratio: 0.5, protect: 4 } }),
  },
  {
    name: 'rot2', description: '2-bit rotated keys and values, 64 f16 staging tokens, first 16 kept in f16 (RotateKV)', needsProfile: false,
    build: () => ({ storage: { key: 'rot2', value: 'rot2' } }),
  },
  {
    name: 'rot2-lazy-50', description: 'lazy-50 with its kept tokens stored as rot2 (past the window W = 64 in f16; ALGORITHMS.md §6.2 C5)', needsProfile: false,
    build: () => ({ storage: { key: 'rot2', value: 'rot2' }, eviction: { policy: 'lazy', capacity: 128, window: 64, ratio: 0.5, protect: 4 } }),
  },
  {
    name: 'rot2-rlkv-50', description: 'rlkv-50 with the full heads stored as rot2 (streaming heads stay f16)', needsProfile: true,
    build: (p) => ({ storage: { key: 'rot2', value: 'rot2' }, heads: { profile: needProfile('rot2-rlkv-50', p), sparsity: 0.5, stream: { sinks: 16, recent: 64 } } }),
  },
  {
    name: 'q4', description: '4-bit per-token keys and values in blocks of 32 (llama.cpp q4_0-like baseline)', needsProfile: false,
    build: () => ({ storage: { key: 'q4', value: 'q4' } }),
  },
];

export function kvPreset(name: string): KvPreset | undefined {
  return KV_PRESETS.find((p) => p.name === name);
}
