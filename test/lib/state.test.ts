// seq.saveStateToFile / loadStateFromFile: a compressed cache written to disk and read back — in another context
// of the same model and KV options, as another process would — generates exactly what the original goes on to
// generate, reuses the saved prompt, and the file holds the cache's bytes (a rot2 file is smaller than an f16
// one). Bad files (not a state file, truncated, corrupt, another model or KV configuration, too long for the
// context) are typed errors that leave the sequence as it was.
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  ContextFullError, FileAccessError, InvalidOptionsError, StateFormatError, loadModel, type GenerateEvent, type KvOptions, type Sequence,
} from '../../lib/index.js';
import { ensureFixture } from '../fixtures/make-tiny-gguf.js';

const shape = { nEmbd: 256, nLayer: 4, nHead: 8, nHeadKv: 4, headDim: 32, nFf: 512, nCtxTrain: 2048 };
const fixture = () => ensureFixture('llama', 'q8_0', shape);
const otherModel = () => ensureFixture('llama', 'q8_0', { ...shape, seed: 77 });
const dir = mkdtempSync(join(tmpdir(), 'thinkcache-state-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

type Finish = Extract<GenerateEvent, { type: 'finish' }>;
async function run(seq: Sequence, prompt: number[], maxTokens: number): Promise<Finish> {
  let fin: Finish | undefined;
  // (a presence penalty over the whole history: the tokens come out right only if the token history came back too)
  for await (const ev of seq.generate(prompt, { maxTokens, stopAtEog: false, sampling: { presencePenalty: 5, penaltyLastN: -1 } })) if (ev.type === 'finish') fin = ev;
  return fin!;
}
const doc = Array.from({ length: 600 }, (_, i) => 300 + ((i * 13) % 250));
const question = [...doc, ...Array.from({ length: 20 }, (_, i) => 50 + ((i * 7) % 90))];

const configs: Record<string, KvOptions> = {
  'f16': {},
  'lazy eviction': { eviction: { policy: 'lazy', capacity: 160, window: 32 } },
  'stream heads + rot2': { heads: { profile: Array.from({ length: 4 }, (_, l) => Array.from({ length: 4 }, (_, h) => ((l * 4 + h) * 37 % 100) / 100)), sparsity: 0.5, stream: { sinks: 8, recent: 64 } }, storage: { key: 'rot2', value: 'rot2' } },
};

describe('saveStateToFile / loadStateFromFile', () => {
  const sizes: Record<string, number> = {};
  for (const [name, kv] of Object.entries(configs)) {
    it(`${name}: a loaded state goes on as the original does, in another context`, async () => {
      await using model = await loadModel({ path: fixture() });
      await using ctx = await model.createContext({ contextSize: 1024, threads: 1, batchSize: 256, kv });
      await using ctx2 = await model.createContext({ contextSize: 2048, threads: 1, batchSize: 256, kv });  // (a larger context is fine)
      const a = ctx.acquireSequence(), b = ctx2.acquireSequence();
      await run(a, doc, 40);  // (decoding too: evictions, trims, flushes, and the prompt's checkpoint)
      const file = join(dir, `${name.replace(/\W+/g, '-')}.tcstate`);
      const saved = await a.saveStateToFile(file);
      expect(saved.tokens).toBe(a.tokens.length);
      expect(statSync(file).size).toBe(saved.bytes);
      expect(readdirSync(dir).filter((f) => f.includes('.tmp'))).toEqual([]);  // (the temporary file was renamed)
      sizes[name] = saved.bytes;
      const before = a.memory();
      await run(b, [1, 2, 3, 4, 5], 3);  // (b held something else: the load replaces it)
      expect(await b.loadStateFromFile(file)).toEqual({ tokens: a.tokens.length });
      expect(b.tokens).toEqual(a.tokens);
      const m = b.memory();
      expect([m.logicalTokens, m.residentTokens, m.quantizedTokens, m.breakdown.keys, m.breakdown.values, m.evictedTokens])
        .toEqual([before.logicalTokens, before.residentTokens, before.quantizedTokens, before.breakdown.keys, before.breakdown.values, before.evictedTokens]);
      for (let l = 0; l < model.info.nLayer; l++) for (let h = 0; h < model.info.nHeadKv; h++) expect(b.heldPositions(l, h)).toEqual(a.heldPositions(l, h));
      // the next turn: the same tokens, the same prefix reuse (a lossy cache returns to the saved checkpoint)
      const [fa, fb] = [await run(a, question, 30), await run(b, question, 30)];
      expect(fb.tokens).toEqual(fa.tokens);
      expect(fb.usage).toEqual(fa.usage);
      // (lazy: the 600-token prompt is over the 160-token capacity, so 'auto' kept no checkpoint and both re-evaluate)
      if (name === 'lazy eviction') expect(fb.usage.cachedPromptTokens).toBeLessThan(doc.length);
      else expect(fb.usage.cachedPromptTokens).toBeGreaterThanOrEqual(doc.length);
    });
  }

  it('the file holds the cache\'s bytes: rot2 + stream heads is much smaller than f16', () => {
    expect(Object.keys(sizes)).toHaveLength(3);
    console.log(`state files: ${Object.entries(sizes).map(([k, v]) => `${k} ${(v / 1024).toFixed(0)} KiB`).join(', ')}`);
    expect(sizes['stream heads + rot2']!).toBeLessThan(sizes['f16']! * 0.6);
  });

  it('bad files are typed errors and the sequence keeps what it held', async () => {
    await using model = await loadModel({ path: fixture() });
    const kv = configs['stream heads + rot2']!;
    await using ctx = await model.createContext({ contextSize: 1024, threads: 1, batchSize: 256, sequences: 2, kv });
    const a = ctx.acquireSequence();
    await run(a, doc, 10);
    const file = join(dir, 'good.tcstate');
    await a.saveStateToFile(file);
    const good = readFileSync(file);
    const b = ctx.acquireSequence();
    await run(b, doc.slice(0, 100), 5);
    const held = { tokens: [...b.tokens], memory: b.memory() };
    const expectUnchanged = () => {
      expect(b.tokens).toEqual(held.tokens);
      expect(b.memory().residentTokens).toBe(held.memory.residentTokens);
    };
    const write = (name: string, bytes: Uint8Array) => { const p = join(dir, name); writeFileSync(p, bytes); return p; };
    await expect(b.loadStateFromFile(join(dir, 'missing.tcstate'))).rejects.toBeInstanceOf(FileAccessError);
    await expect(b.loadStateFromFile(fixture())).rejects.toThrow(StateFormatError);  // (a GGUF file)
    await expect(b.loadStateFromFile(write('short', good.subarray(0, good.length >> 1)))).rejects.toThrow(/checksum|ends early/);
    const flipped = Buffer.from(good);
    flipped[flipped.length >> 1]! ^= 0x10;
    await expect(b.loadStateFromFile(write('flipped', flipped))).rejects.toThrow(/checksum/);
    const newer = Buffer.from(good);
    newer.writeUInt32LE(99, 8);
    await expect(b.loadStateFromFile(write('newer', newer))).rejects.toThrow(/format version 99/);
    expectUnchanged();
    // another KV configuration: the message names what differs
    await using f16 = await model.createContext({ contextSize: 1024, threads: 1, batchSize: 256 });
    const err = await f16.acquireSequence().loadStateFromFile(file).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidOptionsError);
    expect(String((err as Error).message)).toMatch(/keys=rot2 \(this context: keys=f16\)/);
    // too many tokens for the context
    await using small = await model.createContext({ contextSize: 256, threads: 1, batchSize: 256, kv });
    await expect(small.acquireSequence().loadStateFromFile(file)).rejects.toBeInstanceOf(ContextFullError);
    // another model of the same shape (other weights)
    await using other = await loadModel({ path: otherModel() });
    await using octx = await other.createContext({ contextSize: 1024, threads: 1, batchSize: 256, kv });
    await expect(octx.acquireSequence().loadStateFromFile(file)).rejects.toThrow(/another model/);
    // arguments, and a path that cannot be written
    await expect(b.loadStateFromFile('')).rejects.toBeInstanceOf(InvalidOptionsError);
    await expect(a.saveStateToFile(join(dir, 'no-such-dir', 'x.tcstate'))).rejects.toBeInstanceOf(FileAccessError);
    expectUnchanged();
    // and the good file still loads
    await b.loadStateFromFile(file);
    expect(b.tokens).toEqual(a.tokens);
  });
});
