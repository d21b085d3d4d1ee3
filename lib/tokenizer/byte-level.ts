/*
 * GPT-2 byte-level alphabet: every byte 0..255 is given a printable Unicode character so that BPE vocabularies
 * can store arbitrary bytes as text. Printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') map to themselves;
 * the remaining 68 bytes map, in byte order, to U+0100.. (so ' ' becomes 'Ġ' and '\n' becomes 'Ċ').
 * Invariant: the mapping is a bijection, and every mapped character is a single UTF-16 code unit, so a
 * byte-level string has exactly one JS char per original byte.
 */

/** BYTE_TO_CHAR[b] is the one-char string that byte b is written as in a byte-level vocabulary. */
export const BYTE_TO_CHAR: readonly string[] = buildByteToChar();

/** CHAR_TO_BYTE[c] is the byte for char code c, or -1 when c is not in the byte-level alphabet. */
export const CHAR_TO_BYTE: Int16Array = buildCharToByte();

function isSelfMapped(b: number): boolean {
    return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
}

function buildByteToChar(): string[] {
    const table = new Array<string>(256);
    let next = 256;
    for (let b = 0; b < 256; b++) {
        table[b] = String.fromCharCode(isSelfMapped(b) ? b : next++);
    }
    return table;
}

function buildCharToByte(): Int16Array {
    const table = new Int16Array(512).fill(-1);
    for (let b = 0; b < 256; b++) table[BYTE_TO_CHAR[b]!.charCodeAt(0)] = b;
    return table;
}

/**
 * Writes the UTF-8 bytes of `text[start, end)` in the byte-level alphabet. Lone surrogates are written as
 * U+FFFD, as TextEncoder does, so the result always decodes back to valid UTF-8.
 */
export function encodeByteLevel(text: string, start = 0, end = text.length): string {
    let out = '';
    for (let i = start; i < end; i++) {
        let cp = text.charCodeAt(i);
        if (cp < 0x80) {
            out += BYTE_TO_CHAR[cp];
            continue;
        }
        if (cp >= 0xd800 && cp <= 0xdbff && i + 1 < end) {
            const lo = text.charCodeAt(i + 1);
            if (lo >= 0xdc00 && lo <= 0xdfff) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                i++;
            } else {
                cp = 0xfffd;
            }
        } else if (cp >= 0xd800 && cp <= 0xdfff) {
            cp = 0xfffd;
        }
        if (cp < 0x800) {
            out += BYTE_TO_CHAR[0xc0 | (cp >> 6)]! + BYTE_TO_CHAR[0x80 | (cp & 0x3f)]!;
        } else if (cp < 0x10000) {
            out += BYTE_TO_CHAR[0xe0 | (cp >> 12)]! + BYTE_TO_CHAR[0x80 | ((cp >> 6) & 0x3f)]! +
                BYTE_TO_CHAR[0x80 | (cp & 0x3f)]!;
        } else {
            out += BYTE_TO_CHAR[0xf0 | (cp >> 18)]! + BYTE_TO_CHAR[0x80 | ((cp >> 12) & 0x3f)]! +
                BYTE_TO_CHAR[0x80 | ((cp >> 6) & 0x3f)]! + BYTE_TO_CHAR[0x80 | (cp & 0x3f)]!;
        }
    }
    return out;
}

/**
 * Decodes a byte-level token text to its bytes. A character outside the alphabet (only possible in a malformed
 * vocabulary) is kept as its own UTF-8 bytes; llama.cpp writes an "[UNK_BYTE_0x..]" marker there instead.
 */
export function decodeByteLevel(text: string): Uint8Array {
    const out: number[] = [];
    for (let i = 0; i < text.length; i++) {
        const c = text.charCodeAt(i);
        const b = c < CHAR_TO_BYTE.length ? CHAR_TO_BYTE[c]! : -1;
        if (b >= 0) {
            out.push(b);
        } else {
            const cp = text.codePointAt(i)!;
            if (cp > 0xffff) i++;
            for (const byte of utf8Encoder.encode(String.fromCodePoint(cp))) out.push(byte);
        }
    }
    return Uint8Array.from(out);
}

const utf8Encoder = new TextEncoder();
