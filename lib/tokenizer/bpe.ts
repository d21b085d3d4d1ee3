/*
 * Byte-level BPE (`tokenizer.ggml.model = "gpt2"`), as llama.cpp's `llm_tokenizer_bpe_session`: pre-tokenize
 * with the regex list of `tokenizer.ggml.pre`, write each pre-token's UTF-8 bytes in the byte-level alphabet,
 * then repeatedly merge the adjacent pair with the lowest merge rank (ties: leftmost), and emit each final
 * symbol's token id. With `ignore_merges` (llama3), a pre-token that is a whole vocabulary token is emitted
 * directly, as HF tokenizers do.
 * Invariants: the merge-rank map is built once, on first use; identical input gives identical output, so whole
 * pre-tokens are memoised in a bounded cache.
 * Speed: symbols carry token ids and pair ranks are memoised by id pair (PairCache), so the "left right"
 * string is built once per distinct pair, not once per lookup. This is exact: if a symbol is not a token
 * (never the case in real vocabularies) the word is redone on llama.cpp's string-keyed path.
 */
import { BYTE_TO_CHAR, CHAR_TO_BYTE, encodeByteLevel } from './byte-level.js';
import { preTokenize } from './pre-tokenizers.js';
import type { Vocab } from './vocab.js';
import { PriorityQueue } from './heap.js';
import { runSteps, runStepsAsync, type Steps } from '../steps.js';

const WORDS_PER_STEP = 512;

interface Bigram {
    left: number;
    right: number;
    rank: number;
    size: number;  // merged length when queued; a mismatch later means the pair is stale
}

/** Min-heap on rank, then on left index (llama.cpp `llm_bigram_bpe::comparator`). */
function before(a: Bigram, b: Bigram): boolean {
    return a.rank < b.rank || (a.rank === b.rank && a.left < b.left);
}


const NO_MERGE = -1;
const UNKNOWN = -2;

/**
 * Memo of (left id, right id) -> merge rank or NO_MERGE: an open-addressing hash table in typed arrays, cleared
 * when half full so it stays bounded. (A Map keyed by left * n_vocab + right is far slower: non-Smi keys.)
 */
class PairCache {
    private readonly mask: number;
    private readonly lefts: Int32Array;   // [capacity] -1 = empty slot
    private readonly rights: Int32Array;  // [capacity]
    private readonly values: Int32Array;  // [capacity]
    private count = 0;

    constructor(capacity: number) {
        this.mask = capacity - 1;
        this.lefts = new Int32Array(capacity).fill(-1);
        this.rights = new Int32Array(capacity);
        this.values = new Int32Array(capacity);
    }

    private slot(left: number, right: number): number {
        return (Math.imul(left, 0x9e3779b1) ^ Math.imul(right + 0x7f4a7c15, 0x85ebca77)) & this.mask;
    }

    /** The memoised value, or UNKNOWN. */
    get(left: number, right: number): number {
        for (let i = this.slot(left, right); ; i = (i + 1) & this.mask) {
            const l = this.lefts[i]!;
            if (l === -1) return UNKNOWN;
            if (l === left && this.rights[i] === right) return this.values[i]!;
        }
    }

    /** note: call only after get() returned UNKNOWN for this pair. */
    set(left: number, right: number, value: number): void {
        if (this.count * 2 >= this.lefts.length) {
            this.lefts.fill(-1);
            this.count = 0;
        }
        let i = this.slot(left, right);
        while (this.lefts[i] !== -1) i = (i + 1) & this.mask;
        this.lefts[i] = left;
        this.rights[i] = right;
        this.values[i] = value;
        this.count++;
    }
}

const WORD_CACHE_LIMIT = 50_000;
const PAIR_CACHE_CAPACITY = 1 << 18;

export class BpeEncoder {
    private ranksCache: Map<string, number> | null = null;
    private readonly pairCache = new PairCache(PAIR_CACHE_CAPACITY);
    private mergeResult: Int32Array | null = null;  // [n_merges] id of left+right, -1 if none, UNKNOWN until needed
    private readonly byteCharIds: Int32Array;       // [256] token id of each byte-level char, -1 if none
    private readonly wordCache = new Map<string, readonly number[]>();
    private readonly queue = new PriorityQueue<Bigram>(before);
    // per-word symbol arrays, grown on demand and reused
    private len = new Int32Array(64);
    private prev = new Int32Array(64);
    private next = new Int32Array(64);
    private ids = new Int32Array(64);

    constructor(private readonly vocab: Vocab) {
        this.byteCharIds = new Int32Array(256);
        for (let b = 0; b < 256; b++) this.byteCharIds[b] = vocab.tokenToId.get(BYTE_TO_CHAR[b]!) ?? -1;
    }

    /** Merge ranks keyed "left right", as written in `tokenizer.ggml.merges`; the first occurrence wins. */
    private get ranks(): Map<string, number> {
        if (this.ranksCache === null) runSteps(this.rankSteps());
        return this.ranksCache!;
    }

    /** Builds the merge ranks now, with turns for the event loop (the first encode() would otherwise build them at once: tokenizer.test.ts prints the cost). */
    async prepareAsync(sliceMs = 4): Promise<void> {
        if (this.ranksCache === null) await runStepsAsync(this.rankSteps(), sliceMs);
    }

    private *rankSteps(): Steps<void> {
        const ranks = new Map<string, number>();
        const merges = this.vocab.merges;
        for (let i = 0; i < merges.length; i++) {
            const merge = merges[i]!;
            // llama.cpp splits at the first space after position 0 and skips merges without one
            if (merge.indexOf(' ', 1) >= 0 && !ranks.has(merge)) ranks.set(merge, i);
            if (i % 4096 === 4095) yield;
        }
        if (this.ranksCache !== null) return;  // (built meanwhile by a synchronous encode)
        this.ranksCache = ranks;
        this.mergeResult = new Int32Array(merges.length).fill(UNKNOWN);
    }

    /** Tokenizes raw text (no special tokens in it) and appends the ids to `out`. */
    encode(text: string, out: number[]): void {
        for (const _ of this.encodeSteps(text, out)) { /* (all at once) */ }
    }

    /**
     * encode() in steps: yields after every `WORDS_PER_STEP` pre-tokens, so a caller can give the event loop a
     * turn between them (Tokenizer.encodeAsync). The ids are the same: words are merged independently.
     */
    *encodeSteps(text: string, out: number[]): Generator<void, void, void> {
        const ends = preTokenize(text, this.vocab.preTokenizer!.regexes);
        let start = 0, n = 0;
        for (const end of ends) {
            const word = encodeByteLevel(text, start, end);
            start = end;
            let ids = this.wordCache.get(word);
            if (ids === undefined) {
                ids = this.encodeWord(word);
                if (this.wordCache.size >= WORD_CACHE_LIMIT) this.wordCache.clear();
                this.wordCache.set(word, ids);
            }
            for (const id of ids) out.push(id);
            if (++n % WORDS_PER_STEP === 0) yield;
        }
    }

    /** BPE-merges one byte-level pre-token (one char per byte). */
    private encodeWord(word: string): number[] {
        const vocab = this.vocab;
        const n = word.length;
        if (vocab.ignoreMerges) {
            const whole = vocab.tokenToId.get(word);
            if (whole !== undefined) return [whole];
        }
        if (n === 1) return this.emitSymbol(word);
        if (this.len.length < n) {
            const cap = Math.max(n, this.len.length * 2);
            this.len = new Int32Array(cap);
            this.prev = new Int32Array(cap);
            this.next = new Int32Array(cap);
            this.ids = new Int32Array(cap);
        }
        return this.encodeWordById(word) ?? this.encodeWordByText(word);
    }

    /** The id path (see the header); returns null when a symbol is not a token, so the text path must run. */
    private encodeWordById(word: string): number[] | null {
        const n = word.length;
        const { len, prev, next, ids } = this;
        const texts = this.vocab.texts;
        for (let i = 0; i < n; i++) {
            const c = word.charCodeAt(i);
            const byte = c < CHAR_TO_BYTE.length ? CHAR_TO_BYTE[c]! : -1;
            const id = byte >= 0 ? this.byteCharIds[byte]! : -1;
            if (id < 0) return null;
            len[i] = 1;
            prev[i] = i - 1;
            next[i] = i + 1 < n ? i + 1 : -1;
            ids[i] = id;
        }
        const ranks = this.ranks;
        const mergeResult = this.mergeResult!;
        const pairs = this.pairCache;
        const queue = this.queue;
        queue.clear();
        const addBigram = (left: number, right: number): void => {
            if (left === -1 || right === -1) return;
            const l = ids[left]!;
            const r = ids[right]!;
            let rank = pairs.get(l, r);
            if (rank === UNKNOWN) {
                rank = ranks.get(`${texts[l]} ${texts[r]}`) ?? NO_MERGE;
                pairs.set(l, r, rank);
            }
            if (rank === NO_MERGE) return;
            queue.push({ left, right, rank, size: len[left]! + len[right]! });
        };
        for (let i = 1; i < n; i++) addBigram(i - 1, i);
        while (queue.size > 0) {
            const bigram = queue.pop();
            const l = bigram.left;
            const r = bigram.right;
            if (len[l] === 0 || len[r] === 0 || len[l]! + len[r]! !== bigram.size) continue;
            let merged = mergeResult[bigram.rank]!;
            if (merged === UNKNOWN) {
                merged = this.vocab.tokenToId.get(texts[ids[l]!]! + texts[ids[r]!]!) ?? -1;
                mergeResult[bigram.rank] = merged;
            }
            if (merged < 0) return null;
            len[l] = len[l]! + len[r]!;
            len[r] = 0;
            ids[l] = merged;
            next[l] = next[r]!;
            if (next[r]! >= 0) prev[next[r]!] = l;
            addBigram(prev[l]!, l);
            addBigram(l, next[l]!);
        }
        const out: number[] = [];
        for (let i = 0; i !== -1; i = next[i]!) out.push(ids[i]!);
        return out;
    }

    /** llama.cpp's path: symbols are substrings, pairs are looked up by their "left right" text. */
    private encodeWordByText(word: string): number[] {
        const n = word.length;
        const { len, prev, next } = this;
        for (let i = 0; i < n; i++) {
            len[i] = 1;
            prev[i] = i - 1;
            next[i] = i + 1 < n ? i + 1 : -1;
        }
        // symbol i starts at offset i: a symbol only grows rightwards, so its start never moves
        const ranks = this.ranks;
        const queue = this.queue;
        queue.clear();
        const addBigram = (left: number, right: number): void => {
            if (left === -1 || right === -1) return;
            const rank = ranks.get(`${word.substr(left, len[left]!)} ${word.substr(right, len[right]!)}`);
            if (rank === undefined) return;
            queue.push({ left, right, rank, size: len[left]! + len[right]! });
        };
        for (let i = 1; i < n; i++) addBigram(i - 1, i);
        while (queue.size > 0) {
            const bigram = queue.pop();
            const l = bigram.left;
            const r = bigram.right;
            if (len[l] === 0 || len[r] === 0 || len[l]! + len[r]! !== bigram.size) continue;
            len[l] = len[l]! + len[r]!;
            len[r] = 0;
            next[l] = next[r]!;
            if (next[r]! >= 0) prev[next[r]!] = l;
            addBigram(prev[l]!, l);
            addBigram(l, next[l]!);
        }
        const ids: number[] = [];
        for (let i = 0; i !== -1; i = next[i]!) {
            for (const id of this.emitSymbol(word.substr(i, len[i]!))) ids.push(id);
        }
        return ids;
    }

    /**
     * A final symbol's token. If it is not one, llama.cpp looks up each UTF-8 byte of the byte-level text as a
     * one-byte token and drops the bytes that are not: only ASCII characters can match that way.
     */
    private emitSymbol(symbol: string): number[] {
        const id = this.vocab.tokenToId.get(symbol);
        if (id !== undefined) return [id];
        const ids: number[] = [];
        for (let i = 0; i < symbol.length; i++) {
            if (symbol.charCodeAt(i) >= 0x80) continue;
            const single = this.vocab.tokenToId.get(symbol[i]!);
            if (single !== undefined) ids.push(single);
        }
        return ids;
    }
}

