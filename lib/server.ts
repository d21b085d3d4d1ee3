/**
 * An OpenAI-compatible HTTP server (node:http) over one model and one context (`startOpenAIServer`; the CLI's
 * `thinkcache serve`): `POST /v1/chat/completions` (streaming or not), `GET /v1/models`, `GET /health` (slots
 * busy and waiting, requests by outcome, prompt / cached / completion token totals), `GET /metrics` (the same and
 * the slots' KV bytes, Prometheus text format), and llama-server's slot routes: `GET /slots`, and with
 * `slotSavePath` `POST /slots/:id?action=save|restore` (the slot's compressed cache to a state file and back,
 * seq.saveStateToFile) and `?action=erase`. Each of the context's sequences is a slot; a request takes the free
 * slot whose last conversation shares the most leading messages with it (so a follow-up turn re-evaluates only
 * what is new) or the one its `id_slot` names, waits first come first served when none is free, and is aborted
 * when its client goes away (the slot is free again at once). A slow reader slows its own decoding (each chunk
 * is written before the next token is computed). The wire format is lib/adapters/openai.ts.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { mkdir, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { fromOpenAIRequest, toOpenAICompletion, toOpenAISSE, type ReasoningField } from './adapters/openai.js';
import type { Context } from './Context.js';
import { AbortError, ContextFullError, DisposedError, FileAccessError, InvalidOptionsError, LlmError, StateFormatError } from './errors.js';
import type { Model } from './Model.js';
import type { GenerateEvent, Sequence } from './Sequence.js';
import type { ChatMessage } from './chat/chat-template.js';

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
  /**
   * Directory for slot state files (llama-server's `--slot-save-path`): `POST /slots/:id?action=save|restore` with
   * `{ "filename": "name.bin" }` writes the slot's sequence state there (its compressed cache as it is) or reads one
   * back. Without it those two actions answer 501; `?action=erase` works either way.
   */
  slotSavePath?: string;
  /** Server errors after it listens (default: a line on stderr). */
  onError?: (err: Error) => void;
}

export interface RunningServer {
  url: string;
  /** Stops accepting, aborts the requests in flight and closes; the model and context stay the caller's. */
  close(): Promise<void>;
}

interface Slot {
  id: number;
  seq: Sequence;
  conversation: string[];
  lastUsed: number;
  busy: boolean;
  kv: { used: number; allocated: number };  // the KV memory report at the end of its last request
}

/**
 * The context's sequences as slots: the best free one for a conversation (or the one a request names), or a FIFO
 * wait. Invariant: no waiter could take a free slot (release() hands a freed slot to the first waiter that can
 * take it), so a new request may take a free slot at once even while others wait for busy ones.
 */
class SlotPool {
  private readonly waiters: Array<{ key: string[]; want: number | undefined; resolve: (s: Slot) => void; reject: (e: Error) => void }> = [];
  private tick = 0;
  private closed = false;
  constructor(readonly slots: Slot[]) {}

  get busy(): number { return this.slots.filter((s) => s.busy).length; }
  get waiting(): number { return this.waiters.length; }

  /** A slot for conversation `key`, or slot `want` when given (waiting for it while it is busy). */
  acquire(key: string[], signal: AbortSignal, want?: number): Promise<Slot> {
    if (this.closed) return Promise.reject(new DisposedError('the server is closing'));
    if (signal.aborted) return Promise.reject(new AbortError('the client went away before a slot was free'));
    const free = this.pick(key, want);
    if (free) return Promise.resolve(this.take(free));
    return new Promise((resolve, reject) => {
      const w = {
        key,
        want,
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
    for (let i = 0; i < this.waiters.length; i++) {
      const w = this.waiters[i]!, s = this.pick(w.key, w.want);
      if (!s) continue;  // (it waits for another slot)
      this.waiters.splice(i, 1);
      w.resolve(this.take(s));
      return;
    }
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

  private pick(key: string[], want: number | undefined): Slot | undefined {
    if (want === undefined) return this.best(key);
    const s = this.slots[want]!;
    return s.busy ? undefined : s;
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

// OpenAI's error object; status 400 for what the request got wrong (a state file that cannot be read included),
// 501 for a disabled feature, 503 while closing, 500 otherwise
function errorBody(err: unknown): { status: number; body: { error: { message: string; type: string; code: string | null; param: null } } } {
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof NotSupported) return { status: 501, body: { error: { message, type: 'not_supported_error', code: null, param: null } } };
  if (err instanceof StateFormatError) return { status: 400, body: { error: { message, type: 'invalid_request_error', code: err.code, param: null } } };
  if (err instanceof ContextFullError) return { status: 400, body: { error: { message, type: 'invalid_request_error', code: 'context_length_exceeded', param: null } } };
  if (err instanceof InvalidOptionsError) return { status: 400, body: { error: { message, type: 'invalid_request_error', code: err.code, param: null } } };
  if (err instanceof DisposedError) return { status: 503, body: { error: { message, type: 'server_error', code: err.code, param: null } } };
  return { status: 500, body: { error: { message, type: 'server_error', code: err instanceof LlmError ? err.code : null, param: null } } };
}

class NotSupported extends Error {}

// A slot file's name: letters, digits, '.', '_' and '-', not starting with '.' (no path: it stays in slotSavePath),
// at most 200 characters (the save's temporary name adds to it)
function slotFileName(v: unknown): string {
  if (typeof v !== 'string' || !/^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$/.test(v)) {
    throw new InvalidOptionsError(`filename: expected a file name of at most 200 letters, digits, '.', '_' and '-' (no path, not starting with '.'), received ${JSON.stringify(v)}`);
  }
  return v;
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
  for (let i = 0; i < context.maxSequences; i++) slots.push({ id: i, seq: context.acquireSequence(), conversation: [], lastUsed: 0, busy: false, kv: { used: 0, allocated: 0 } });
  const pool = new SlotPool(slots);
  if (opts.slotSavePath) await mkdir(opts.slotSavePath, { recursive: true });
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
    if (r.slot !== undefined && r.slot >= slots.length) throw new InvalidOptionsError(`request.id_slot: expected -1 or a slot in [0, ${slots.length}), received ${r.slot}`);
    const slot = await pool.acquire(key, ac.signal, r.slot);
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

  // POST /slots/:id?action=save|restore|erase (llama-server's routes and answers)
  async function slotAction(req: IncomingMessage, res: ServerResponse, ac: AbortController, idText: string, action: string): Promise<void> {
    const id = Number(idText);
    if (!/^\d+$/.test(idText) || id >= slots.length) throw new InvalidOptionsError(`slot "${idText}": expected an id in [0, ${slots.length})`);
    if (action !== 'save' && action !== 'restore' && action !== 'erase') throw new InvalidOptionsError(`action: expected save, restore or erase, received "${action}"`);
    let file = '', filename = '';
    if (action !== 'erase') {
      if (!opts.slotSavePath) throw new NotSupported('slot save and restore are off: start the server with slotSavePath (thinkcache serve --slot-save-path DIR)');
      let body: unknown;
      try { body = JSON.parse((await readBody(req)) || '{}'); } catch { throw new InvalidOptionsError('the request body is not valid JSON'); }
      filename = slotFileName((body as { filename?: unknown } | null)?.filename);
      file = join(opts.slotSavePath, filename);
    }
    const slot = await pool.acquire([], ac.signal, id);
    try {
      const t0 = performance.now();
      if (action === 'save') {
        const r = await slot.seq.saveStateToFile(file);
        sendJson(res, 200, { id_slot: id, filename, n_saved: r.tokens, n_written: r.bytes, timings: { save_ms: performance.now() - t0 } });
        return;
      }
      slot.conversation = [];  // (its messages are not known after either)
      if (action === 'restore') {
        const bytes = (await stat(file).catch(() => undefined))?.size ?? 0;
        const r = await slot.seq.loadStateFromFile(file).catch((e: unknown) => {
          // (a file the request names that cannot be read is the request's fault; a save that cannot write is ours: 500)
          throw e instanceof FileAccessError ? Object.assign(new InvalidOptionsError(e.message, 'ERR_INVALID_ARG'), { status: 400 }) : e;
        });
        const m = slot.seq.memory();
        slot.kv = { used: m.bytesUsed, allocated: m.bytesAllocated };
        sendJson(res, 200, { id_slot: id, filename, n_restored: r.tokens, n_read: bytes, timings: { restore_ms: performance.now() - t0 } });
      } else {
        const n = slot.seq.tokens.length;
        await slot.seq.clear();
        slot.kv = { used: 0, allocated: 0 };
        sendJson(res, 200, { id_slot: id, n_erased: n });
      }
    } finally {
      pool.release(slot);
    }
  }

  const server = createServer((req, res) => {
    const ac = new AbortController();
    inFlight.add(ac);
    res.on('close', () => { inFlight.delete(ac); if (!res.writableFinished) ac.abort(); });
    const [url = '/', query = ''] = (req.url ?? '/').split('?');
    const handle = async () => {
      if (req.method === 'GET' && url === '/health') {
        sendJson(res, 200, { status: 'ok', slots: { total: slots.length, busy: pool.busy, waiting: pool.waiting }, ...stats });
      } else if (req.method === 'GET' && url === '/metrics') {
        const text = metrics();
        res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4', 'content-length': Buffer.byteLength(text) });
        res.end(text);
      } else if (req.method === 'GET' && url === '/slots') {
        sendJson(res, 200, slots.map((s) => ({
          id: s.id, n_ctx: context.contextSize, is_processing: s.busy, n_tokens: s.seq.tokens.length,
          kv_bytes: { used: s.kv.used, allocated: s.kv.allocated },
        })));
      } else if (req.method === 'POST' && url.startsWith('/slots/')) {
        await slotAction(req, res, ac, url.slice('/slots/'.length), new URLSearchParams(query).get('action') ?? '');
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
      if (url === '/v1/chat/completions' && !(err instanceof InvalidOptionsError)) stats.requests.failed++;  // (chat requests only: /health's counts)
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
