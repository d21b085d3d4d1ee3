/**
 * The OpenAI chat-completions wire format over `seq.generate()`, for servers built on thinkcache (PEERS.md
 * §3.4): a request body becomes generate()'s prompt and options (`fromOpenAIRequest`), the event stream
 * becomes `chat.completion.chunk` objects (`toOpenAIChunks`), server-sent events (`toOpenAISSE`) or one
 * `chat.completion` object (`toOpenAICompletion`).
 *
 * Reasoning goes in `delta.reasoning_content` (llama.cpp, DeepSeek), `delta.reasoning` (vLLM ≥ 0.11) or both
 * (`reasoningField`). finish_reason: eos and stop strings → "stop"; maxTokens and a full context → "length";
 * a reasoning budget that closed the reasoning → "stop" (the answer itself ended normally); an aborted
 * generation → "stop" (a server usually stops writing instead). With `includeUsage` the last chunk has
 * `choices: []` and the usage (`prompt_tokens_details.cached_tokens`,
 * `completion_tokens_details.reasoning_tokens`), and the others `usage: null`, as OpenAI sends them.
 * @example
 *   const { prompt, options, stream, includeUsage } = fromOpenAIRequest(body);
 *   for await (const line of toOpenAISSE(seq.generate(prompt, { ...options, signal }), { model: 'qwen3', includeUsage })) res.write(line);
 */
import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import type { ChatMessage } from '../chat/chat-template.js';
import { InvalidOptionsError } from '../errors.js';
import type { GenerateOptions } from '../options.js';
import type { FinishReason, GenerateEvent } from '../Sequence.js';

export type OpenAIFinishReason = 'stop' | 'length';
export type ReasoningField = 'reasoning_content' | 'reasoning' | 'both';

export interface OpenAIUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
  completion_tokens_details: { reasoning_tokens: number };
}

/** llama-server's per-response timings (milliseconds, tokens per second). */
export interface OpenAITimings {
  prompt_n: number;
  prompt_ms: number;
  prompt_per_second: number;
  predicted_n: number;
  predicted_ms: number;
  predicted_per_second: number;
  cache_n: number;
}

export interface OpenAIDelta { role?: 'assistant'; content?: string; reasoning_content?: string; reasoning?: string }

export interface OpenAIChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  choices: Array<{ index: 0; delta: OpenAIDelta; logprobs: null; finish_reason: OpenAIFinishReason | null }>;
  usage?: OpenAIUsage | null;
  timings?: OpenAITimings;
}

export interface OpenAICompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: Array<{
    index: 0;
    message: { role: 'assistant'; content: string; reasoning_content?: string; reasoning?: string };
    logprobs: null;
    finish_reason: OpenAIFinishReason;
  }>;
  usage: OpenAIUsage;
  timings?: OpenAITimings;
}

export interface OpenAIOutputOptions {
  /** The `model` field of every chunk. */
  model: string;
  /** Default: "chatcmpl-" + a random UUID. */
  id?: string;
  /** Unix seconds; default: now. */
  created?: number;
  /** Where reasoning text goes (default "reasoning_content"). */
  reasoningField?: ReasoningField;
  /** A last chunk with `choices: []` and the usage (`stream_options.include_usage`). */
  includeUsage?: boolean;
  /** llama-server's `timings` object on the finish chunk (and the completion). Default false. */
  timings?: boolean;
}

/** The OpenAI finish_reason of a generation's finish reason (see the module comment). */
export function openAIFinishReason(reason: FinishReason): OpenAIFinishReason {
  return reason === 'length' || reason === 'context-full' ? 'length' : 'stop';
}

type Finish = Extract<GenerateEvent, { type: 'finish' }>;

function usageOf(fin: Finish): OpenAIUsage {
  const u = fin.usage;
  return {
    prompt_tokens: u.promptTokens,
    completion_tokens: u.completionTokens,
    total_tokens: u.totalTokens,
    prompt_tokens_details: { cached_tokens: u.cachedPromptTokens },
    completion_tokens_details: { reasoning_tokens: u.reasoningTokens },
  };
}

function timingsOf(fin: Finish): OpenAITimings {
  const t = fin.timings, u = fin.usage;
  return {
    prompt_n: u.promptTokens - u.cachedPromptTokens,
    prompt_ms: t.prefillMs,
    prompt_per_second: t.prefillTokensPerSecond,
    predicted_n: u.completionTokens,
    predicted_ms: t.decodeMs,
    predicted_per_second: t.decodeTokensPerSecond,
    cache_n: u.cachedPromptTokens,
  };
}

function reasoningDelta(text: string, field: ReasoningField): OpenAIDelta {
  if (field === 'both') return { reasoning_content: text, reasoning: text };
  return field === 'reasoning' ? { reasoning: text } : { reasoning_content: text };
}

function resolveOutput(opts: OpenAIOutputOptions): Required<Omit<OpenAIOutputOptions, 'timings'>> & { timings: boolean } {
  if (typeof opts?.model !== 'string') throw new InvalidOptionsError('openai: options.model must be a string');
  const field = opts.reasoningField ?? 'reasoning_content';
  if (field !== 'reasoning_content' && field !== 'reasoning' && field !== 'both') {
    throw new InvalidOptionsError(`openai: reasoningField must be "reasoning_content", "reasoning" or "both" (got ${JSON.stringify(field)})`);
  }
  return {
    model: opts.model,
    id: opts.id ?? `chatcmpl-${randomUUID()}`,
    created: opts.created ?? Math.floor(Date.now() / 1000),
    reasoningField: field,
    includeUsage: opts.includeUsage ?? false,
    timings: opts.timings ?? false,
  };
}

/**
 * `chat.completion.chunk` objects for a generation's events: a first chunk with the role, one per reasoning or
 * answer delta (empty deltas are skipped), the finish chunk, and with `includeUsage` a usage chunk. Breaking
 * out of the loop (or `return()`) stops the generation, as breaking out of generate() does.
 */
export async function* toOpenAIChunks(events: AsyncIterable<GenerateEvent>, options: OpenAIOutputOptions): AsyncGenerator<OpenAIChunk, void, void> {
  const o = resolveOutput(options);
  const chunk = (delta: OpenAIDelta, finish: OpenAIFinishReason | null = null): OpenAIChunk => ({
    id: o.id, object: 'chat.completion.chunk', created: o.created, model: o.model,
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
    ...(o.includeUsage ? { usage: null } : {}),
  });
  let started = false;
  for await (const ev of events) {
    if (!started) {
      started = true;
      yield chunk({ role: 'assistant', content: '' });
    }
    if (ev.type === 'reasoning-delta') {
      if (ev.text.length > 0) yield chunk(reasoningDelta(ev.text, o.reasoningField));
    } else if (ev.type === 'text-delta') {
      if (ev.text.length > 0) yield chunk({ content: ev.text });
    } else if (ev.type === 'finish') {
      const last = chunk({}, openAIFinishReason(ev.finishReason));
      if (o.timings) last.timings = timingsOf(ev);
      yield last;
      if (o.includeUsage) {
        yield { id: o.id, object: 'chat.completion.chunk', created: o.created, model: o.model, choices: [], usage: usageOf(ev) };
      }
    }
  }
}

/**
 * Server-sent events for `toOpenAIChunks`: `data: {json}\n\n` per chunk, then `data: [DONE]\n\n` — write each
 * string to the response (content-type `text/event-stream`).
 */
export async function* toOpenAISSE(events: AsyncIterable<GenerateEvent>, options: OpenAIOutputOptions): AsyncGenerator<string, void, void> {
  for await (const c of toOpenAIChunks(events, options)) yield `data: ${JSON.stringify(c)}\n\n`;
  yield 'data: [DONE]\n\n';
}

/** One `chat.completion` object (a non-streaming response): the answer, the reasoning apart, usage. */
export async function toOpenAICompletion(events: AsyncIterable<GenerateEvent>, options: OpenAIOutputOptions): Promise<OpenAICompletion> {
  const o = resolveOutput(options);
  let fin: Finish | undefined;
  for await (const ev of events) if (ev.type === 'finish') fin = ev;
  if (!fin) throw new InvalidOptionsError('toOpenAICompletion: the events ended without a finish event');
  const message: OpenAICompletion['choices'][0]['message'] = { role: 'assistant', content: fin.text };
  if (fin.usage.reasoningTokens > 0 || fin.reasoning.length > 0) Object.assign(message, reasoningDelta(fin.reasoning, o.reasoningField));
  return {
    id: o.id, object: 'chat.completion', created: o.created, model: o.model,
    choices: [{ index: 0, message, logprobs: null, finish_reason: openAIFinishReason(fin.finishReason) }],
    usage: usageOf(fin),
    ...(o.timings ? { timings: timingsOf(fin) } : {}),
  };
}

// ---- requests ------------------------------------------------------------------------------------------

const TextPart = z.looseObject({ type: z.literal('text'), text: z.string() });
const MessageSchema = z.looseObject({
  role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']),
  content: z.union([z.string(), z.array(z.looseObject({ type: z.string() })), z.null()]).optional(),
  reasoning_content: z.string().optional(),
});

const RequestSchema = z.looseObject({
  messages: z.array(MessageSchema).min(1),
  model: z.string().optional(),
  stream: z.boolean().optional(),
  stream_options: z.looseObject({ include_usage: z.boolean().optional() }).nullable().optional(),
  max_tokens: z.number().int().positive().nullable().optional(),
  max_completion_tokens: z.number().int().positive().nullable().optional(),
  temperature: z.number().min(0).max(2).nullable().optional(),
  top_p: z.number().gt(0).max(1).nullable().optional(),
  presence_penalty: z.number().min(-2).max(2).nullable().optional(),
  frequency_penalty: z.number().min(-2).max(2).nullable().optional(),
  seed: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).nullable().optional(),
  stop: z.union([z.string().min(1), z.array(z.string().min(1)).max(32)]).nullable().optional(),
  n: z.number().int().nullable().optional(),
  logprobs: z.boolean().nullable().optional(),
  // llama-server's extensions
  top_k: z.number().int().min(0).nullable().optional(),
  min_p: z.number().min(0).max(1).nullable().optional(),
  repeat_penalty: z.number().gt(0).nullable().optional(),
  chat_template_kwargs: z.record(z.string(), z.unknown()).nullable().optional(),
  thinking_budget_tokens: z.number().int().min(-1).nullable().optional(),
  id_slot: z.number().int().min(-1).nullable().optional(),
});

export interface OpenAIRequestOptions {
  /** maxTokens when the request sets neither max_completion_tokens nor max_tokens (default 4096). */
  defaultMaxTokens?: number;
}

export interface ParsedOpenAIRequest {
  /** The messages as generate() takes them ("developer" becomes "system", text parts are joined). */
  prompt: ChatMessage[];
  options: GenerateOptions;
  stream: boolean;
  includeUsage: boolean;
  /** The request's `model` field, if any. */
  model?: string;
  /** llama-server's `id_slot`: the server slot the request asks for (absent, or -1 on the wire: any). */
  slot?: number;
}

function messageText(content: unknown, where: string): string {
  if (content === undefined || content === null) return '';
  if (typeof content === 'string') return content;
  return (content as Array<{ type: string }>).map((part, i) => {
    const p = TextPart.safeParse(part);
    if (!p.success) throw new InvalidOptionsError(`${where}.content[${i}]: only text parts are supported (got type ${JSON.stringify(part.type)})`);
    return p.data.text;
  }).join('');
}

/**
 * A chat-completions request body as generate()'s prompt and options. Sampling follows OpenAI's defaults where
 * the request is silent (temperature 1, top_p 1; top_k and min_p off); max_completion_tokens (or max_tokens)
 * counts reasoning and answer tokens together, as OpenAI's does. Accepts llama-server's top_k, min_p,
 * repeat_penalty, chat_template_kwargs (e.g. `{ enable_thinking: false }`) and thinking_budget_tokens; other
 * unknown fields are ignored. What thinkcache cannot do (n > 1, logprobs, tools, non-text parts) is an
 * InvalidOptionsError naming the field.
 */
export function fromOpenAIRequest(body: unknown, opts: OpenAIRequestOptions = {}): ParsedOpenAIRequest {
  const r = RequestSchema.safeParse(body);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    throw new InvalidOptionsError(`request.${issue.path.map(String).join('.')}: ${issue.message}`);
  }
  const b = r.data;
  if (b.n != null && b.n !== 1) throw new InvalidOptionsError(`request.n: only 1 choice is supported (got ${b.n})`);
  if (b.logprobs === true) throw new InvalidOptionsError('request.logprobs: log probabilities are not supported');
  for (const key of ['tools', 'functions', 'tool_choice', 'response_format'] as const) {
    const v = (b as Record<string, unknown>)[key];
    if (v !== undefined && v !== null && !(key === 'response_format' && (v as { type?: string }).type === 'text') && !(key === 'tool_choice' && v === 'none')) {
      throw new InvalidOptionsError(`request.${key}: not supported (tool calls and structured output are not implemented)`);
    }
  }
  const prompt: ChatMessage[] = b.messages.map((m, i) => {
    const out: ChatMessage = { role: m.role === 'developer' ? 'system' : m.role, content: messageText(m.content, `request.messages[${i}]`) };
    if (m.reasoning_content !== undefined) out['reasoning_content'] = m.reasoning_content;
    return out;
  });
  const options: GenerateOptions = {
    maxTokens: b.max_completion_tokens ?? b.max_tokens ?? opts.defaultMaxTokens ?? 4096,
    sampling: {
      temperature: b.temperature ?? 1,
      topP: b.top_p ?? 1,
      topK: b.top_k ?? 0,
      minP: b.min_p ?? 0,
      presencePenalty: b.presence_penalty ?? 0,
      frequencyPenalty: b.frequency_penalty ?? 0,
      repeatPenalty: b.repeat_penalty ?? 1,
      ...(b.seed != null ? { seed: b.seed } : {}),
    },
  };
  if (b.stop != null) options.stop = b.stop;
  if (b.chat_template_kwargs != null) options.templateKwargs = b.chat_template_kwargs;
  if (b.thinking_budget_tokens != null && b.thinking_budget_tokens >= 0) options.reasoning = { budget: b.thinking_budget_tokens };
  return {
    prompt,
    options,
    stream: b.stream ?? false,
    includeUsage: b.stream_options?.include_usage ?? false,
    ...(b.model !== undefined ? { model: b.model } : {}),
    ...(b.id_slot != null && b.id_slot >= 0 ? { slot: b.id_slot } : {}),
  };
}
