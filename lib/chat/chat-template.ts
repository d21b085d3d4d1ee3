/**
 * Chat templates: the model's own Jinja template (GGUF `tokenizer.chat_template`, copied from the Hugging Face
 * tokenizer_config.json by the converters) rendered with @huggingface/jinja, the same engine transformers.js
 * uses. The variables follow transformers' `apply_chat_template`: `messages`, `add_generation_prompt`,
 * `bos_token`, `eos_token`, `raise_exception(msg)`, `strftime_now(fmt)`, plus caller kwargs such as
 * `enable_thinking` (Qwen3).
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

const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December'];
const DAYS = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];

/** Python's `strftime` for the directives chat templates use (Llama 3.1+ writes "%d %b %Y"). */
export function strftime(date: Date, format: string): string {
  const p2 = (n: number) => String(n).padStart(2, '0');
  return format.replace(/%([a-zA-Z%])/g, (m, d: string) => {
    switch (d) {
      case 'd': return p2(date.getDate());
      case 'm': return p2(date.getMonth() + 1);
      case 'Y': return String(date.getFullYear());
      case 'y': return p2(date.getFullYear() % 100);
      case 'b': return MONTHS[date.getMonth()]!.slice(0, 3);
      case 'B': return MONTHS[date.getMonth()]!;
      case 'a': return DAYS[date.getDay()]!.slice(0, 3);
      case 'A': return DAYS[date.getDay()]!;
      case 'H': return p2(date.getHours());
      case 'M': return p2(date.getMinutes());
      case 'S': return p2(date.getSeconds());
      case 'j': return String(Math.floor((date.getTime() - new Date(date.getFullYear(), 0, 1).getTime()) / 86_400_000) + 1).padStart(3, '0');
      case '%': return '%';
      default: return m;
    }
  });
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
    raise_exception: (message: unknown) => {
      throw new InvalidOptionsError(`chat template: the template raised an exception: ${String(message)}`);
    },
    strftime_now: (format: unknown) => strftime(new Date(), String(format)),
  };
  try {
    return template.render(vars);
  } catch (err) {
    if (err instanceof InvalidOptionsError) throw err;
    throw new InvalidOptionsError(`chat template: rendering failed: ${err instanceof Error ? err.message : String(err)}`);
  }
}
