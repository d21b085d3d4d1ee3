/*
 * SentencePiece-style BPE (`tokenizer.ggml.model = "llama"`), as llama.cpp's `llm_tokenizer_spm_session`:
 * start from one symbol per Unicode code point, repeatedly merge the adjacent pair whose concatenation is the
 * vocabulary token with the highest score (ties: leftmost pair first), then emit each final symbol as its
 * token or, when it is not in the vocabulary, as byte-fallback tokens `<0xXX>` of its UTF-8 bytes.
 * Invariant: the input is already escaped (' ' -> '▁') and space-prefixed by the caller.
 * Every merged symbol is a vocabulary token, so llama.cpp's rev_merge re-segmentation never triggers and is
 * not needed here.
 */
import { TOKEN_ATTR, type Vocab } from './vocab.js';
import { PriorityQueue } from './heap.js';

interface Bigram {
    left: number;
    right: number;
    score: number;
    size: number;  // UTF-16 length of the merged text when queued; a mismatch later means the pair is stale
}

/** Max-heap on score, then min on left index (llama.cpp `llm_bigram_spm::comparator`). */
function higher(a: Bigram, b: Bigram): boolean {
    return a.score > b.score || (a.score === b.score && a.left < b.left);
}


/** The `<0xXX>` token of a byte, else the byte as a one-char token, else UNK (llama.cpp throws there). */
export function spmByteToToken(vocab: Vocab, byte: number): number {
    const hex = byte.toString(16).toUpperCase().padStart(2, '0');
    const id = vocab.tokenToId.get(`<0x${hex}>`) ?? (byte < 0x80 ? vocab.tokenToId.get(String.fromCharCode(byte)) : undefined);
    if (id !== undefined) return id;
    if (vocab.special.unk !== null) return vocab.special.unk;
    throw new Error(`spm: vocabulary has no byte-fallback token <0x${hex}> and no UNK token`);
}

const utf8Encoder = new TextEncoder();

/** Tokenizes escaped text (spaces already '▁') and appends the ids to `out`. */
export function spmTokenize(vocab: Vocab, text: string, out: number[]): void {
    // symbols: [start, start + len) in `text`, linked list through prev/next
    const n = text.length;
    const start = new Int32Array(n);
    const len = new Int32Array(n);
    const prev = new Int32Array(n);
    const next = new Int32Array(n);
    let count = 0;
    for (let i = 0; i < n;) {
        const c = text.charCodeAt(i);
        const w = c >= 0xd800 && c <= 0xdbff && i + 1 < n ? 2 : 1;
        start[count] = i;
        len[count] = w;
        prev[count] = count - 1;
        next[count] = i + w < n ? count + 1 : -1;
        count++;
        i += w;
    }
    if (count === 0) return;

    const queue = new PriorityQueue<Bigram>(higher);
    const tryAddBigram = (left: number, right: number): void => {
        if (left === -1 || right === -1) return;
        const size = len[left]! + len[right]!;
        const id = vocab.tokenToId.get(text.substr(start[left]!, size));
        if (id === undefined) return;
        queue.push({ left, right, score: vocab.scores[id]!, size });
    };
    for (let i = 1; i < count; i++) tryAddBigram(i - 1, i);

    while (queue.size > 0) {
        const bigram = queue.pop();
        const l = bigram.left;
        const r = bigram.right;
        if (len[l] === 0 || len[r] === 0 || len[l]! + len[r]! !== bigram.size) continue;
        len[l] = len[l]! + len[r]!;
        len[r] = 0;
        next[l] = next[r]!;
        if (next[r]! >= 0) prev[next[r]!] = l;
        tryAddBigram(prev[l]!, l);
        tryAddBigram(l, next[l]!);
    }

    for (let i = 0; i !== -1; i = next[i]!) {
        const piece = text.substr(start[i]!, len[i]!);
        const id = vocab.tokenToId.get(piece);
        if (id !== undefined) {
            out.push(id);
            continue;
        }
        for (const byte of utf8Encoder.encode(piece)) out.push(spmByteToToken(vocab, byte));
    }
}

/** The byte a BYTE-type SPM token `<0xXX>` stands for. */
export function spmTokenToByte(vocab: Vocab, id: number): number {
    const text = vocab.texts[id]!;
    if ((vocab.attrs[id]! & TOKEN_ATTR.BYTE) === 0) throw new Error(`spm: token ${id} is not a byte token`);
    return parseInt(text.substr(3, 2), 16);
}
