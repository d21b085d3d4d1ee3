/**
 * `thinkcache chat` (interactive) and `thinkcache run --chat` (one turn): conversations rendered with the
 * model's chat template, the reasoning streamed dimmed and the answer plain.
 *   thinkcache chat --model PATH [--system TEXT] [--no-think] [--reasoning-budget N] [--max-tokens N] ...
 *   thinkcache run --chat --model PATH --prompt TEXT [--json] ...
 * Ctrl-C during a reply aborts the reply (the conversation goes on); at the prompt it asks for a second
 * Ctrl-C, as the Node REPL does. Ctrl-D or /exit quits, /reset starts a new conversation. With stdin not a
 * terminal, every line is one user turn. Colors only on a terminal and without NO_COLOR.
 */
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import type { ChatMessage } from '../chat/chat-template.js';
import type { GenerateOptions } from '../options.js';
import type { GenerateEvent, Sequence } from '../Sequence.js';
import { backendOption, loadModelWithProgress, PrefillProgress, progressEnabled } from './progress.js';
import { numArg } from './args.js';

type Finish = Extract<GenerateEvent, { type: 'finish' }>;

const OPTIONS = {
  model: { type: 'string', short: 'm' }, system: { type: 'string', short: 's' }, prompt: { type: 'string', short: 'p' },
  'max-tokens': { type: 'string', short: 'n' }, temperature: { type: 'string' }, seed: { type: 'string' },
  'top-k': { type: 'string' }, 'top-p': { type: 'string' }, 'min-p': { type: 'string' },
  threads: { type: 'string', short: 't' }, context: { type: 'string', short: 'c' },
  'no-think': { type: 'boolean' }, 'reasoning-budget': { type: 'string' }, 'budget-message': { type: 'string' },
  stop: { type: 'string', multiple: true }, template: { type: 'string' }, json: { type: 'boolean' }, chat: { type: 'boolean' },
  backend: { type: 'string' },
} as const;

export const CHAT_USAGE = `  thinkcache chat --model PATH [--system TEXT] [--no-think] [--reasoning-budget N [--budget-message TEXT]]
                  [--max-tokens N] [--temperature T] [--seed S] [--stop STR]... [--template FILE]
                  [--threads N] [--context N] [--backend cpu|cuda|auto]
  thinkcache run --chat --model PATH --prompt TEXT [same options] [--json]
`;


type Values = ReturnType<typeof parse>['values'];
const parse = (args: string[]) => parseArgs({ args, options: OPTIONS, strict: true });

/** generate() options from the command line (validated before the model loads). */
function generateOptions(v: Values, defaultMaxTokens: number): GenerateOptions {
  const sampling = Object.fromEntries(Object.entries({
    temperature: numArg(v.temperature, 'temperature', false), seed: numArg(v.seed, 'seed', true), topK: numArg(v['top-k'], 'top-k', true),
    topP: numArg(v['top-p'], 'top-p', false), minP: numArg(v['min-p'], 'min-p', false),
  }).filter(([, x]) => x !== undefined));
  const budget = numArg(v['reasoning-budget'], 'reasoning-budget', true);
  return {
    maxTokens: numArg(v['max-tokens'], 'max-tokens', true) ?? defaultMaxTokens,
    sampling,
    ...(v.stop?.length ? { stop: v.stop } : {}),
    ...(budget !== undefined ? { reasoning: { budget, ...(v['budget-message'] !== undefined ? { budgetMessage: v['budget-message'] } : {}) } } : {}),
    ...(v['no-think'] ? { templateKwargs: { enable_thinking: false } } : {}),
    ...(v.template ? { chatTemplate: readFileSync(v.template, 'utf8') } : {}),
  };
}

const useColor = (stream: NodeJS.WriteStream) => stream.isTTY === true && !process.env.NO_COLOR;
const DIM = '\x1b[2m';
const UNDIM = '\x1b[22m';

/** Writes one reply: reasoning dimmed (or to `reasoningOut` when that is another stream), answer plain. */
export class ReplyPrinter {
  private inReasoning = false;
  constructor(private readonly out: NodeJS.WriteStream, private readonly reasoningOut: NodeJS.WriteStream) {}
  onEvent(ev: GenerateEvent): void {
    const color = useColor(this.reasoningOut);
    if (ev.type === 'reasoning-start') {
      this.inReasoning = true;
      if (color) this.reasoningOut.write(DIM);
    } else if (ev.type === 'reasoning-delta') {
      this.reasoningOut.write(ev.text);
    } else if (ev.type === 'reasoning-end') {
      this.inReasoning = false;
      this.reasoningOut.write((color ? UNDIM : '') + '\n\n');
    } else if (ev.type === 'text-delta') {
      this.out.write(ev.text);
    }
  }
  /** Restores the terminal after an abort in the middle of the reasoning. */
  end(): void {
    if (this.inReasoning && useColor(this.reasoningOut)) this.reasoningOut.write(UNDIM);
    this.inReasoning = false;
  }
}

function statsLine(f: Finish): string {
  const u = f.usage;
  const think = u.reasoningTokens ? `, reasoning ${u.reasoningTokens}` : '';
  return `[${f.finishReason}] ${u.completionTokens} tokens${think}, ${f.timings.decodeTokensPerSecond.toFixed(1)} tok/s, prompt ${u.promptTokens} (${u.cachedPromptTokens} cached)`;
}

/** Runs one turn on `seq`; resolves with its finish event (finishReason 'aborted' on Ctrl-C). */
async function reply(seq: Sequence, messages: ChatMessage[], opts: GenerateOptions, signal: AbortSignal, show: {
  printer?: ReplyPrinter; progress: PrefillProgress;
}): Promise<Finish | undefined> {
  let finish: Finish | undefined;
  try {
    for await (const ev of seq.generate(messages, { ...opts, signal })) {
      show.progress.onEvent(ev);
      show.printer?.onEvent(ev);
      if (ev.type === 'finish') finish = ev;
    }
  } finally {
    show.progress.stop();
    show.printer?.end();
  }
  return finish;
}

async function openSession(v: Values) {
  const show = progressEnabled(v.json);
  const threads = numArg(v.threads, 'threads', true);
  const contextSize = numArg(v.context, 'context', true);
  const model = await loadModelWithProgress(v.model!, show, backendOption(v.backend));
  const ctx = await model.createContext({ ...(threads ? { threads } : {}), ...(contextSize ? { contextSize } : {}) });
  return { model, ctx, seq: ctx.acquireSequence(), show };
}

/** `thinkcache run --chat`: one user turn, streamed; with --json one JSON object on stdout. */
export async function cmdRunChat(args: string[]): Promise<number> {
  const { values: v } = parse(args);
  if (!v.model || v.prompt === undefined) {
    process.stderr.write(`thinkcache run --chat: --model and --prompt are required\n\nUsage:\n${CHAT_USAGE}`);
    return 2;
  }
  const opts = generateOptions(v, 256);
  const messages: ChatMessage[] = [...(v.system ? [{ role: 'system', content: v.system }] : []), { role: 'user', content: v.prompt }];
  const { model, ctx, seq, show } = await openSession(v);
  await using _m = model;
  await using _c = ctx;
  const ac = new AbortController();
  const onSigint = () => ac.abort();
  process.once('SIGINT', onSigint);
  let finish: Finish | undefined;
  try {
    // the answer goes to stdout; the reasoning too on a terminal (dimmed), else to stderr so pipes get the answer only
    const printer = v.json ? undefined : new ReplyPrinter(process.stdout, process.stdout.isTTY ? process.stdout : process.stderr);
    finish = await reply(seq, messages, { ...opts, checkpoint: false }, ac.signal, { ...(printer ? { printer } : {}), progress: new PrefillProgress(show) });  // (one turn: no checkpoint for a next one)
  } finally {
    process.off('SIGINT', onSigint);
  }
  if (!finish) return 1;
  if (v.json) {
    process.stdout.write(JSON.stringify({
      model: v.model, messages, reasoning: finish.reasoning, text: finish.text, finishReason: finish.finishReason,
      ...(finish.stopString !== undefined ? { stopString: finish.stopString } : {}),
      tokens: finish.tokens, usage: finish.usage, timings: finish.timings, kv: finish.kv,
    }) + '\n');
  } else {
    process.stdout.write('\n');
    process.stderr.write(statsLine(finish) + '\n');
  }
  return 0;
}

/** `thinkcache chat`: an interactive conversation. */
export async function cmdChat(args: string[]): Promise<number> {
  const { values: v } = parse(args);
  if (!v.model) {
    process.stderr.write(`thinkcache chat: --model is required\n\nUsage:\n${CHAT_USAGE}`);
    return 2;
  }
  const opts = generateOptions(v, 1024);
  const { model, ctx, seq, show } = await openSession(v);
  await using _m = model;
  await using _c = ctx;
  const interactive = process.stdin.isTTY === true;
  const color = useColor(process.stdout);
  const system: ChatMessage[] = v.system ? [{ role: 'system', content: v.system }] : [];
  let history: ChatMessage[] = [...system];
  const rl = createInterface({ input: process.stdin, output: process.stdout, terminal: interactive, prompt: color ? '\x1b[1m>\x1b[22m ' : '> ' });
  let current: AbortController | undefined;
  let exitArmed = false;
  rl.on('SIGINT', () => {
    if (current) { current.abort(); return; }
    if (exitArmed) { rl.close(); return; }
    exitArmed = true;
    process.stdout.write('\n(To exit, press Ctrl-C again or Ctrl-D, or type /exit)\n');
    rl.prompt();
  });
  // a SIGINT that does not come from the terminal's Ctrl-C (kill -INT) also only aborts the reply
  const onSigint = () => { if (current) current.abort(); else rl.close(); };
  process.on('SIGINT', onSigint);

  if (interactive) {
    process.stdout.write(`thinkcache chat — ${model.path} (${model.info.architecture}, context ${ctx.contextSize})\n` +
      'Ctrl-C stops a reply, Ctrl-D or /exit quits, /reset starts over.\n');
    rl.prompt();
  }
  try {
    for await (const raw of rl) {
      exitArmed = false;
      const line = raw.trim();
      if (line === '/exit' || line === '/quit') break;
      if (line === '/reset') {
        history = [...system];
        await seq.clear();
        process.stdout.write('(new conversation)\n');
        if (interactive) rl.prompt();
        continue;
      }
      if (line === '') { if (interactive) rl.prompt(); continue; }
      const messages: ChatMessage[] = [...history, { role: 'user', content: line }];
      current = new AbortController();
      const finish = await reply(seq, messages, opts, current.signal, {
        printer: new ReplyPrinter(process.stdout, process.stdout), progress: new PrefillProgress(show),
      });
      current = undefined;
      process.stdout.write('\n');
      if (finish) {
        const stats = statsLine(finish);
        process.stderr.write((useColor(process.stderr) ? DIM + stats + UNDIM : stats) + '\n');
        if (finish.finishReason === 'context-full') process.stdout.write('(the context is full: /reset to start a new conversation)\n');
        // an aborted reply is dropped from the conversation
        if (finish.finishReason !== 'aborted') history = [...messages, { role: 'assistant', content: finish.text }];
      }
      if (interactive) rl.prompt();
    }
  } finally {
    process.off('SIGINT', onSigint);
    rl.close();
  }
  if (interactive) process.stdout.write('\n');
  return 0;
}
