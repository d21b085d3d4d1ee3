// RotateKV's calibrated key channel permutation (ALGORITHMS.md §3.3; lib/kv/rotation.ts): the statistic,
// the sidecar (fingerprint, shape and permutation checks), and contexts picking it up ('auto' → sidecar next
// to the model or the built-in calibration; a path; 'none').
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { InvalidOptionsError, loadModel, type GenerateEvent } from '../../lib/index.js';
import {
  BUILTIN_CALIBRATION_TEXT, calibrateRotation, defaultSidecarPath, fwht, groupedPermutation, loadRotationSidecar, modelFingerprint, rotationFromKeySums,
  saveRotationSidecar, type RotationCalibration,
} from '../../lib/kv/rotation.js';
import { rotationGroupedMask } from '../../lib/kv/kv-options.js';
import { ensureFixture } from '../fixtures/make-tiny-gguf.js';
import { repoRoot } from '../helpers/shared-data.js';
import { spawnSync } from 'node:child_process';

const dir = mkdtempSync(join(tmpdir(), 'thinkcache-rot-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
// a private copy: sidecars are written next to it
const fixture = (() => {
  let p: string | undefined;
  return () => {
    if (!p) { p = join(dir, 'qwen2.gguf'); copyFileSync(ensureFixture('qwen2', 'f32', { nLayer: 2 }), p); }
    return p;
  };
})();

describe('rotation statistic', () => {
  it('the FWHT is normalized and self-inverse', () => {
    const x = Float64Array.from({ length: 16 }, (_, i) => Math.sin(i * 1.7) + i / 5);
    const y = fwht(Float64Array.from(x));
    expect(Math.hypot(...y)).toBeCloseTo(Math.hypot(...x), 10);
    fwht(y);
    y.forEach((v, i) => expect(v).toBeCloseTo(x[i]!, 12));
    expect(() => fwht(new Float64Array(12))).toThrow(/power of two/);
  });

  it('each head stores its rotated channels in ascending order of their signed mean', () => {
    const D = 8, shape = { nLayer: 1, nHeadKv: 2, headDim: D };
    const kSum = new Float64Array(2 * D);
    // head 0: rotated mean e_3 − 2·e_5 (built by rotating it back); head 1: all zero → identity order
    const r = new Float64Array(D);
    r[3] = 1; r[5] = -2;
    kSum.set(fwht(Float64Array.from(r)).map((v) => v * 10), 0);
    const { perm, rotatedMean } = rotationFromKeySums(kSum, 10, shape);
    expect(rotatedMean[3]).toBeCloseTo(1, 12);
    expect(rotatedMean[5]).toBeCloseTo(-2, 12);
    expect(perm[0]).toBe(5);  // most negative first
    expect(perm[D - 1]).toBe(3);  // most positive last
    expect([...perm.subarray(D)]).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
  });

  it('grouped rotation sorts each slot by its mean under FWHT_{G·D}; heads outside grouped groups keep theirs', () => {
    const D = 8, G = 2, nLayer = 2, nHeadKv = 2;
    const rotatedMean = Float64Array.from({ length: nLayer * nHeadKv * D }, (_, i) => Math.sin(i * 2.3) + (i % 5) / 7);
    const cal: RotationCalibration = { nLayer, nHeadKv, headDim: D, ...rotationFromKeySums(new Float64Array(nLayer * nHeadKv * D), 1, { nLayer, nHeadKv, headDim: D }), rotatedMean, tokens: 1, source: 'test', fingerprint: 'x' };
    // layer 0 all full (grouped), layer 1 has a stream head (per head)
    const mask = rotationGroupedMask(Uint8Array.from([0, 0, 0, 1]), G);
    expect([...mask]).toEqual([1, 1, 0, 0]);
    const perm = groupedPermutation(cal, G, mask);
    // the slots' means from the definition: FWHT of size G·D of the concatenated keys' means
    const cat = new Float64Array(G * D);
    for (let s = 0; s < G; s++) cat.set(fwht(Float64Array.from(rotatedMean.subarray(s * D, (s + 1) * D))), s * D);  // back to key means
    const grouped = fwht(cat);
    for (let h = 0; h < G; h++) {
      const row = [...perm.subarray(h * D, (h + 1) * D)];
      expect([...row].sort((a, b) => a - b)).toEqual([...Array(D).keys()]);
      for (let c = 1; c < D; c++) expect(grouped[h * D + row[c]!]!).toBeGreaterThanOrEqual(grouped[h * D + row[c - 1]!]! - 1e-12);
    }
    expect([...perm.subarray(2 * D)]).toEqual([...cal.perm.subarray(2 * D)]);
    expect(() => groupedPermutation({ ...cal, rotatedMean: new Float64Array(0) }, G, mask)).toThrow(/no channel means .* recalibrate/);
  });
});

describe('calibration and sidecar', () => {
  it('calibrates per (layer, KV head), round-trips through the sidecar, and rejects a sidecar of another model', async () => {
    await using model = await loadModel({ path: fixture() });
    const cal = await calibrateRotation(model, { threads: 1 });
    const { nLayer, nHeadKv, headDim } = model.info;
    expect(cal.perm).toHaveLength(nLayer * nHeadKv * headDim);
    for (let lh = 0; lh < nLayer * nHeadKv; lh++) {
      const row = [...cal.perm.subarray(lh * headDim, (lh + 1) * headDim)];
      expect([...row].sort((a, b) => a - b)).toEqual(Array.from({ length: headDim }, (_, i) => i));
      for (let c = 1; c < headDim; c++) expect(cal.rotatedMean[lh * headDim + row[c]!]!).toBeGreaterThanOrEqual(cal.rotatedMean[lh * headDim + row[c - 1]!]!);
    }
    expect(cal.tokens).toBe(model.tokenize(BUILTIN_CALIBRATION_TEXT).length);
    expect(cal.fingerprint).toBe(modelFingerprint(fixture()));
    const side = join(dir, 'cal.rotkv.json');
    saveRotationSidecar(side, cal, fixture());
    const back = loadRotationSidecar(side, model);
    expect(back.perm).toEqual(cal.perm);
    back.rotatedMean.forEach((v, i) => expect(v).toBeCloseTo(cal.rotatedMean[i]!, 5));  // (grouped rotation needs them)

    const o = JSON.parse(readFileSync(side, 'utf8'));
    writeFileSync(join(dir, 'fp.json'), JSON.stringify({ ...o, fingerprint: 'sha256:0' }));
    expect(() => loadRotationSidecar(join(dir, 'fp.json'), model)).toThrow(/made for another model file/);
    writeFileSync(join(dir, 'shape.json'), JSON.stringify({ ...o, nLayer: 3 }));
    expect(() => loadRotationSidecar(join(dir, 'shape.json'), model)).toThrow(/does not match the model's/);
    const dup = o.perm.map((r: number[]) => [...r]);
    dup[1][0] = dup[1][1];
    writeFileSync(join(dir, 'dup.json'), JSON.stringify({ ...o, perm: dup }));
    expect(() => loadRotationSidecar(join(dir, 'dup.json'), model)).toThrow(/row 1 \(layer 0, head 1\) is not a permutation/);
    writeFileSync(join(dir, 'other.json'), '{"format":"x"}');
    expect(() => loadRotationSidecar(join(dir, 'other.json'), model)).toThrow(InvalidOptionsError);
  });

  it("contexts with rot keys use the sidecar next to the model ('auto'), a given path, the built-in calibration, or none", async () => {
    await using model = await loadModel({ path: fixture() });
    const run = async (storage: object) => {
      await using ctx = await model.createContext({ contextSize: 256, threads: 1, kv: { storage: { key: 'rot2', value: 'rot2', stagingTokens: 4, protectFirst: 1, ...storage } } });
      const seq = ctx.acquireSequence();
      let fin: Extract<GenerateEvent, { type: 'finish' }> | undefined;
      for await (const ev of seq.generate('Once upon a time there was a little robot who liked to count', { maxTokens: 24, stopAtEog: false })) if (ev.type === 'finish') fin = ev;
      return { permutation: ctx.effective.kv.storage.permutation, tokens: fin!.tokens };
    };
    const builtin = await run({});
    expect(builtin.permutation).toMatch(/^built-in calibration text \(\d+ tokens\)$/);
    const none = await run({ permutation: 'none' });
    expect(none.permutation).toBe('none (identity)');
    const cal = await calibrateRotation(model, { threads: 1 });
    saveRotationSidecar(defaultSidecarPath(fixture()), cal, fixture());
    try {
      const auto = await run({});
      expect(auto.permutation).toMatch(/^sidecar .*qwen2\.gguf\.rotkv\.json/);
      expect(auto.tokens).toEqual(builtin.tokens);  // same calibration text, same permutation, same codes
    } finally {
      rmSync(defaultSidecarPath(fixture()));
    }
    // an explicit sidecar path (here a permutation reversed within 32-channel blocks)
    const rev = { ...cal, perm: cal.perm.map((_, i) => cal.perm[Math.floor(i / 32) * 32 + (31 - (i % 32))]!) };
    saveRotationSidecar(join(dir, 'rev.json'), rev, fixture());
    const given = await run({ permutation: join(dir, 'rev.json') });
    expect(given.permutation).toMatch(/^sidecar .*rev\.json/);
    await expect(run({ permutation: join(dir, 'missing.json') })).rejects.toThrow(/cannot read it as JSON/);
  });

  it('grouped key rotation (rotationGroup 2) runs, reports its grouped heads, stores the same bytes, and refuses what it cannot do', async () => {
    await using model = await loadModel({ path: fixture() });
    const { nLayer, nHeadKv } = model.info;
    const run = async (storage: object, extra: object = {}) => {
      await using ctx = await model.createContext({ contextSize: 256, threads: 1, kv: { storage: { key: 'rot2', value: 'rot2', stagingTokens: 4, protectFirst: 1, ...storage }, ...extra } });
      const seq = ctx.acquireSequence();
      let fin: Extract<GenerateEvent, { type: 'finish' }> | undefined;
      for await (const ev of seq.generate('Once upon a time there was a little robot who liked to count', { maxTokens: 40, stopAtEog: false })) if (ev.type === 'finish') fin = ev;
      return { eff: ctx.effective.kv, tokens: fin!.tokens, kv: fin!.kv };
    };
    const perHead = await run({});
    const grouped = await run({ rotationGroup: 2 });
    expect(grouped.eff.storage.rotationGroup).toBe(2);
    expect(grouped.eff.storage.groupedHeads).toBe(nLayer * nHeadKv);
    expect(perHead.eff.storage.groupedHeads).toBe(0);
    expect(grouped.tokens).toHaveLength(40);
    expect(grouped.kv.breakdown).toEqual(perHead.kv.breakdown);
    expect(grouped.kv.breakdown.codes).toBeGreaterThan(0);  // the same codes per head, only rotated differently
    // a STREAM head in layer 0 leaves that layer's group per head
    const mixed = await run({ rotationGroup: 2 }, { heads: { streamHeads: [[0, 1]] } });
    expect(mixed.eff.storage.groupedHeads).toBe((nLayer - 1) * nHeadKv);
    await expect(run({ rotationGroup: 3 })).rejects.toThrow(/power of two/);
    await expect(run({ rotationGroup: 4 })).rejects.toThrow(/does not divide the model's 2 KV heads/);
    await expect(run({ rotationGroup: 2, variant: 'post-rope' })).rejects.toThrow(/rotated before RoPE/);
    await expect(run({ rotationGroup: 2, key: 'q8' })).rejects.toThrow(/rot keys/);
  });

  it('thinkcache calibrate-rotation writes the sidecar and reports it', () => {
    const out = join(dir, 'cli.rotkv.json');
    const r = spawnSync(process.execPath, [join(repoRoot, 'bin', 'thinkcache.cjs'), 'calibrate-rotation', '--model', fixture(), '--out', out, '--traces', '2', '--max-tokens', '16', '--threads', '1', '--json'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.out).toBe(out);
    expect(j.fingerprint).toBe(modelFingerprint(fixture()));
    expect(j.source).toMatch(/^3 traces/);
    expect(JSON.parse(readFileSync(out, 'utf8')).perm).toHaveLength(j.nLayer * j.nHeadKv);
  });
});
