// Chat templates rendered with @huggingface/jinja: the real Qwen3 and Llama-3 templates (../shared/data) against
// strings written by hand from the templates' source, for system / user / assistant / multi-turn conversations,
// plus reasoning-tag detection (Qwen3 and R1-distill vocabularies) and the error paths.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { renderChatTemplate, type ChatMessage } from '../../../lib/chat/chat-template.js';
import { detectReasoningTags, promptOpensReasoning } from '../../../lib/chat/reasoning-tags.js';
import { InvalidOptionsError } from '../../../lib/errors.js';
import { createTokenizer } from '../../../lib/tokenizer/index.js';
import { haveSharedFile, sharedData } from '../../helpers/shared-data.js';

const tokenizerConfig = (name: string) => join(sharedData, 'tokenizers', name, 'tokenizer_config.json');
const templateOf = (name: string): string => JSON.parse(readFileSync(tokenizerConfig(name), 'utf8')).chat_template;

describe.skipIf(!haveSharedFile(tokenizerConfig('qwen3'), 'Qwen3 chat template tests'))('Qwen3 chat template', () => {
  const render = (messages: ChatMessage[], o: Parameters<typeof renderChatTemplate>[2] = {}) => renderChatTemplate(templateOf('qwen3'), messages, o);

  it('system + user, with the generation prompt', () => {
    expect(render([{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Hi!' }])).toBe(
      '<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n');
  });

  it('enable_thinking=false pre-fills an empty reasoning block', () => {
    expect(render([{ role: 'user', content: 'Hi' }], { templateKwargs: { enable_thinking: false } })).toBe(
      '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n');
  });

  it('multi-turn: earlier assistant turns lose their reasoning', () => {
    expect(render([
      { role: 'user', content: 'What is 2+2?' },
      { role: 'assistant', content: '<think>\nEasy.\n</think>\n\n4.' },
      { role: 'user', content: 'And 3+3?' },
    ])).toBe(
      '<|im_start|>user\nWhat is 2+2?<|im_end|>\n' +
      '<|im_start|>assistant\n4.<|im_end|>\n' +
      '<|im_start|>user\nAnd 3+3?<|im_end|>\n' +
      '<|im_start|>assistant\n');
  });

  it('the last assistant turn keeps reasoning_content; no generation prompt when asked', () => {
    expect(render([
      { role: 'user', content: 'Q' },
      { role: 'assistant', content: 'A', reasoning_content: 'R' },
    ], { addGenerationPrompt: false })).toBe(
      '<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\nR\n</think>\n\nA<|im_end|>\n');
  });
});

describe.skipIf(!haveSharedFile(tokenizerConfig('llama3'), 'Llama-3 chat template tests'))('Llama-3 chat template', () => {
  const render = (messages: ChatMessage[]) => renderChatTemplate(templateOf('llama3'), messages, { bosToken: '<|begin_of_text|>' });

  it('system + user: BOS once, trimmed content, assistant header', () => {
    expect(render([{ role: 'system', content: 'Be brief.' }, { role: 'user', content: '  Hello \n' }])).toBe(
      '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>' +
      '<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>' +
      '<|start_header_id|>assistant<|end_header_id|>\n\n');
  });

  it('multi-turn with an assistant answer', () => {
    expect(render([
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: 'Hello!' },
      { role: 'user', content: 'Bye' },
    ])).toBe(
      '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>' +
      '<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>' +
      '<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>' +
      '<|start_header_id|>assistant<|end_header_id|>\n\n');
  });
});

describe('renderChatTemplate errors and helpers', () => {
  it('raise_exception becomes an InvalidOptionsError with the template\'s message', () => {
    const t = "{% if messages[0].role != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}ok";
    expect(() => renderChatTemplate(t, [{ role: 'system', content: 'x' }])).toThrow(/chat template: rendering failed: first message must be from the user/);
    expect(renderChatTemplate(t, [{ role: 'user', content: 'x' }])).toBe('ok');
  });

  it('bad messages and bad templates are InvalidOptionsErrors', () => {
    expect(() => renderChatTemplate('x', [])).toThrow(InvalidOptionsError);
    expect(() => renderChatTemplate('x', [{ role: 'user' } as never])).toThrow(/messages\.0\.content/);
    expect(() => renderChatTemplate('{% for %}', [{ role: 'user', content: 'x' }])).toThrow(/chat template: cannot parse/);
  });

  it('strftime_now is available (Llama 3.1+ templates date the system prompt)', () => {
    expect(renderChatTemplate('{{ strftime_now("%Y") }}', [{ role: 'user', content: 'x' }])).toBe(String(new Date().getFullYear()));
  });
});

// R1-distill vocabulary: the Qwen BPE with DeepSeek's added tokens at their ids (../shared/data, transcribed).
const R1_ADDED = join(sharedData, 'tokenizers', 'deepseek-r1-distill-qwen', 'added_tokens.json');
// The R1-distill template's generation prompt (DeepSeek's updated tokenizer_config), reduced to user turns.
const R1_TEMPLATE = "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}{{ '<｜User｜>' + m.content }}{% endif %}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}";

describe.skipIf(!haveSharedFile(R1_ADDED, 'R1-distill reasoning-tag tests'))('reasoning tags', () => {
  function r1Tokenizer() {
    const added = JSON.parse(readFileSync(R1_ADDED, 'utf8')) as { added_tokens: Array<{ id: number; content: string; special: boolean }> };
    const texts = Array.from({ length: 151665 }, (_, i) => `t${i}`);
    const types = new Array<number>(151665).fill(1);
    for (const a of added.added_tokens) {
      texts[a.id] = a.content;
      types[a.id] = a.special ? 3 : 4; // CONTROL : USER_DEFINED, as convert_hf_to_gguf writes them
    }
    return createTokenizer({
      'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.pre': 'deepseek-r1-qwen', 'tokenizer.ggml.tokens': texts,
      'tokenizer.ggml.token_type': types, 'tokenizer.ggml.merges': [], 'tokenizer.ggml.bos_token_id': 151646,
      'tokenizer.ggml.eos_token_id': 151643, 'tokenizer.ggml.add_bos_token': true,
    });
  }

  it('finds <think>/</think> as single tokens of the R1-distill vocabulary', () => {
    const tok = r1Tokenizer();
    expect(detectReasoningTags(tok)).toEqual({ open: '<think>', close: '</think>', openId: 151648, closeId: 151649 });
  });

  it('an R1-style generation prompt opens the reasoning; a closed block or none does not', () => {
    const tok = r1Tokenizer();
    const tags = detectReasoningTags(tok)!;
    const prompt = renderChatTemplate(R1_TEMPLATE, [{ role: 'user', content: 'Hi' }], { bosToken: '<｜begin▁of▁sentence｜>' });
    expect(prompt).toBe('<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜><think>\n');
    const ids = tok.encode(prompt, { parseSpecial: true, addBos: false });
    expect(ids[0]).toBe(151646);
    expect(ids).toContain(151648);
    expect(promptOpensReasoning(tags, ids, () => prompt)).toBe(true);
    expect(promptOpensReasoning(tags, [...ids, 151649], () => '')).toBe(false);
    expect(promptOpensReasoning(tags, ids.filter((i) => i !== 151648), () => '')).toBe(false);
  });

  it('falls back to the template text when the tags are not single tokens', () => {
    const tok = createTokenizer({
      'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.pre': 'qwen2', 'tokenizer.ggml.tokens': ['a', 'b'],
      'tokenizer.ggml.token_type': [1, 1], 'tokenizer.ggml.merges': [], 'tokenizer.ggml.eos_token_id': 0,
    });
    expect(detectReasoningTags(tok)).toBeUndefined();
    const tags = detectReasoningTags(tok, '{{ "</think>" }}')!;
    expect(tags).toEqual({ open: '<think>', close: '</think>' });
    expect(promptOpensReasoning(tags, [0], () => 'x<think>\n')).toBe(true);
    expect(promptOpensReasoning(tags, [0], () => '<think></think>')).toBe(false);
  });
});

