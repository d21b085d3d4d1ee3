// generate() with chat messages on the tiny Qwen3 fixture (real Qwen3 vocabulary, <think>/</think> tokens and
// chat template): prompt rendering and tokenization, reasoning opened by the template (R1-distill style), the
// reasoning budget injected at an exact token index, token accounting, stop strings and finish reasons.
import { describe, expect, it } from 'vitest';
import { InvalidOptionsError, loadModel, type GenerateEvent, type GenerateOptions, type Sequence } from '../../../lib/index.js';
import type { ChatMessage } from '../../../lib/chat/chat-template.js';
import { ensureFixture } from '../../fixtures/make-tiny-gguf.js';

type Finish = Extract<GenerateEvent, { type: 'finish' }>;
const OPEN = 151667; // <think> in the Qwen3 vocabulary
const CLOSE = 151668; // </think>
// R1-distill style: the generation prompt opens the reasoning, so the output starts inside it.
const OPENING_TEMPLATE = "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{% endif %}";
const user = (content: string): ChatMessage[] => [{ role: 'user', content }];

async function collect(seq: Sequence, prompt: Parameters<Sequence['generate']>[0], options: GenerateOptions) {
  const events: GenerateEvent[] = [];
  for await (const ev of seq.generate(prompt, options)) events.push(ev);
  const finish = events.at(-1) as Finish;
  expect(finish.type).toBe('finish');
  return { events, finish };
}
const partTokens = (events: GenerateEvent[]) =>
  events.flatMap((e) => (e.type === 'reasoning-start' || e.type === 'reasoning-delta' || e.type === 'reasoning-end' || e.type === 'text-delta' ? e.tokens : []));
const joined = (events: GenerateEvent[], type: 'reasoning-delta' | 'text-delta') =>
  events.map((e) => (e.type === type ? e.text : '')).join('');

describe('generate() with chat messages (tiny Qwen3 fixture)', () => {
  const qwen = () => ensureFixture('qwen3', 'q8_0');

  it('renders the GGUF template, tokenizes special tokens, and reuses the prefix across turns', async () => {
    await using model = await loadModel({ path: qwen() });
    await using ctx = await model.createContext({ contextSize: 512, threads: 1 });
    const seq = ctx.acquireSequence();
    const text = model.applyChatTemplate(user('Hi'), { templateKwargs: { enable_thinking: false } });
    expect(text).toBe('<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n');
    const ids = model.tokenize(text, { parseSpecial: true });
    expect(ids[0]).toBe(model.tokenizer.tokenId('<|im_start|>'));
    expect(ids).toContain(OPEN);
    expect(ids).toContain(CLOSE);

    const one = await collect(seq, user('Hi'), { maxTokens: 6, templateKwargs: { enable_thinking: false } });
    expect(one.events[0]).toEqual({ type: 'start', promptTokens: ids.length, cachedPromptTokens: 0, reasoningOpenInPrompt: false });
    expect(one.finish.finishReason).toBe('length');
    expect(one.finish.usage.completionTokens).toBe(6);
    expect(partTokens(one.events)).toEqual(one.finish.tokens);

    const two = await collect(seq, [...user('Hi'), { role: 'assistant', content: one.finish.text }, ...user('More')], { maxTokens: 2 });
    expect(two.finish.usage.cachedPromptTokens).toBeGreaterThanOrEqual(ids.length - 6); // everything up to the assistant header
  });

  it('a prompt that opens the reasoning streams it apart; tokens add up', async () => {
    await using model = await loadModel({ path: qwen() });
    await using ctx = await model.createContext({ contextSize: 512, threads: 1 });
    const seq = ctx.acquireSequence();
    const { events, finish } = await collect(seq, user('Why?'), { chatTemplate: OPENING_TEMPLATE, maxTokens: 10 });
    expect(events[0]).toMatchObject({ type: 'start', reasoningOpenInPrompt: true });
    expect(events[1]).toEqual({ type: 'reasoning-start', tokens: [] });
    expect(finish.tokens).not.toContain(CLOSE); // precondition: this fixture never closes on its own in 10 tokens
    expect(events.at(-2)).toMatchObject({ type: 'reasoning-end', closedBy: 'incomplete', reasoningTokens: 10 });
    expect(finish.usage).toMatchObject({ completionTokens: 10, reasoningTokens: 10, answerTokens: 0 });
    expect(finish.text).toBe('');
    expect(joined(events, 'reasoning-delta')).toBe(finish.reasoning);
    expect(finish.reasoning).toBe(model.detokenize(finish.tokens).trim());
    expect(partTokens(events)).toEqual(finish.tokens);
  });

  it('the reasoning budget injects message + close tag right after `budget` sampled tokens, then the model answers', async () => {
    await using model = await loadModel({ path: qwen() });
    await using ctx = await model.createContext({ contextSize: 512, threads: 1 });
    const seq = ctx.acquireSequence();
    const free = await collect(seq, user('Why?'), { chatTemplate: OPENING_TEMPLATE, maxTokens: 12 });
    expect(free.finish.tokens).not.toContain(CLOSE);
    const forced = model.tokenize(' Enough.</think>', { addBos: false, parseSpecial: true });
    expect(forced.at(-1)).toBe(CLOSE);

    for (const budget of [0, 1, 5]) {
      const { events, finish } = await collect(seq, user('Why?'), {
        chatTemplate: OPENING_TEMPLATE, maxTokens: 20, reasoning: { budget, budgetMessage: ' Enough.' },
      });
      const at = budget + forced.length; // completion index just after the injected close tag
      expect(finish.tokens.slice(0, budget)).toEqual(free.finish.tokens.slice(0, budget));
      expect(finish.tokens.slice(budget, at)).toEqual(forced);
      expect(finish.tokens.indexOf(CLOSE)).toBe(at - 1);
      const end = events.find((e) => e.type === 'reasoning-end')!;
      expect(end).toEqual({ type: 'reasoning-end', tokens: [CLOSE], reasoningTokens: at, closedBy: 'budget' });
      expect(finish.usage).toMatchObject({ completionTokens: 20, reasoningTokens: at, answerTokens: 20 - at });
      expect(finish.reasoning.endsWith('Enough.')).toBe(true);
      expect(finish.text.length).toBeGreaterThan(0);
      expect(finish.finishReason).toBe('length'); // truncation wins over the budget
      expect(partTokens(events)).toEqual(finish.tokens);
      expect(joined(events, 'text-delta')).toBe(finish.text);
    }
    // a budget whose message and close tag do not fit in maxTokens: no injection, maxTokens ends the reasoning
    const tight = await collect(seq, user('Why?'), { chatTemplate: OPENING_TEMPLATE, maxTokens: 4, reasoning: { budget: 2, budgetMessage: ' Enough.' } });
    expect(tight.finish.usage.completionTokens).toBe(4);
    expect(tight.finish.tokens).toEqual(free.finish.tokens.slice(0, 4));
    expect(tight.finish.finishReason).toBe('length');

    // the answer ended by a stop string: finish reason 'reasoning-budget'
    const ref = await collect(seq, user('Why?'), { chatTemplate: OPENING_TEMPLATE, maxTokens: 20, reasoning: { budget: 3 } });
    const answer = ref.finish.text;
    const stop = answer.slice(Math.floor(answer.length / 2), Math.floor(answer.length / 2) + 3);
    const stopped = await collect(seq, user('Why?'), { chatTemplate: OPENING_TEMPLATE, maxTokens: 20, reasoning: { budget: 3 }, stop });
    expect(stopped.finish.finishReason).toBe('reasoning-budget');
    expect(stopped.finish.stopString).toBe(stop);
    expect(stopped.finish.text).toBe(answer.slice(0, answer.indexOf(stop)));
  });

  it('reasoning.separate=false streams everything as text but still counts reasoning tokens', async () => {
    await using model = await loadModel({ path: qwen() });
    await using ctx = await model.createContext({ contextSize: 512, threads: 1 });
    const seq = ctx.acquireSequence();
    const { events, finish } = await collect(seq, user('Why?'), {
      chatTemplate: OPENING_TEMPLATE, maxTokens: 8, reasoning: { budget: 2, budgetMessage: '', separate: false },
    });
    expect(events.some((e) => e.type.startsWith('reasoning'))).toBe(false);
    expect(finish.text).toContain('</think>');
    expect(finish.usage.reasoningTokens).toBe(3);
  });

  it('stop strings end the answer without emitting any part of them', async () => {
    await using model = await loadModel({ path: ensureFixture('llama', 'f32') });
    await using ctx = await model.createContext({ contextSize: 256, threads: 1 });
    const seq = ctx.acquireSequence();
    const free = await collect(seq, 'Once upon a time', { maxTokens: 30, stopAtEog: false });
    const deltas = free.events.filter((e) => e.type === 'text-delta');
    // a stop string spanning a token boundary, well inside the text
    const k = Math.floor(deltas.length / 2);
    const before = deltas.slice(0, k).map((d) => (d as { text: string }).text).join('');
    const stop = before.slice(-2) + (deltas[k] as { text: string }).text.slice(0, 2);
    const cut = free.finish.text.indexOf(stop);
    const { events, finish } = await collect(seq, 'Once upon a time', { maxTokens: 30, stopAtEog: false, stop: [stop, 'zzzz-never'] });
    expect(finish.finishReason).toBe('stop');
    expect(finish.stopString).toBe(stop);
    expect(finish.text).toBe(free.finish.text.slice(0, cut));
    expect(joined(events, 'text-delta')).toBe(finish.text);
    expect(finish.tokens).toEqual(free.finish.tokens.slice(0, finish.tokens.length));
    expect(finish.usage.answerTokens).toBe(finish.tokens.length);
  });

  it('a model without a chat template: clear error, unless a template is given; budget needs tags', async () => {
    await using model = await loadModel({ path: ensureFixture('llama', 'f32') });
    await using ctx = await model.createContext({ contextSize: 256, threads: 1 });
    const seq = ctx.acquireSequence();
    expect(model.chatTemplate).toBeUndefined();
    const err = await seq.generate(user('Hi'), { maxTokens: 2 }).next().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidOptionsError);
    expect((err as Error).message).toMatch(/has no chat template \(GGUF key tokenizer\.chat_template\); pass one with the chatTemplate option/);
    const { finish } = await collect(seq, user('Hi'), { maxTokens: 2, stopAtEog: false, chatTemplate: '{{ messages[0].content }}' });
    expect(finish.usage.promptTokens).toBe(model.tokenize('Hi').length);
    await expect(seq.generate('Hi', { reasoning: { budget: 4 } }).next()).rejects.toThrow(/reasoning\.budget: this model has no reasoning tags/);
    await expect(seq.generate('Hi', { reasoning: { budgt: 4 } } as never).next()).rejects.toThrow(/did you mean "budget"/);
  });
});
