// `thinkcache chat` and `thinkcache run --chat` as a user runs them (bin → dist/cli.cjs, built by npm run build:ts),
// non-interactively: stdin and stdout are pipes, so no colors and no progress bars. The interactive side
// (Ctrl-C, dimming) was checked by hand in tmux; see lib/cli/chat.ts.
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ensureFixture } from '../fixtures/make-tiny-gguf.js';
import { repoRoot } from '../helpers/shared-data.js';

const bin = join(repoRoot, 'bin', 'thinkcache.cjs');
const cli = (args: string[], input?: string) =>
  spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', cwd: repoRoot, timeout: 120_000, ...(input !== undefined ? { input } : {}) });
const qwen = () => ensureFixture('qwen3', 'q8_0');
const opening = join(tmpdir(), 'thinkcache-opening-template.jinja');
writeFileSync(opening, "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n<think>\n");

describe('thinkcache run --chat / chat', () => {
  it('run --chat --json prints exactly one JSON object with reasoning, text and usage', () => {
    const r = cli(['run', '--chat', '--model', qwen(), '--prompt', 'Hi', '--max-tokens', '8', '--threads', '1', '--json',
      '--template', opening, '--reasoning-budget', '2', '--budget-message', '']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines).toHaveLength(1);
    const out = JSON.parse(lines[0]!);
    expect(out.messages).toEqual([{ role: 'user', content: 'Hi' }]);
    expect(out.finishReason).toBe('length');
    expect(out.usage).toMatchObject({ completionTokens: 8, reasoningTokens: 3, answerTokens: 5 });
    expect(out.tokens[2]).toBe(151668); // </think> injected after 2 reasoning tokens
    expect(typeof out.reasoning).toBe('string');
    expect(typeof out.text).toBe('string');
  });

  it('run --chat on a pipe: the answer on stdout, the reasoning and stats on stderr', () => {
    const r = cli(['run', '--chat', '--model', qwen(), '--prompt', 'Hi', '--max-tokens', '6', '--threads', '1',
      '--template', opening, '--reasoning-budget', '2', '--budget-message', '']);
    expect(r.status).toBe(0);
    const json = JSON.parse(cli(['run', '--chat', '--model', qwen(), '--prompt', 'Hi', '--max-tokens', '6', '--threads', '1',
      '--template', opening, '--reasoning-budget', '2', '--budget-message', '', '--json']).stdout);
    expect(r.stdout).toBe(`${json.text}\n`);
    expect(r.stderr).toContain(json.reasoning);
    expect(r.stderr).toMatch(/\[length\] 6 tokens, reasoning 3, [\d.]+ tok\/s/);
    expect(r.stdout).not.toContain('\x1b[');
  });

  it('a model without a chat template fails with a clear message', () => {
    const r = cli(['run', '--chat', '--model', ensureFixture('llama', 'f32'), '--prompt', 'Hi']);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/\[ERR_INVALID_OPTIONS\] applyChatTemplate: .* has no chat template/);
  });

  it('chat reads one user turn per stdin line; /reset starts over', () => {
    const r = cli(['chat', '--model', qwen(), '--max-tokens', '4', '--threads', '1', '--no-think'], 'Hello\n\n/reset\nSecond turn\n');
    expect(r.status).toBe(0);
    const stats = r.stderr.trim().split('\n');
    expect(stats).toHaveLength(2);
    expect(stats[0]).toMatch(/^\[length\] 4 tokens, [\d.]+ tok\/s, prompt \d+ \(0 cached\)$/);
    expect(r.stdout).toContain('(new conversation)');
    expect(r.stdout).not.toContain('\x1b[');
  });

  it('bad numbers fail before loading the model', () => {
    const r = cli(['chat', '--model', '/nonexistent.gguf', '--reasoning-budget', 'lots']);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/--reasoning-budget: expected an integer, received "lots"/);
  });
});
