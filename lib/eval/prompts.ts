/**
 * Prompt files for `thinkcache eval` and `thinkcache profile-heads`: one prompt per line. A line that is a
 * JSON object with `question` (or `problem`, `prompt`) is a user message, rendered with the model's chat
 * template when it has one (so calibration and fidelity traces look like real chats); any other line is
 * raw text.
 */
import { readFileSync } from 'node:fs';
import { InvalidOptionsError } from '../errors.js';
import type { Model } from '../Model.js';

export function readPromptFile(model: Model, file: string): (string | number[])[] {
  let text: string;
  try { text = readFileSync(file, 'utf8'); } catch (e) { throw new InvalidOptionsError(`--prompts: cannot read ${file}: ${(e as Error).message}`); }
  const hasTemplate = model.chatTemplate !== undefined;
  return text.split('\n').filter((l) => l.trim() !== '').map((line) => {
    let o: unknown;
    try { o = JSON.parse(line); } catch { return line; }
    if (o === null || typeof o !== 'object') return line;
    const r = o as Record<string, unknown>;
    const q = r.question ?? r.problem ?? r.prompt;
    if (typeof q !== 'string') throw new InvalidOptionsError(`--prompts ${file}: a JSON line needs a "question", "problem" or "prompt" string`);
    if (!hasTemplate) return q;
    const rendered = model.applyChatTemplate([{ role: 'user', content: q }], { addGenerationPrompt: true });
    return model.tokenize(rendered, { addBos: false, parseSpecial: true });
  });
}
