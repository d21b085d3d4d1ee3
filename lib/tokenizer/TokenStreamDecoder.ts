/*
 * Incremental detokenizer for streaming generation: each pushed token's piece (its bytes) is appended to a
 * streaming UTF-8 decoder, and only complete characters come out. A character split over several tokens
 * (byte-fallback `<0xF0><0x9F><0xA6><0x99>`, or a byte-level BPE token ending mid-character) is held back
 * until its last byte arrives. Invalid byte sequences become U+FFFD instead of being held forever.
 * Invariant: the concatenation of every push() and the final flush() equals decoding all pieces at once.
 */

/** Streams text out of token ids without ever emitting half a UTF-8 character. */
export class TokenStreamDecoder {
    private decoder = new TextDecoder('utf-8', { ignoreBOM: true });
    private pendingBytes = 0;

    /** @param pieceOf returns the bytes a token stands for (see `Tokenizer.tokenToPiece`). */
    constructor(private readonly pieceOf: (id: number) => Uint8Array) {}

    /**
     * Adds one token and returns the text it completes ('' while a multi-byte character is incomplete).
     * @example
     * const d = tokenizer.createDecoder();
     * for (const id of ids) process.stdout.write(d.push(id));
     * process.stdout.write(d.flush());
     */
    push(id: number): string {
        const piece = this.pieceOf(id);
        const text = this.decoder.decode(piece, { stream: true });
        this.pendingBytes = text.length > 0 ? trailingIncomplete(piece) : this.pendingBytes + piece.length;
        return text;
    }

    /** True while bytes of an incomplete character are buffered. */
    get hasPending(): boolean {
        return this.pendingBytes > 0;
    }

    /** Ends the stream: returns what is buffered (an incomplete character becomes U+FFFD) and resets. */
    flush(): string {
        const text = this.decoder.decode();
        this.decoder = new TextDecoder('utf-8', { ignoreBOM: true });
        this.pendingBytes = 0;
        return text;
    }
}

/** How many bytes at the end of `bytes` start a UTF-8 sequence that is not complete yet (0..3). */
function trailingIncomplete(bytes: Uint8Array): number {
    for (let k = 1; k <= Math.min(3, bytes.length); k++) {
        const b = bytes[bytes.length - k]!;
        if ((b & 0xc0) === 0x80) continue;               // continuation byte: keep looking for the lead
        const need = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
        return need > k ? k : 0;
    }
    return 0;
}
