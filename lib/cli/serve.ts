/**
 * `thinkcache serve`: an OpenAI-compatible HTTP server (node:http) over one model and one context —
 * `POST /v1/chat/completions` (streaming or not), `GET /v1/models`, `GET /health` (slots busy and waiting,
 * requests by outcome, prompt / cached / completion token totals), `GET /metrics` (the same and the slots' KV
 * bytes, Prometheus text format). Each of the context's
 * `--parallel` sequences is a slot; a request takes the free slot whose last conversation shares the most
 * leading messages with it (so a follow-up turn re-evaluates only what is new), waits first come first
 * served when all are busy, and is aborted when its client goes away (the slot is free again at once). A slow
 * reader slows its own decoding (each chunk is written before the next token is computed). The wire format
 * is lib/adapters/openai.ts; the KV cache options are those of `run`/`eval` (`--kv PRESET|JSON`).
 *   thinkcache serve --model M [--host 127.0.0.1] [--port 8080] [--parallel 1] [--ctx-size 4096] [--kv rot2]
 *                    [--profile P.tsv] [--threads N] [--backend cpu|cuda|auto] [--alias NAME] [--max-tokens 4096]
 *                    [--reasoning-field reasoning_content|reasoning|both]
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { basename } from 'node:path';
import { parseArgs } from 'node:util';
import { fromOpenAIRequest, toOpenAICompletion, toOpenAISSE, type ReasoningField } from '../adapters/openai.js';
import type { Context } from '../Context.js';
import { AbortError, ContextFullError, DisposedError, InvalidOptionsError, LlmError } from '../errors.js';
import { loadModel, type Model } from '../Model.js';
import type { GenerateEvent, Sequence } from '../Sequence.js';
import type { ChatMessage } from '../chat/chat-template.js';
import { parseKvConfigs } from './eval.js';
import { backendOption } from './progress.js';
import { intArg } from './args.js';

export const SERVE_USAGE = `  thinkcache serve --model PATH [--host 127.0.0.1] [--port 8080] [--parallel N] [--ctx-size N] [--kv PRESET|JSON]
                   [--profile P.tsv] [--threads N] [--backend cpu|cuda|auto] [--alias NAME] [--max-tokens N]
                   [--reasoning-field reasoning_content|reasoning|both]
`;

const BODY_LIMIT = 8 << 20;

export interface ServerOptions {
  model: Model;
  /** Its sequences are the server's slots (createContext({ sequences })). */
  context: Context;
  /** The model name in responses and /v1/models (default: the file name without .gguf). */
  alias?: string;
  host?: string;
  /** 0: any free port (see the returned url). Default 8080. */
  port?: number;
  /** maxTokens of requests that set neither max_completion_tokens nor max_tokens (default 4096). */
  defaultMaxTokens?: number;
  reasoningField?: ReasoningField;
  /** Server errors after it listens (default: a line on stderr). */
  onError?: (err: Error) => void;
}

export interface RunningServer {
  url: string;
  /** Stops accepting, aborts the requests in flight and closes; the model and context stay the caller's. */
  close(): Promise<void>;
}

interface Slot {
  seq: Sequence;
  conversation: string[];
  lastUsed: number;
  busy: boolean;
  kv: { used: number; allocated: number };  // the KV memory report at the end of its last request
}

/** The context's sequences as slots: the best free one for a conversation, or a FIFO wait. */
class SlotPool {
  private readonly waiters: Array<{ key: string[]; resolve: (s: Slot) => void; reject: (e: Error) => void }> = [];
  private tick = 0;
  private closed = false;
  constructor(readonly slots: Slot[]) {}

  get busy(): number { return this.slots.filter((s) => s.busy).length; }
  get waiting(): number { return this.waiters.length; }

  acquire(key: string[], signal: AbortSignal): Promise<Slot> {
    if (this.closed) return Promise.reject(new DisposedError('the server is closing'));
    const free = this.best(key);
    if (free && this.waiters.length === 0) return Promise.resolve(this.take(free));
    return new Promise((resolve, reject) => {
      const w = {
        key,
        resolve: (s: Slot) => { signal.removeEventListener('abort', onAbort); resolve(s); },
        reject: (e: Error) => { signal.removeEventListener('abort', onAbort); reject(e); },
      };
      const onAbort = () => {
        const i = this.waiters.indexOf(w);
        if (i >= 0) this.waiters.splice(i, 1);
        w.reject(new AbortError('the client went away while waiting for a slot'));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(w);
    });
  }

  release(slot: Slot): void {
    slot.busy = false;
    const w = this.waiters.shift();
    if (w) w.resolve(this.take(this.best(w.key)!));
  }

  close(): void {
    this.closed = true;
    for (const w of this.waiters.splice(0)) w.reject(new DisposedError('the server is closing'));
  }

  private take(s: Slot): Slot {
    s.busy = true;
    s.lastUsed = ++this.tick;
    return s;
  }

  // the free slot whose conversation shares the most leading messages with `key`; ties: least recently used
  private best(key: string[]): Slot | undefined {
    let best: Slot | undefined, bestShared = -1;
    for (const s of this.slots) {
      if (s.busy) continue;
      let shared = 0;
      while (shared < key.length && shared < s.conversation.length && key[shared] === s.conversation[shared]) shared++;
      if (shared > bestShared || (shared === bestShared && best && s.lastUsed < best.lastUsed)) { best = s; bestShared = shared; }
    }
    return best;
  }
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

// OpenAI's error object; status 400 for what the request got wrong, 503 while closing, 500 otherwise
function errorBody(err: unknown): { status: number; body: { error: { message: string; type: string; code: string | null; param: null } } } {
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof ContextFullError) return { status: 400, body: { error: { message, type: 'invalid_request_error', code: 'context_length_exceeded', param: null } } };
  if (err instanceof InvalidOptionsError) return { status: 400, body: { error: { message, type: 'invalid_request_error', code: err.code, param: null } } };
  if (err instanceof DisposedError) return { status: 503, body: { error: { message, type: 'server_error', code: err.code, param: null } } };
  return { status: 500, body: { error: { message, type: 'server_error', code: err instanceof LlmError ? err.code : null, param: null } } };
}

async function readBody(req: IncomingMessage): Promise<string> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const chunk of req) {
    n += (chunk as Buffer).length;
    if (n > BODY_LIMIT) throw Object.assign(new InvalidOptionsError(`request body over ${BODY_LIMIT} bytes`), { status: 413 });
    parts.push(chunk as Buffer);
  }
  return Buffer.concat(parts).toString('utf8');
}

const messageKey = (m: ChatMessage) => JSON.stringify([m.role, m.content]);

// A slow reader: wait until the response drains or closes (both listeners removed after either)
function drainOrClose(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => { res.off('drain', done); res.off('close', done); resolve(); };
    res.on('drain', done);
    res.on('close', done);
  });
}

/** Starts the server; resolves once it listens. */
export async function startOpenAIServer(opts: ServerOptions): Promise<RunningServer> {
  const { model, context } = opts;
  const alias = opts.alias ?? basename(model.path).replace(/\.gguf$/i, '');
  const created = Math.floor(Date.now() / 1000);
  const slots: Slot[] = [];
  for (let i = 0; i < context.maxSequences; i++) slots.push({ seq: context.acquireSequence(), conversation: [], lastUsed: 0, busy: false, kv: { used: 0, allocated: 0 } });
  const pool = new SlotPool(slots);
  const inFlight = new Set<AbortController>();
  // totals for /health: requests by outcome, tokens by kind
  const stats = { requests: { completed: 0, aborted: 0, failed: 0 }, tokens: { prompt: 0, cached: 0, completion: 0 } };

  // Prometheus text format: the /health counts, and the slots' KV memory (as of the end of their last request)
  function metrics(): string {
    const lines: string[] = [];
    const metric = (name: string, type: 'counter' | 'gauge', help: string, rows: Array<[string, number]>) => {
      lines.push(`# HELP thinkcache_${name} ${help}`, `# TYPE thinkcache_${name} ${type}`);
      for (const [labels, v] of rows) lines.push(`thinkcache_${name}${labels} ${v}`);
    };
    const q = (k: string, v: string) => `{${k}="${v}"}`;
    metric('requests_total', 'counter', 'Chat completion requests by outcome.', Object.entries(stats.requests).map(([k, v]) => [q('outcome', k), v]));
    metric('prompt_tokens_total', 'counter', 'Prompt tokens of finished requests.', [['', stats.tokens.prompt]]);
    metric('prompt_tokens_cached_total', 'counter', 'Prompt tokens served from a slot\'s cache.', [['', stats.tokens.cached]]);
    metric('completion_tokens_total', 'counter', 'Generated tokens (reasoning and answer).', [['', stats.tokens.completion]]);
    metric('slots', 'gauge', 'Slots (sequences) by state.', [[q('state', 'busy'), pool.busy], [q('state', 'idle'), slots.length - pool.busy]]);
    metric('requests_waiting', 'gauge', 'Requests waiting for a slot.', [['', pool.waiting]]);
    metric('kv_bytes', 'gauge', 'KV cache bytes of all slots at the end of their last request.',
      [[q('kind', 'used'), slots.reduce((a, s) => a + s.kv.used, 0)], [q('kind', 'allocated'), slots.reduce((a, s) => a + s.kv.allocated, 0)]]);
    return lines.join('\n') + '\n';
  }

  async function chat(req: IncomingMessage, res: ServerResponse, ac: AbortController): Promise<void> {
    let json: unknown;
    const text = await readBody(req);
    try { json = JSON.parse(text); } catch { throw new InvalidOptionsError('the request body is not valid JSON'); }
    const r = fromOpenAIRequest(json, { defaultMaxTokens: opts.defaultMaxTokens ?? 4096 });
    const key = r.prompt.map(messageKey);
    const slot = await pool.acquire(key, ac.signal);
    slot.conversation = [];  // (until this request ends normally: its cache is about to change)
    try {
      let finish: Extract<GenerateEvent, { type: 'finish' }> | undefined;
      const events = (async function* () {
        for await (const ev of slot.seq.generate(r.prompt, { ...r.options, signal: ac.signal })) {
          if (ev.type === 'finish') finish = ev;
          yield ev;
        }
      })();
      const out = { model: alias, reasoningField: opts.reasoningField ?? 'reasoning_content', includeUsage: r.includeUsage, timings: true };
      if (r.stream) {
        let headersSent = false;
        try {
          for await (const line of toOpenAISSE(events, out)) {
            if (!headersSent) {
              res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
              headersSent = true;
            }
            if (ac.signal.aborted) break;
            if (!res.write(line)) await drainOrClose(res);
          }
        } catch (err) {
          if (!headersSent) throw err;
          if (!res.destroyed) res.write(`data: ${JSON.stringify(errorBody(err).body)}\n\n`);  // (the status is already sent)
        }
        if (!res.destroyed) res.end();
      } else {
        const completion = await toOpenAICompletion(events, out);
        if (!ac.signal.aborted) sendJson(res, 200, completion);
      }
      // what the slot's cache now holds, as messages: the next turn of this conversation comes back here
      slot.conversation = finish && finish.finishReason !== 'aborted' ? [...key, messageKey({ role: 'assistant', content: finish.text })] : [];
      if (finish) {
        slot.kv = { used: finish.kv.bytesUsed, allocated: finish.kv.bytesAllocated };
        stats.requests[finish.finishReason === 'aborted' ? 'aborted' : 'completed']++;
        stats.tokens.prompt += finish.usage.promptTokens;
        stats.tokens.cached += finish.usage.cachedPromptTokens;
        stats.tokens.completion += finish.usage.completionTokens;
      } else if (ac.signal.aborted) {
        stats.requests.aborted++;  // (stopped before its finish event: the client left between two chunks)
      }
    } finally {
      pool.release(slot);
    }
  }

  const server = createServer((req, res) => {
    const ac = new AbortController();
    inFlight.add(ac);
    res.on('close', () => { inFlight.delete(ac); if (!res.writableFinished) ac.abort(); });
    const url = (req.url ?? '/').split('?')[0];
    const handle = async () => {
      if (req.method === 'GET' && url === '/health') {
        sendJson(res, 200, { status: 'ok', slots: { total: slots.length, busy: pool.busy, waiting: pool.waiting }, ...stats });
      } else if (req.method === 'GET' && url === '/metrics') {
        const text = metrics();
        res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4', 'content-length': Buffer.byteLength(text) });
        res.end(text);
      } else if (req.method === 'GET' && url === '/v1/models') {
        sendJson(res, 200, { object: 'list', data: [{ id: alias, object: 'model', created, owned_by: 'thinkcache' }] });
      } else if (req.method === 'POST' && url === '/v1/chat/completions') {
        await chat(req, res, ac);
      } else {
        sendJson(res, 404, { error: { message: `no route ${req.method ?? ''} ${url}`, type: 'invalid_request_error', code: 'not_found', param: null } });
      }
    };
    handle().catch((err: unknown) => {
      if (ac.signal.aborted || res.headersSent) { if (!res.writableEnded) res.end(); return; }  // (the client left)
      if (!(err instanceof InvalidOptionsError)) stats.requests.failed++;
      const { status, body } = errorBody(err);
      sendJson(res, (err as { status?: number }).status ?? status, body);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);  // (EADDRINUSE, EACCES: startOpenAIServer rejects)
    server.listen(opts.port ?? 8080, opts.host ?? '127.0.0.1', () => { server.off('error', reject); resolve(); });
  });
  // later server errors (accept failures such as EMFILE) are reported, not thrown: the requests in flight go on
  server.on('error', (err) => (opts.onError ?? ((e: Error) => process.stderr.write(`thinkcache serve: ${e.message}\n`)))(err));
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : opts.port ?? 8080;
  return {
    url: `http://${opts.host ?? '127.0.0.1'}:${port}`,
    async close() {
      pool.close();
      for (const ac of inFlight) ac.abort();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of slots) await s.seq.dispose();
    },
  };
}

export async function cmdServe(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: 'string', short: 'm' }, host: { type: 'string' }, port: { type: 'string' }, parallel: { type: 'string' },
      'ctx-size': { type: 'string' }, kv: { type: 'string' }, profile: { type: 'string' }, threads: { type: 'string' },
      backend: { type: 'string' }, alias: { type: 'string' }, 'max-tokens': { type: 'string' }, 'reasoning-field': { type: 'string' },
    },
    strict: true,
  });
  if (!values.model) throw new LlmError('thinkcache serve: --model is required', 'ERR_INVALID_OPTIONS');
  const field = values['reasoning-field'] ?? 'reasoning_content';
  if (field !== 'reasoning_content' && field !== 'reasoning' && field !== 'both') {
    throw new LlmError(`--reasoning-field: expected reasoning_content, reasoning or both, received "${field}"`, 'ERR_INVALID_OPTIONS');
  }
  const port = intArg(values.port, 'port', 8080, 0, 65535);
  const kv = values.kv ? parseKvConfigs([values.kv], values.profile)[0]!.kv : undefined;
  const model = await loadModel({ path: values.model, backend: backendOption(values.backend) });
  const parallel = intArg(values.parallel, 'parallel', 1);
  const context = await model.createContext({
    contextSize: intArg(values['ctx-size'], 'ctx-size', Math.min(model.info.nCtxTrain || 4096, 4096)), sequences: parallel,
    ...(kv ? { kv } : {}), ...(values.threads ? { threads: intArg(values.threads, 'threads', 1) } : {}),
  });
  const server = await startOpenAIServer({
    model, context, port, ...(values.host ? { host: values.host } : {}), ...(values.alias ? { alias: values.alias } : {}),
    defaultMaxTokens: intArg(values['max-tokens'], 'max-tokens', 4096), reasoningField: field,
  });
  process.stderr.write(`thinkcache serve: listening on ${server.url} (${model.backend}, ${parallel} slot(s) of ${context.contextSize} tokens, kv ${values.kv ?? 'full'})\n`);
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  await server.close();
  await model.dispose();
  return 0;
}
