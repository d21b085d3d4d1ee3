// The adapters for code built on thinkcache (lib/adapters/): the OpenAI chat-completions format (requests in;
// chunks, SSE and completions out) on the bundled tiny reasoner, which thinks in <think> tags and then
// answers; Web ReadableStreams (cancel stops the generation); callbacks.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  consumeGenerate, fromOpenAIRequest, InvalidOptionsError, loadModel, toOpenAIChunks, toOpenAICompletion, toOpenAISSE,
  toReadableStream, type GenerateEvent, type OpenAIChunk,
} from '../../lib/index.js';
import { ensureFixture } from '../fixtures/make-tiny-gguf.js';

const MODEL = join(import.meta.dirname, '..', '..', 'tiny', 'model', 'thinkcache-tiny-reasoner.gguf');
const have = existsSync(MODEL);
if (!have) console.log(`adapter tests on the tiny reasoner skipped: ${MODEL} is absent`);
const QUESTION = [{ role: 'user', content: '12+34=?' }];
const GREEDY = { temperature: 0 };

describe('fromOpenAIRequest', () => {
  it('maps a chat-completions body to generate()\'s prompt and options', () => {
    const r = fromOpenAIRequest({
      model: 'm', stream: true, stream_options: { include_usage: true }, user: 'ignored', metadata: { x: 1 },
      messages: [
        { role: 'developer', content: 'Be brief.' },
        { role: 'user', content: [{ type: 'text', text: 'Hello, ' }, { type: 'text', text: 'world' }] },
        { role: 'assistant', content: null, reasoning_content: 'thinking' },
      ],
      max_completion_tokens: 77, max_tokens: 5, temperature: 0.5, top_p: 0.9, seed: 3, stop: ['\n\n'],
      presence_penalty: 0.5, frequency_penalty: -0.5, top_k: 20, min_p: 0.1, repeat_penalty: 1.1,
      chat_template_kwargs: { enable_thinking: false }, thinking_budget_tokens: 64,
    });
    expect(r.prompt).toEqual([
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Hello, world' },
      { role: 'assistant', content: '', reasoning_content: 'thinking' },
    ]);
    expect(r.stream).toBe(true);
    expect(r.includeUsage).toBe(true);
    expect(r.model).toBe('m');
    expect(r.options).toEqual({
      maxTokens: 77,  // max_completion_tokens wins over the deprecated max_tokens
      sampling: { temperature: 0.5, topP: 0.9, topK: 20, minP: 0.1, presencePenalty: 0.5, frequencyPenalty: -0.5, repeatPenalty: 1.1, seed: 3 },
      stop: ['\n\n'],
      templateKwargs: { enable_thinking: false },
      reasoning: { budget: 64 },
    });
  });

  it('uses OpenAI\'s defaults where the request is silent', () => {
    const r = fromOpenAIRequest({ messages: [{ role: 'user', content: 'Hi' }] }, { defaultMaxTokens: 123 });
    expect(r.stream).toBe(false);
    expect(r.includeUsage).toBe(false);
    expect(r.options).toEqual({
      maxTokens: 123,
      sampling: { temperature: 1, topP: 1, topK: 0, minP: 0, presencePenalty: 0, frequencyPenalty: 0, repeatPenalty: 1 },
    });
    expect(fromOpenAIRequest({ messages: [{ role: 'user', content: 'Hi' }], max_tokens: 9 }).options.maxTokens).toBe(9);
  });

  it('names what it cannot do', () => {
    const bad = (body: object, re: RegExp) => {
      expect(() => fromOpenAIRequest(body)).toThrow(InvalidOptionsError);
      expect(() => fromOpenAIRequest(body)).toThrow(re);
    };
    const messages = [{ role: 'user', content: 'Hi' }];
    bad({}, /request\.messages/);
    bad({ messages: [] }, /request\.messages/);
    bad({ messages: [{ role: 'wizard', content: 'x' }] }, /request\.messages\.0\.role/);
    bad({ messages, n: 2 }, /request\.n: only 1 choice/);
    bad({ messages, logprobs: true }, /logprobs/);
    bad({ messages, tools: [{ type: 'function', function: { name: 'f' } }] }, /request\.tools: not supported/);
    bad({ messages, response_format: { type: 'json_object' } }, /request\.response_format/);
    bad({ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }, /content\[0\]: only text parts.*image_url/);
    bad({ messages, temperature: 3 }, /request\.temperature/);
    bad({ messages, max_tokens: 0 }, /request\.max_tokens/);
    // accepted no-ops
    expect(fromOpenAIRequest({ messages, n: 1, logprobs: false, tool_choice: 'none', response_format: { type: 'text' } }).prompt).toHaveLength(1);
  });
});

describe.skipIf(!have)('OpenAI output on the tiny reasoner', () => {
  it('chunks: role first, reasoning and answer deltas in order, finish, then usage; SSE ends with [DONE]', async () => {
    await using model = await loadModel({ path: MODEL });
    await using ctx = await model.createContext({ contextSize: 1024, threads: 1 });
    const seq = ctx.acquireSequence();
    const events: GenerateEvent[] = [];
    const tee = async function* (g: AsyncGenerator<GenerateEvent>) { for await (const e of g) { events.push(e); yield e; } };
    const chunks: OpenAIChunk[] = [];
    for await (const c of toOpenAIChunks(tee(seq.generate(QUESTION, { maxTokens: 600, sampling: GREEDY })), { model: 'tiny', includeUsage: true, timings: true, created: 1700000000 })) chunks.push(c);
    const fin = events.at(-1) as Extract<GenerateEvent, { type: 'finish' }>;
    expect(fin.type).toBe('finish');
    expect(fin.finishReason).toBe('eos');
    expect(fin.reasoning.length).toBeGreaterThan(20);
    expect(fin.text.length).toBeGreaterThan(0);
    const id = chunks[0]!.id;
    expect(id).toMatch(/^chatcmpl-[0-9a-f-]{36}$/);
    for (const c of chunks) expect([c.id, c.object, c.created, c.model]).toEqual([id, 'chat.completion.chunk', 1700000000, 'tiny']);
    expect(chunks[0]!.choices[0]!.delta).toEqual({ role: 'assistant', content: '' });
    const body = chunks.slice(1, -2);
    expect(body.map((c) => c.choices[0]!.delta.reasoning_content ?? '').join('')).toBe(fin.reasoning);
    expect(body.map((c) => c.choices[0]!.delta.content ?? '').join('')).toBe(fin.text);
    // reasoning before the answer; no empty deltas; usage null until the last chunk
    const firstContent = body.findIndex((c) => c.choices[0]!.delta.content !== undefined);
    expect(body.slice(firstContent).every((c) => c.choices[0]!.delta.reasoning_content === undefined)).toBe(true);
    for (const c of body) expect(Object.values(c.choices[0]!.delta).every((v) => typeof v === 'string' && v.length > 0)).toBe(true);
    for (const c of chunks.slice(0, -1)) expect(c.usage).toBeNull();
    const finish = chunks.at(-2)!;
    expect(finish.choices[0]).toEqual({ index: 0, delta: {}, logprobs: null, finish_reason: 'stop' });
    expect(finish.timings).toMatchObject({ prompt_n: fin.usage.promptTokens, predicted_n: fin.usage.completionTokens, cache_n: 0 });
    expect(chunks.at(-1)!.choices).toEqual([]);
    expect(chunks.at(-1)!.usage).toEqual({
      prompt_tokens: fin.usage.promptTokens, completion_tokens: fin.usage.completionTokens, total_tokens: fin.usage.totalTokens,
      prompt_tokens_details: { cached_tokens: 0 }, completion_tokens_details: { reasoning_tokens: fin.usage.reasoningTokens },
    });
    expect(fin.usage.reasoningTokens).toBeGreaterThan(0);

    // SSE: the same chunks (a second run of the same greedy request), then [DONE]; reasoning under both names
    const lines: string[] = [];
    for await (const l of toOpenAISSE(seq.generate(QUESTION, { maxTokens: 600, sampling: GREEDY }), { model: 'tiny', reasoningField: 'both' })) lines.push(l);
    expect(lines.at(-1)).toBe('data: [DONE]\n\n');
    const parsed = lines.slice(0, -1).map((l) => { expect(l).toMatch(/^data: \{.*\}\n\n$/s); return JSON.parse(l.slice(6)) as OpenAIChunk; });
    expect(parsed.every((c) => !('usage' in c))).toBe(true);  // (no include_usage: no usage field at all)
    const deltas = parsed.map((c) => c.choices[0]!.delta);
    expect(deltas.map((d) => d.reasoning ?? '').join('')).toBe(fin.reasoning);
    expect(deltas.map((d) => d.reasoning_content ?? '').join('')).toBe(fin.reasoning);
    expect(deltas.map((d) => d.content ?? '').join('')).toBe(fin.text);
  });

  it('completion: answer and reasoning apart, finish_reason length when maxTokens cuts it', async () => {
    await using model = await loadModel({ path: MODEL });
    await using ctx = await model.createContext({ contextSize: 1024, threads: 1 });
    const seq = ctx.acquireSequence();
    const full = await toOpenAICompletion(seq.generate(QUESTION, { maxTokens: 600, sampling: GREEDY }), { model: 'tiny', reasoningField: 'reasoning' });
    expect(full.object).toBe('chat.completion');
    expect(full.choices[0]!.finish_reason).toBe('stop');
    expect(full.choices[0]!.message.content.length).toBeGreaterThan(0);
    expect(full.choices[0]!.message.reasoning!.length).toBeGreaterThan(20);
    expect(full.choices[0]!.message.reasoning_content).toBeUndefined();
    expect(full.usage.completion_tokens_details.reasoning_tokens).toBeGreaterThan(0);
    const cut = await toOpenAICompletion(seq.generate(QUESTION, { maxTokens: 5, sampling: GREEDY }), { model: 'tiny' });
    expect(cut.choices[0]!.finish_reason).toBe('length');
    expect(cut.usage.completion_tokens).toBe(5);
    expect(cut.usage.prompt_tokens_details.cached_tokens).toBeGreaterThan(0);  // (the previous call's prompt)
  });
});

describe('ReadableStream and callbacks', () => {
  it('a ReadableStream pulls events as read; cancel stops the generation and frees the sequence', async () => {
    await using model = await loadModel({ path: ensureFixture('llama', 'f32') });
    await using ctx = await model.createContext({ contextSize: 256, threads: 1 });
    const seq = ctx.acquireSequence();
    const gen = seq.generate('Once upon a time', { maxTokens: 200, stopAtEog: false });
    const reader = toReadableStream(gen).getReader();
    const first = await reader.read();
    expect(first.value?.type).toBe('start');
    for (let i = 0; i < 3; i++) expect((await reader.read()).value?.type).toBe('text-delta');
    await reader.cancel();
    expect(await gen.next()).toEqual({ done: true, value: undefined });  // returned
    const held = seq.tokens.length;
    expect(held).toBeLessThan(20);  // it stopped where the reader did (prompt + a few tokens), not at 200
    const again = await consumeGenerate(seq.generate('Once upon a time', { maxTokens: 4, stopAtEog: false }), {});
    expect(again.finishReason).toBe('length');  // not busy

    // encode: SSE bytes a fetch Response can carry
    const res = new Response(toReadableStream(toOpenAISSE(seq.generate('Once upon a time', { maxTokens: 6, stopAtEog: false }), { model: 'x' }), { encode: true }));
    const text = await res.text();
    expect(text.endsWith('data: [DONE]\n\n')).toBe(true);
    const chunks = text.split('\n\n').filter((l) => l.startsWith('data: {')).map((l) => JSON.parse(l.slice(6)) as OpenAIChunk);
    expect(chunks[0]!.choices[0]!.delta.role).toBe('assistant');
    expect(chunks.at(-1)!.choices[0]!.finish_reason).toBe('length');
    expect(chunks.length).toBeGreaterThanOrEqual(3);
    expect(chunks.length).toBeLessThanOrEqual(8);  // role + one per non-empty delta (6 tokens at most) + finish
  });

  it('consumeGenerate calls back per piece and resolves with the finish event; a throwing callback stops it', async () => {
    await using model = await loadModel({ path: ensureFixture('llama', 'f32') });
    await using ctx = await model.createContext({ contextSize: 256, threads: 1 });
    const seq = ctx.acquireSequence();
    let text = '';
    const types: string[] = [];
    let finished = 0;
    const fin = await consumeGenerate(seq.generate('Once upon a time', { maxTokens: 12, stopAtEog: false }), {
      onTextChunk: (t) => { text += t; }, onEvent: (e) => types.push(e.type), onFinish: () => { finished++; },
    });
    expect(text).toBe(fin.text);
    expect(types[0]).toBe('start');
    expect(types.at(-1)).toBe('finish');
    expect(finished).toBe(1);
    let n = 0;
    await expect(consumeGenerate(seq.generate('Once upon a time', { maxTokens: 100, stopAtEog: false }), {
      onTextChunk: () => { if (++n === 3) throw new Error('consumer failed'); },
    })).rejects.toThrow('consumer failed');
    expect(seq.tokens.length).toBeLessThan(20);
    await expect(consumeGenerate((async function* () { yield* []; })(), {})).rejects.toBeInstanceOf(InvalidOptionsError);
  });
});
