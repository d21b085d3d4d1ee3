/**
 * Which tags delimit a model's reasoning, and whether a prompt already opened it.
 * Reasoning models wrap their chain of thought in `<think>` … `</think>` (DeepSeek-R1 and its distills, QwQ,
 * Qwen3). The tags are found in the vocabulary (as single added tokens) or in the chat template. Some
 * templates open the reasoning themselves (R1 distills end the generation prompt with `<｜Assistant｜><think>\n`,
 * Qwen3 with enable_thinking=false writes an empty `<think>\n\n</think>\n\n`), so whether the output starts
 * inside the reasoning is read from the prompt: it does when the last open tag comes after the last close tag.
 */
import type { Tokenizer } from '../tokenizer/index.js';

export interface ReasoningTags {
  open: string;
  close: string;
  /** Token ids when the tags are single tokens of the vocabulary. */
  openId?: number;
  closeId?: number;
}

/** Known pairs, most common first. */
const CANDIDATES: ReadonlyArray<readonly [string, string]> = [
  ['<think>', '</think>'],
  ['<thinking>', '</thinking>'],
];

/**
 * The reasoning tags of a model: a known pair whose both tags are tokens of the vocabulary, or whose close tag
 * the chat template writes. undefined for models without reasoning.
 */
export function detectReasoningTags(tokenizer: Tokenizer, chatTemplate?: string): ReasoningTags | undefined {
  for (const [open, close] of CANDIDATES) {
    const openId = tokenizer.tokenId(open);
    const closeId = tokenizer.tokenId(close);
    if ((openId !== undefined && closeId !== undefined) || chatTemplate?.includes(close)) {
      return { open, close, ...(openId !== undefined ? { openId } : {}), ...(closeId !== undefined ? { closeId } : {}) };
    }
  }
  return undefined;
}

function lastIndexOfToken(tokens: readonly number[], id: number): number {
  for (let i = tokens.length - 1; i >= 0; i--) if (tokens[i] === id) return i;
  return -1;
}

/**
 * True when the prompt leaves the reasoning open, so the model's first token is already reasoning.
 * @param promptText the prompt decoded with special tokens (only needed when the tags are not single tokens)
 */
export function promptOpensReasoning(tags: ReasoningTags, promptTokens: readonly number[], promptText: () => string): boolean {
  if (tags.openId !== undefined && tags.closeId !== undefined) {
    const lastOpen = lastIndexOfToken(promptTokens, tags.openId);
    return lastOpen >= 0 && lastOpen > lastIndexOfToken(promptTokens, tags.closeId);
  }
  const text = promptText();
  const lastOpen = text.lastIndexOf(tags.open);
  return lastOpen >= 0 && lastOpen > text.lastIndexOf(tags.close);
}
