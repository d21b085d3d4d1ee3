// Head-selective retention (RLKV) through the public API: profile loading and validation, the
// deterministic sparsity rule, ctx.effective, s = 0 equal to the plain cache, stream heads holding
// exactly their window, and reported bytes equal to ALGORITHMS.md §1.8.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { calibrateHeadProfile, InvalidOptionsError, loadModel, parseHeadProfile, selectStreamHeads, type GenerateEvent } from '../../lib/index.js';
import { DEFAULT_PROMPTS } from '../../lib/eval/fidelity.js';
import { ensureFixture } from '../fixtures/make-tiny-gguf.js';

const dir = mkdtempSync(join(tmpdir(), 'thinkcache-kv-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// llama fixture with 4 layers × 2 KV heads (head_dim 16) so s = 0.25/0.5/0.75 are whole head counts
const fixture = () => ensureFixture('llama', 'f32', { nLayer: 4 });

async function greedy(kv: object | undefined, prompt: string, n: number) {
  await using model = await loadModel({ path: fixture() });
  await using ctx = await model.createContext({ contextSize: 512, threads: 1, ...(kv ? { kv } : {}) });
  const seq = ctx.acquireSequence();
  let fin: Extract<GenerateEvent, { type: 'finish' }> | undefined;
  for await (const ev of seq.generate(prompt, { maxTokens: n, stopAtEog: false })) if (ev.type === 'finish') fin = ev;
  return { fin: fin!, heads: seq.memory({ detail: 'heads' }), effective: ctx.effective };
}

describe('head profiles', () => {
  it('parses the RLKV/Duo TSV layout, clips to [0, 1] and refuses other shapes', () => {
    const p = parseHeadProfile('1.0078e+00\t-1.06e-02\n0.5\t0.25\n', { nLayer: 2, nHeadKv: 2 });
    expect(Array.from(p.scores)).toEqual([1, 0, 0.5, 0.25]);
    expect(() => parseHeadProfile('0.1\t0.2\t0.3\n', { nLayer: 2, nHeadKv: 2 })).toThrow(/1 rows × 3 columns, but the model has 2 layers × 2 KV heads/);
    expect(() => parseHeadProfile('0.1\t0.2\n0.3\t0.4\n0.5\t0.6\n', { nLayer: 2, nHeadKv: 3 })).toThrow(/looks transposed/);
    expect(() => parseHeadProfile('0.1\tx\n0.3\t0.4\n', { nLayer: 2, nHeadKv: 2 })).toThrow(/row 1, column 2 is "x"/);
  });

  it('selects the lowest round(s·N) scores as stream heads, ties by flat index', () => {
    const p = parseHeadProfile('0.9\t0.1\n0.1\t0.5\n', { nLayer: 2, nHeadKv: 2 });
    expect(Array.from(selectStreamHeads(p, 0.25))).toEqual([0, 1, 0, 0]);
    expect(Array.from(selectStreamHeads(p, 0.5))).toEqual([0, 1, 1, 0]);
    expect(Array.from(selectStreamHeads(p, 0))).toEqual([0, 0, 0, 0]);
    expect(Array.from(selectStreamHeads(p, 1))).toEqual([1, 1, 1, 1]);
  });
});

describe('createContext({ kv: { heads } })', () => {
  const profilePath = join(dir, 'profile.tsv');
  writeFileSync(profilePath, '0.9\t0.2\n0.3\t0.8\n0.1\t0.7\n0.6\t0.4\n');

  it('s = 0 gives exactly the plain cache tokens, with any profile', async () => {
    const plain = await greedy(undefined, 'Once upon a time there was', 40);
    const s0 = await greedy({ heads: { profile: profilePath, sparsity: 0, stream: { sinks: 2, recent: 4 } } }, 'Once upon a time there was', 40);
    expect(s0.fin.tokens).toEqual(plain.fin.tokens);
    expect(s0.effective.kv.heads.streamHeads).toBe(0);
  });

  it('applies the profile, reports it in ctx.effective, and stream heads hold exactly S + R tokens', async () => {
    const S = 2, R = 6;
    const r = await greedy({ heads: { profile: profilePath, sparsity: 0.5, stream: { sinks: S, recent: R } } }, 'Once upon a time there was', 30);
    const eff = r.effective.kv.heads;
    expect(eff.retention).toEqual([['full', 'stream'], ['stream', 'full'], ['stream', 'full'], ['full', 'stream']]);
    expect(eff.realizedSparsity).toBe(0.5);
    expect(eff.profile).toBe(profilePath);
    const logical = r.fin.kv.logicalTokens;
    const resident = Array.from(r.heads.heads!.residentTokens);
    const budget = Array.from(r.heads.heads!.budget);
    eff.retention.flat().forEach((mode, i) => {
      expect(resident[i]).toBe(mode === 'stream' ? S + R : logical);
      expect(budget[i]).toBe(mode === 'stream' ? S + R : -1);
    });
    // §1.8: payload bytes = 4D · [N_full · n + N_stream · min(n, S+R)]  (D = 16 here, f16 K and V)
    const D = 16;
    expect(r.heads.breakdown.keys + r.heads.breakdown.values).toBe(4 * D * (4 * logical + 4 * Math.min(logical, S + R)));
    expect(r.heads.residentTokens).toBe(resident.reduce((a, b) => a + b, 0));
  });

  it("profile 'calibrate': the model's own window-substitution profile, computed once per window and model", async () => {
    await using model = await loadModel({ path: fixture() });
    const heads = { profile: 'calibrate', sparsity: 0.5, stream: { sinks: 4, recent: 16 } } as const;
    await using a = await model.createContext({ contextSize: 512, threads: 1, kv: { heads } });
    expect(a.effective.kv.heads.profile).toMatch(/^calibrate: wse\(S=4,R=16,traces=4\)/);
    expect(a.effective.kv.heads.streamHeads).toBe(4);
    // the same as running the calibration and passing its scores
    const r = await calibrateHeadProfile(model, { prompts: DEFAULT_PROMPTS.slice(0, 4), maxTokens: 256, method: 'wse', sinks: 4, recent: 16 });
    expect(Array.from(selectStreamHeads(r.profile, 0.5))).toEqual(a.effective.kv.heads.retention.flat().map((m) => (m === 'stream' ? 1 : 0)));
    await using b = await model.createContext({ contextSize: 512, threads: 1, kv: { heads } });
    expect(b.effective.kv.heads.retention).toEqual(a.effective.kv.heads.retention);
    expect(model._headProfile(4, 16)).toBe(model._headProfile(4, 16)); // (one calibration per model and window)
    expect(model._headProfile(4, 32)).not.toBe(model._headProfile(4, 16));
  });

  it('byteBudget: the fewest stream heads whose key + value bytes at contextSize fit, measured by the memory report', async () => {
    await using model = await loadModel({ path: fixture() });
    const S = 4, R = 16, ctxSize = 256, D = 16;
    const full = ctxSize * 4 * D, stream = (S + R) * 4 * D;  // 16384 and 1280 bytes per head (f16 K + V)
    // all 8 heads full: 131072 bytes; 100000 needs 3 stream heads (131072 − 3 · 15104 = 85760)
    const heads = { profile: profilePath, byteBudget: 100_000, stream: { sinks: S, recent: R } };
    await using ctx = await model.createContext({ contextSize: ctxSize, threads: 1, kv: { heads } });
    const eff = ctx.effective.kv.heads;
    expect(eff.streamHeads).toBe(3);
    expect(eff.estimatedBytes).toBe(5 * full + 3 * stream);
    expect(eff.byteBudget).toBe(100_000);
    const seq = ctx.acquireSequence();
    await seq.evaluate(Array.from({ length: ctxSize }, (_, i) => 3 + (i % 50)));
    const m = seq.memory();
    expect(m.breakdown.keys + m.breakdown.values).toBe(eff.estimatedBytes);  // f16: the estimate is exact
    // the lowest-scoring heads stream: the same as sparsity 3/8 with this profile
    await using bySparsity = await model.createContext({ contextSize: ctxSize, threads: 1, kv: { heads: { profile: profilePath, sparsity: 3 / 8, stream: { sinks: S, recent: R } } } });
    expect(eff.retention).toEqual(bySparsity.effective.kv.heads.retention);
    // rot2 full heads: more of them fit; the estimate stays within 10 % of what the report measures
    await using coded = await model.createContext({ contextSize: ctxSize, threads: 1, kv: { heads, storage: { key: 'rot2', value: 'rot2', permutation: 'none' } } });
    const ce = coded.effective.kv.heads;
    expect(ce.streamHeads).toBeLessThan(3);
    expect(ce.estimatedBytes!).toBeLessThanOrEqual(100_000);
    const cs = coded.acquireSequence();
    await cs.evaluate(Array.from({ length: ctxSize }, (_, i) => 3 + (i % 50)));
    const cm = cs.memory();
    expect(Math.abs(cm.breakdown.keys + cm.breakdown.values - ce.estimatedBytes!) / ce.estimatedBytes!).toBeLessThan(0.1);
    // refusals name the reason
    await expect(model.createContext({ contextSize: ctxSize, kv: { heads: { ...heads, byteBudget: 5000 } } })).rejects.toThrow(/do not hold even every head streaming/);
    await expect(model.createContext({ contextSize: ctxSize, kv: { heads: { ...heads, sparsity: 0.5 } } })).rejects.toThrow(/either sparsity or byteBudget/);
    await expect(model.createContext({ contextSize: ctxSize, kv: { heads: { byteBudget: 1e5 } } })).rejects.toThrow(/needs kv.heads.profile/);
  });

  it('layer and head overrides apply after the profile; bad ones are named', async () => {
    const r = await greedy({ heads: { layers: { '0': 'stream' }, fullHeads: [[0, 1]], streamHeads: [[3, 0]] } }, 'Hello', 4);
    expect(r.effective.kv.heads.retention[0]).toEqual(['stream', 'full']);
    expect(r.effective.kv.heads.retention[3]).toEqual(['stream', 'full']);
    await using model = await loadModel({ path: fixture() });
    await expect(model.createContext({ kv: { heads: { sparsity: 0.5 } } })).rejects.toThrow(/kv.heads.sparsity needs kv.heads.profile/);
    await expect(model.createContext({ kv: { heads: { streamHeads: [[9, 0]] } } })).rejects.toThrow(/\[9, 0\] is outside the model's 4 layers × 2 KV heads/);
    await expect(model.createContext({ kv: { heads: { profile: join(dir, 'missing.tsv'), sparsity: 0.5 } } })).rejects.toBeInstanceOf(InvalidOptionsError);
    await expect(model.createContext({ kv: { heads: { sparsity: 2 } } } as never)).rejects.toThrow(/createContext\.kv\.heads\.sparsity/);
  });
});
