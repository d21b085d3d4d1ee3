// RotateKV's calibrated key channel permutation (ALGORITHMS.md §3.3; lib/kv/rotation.ts): the statistic,
// the sidecar (fingerprint, shape and permutation checks), and contexts picking it up ('auto' → sidecar next
// to the model or the built-in calibration; a path; 'none').
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { InvalidOptionsError, loadModel, type GenerateEvent } from '../../lib/index.js';
import {
  BUILTIN_CALIBRATION_TEXT, calibrateRotation, defaultSidecarPath, fwht, loadRotationSidecar, modelFingerprint, rotationFromKeySums, saveRotationSidecar,
} from '../../lib/kv/rotation.js';
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
    expect(loadRotationSidecar(side, model).perm).toEqual(cal.perm);

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
