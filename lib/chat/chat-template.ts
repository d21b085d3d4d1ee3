/**
 * Chat templates: the model's own Jinja template (GGUF `tokenizer.chat_template`, copied from the Hugging Face
 * tokenizer_config.json by the converters) rendered with @huggingface/jinja, the same engine transformers.js
 * uses. The variables follow transformers' `apply_chat_template`: `messages`, `add_generation_prompt`,
 * `bos_token`, `eos_token`, plus caller kwargs such as `enable_thinking` (Qwen3); the engine itself provides
 * `raise_exception(msg)` and `strftime_now(fmt)`.
 * Invariants: rendering is pure (same inputs, same string); compiled templates are cached by source text;
 * every failure is an InvalidOptionsError whose message starts with "chat template:".
 */
import { Template } from '@huggingface/jinja';
import { z } from 'zod';
import { InvalidOptionsError } from '../errors.js';
import { parseOptions } from '../options.js';

/** One turn of a conversation. Extra fields (`reasoning_content`, `tool_calls`, ...) reach the template as is. */
export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool' | (string & {});
  content: string;
  [field: string]: unknown;
}

export const ChatMessageSchema = z.looseObject({
  role: z.string().min(1),
  content: z.string(),
});
export const ChatMessagesSchema = z.array(ChatMessageSchema).min(1);

export interface ChatTemplateOptions {
  /** End the prompt with the assistant header so the model answers (default true). */
  addGenerationPrompt?: boolean;
  /** Extra template variables, e.g. `{ enable_thinking: false }` for Qwen3. */
  templateKwargs?: Record<string, unknown>;
  /** Text of the BOS / EOS tokens, for templates that write `bos_token` / `eos_token`. */
  bosToken?: string;
  eosToken?: string;
}

const MAX_CACHED = 8;
const compiled = new Map<string, Template>();

function compile(source: string): Template {
  let t = compiled.get(source);
  if (t) return t;
  try {
    t = new Template(source);
  } catch (err) {
    throw new InvalidOptionsError(`chat template: cannot parse the template: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (compiled.size >= MAX_CACHED) compiled.delete(compiled.keys().next().value!);
  compiled.set(source, t);
  return t;
}

/**
 * Renders `messages` with a Jinja chat template.
 * @example
 *   renderChatTemplate(model.chatTemplate!, [{ role: 'user', content: 'Hi' }], { templateKwargs: { enable_thinking: false } });
 *   // '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n'
 */
export function renderChatTemplate(source: string, messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): string {
  const msgs = parseOptions(ChatMessagesSchema, messages, 'messages');
  const template = compile(source);
  const vars: Record<string, unknown> = {
    ...options.templateKwargs,
    messages: msgs,
    add_generation_prompt: options.addGenerationPrompt ?? true,
    bos_token: options.bosToken ?? '',
    eos_token: options.eosToken ?? '',
  };
  try {
    return template.render(vars);
  } catch (err) {
    // raise_exception('...') in a template throws a plain Error with the template's message
    throw new InvalidOptionsError(`chat template: rendering failed: ${err instanceof Error ? err.message : String(err)}`);
  }
}
