// Backend selection (issue 8): 'cuda' never falls back silently; each reason is a typed error.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cudaInfo, resolveBackend } from '../../lib/backend.js';
import { CudaError, InvalidOptionsError, loadModel, UnsupportedModelError } from '../../lib/index.js';
import { getAddon } from '../../lib/binding.js';
import { ensureFixture } from '../fixtures/make-tiny-gguf.js';

const none = { built: false, deviceCount: 0, reason: 'built without THINKCACHE_CUDA', forward: false };

describe('backend selection', () => {
  it('cuda without the build flag: UnsupportedModelError naming THINKCACHE_CUDA', () => {
    expect(() => resolveBackend('cuda', none)).toThrow(UnsupportedModelError);
    expect(() => resolveBackend('cuda', none)).toThrow(/built without THINKCACHE_CUDA/);
  });
  it('cuda built but no device or a driver error: CudaError with the reason', () => {
    const info = { built: true, deviceCount: 0, reason: 'CUDA driver error (cudaErrorInsufficientDriver: ...)', forward: true };
    expect(() => resolveBackend('cuda', info)).toThrow(CudaError);
    expect(() => resolveBackend('cuda', info)).toThrow(/driver error/);
  });
  it('cuda with a device but no CUDA forward yet: UnsupportedModelError, not the CPU', () => {
    expect(() => resolveBackend('cuda', { built: true, deviceCount: 1, reason: '', forward: false })).toThrow(/forward pass/);
  });
  it('auto picks cuda only when usable; cpu is always cpu', () => {
    expect(resolveBackend('auto', none)).toBe('cpu');
    expect(resolveBackend('auto', { built: true, deviceCount: 1, reason: '', forward: false })).toBe('cpu');
    expect(resolveBackend('auto', { built: true, deviceCount: 1, reason: '', forward: true })).toBe('cuda');
    expect(resolveBackend('cpu', { built: true, deviceCount: 1, reason: '', forward: true })).toBe('cpu');
    // the CPU emulation of the kernels (a test build) runs only when asked for by name
    expect(resolveBackend('auto', { built: true, deviceCount: 1, reason: '', forward: true, emulated: true })).toBe('cpu');
    expect(resolveBackend('cuda', { built: true, deviceCount: 1, reason: '', forward: true, emulated: true })).toBe('cuda');
  });
  it('this build: loadModel reports its backend; backend "cuda" runs or is a typed error', async () => {
    const info = cudaInfo(getAddon());
    const usable = info.built && info.deviceCount > 0 && info.forward;
    const path = ensureFixture('llama', 'q8_0');
    const model = await loadModel({ path, backend: 'auto' });
    try {
      expect(model.backend).toBe(usable && !info.emulated ? 'cuda' : 'cpu');
    } finally {
      await model.dispose();
    }
    const res = await loadModel({ path, backend: 'cuda' }).then(async (m) => { const b = m.backend; await m.dispose(); return b; }, (e: unknown) => e);
    if (usable) {
      expect(res).toBe('cuda');
    } else {
      expect(res instanceof UnsupportedModelError || res instanceof CudaError).toBe(true);
      if (!info.built) expect(String((res as Error).message)).toMatch(/THINKCACHE_CUDA/);
    }
  });
  it('the addon loader takes the backend: "cuda" on a build without CUDA is ERR_CUDA, an unknown name ERR_INVALID_ARG', async () => {
    const info = cudaInfo(getAddon());
    const path = ensureFixture('llama', 'q8_0');
    const addon = getAddon();
    expect(() => addon.AddonModel.load(path, { backend: 'tpu' as 'cpu' })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    const m = await addon.AddonModel.load(path, { backend: 'cpu' });
    expect(m.info().backend).toBe('cpu');
    m.dispose();
    if (!info.built) {
      await expect(addon.AddonModel.load(path, { backend: 'cuda' })).rejects.toMatchObject({ code: 'ERR_CUDA', message: expect.stringMatching(/THINKCACHE_CUDA/) });
    } else if (info.deviceCount === 0) {
      await expect(addon.AddonModel.load(path, { backend: 'cuda' })).rejects.toMatchObject({ code: 'ERR_CUDA' });
    }
  });
  it('a CUDA model takes every cache layout the options allow (nothing is refused on the JS side); backend "cpu" contexts take anything', async () => {
    const model = await loadModel({ path: ensureFixture('llama', 'q8_0'), backend: 'cpu' });
    try {
      (model as { backend: string }).backend = 'cuda';  // createContext as a CUDA model runs it
      // held by the device cache: stream heads, rot2/3/4, q8/q4 and kivi2/4 storage (one codec, or keys and values apart, f16 on one side included),
      // grouped key rotation, every eviction policy, per-query-head caches (this native model is a CPU one, so they run there)
      await (await model.createContext({ kv: { storage: { key: 'rot2', value: 'rot2', rotationGroup: 2, permutation: 'none' } } })).dispose();
      await (await model.createContext({ kv: { storage: { key: 'rot2', value: 'q8', rotationGroup: 2, permutation: 'none' } } })).dispose();
      await (await model.createContext({ kv: { storage: { key: 'kivi2', value: 'q8' } } })).dispose();
      await (await model.createContext({ kv: { storage: { key: 'q8', value: 'rot2' } } })).dispose();
      await (await model.createContext({ kv: { storage: { key: 'f16', value: 'rot2' } } })).dispose();
      await (await model.createContext({ kv: { heads: { layers: { '0': 'stream' } } } })).dispose();
      await (await model.createContext({ kv: { eviction: { policy: 'lazy', capacity: 96, window: 16 } } })).dispose();
      await (await model.createContext({ kv: { storage: { key: 'q8', value: 'q4' } } })).dispose();
      await (await model.createContext({ kv: { storage: { key: 'kivi2', value: 'kivi4' } } })).dispose();
      await (await model.createContext({ kv: { eviction: { policy: 'streaming', capacity: 96 } } })).dispose();
      await (await model.createContext({ kv: { eviction: { policy: 'h2o', capacity: 96, window: 16 } } })).dispose();
      await (await model.createContext({ kv: { eviction: { policy: 'tova', capacity: 96 } } })).dispose();
      await (await model.createContext({ kv: { eviction: { policy: 'snapkv', capacity: 96, window: 8, interval: 16 } } })).dispose();
      await (await model.createContext({ kv: { eviction: { policy: 'rkv', capacity: 96, window: 8, interval: 16 } } })).dispose();
      await (await model.createContext({ kv: { eviction: { policy: 'lazy', capacity: 96, window: 16, perQueryHead: true } } })).dispose();
      await (await model.createContext({ kv: { storage: { key: 'rot2', value: 'rot2', permutation: 'none' } } })).dispose();
      // a context asking for the CPU skips the device checks
      await using ctx = await model.createContext({ backend: 'cpu', kv: { eviction: { policy: 'lazy', capacity: 96, window: 16 } } });
      expect(ctx.info.backend).toBe('cpu');
      await expect(model.createContext({ backend: 'gpu' as 'cpu' })).rejects.toThrow(InvalidOptionsError);
    } finally {
      await model.dispose();
    }
  });

  // Runs where the addon was built with CUDA (`npm run build:cuda`) and a device answers; elsewhere it says why.
  const probe = cudaInfo(getAddon());
  const usable = probe.built && probe.deviceCount > 0 && probe.forward;
  if (!usable) console.warn(`CUDA generate test skipped: ${probe.reason || 'no usable CUDA device'}`);
  it.skipIf(!usable)('on a CUDA device: generate() gives the CPU backend\'s greedy tokens; the KV report is the device cache', async () => {
    const path = ensureFixture('llama', 'f32');
    const run = async (backend: 'cpu' | 'cuda') => {
      await using model = await loadModel({ path, backend });
      expect(model.backend).toBe(backend);
      await using ctx = await model.createContext({ contextSize: 256, threads: 1 });
      const seq = ctx.acquireSequence();
      let fin: { tokens: number[]; kv: { logicalTokens: number; bytesUsed: number } } | undefined;
      for await (const ev of seq.generate('Once upon a time', { maxTokens: 24, stopAtEog: false })) if (ev.type === 'finish') fin = ev;
      return fin!;
    };
    const cpu = await run('cpu');
    const gpu = await run('cuda');
    expect(gpu.tokens).toEqual(cpu.tokens);
    expect(gpu.kv.logicalTokens).toBe(cpu.kv.logicalTokens);
    expect(gpu.kv.bytesUsed).toBeGreaterThan(0);
  });
  it.skipIf(!usable)('on a CUDA device: stream heads + rot2 hold, quantize and report what the CPU cache does; backend "cpu" contexts of a CUDA model run on the CPU', async () => {
    const path = ensureFixture('qwen3', 'f32');  // head_dim 32: the device cache quantizes 32/64/128-channel heads
    const kv = { heads: { layers: { '0': 'stream' as const } }, storage: { key: 'rot2' as const, value: 'rot2' as const, permutation: 'none' as const } };
    const run = async (backend: 'cpu' | 'cuda', ctxBackend: 'model' | 'cpu' = 'model') => {
      await using model = await loadModel({ path, backend });
      await using ctx = await model.createContext({ contextSize: 512, threads: 1, batchSize: 64, backend: ctxBackend, kv });
      const seq = ctx.acquireSequence();
      const toks = Array.from({ length: 240 }, (_, i) => (i * 37 + 3) % model.info.nVocab);
      await seq.evaluate(toks.slice(0, 200));
      let logits: Float32Array = new Float32Array();
      for (const t of toks.slice(200)) logits = await seq.evaluate([t]);  // 40 decode steps: flushes and stream trims
      const argmax = logits.reduce((b, v, i, a) => (v > a[b]! ? i : b), 0);
      return { backend: ctx.info.backend, held: [...seq._native.heldPositions(1, 0)], argmax, logits, mem: seq.memory() };
    };
    const cpu = await run('cpu');
    const gpu = await run('cuda');
    const mixed = await run('cuda', 'cpu');
    expect(gpu.backend).toBe('cuda');
    expect(mixed.backend).toBe('cpu');
    expect(gpu.held).toEqual(cpu.held);
    expect(gpu.mem.quantizedTokens).toBe(cpu.mem.quantizedTokens);
    expect(gpu.mem.residentTokens).toBe(cpu.mem.residentTokens);
    expect(gpu.argmax).toBe(cpu.argmax);
    expect(mixed.logits).toEqual(cpu.logits);
  });
  // lazy's hits (p >= alpha) are robust to the CPU's q8 vs the device's f32 activations; h2o drops the lowest
  // cumulative attention at every step, a rank the two sides may order differently on this random-weight fixture
  it.skipIf(!usable).each([['lazy', 0.97], ['h2o', 0.88]] as const)('on a CUDA device: %s eviction (rot2-coded) evicts as often and keeps as many as the CPU cache, nearly the same tokens', async (policy, minJaccard) => {
    const path = ensureFixture('qwen3', 'f32');
    const kv = { eviction: { policy, capacity: 96, window: 16 }, storage: { key: 'rot2' as const, value: 'rot2' as const, permutation: 'none' as const } };
    const run = async (backend: 'cpu' | 'cuda') => {
      await using model = await loadModel({ path, backend });
      await using ctx = await model.createContext({ contextSize: 512, threads: 1, batchSize: 64, kv });
      const seq = ctx.acquireSequence();
      const toks = Array.from({ length: 240 }, (_, i) => (i * 37 + 3) % model.info.nVocab);
      await seq.evaluate(toks.slice(0, 200));
      for (const t of toks.slice(200)) await seq.evaluate([t]);  // 40 decode steps: evictions at 16 and 32
      const held: number[][] = [];
      for (let il = 0; il < model.info.nLayer; il++) for (let h = 0; h < model.info.nHeadKv; h++) held.push([...seq._native.heldPositions(il, h)]);
      return { backend: ctx.info.backend, held, mem: seq.memory() };
    };
    const cpu = await run('cpu');
    const gpu = await run('cuda');
    expect(gpu.backend).toBe('cuda');
    expect(gpu.mem.compactions).toBe(cpu.mem.compactions);
    expect(gpu.mem.compactions).toBeGreaterThan(0);
    expect(gpu.mem.residentTokens).toBe(cpu.mem.residentTokens);
    expect(gpu.mem.evictedTokens).toBe(cpu.mem.evictedTokens);
    // the two see slightly different probabilities (f32 vs q8 activations): a token at the hit threshold may differ
    let inter = 0, uni = 0;
    gpu.held.forEach((g, i) => {
      const c = new Set(cpu.held[i]);
      expect(g.length).toBe(cpu.held[i]!.length);
      inter += g.filter((p) => c.has(p)).length;
      uni += new Set([...g, ...cpu.held[i]!]).size;
    });
    expect(inter / uni).toBeGreaterThan(minJaccard);
  });
  // a chat's next turn resumes at the checkpoint the device keeps at the end of each prompt, as on the CPU; a fork
  // continues exactly as its source
  it.skipIf(!usable)('on a CUDA device: a chat\'s next turn resumes at the prompt\'s checkpoint as on the CPU; a fork continues as its source', async () => {
    const path = ensureFixture('qwen3', 'f32');
    const kv = { heads: { layers: { '0': 'stream' as const } }, storage: { key: 'rot2' as const, value: 'rot2' as const, permutation: 'none' as const } };
    const run = async (backend: 'cpu' | 'cuda') => {
      await using model = await loadModel({ path, backend });
      await using ctx = await model.createContext({ contextSize: 1024, threads: 1, batchSize: 64, sequences: 2, kv });
      const seq = ctx.acquireSequence();
      const turn = async (s: typeof seq, prompt: number[]) => {
        let start: { cachedPromptTokens: number; promptTokens: number } | undefined;
        let fin: { tokens: number[] } | undefined;
        for await (const ev of s.generate(prompt, { maxTokens: 12, stopAtEog: false })) {
          if (ev.type === 'start') start = ev;
          if (ev.type === 'finish') fin = ev;
        }
        return { cached: start!.cachedPromptTokens, prompt: start!.promptTokens, tokens: fin!.tokens };
      };
      const words = Array.from({ length: 120 }, (_, i) => (i * 37 + 3) % model.info.nVocab);
      const first = await turn(seq, words);
      const checkpoint = seq.memory().breakdown.checkpoint;
      const copy = await seq.fork();
      // the chat's next prompt: the previous one, then the answer as the template renders it again (it differs after
      // 6 tokens), then more
      const next = [...words, ...first.tokens.slice(0, 6), 5, 6, 7];
      const second = await turn(seq, next);
      const forked = await turn(copy, next);
      return { backend: ctx.info.backend, first, checkpoint, second, forked };
    };
    const cpu = await run('cpu');
    const gpu = await run('cuda');
    expect(gpu.backend).toBe('cuda');
    expect(gpu.checkpoint).toBeGreaterThan(0);
    // the stream head (16 sinks + 64 recent) dropped tokens: without the checkpoint only its 16 sinks would stay
    expect(gpu.second.cached).toBe(cpu.second.cached);
    expect(gpu.second.cached).toBe(gpu.first.prompt);
    expect(cpu.second.cached).toBe(cpu.first.prompt);
    expect(gpu.forked.cached).toBe(gpu.second.cached);
    expect(gpu.forked.tokens).toEqual(gpu.second.tokens);
  });
  // state files on the device: the device cache's own section, read back into another sequence that goes on with
  // the same logits; a file loads only on the backend that saved it
  it.skipIf(!usable)('on a CUDA device: a state file reads back into another sequence that goes on with the same logits; a CPU context refuses it', async () => {
    const path = ensureFixture('qwen3', 'f32');
    const kv = { heads: { layers: { '0': 'stream' as const } }, storage: { key: 'rot2' as const, value: 'rot2' as const, permutation: 'none' as const } };
    await using model = await loadModel({ path, backend: 'cuda' });
    await using ctx = await model.createContext({ contextSize: 512, threads: 1, batchSize: 64, sequences: 2, kv });
    const a = ctx.acquireSequence(), b = ctx.acquireSequence();
    const toks = Array.from({ length: 140 }, (_, i) => (i * 37 + 3) % model.info.nVocab);
    // a prompt (flushes, the stream head's window moves on) and 8 generated tokens: the prompt's checkpoint goes along
    for await (const ev of a.generate(toks.slice(0, 120), { maxTokens: 8, stopAtEog: false })) void ev;
    expect(a.memory().breakdown.checkpoint).toBeGreaterThan(0);
    await b.evaluate([1, 2, 3]);  // (b held something else: the load replaces it)
    const dir = mkdtempSync(join(tmpdir(), 'thinkcache-cuda-state-'));
    try {
      const file = join(dir, 'a.tcstate');
      const saved = await a.saveStateToFile(file);
      expect(saved.tokens).toBe(a.tokens.length);
      expect(await b.loadStateFromFile(file)).toEqual({ tokens: a.tokens.length });
      expect(b.tokens).toEqual(a.tokens);
      expect(b.memory().breakdown.checkpoint).toBeGreaterThan(0);
      expect(b.memory().residentTokens).toBe(a.memory().residentTokens);
      expect(b.memory().quantizedTokens).toBe(a.memory().quantizedTokens);
      for (let l = 0; l < model.info.nLayer; l++) for (let h = 0; h < model.info.nHeadKv; h++) expect(b.heldPositions(l, h)).toEqual(a.heldPositions(l, h));
      expect(a.memory().quantizedTokens).toBeGreaterThan(0);
      for (const t of toks.slice(128, 134)) expect(await b.evaluate([t])).toEqual(await a.evaluate([t]));
      await using cpuCtx = await model.createContext({ contextSize: 512, threads: 1, batchSize: 64, backend: 'cpu', kv });
      const c = cpuCtx.acquireSequence();
      const err = await c.loadStateFromFile(file).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(InvalidOptionsError);
      expect(String((err as Error).message)).toMatch(/backend/);
      expect(c.tokens).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
  // memory actually freed on the device too: a head's f16 pages come from the context's pool as it grows and go
  // back when the eviction compacts it
  it.skipIf(!usable)('on a CUDA device: an eviction gives device pages back (bytesAllocated falls by the pages the heads no longer need)', async () => {
    const path = ensureFixture('qwen3', 'f32');
    await using model = await loadModel({ path, backend: 'cuda' });
    await using ctx = await model.createContext({ contextSize: 2048, threads: 1, batchSize: 64, kv: { eviction: { policy: 'lazy', capacity: 64, window: 16 } } });
    const seq = ctx.acquireSequence();
    const toks = Array.from({ length: 340 }, (_, i) => (i * 37 + 3) % model.info.nVocab);
    const m0 = seq.memory();
    await seq.evaluate(toks.slice(0, 320));
    const m1 = seq.memory();
    for (const t of toks.slice(320)) await seq.evaluate([t]);  // 20 decode steps: the eviction at 16
    const m2 = seq.memory();
    const heads = model.info.nLayer * model.info.nHeadKv, page = 64 * 2 * model.info.headDim * 2;
    expect(m2.compactions).toBeGreaterThan(0);
    // 320 prompt tokens: 5 pages per head, and the slots' positions and statistics (12 B each) grown from 256 to
    // 512 per head; after the eviction to 64 and 4 more steps: 1 or 2 pages per head, the slot arrays back at 256
    const slots = heads * 256 * 12;
    expect(m1.bytesAllocated - m0.bytesAllocated).toBe(heads * 5 * page + slots);
    const freed = m1.bytesAllocated - m2.bytesAllocated - slots;
    expect(freed).toBeGreaterThanOrEqual(heads * 3 * page);
    expect(freed).toBeLessThanOrEqual(heads * 4 * page);
    expect(freed % page).toBe(0);
    expect(m2.breakdown.poolSlack).toBeGreaterThanOrEqual(heads * 3 * page);
  });
});
