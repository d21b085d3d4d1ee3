// `thinkcache serve` / startOpenAIServer: the OpenAI-compatible HTTP server on the bundled tiny reasoner, spoken
// to with fetch — models and health, a completion and a stream (reasoning apart, usage last), errors as OpenAI
// error objects, a second request waiting for the one slot, a client that goes away (its slot is free at once),
// a follow-up turn served from the slot's cache; and the CLI starting, answering and stopping on SIGTERM.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadModel, startOpenAIServer, type OpenAIChunk, type OpenAICompletion } from '../../lib/index.js';

const ROOT = join(import.meta.dirname, '..', '..');
const MODEL = join(ROOT, 'tiny', 'model', 'thinkcache-tiny-reasoner.gguf');
const have = existsSync(MODEL);
if (!have) console.log(`serve tests skipped: ${MODEL} is absent`);
const ASK = { messages: [{ role: 'user', content: '12+34=?' }], temperature: 0 };

const post = (url: string, body: unknown, init: RequestInit = {}) =>
  fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), ...init });

function parseSSE(text: string): { chunks: OpenAIChunk[]; done: boolean } {
  const events = text.split('\n\n').filter((e) => e.length > 0);
  const done = events.at(-1) === 'data: [DONE]';
  return { chunks: events.filter((e) => e !== 'data: [DONE]').map((e) => JSON.parse(e.slice(6)) as OpenAIChunk), done };
}

describe.skipIf(!have)('OpenAI-compatible server', () => {
  it('answers /v1/models, /health, completions and streams; errors are OpenAI error objects', async () => {
    await using model = await loadModel({ path: MODEL });
    await using context = await model.createContext({ contextSize: 1024, sequences: 1, threads: 1 });
    const server = await startOpenAIServer({ model, context, port: 0, alias: 'tiny' });
    try {
      expect(await (await fetch(`${server.url}/v1/models`)).json()).toMatchObject({ object: 'list', data: [{ id: 'tiny', object: 'model', owned_by: 'thinkcache' }] });
      expect(await (await fetch(`${server.url}/health`)).json()).toEqual({
        status: 'ok', slots: { total: 1, busy: 0, waiting: 0 }, requests: { completed: 0, aborted: 0, failed: 0 }, tokens: { prompt: 0, cached: 0, completion: 0 },
      });

      const res = await post(server.url, { ...ASK, max_tokens: 600 });
      expect(res.status).toBe(200);
      const c = await res.json() as OpenAICompletion;
      expect(c.model).toBe('tiny');
      expect(c.choices[0]!.finish_reason).toBe('stop');
      expect(c.choices[0]!.message.content.length).toBeGreaterThan(0);
      expect(c.choices[0]!.message.reasoning_content!.length).toBeGreaterThan(20);
      expect(c.usage.completion_tokens_details.reasoning_tokens).toBeGreaterThan(0);
      expect(c.timings!.predicted_n).toBe(c.usage.completion_tokens);

      const s = await post(server.url, { ...ASK, max_tokens: 600, stream: true, stream_options: { include_usage: true } });
      expect(s.headers.get('content-type')).toBe('text/event-stream');
      const { chunks, done } = parseSSE(await s.text());
      expect(done).toBe(true);
      expect(chunks.map((k) => k.choices[0]?.delta.content ?? '').join('')).toBe(c.choices[0]!.message.content);  // greedy: the same answer
      expect(chunks.map((k) => k.choices[0]?.delta.reasoning_content ?? '').join('')).toBe(c.choices[0]!.message.reasoning_content);
      expect(chunks.at(-1)!.usage!.completion_tokens).toBe(c.usage.completion_tokens);

      const bad = await post(server.url, { ...ASK, n: 3 });
      expect(bad.status).toBe(400);
      expect(await bad.json()).toEqual({ error: { message: 'request.n: only 1 choice is supported (got 3)', type: 'invalid_request_error', code: 'ERR_INVALID_OPTIONS', param: null } });
      const notJson = await fetch(`${server.url}/v1/chat/completions`, { method: 'POST', body: '{oops' });
      expect(notJson.status).toBe(400);
      expect(((await notJson.json()) as { error: { message: string } }).error.message).toMatch(/not valid JSON/);
      const tooLong = await post(server.url, { messages: [{ role: 'user', content: 'x '.repeat(3000) }] });
      expect(tooLong.status).toBe(400);
      expect(((await tooLong.json()) as { error: { code: string } }).error.code).toBe('context_length_exceeded');
      expect((await fetch(`${server.url}/v1/completions`, { method: 'POST', body: '{}' })).status).toBe(404);
      const metrics = await (await fetch(`${server.url}/metrics`)).text();
      expect(metrics).toContain('# TYPE thinkcache_requests_total counter');
      expect(metrics).toMatch(/^thinkcache_requests_total\{outcome="completed"\} 2$/m);
      expect(metrics).toMatch(new RegExp(`^thinkcache_completion_tokens_total ${c.usage.completion_tokens * 2}$`, 'm'));
      expect(metrics).toMatch(/^thinkcache_slots\{state="idle"\} 1$/m);
      expect(Number(/^thinkcache_kv_bytes\{kind="used"\} (\d+)$/m.exec(metrics)?.[1])).toBeGreaterThan(0);
    } finally {
      await server.close();
    }
  });

  it('slots: GET /slots, save / erase / restore a slot\'s compressed cache (llama-server\'s routes), id_slot pins a request', async () => {
    await using model = await loadModel({ path: MODEL });
    await using context = await model.createContext({ contextSize: 1024, sequences: 2, threads: 1, kv: { storage: { key: 'rot2', value: 'rot2' } } });
    const dir = mkdtempSync(join(tmpdir(), 'thinkcache-slots-'));
    const server = await startOpenAIServer({ model, context, port: 0, slotSavePath: join(dir, 'slots') });
    const action = (id: number | string, a: string, body?: unknown) =>
      fetch(`${server.url}/slots/${id}?action=${a}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body ?? {}) });
    try {
      const first = await (await post(server.url, { ...ASK, max_tokens: 600, id_slot: 1 })).json() as OpenAICompletion;
      const slotsNow = await (await fetch(`${server.url}/slots`)).json() as Array<{ id: number; n_tokens: number; is_processing: boolean }>;
      expect(slotsNow.map((s) => [s.id, s.is_processing, s.n_tokens > 0])).toEqual([[0, false, false], [1, false, true]]);  // (id_slot 1 took slot 1)
      const held = slotsNow[1]!.n_tokens;

      const saved = await (await action(1, 'save', { filename: 'conv-1.bin' })).json() as { id_slot: number; n_saved: number; n_written: number; timings: { save_ms: number } };
      expect(saved).toMatchObject({ id_slot: 1, filename: 'conv-1.bin', n_saved: held });
      expect(saved.n_written).toBe(statSync(join(dir, 'slots', 'conv-1.bin')).size);
      expect(await (await action(1, 'erase')).json()).toEqual({ id_slot: 1, n_erased: held });
      expect(((await (await fetch(`${server.url}/slots`)).json()) as Array<{ n_tokens: number }>)[1]!.n_tokens).toBe(0);
      // restored into the other slot: the same conversation's next turn there finds its prompt in the cache
      const restored = await (await action(0, 'restore', { filename: 'conv-1.bin' })).json() as { n_restored: number; n_read: number };
      expect(restored).toMatchObject({ id_slot: 0, filename: 'conv-1.bin', n_restored: held, n_read: saved.n_written });
      const turn2 = { messages: [...ASK.messages, { role: 'assistant', content: first.choices[0]!.message.content }, { role: 'user', content: '5+6=?' }], temperature: 0, max_tokens: 300, id_slot: 0 };
      const second = await (await post(server.url, turn2)).json() as OpenAICompletion;
      expect(second.usage.prompt_tokens_details.cached_tokens).toBeGreaterThan(10);

      // refusals: a path, a missing file, an unknown slot or action; and the whole feature off without slotSavePath
      for (const [res, status, re] of [
        [await action(0, 'save', { filename: '../x.bin' }), 400, /filename/],
        [await action(0, 'restore', { filename: 'nope.bin' }), 400, /cannot open/],
        [await action(7, 'save', { filename: 'a.bin' }), 400, /expected an id in \[0, 2\)/],
        [await action(0, 'frobnicate'), 400, /expected save, restore or erase/],
        [await post(server.url, { ...ASK, id_slot: 9 }), 400, /id_slot/],
      ] as const) {
        expect(res.status).toBe(status);
        expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(re);
      }
      const corrupt = join(dir, 'slots', 'bad.bin');
      writeFileSync(corrupt, 'not a state file');
      const bad = await action(0, 'restore', { filename: 'bad.bin' });
      expect(bad.status).toBe(400);
      expect(((await bad.json()) as { error: { code: string } }).error.code).toBe('ERR_STATE_FORMAT');
    } finally {
      await server.close();
    }
    await using ctx2 = await model.createContext({ contextSize: 256, sequences: 1, threads: 1 });
    const off = await startOpenAIServer({ model, context: ctx2, port: 0 });
    try {
      const res = await fetch(`${off.url}/slots/0?action=save`, { method: 'POST', body: JSON.stringify({ filename: 'a.bin' }) });
      expect(res.status).toBe(501);
      expect(((await res.json()) as { error: { type: string } }).error.type).toBe('not_supported_error');
    } finally {
      await off.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('one slot: a second request waits its turn; a client that leaves frees the slot; a follow-up turn reuses the cache', async () => {
    await using model = await loadModel({ path: MODEL });
    await using context = await model.createContext({ contextSize: 1024, sequences: 1, threads: 1 });
    const server = await startOpenAIServer({ model, context, port: 0 });
    try {
      const [a, b] = await Promise.all([post(server.url, { ...ASK, max_tokens: 40 }), post(server.url, { ...ASK, max_tokens: 40 })]);
      const [ca, cb] = [await a.json() as OpenAICompletion, await b.json() as OpenAICompletion];
      expect(ca.choices[0]!.finish_reason).toBe('length');
      expect([ca.usage.completion_tokens, cb.usage.completion_tokens]).toEqual([40, 40]);
      // one after the other in the same slot: the second found the first's prompt in the cache
      expect([ca.usage.prompt_tokens_details.cached_tokens, cb.usage.prompt_tokens_details.cached_tokens].sort((x, y) => x - y))
        .toEqual([0, ca.usage.prompt_tokens - 2]);

      // a streaming client that reads one chunk and goes away
      const ac = new AbortController();
      const s = await post(server.url, { ...ASK, max_tokens: 1000, stream: true }, { signal: ac.signal });
      const reader = s.body!.getReader();
      await reader.read();
      ac.abort();
      await reader.read().catch(() => undefined);
      // its generation stops (finish reason aborted) and the slot is free again
      type Health = { slots: { busy: number }; requests: { completed: number; aborted: number; failed: number } };
      let health = await (await fetch(`${server.url}/health`)).json() as Health;
      for (let i = 0; i < 200 && health.slots.busy !== 0; i++) {
        await new Promise((r) => setTimeout(r, 10));
        health = await (await fetch(`${server.url}/health`)).json() as Health;
      }
      expect(health.slots.busy).toBe(0);
      expect(health.requests).toEqual({ completed: 2, aborted: 1, failed: 0 });

      // a conversation, then its next turn: the slot still holds the first turn, so only the new part is evaluated
      const first = await (await post(server.url, { ...ASK, max_tokens: 600 })).json() as OpenAICompletion;
      const next = await (await post(server.url, {
        messages: [...ASK.messages, { role: 'assistant', content: first.choices[0]!.message.content }, { role: 'user', content: '5+6=?' }],
        temperature: 0, max_tokens: 8,
      })).json() as OpenAICompletion;
      expect(next.usage.prompt_tokens_details.cached_tokens).toBeGreaterThan(first.usage.prompt_tokens - 2);
    } finally {
      await server.close();
    }
  });

  it('thinkcache serve starts, answers and exits cleanly on SIGTERM', async () => {
    const child = spawn(process.execPath, [join(ROOT, 'bin', 'thinkcache.cjs'), 'serve', '--model', MODEL, '--port', '0', '--threads', '1', '--kv', 'rot2'], { cwd: ROOT });
    let err = '';
    const url = await new Promise<string>((resolve, reject) => {
      child.stderr.on('data', (d: Buffer) => {
        err += d.toString();
        const m = /listening on (http:\/\/[\d.]+:\d+)/.exec(err);
        if (m) resolve(m[1]!);
      });
      child.on('exit', (code) => reject(new Error(`serve exited with ${code}: ${err}`)));
    });
    expect(err).toMatch(/1 slot\(s\) of \d+ tokens, kv rot2/);
    const c = await (await post(url, { ...ASK, max_tokens: 8 })).json() as OpenAICompletion;
    expect(c.usage.completion_tokens).toBeGreaterThan(0);
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
  }, 60_000);
});
