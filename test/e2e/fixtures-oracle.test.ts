// The synthetic fixtures are sane for llama.cpp: our GGUF writer round-trips every metadata type through an
// independent reader (node-llama-cpp's TS parser), the codecs match ggml's bit patterns, generation is deterministic,
// and llama.cpp (node-llama-cpp 3.21.1, CPU, one thread) loads every arch × type fixture, tokenizes with the intended
// vocab, and greedy-decodes >= 32 varied tokens. Our engine's parity tests build on the same helpers.
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readGgufFileInfo } from "node-llama-cpp";
import { afterAll, describe, expect, it } from "vitest";
import { type GgufSpec, type GgufTensorSpec, gv, writeGgufSync } from "../fixtures/gguf-writer.js";
import { ensureFixture, makeTinyGguf, TINY_ARCHES, TINY_WEIGHT_TYPES, type TinyArch, type TinyWeightType } from "../fixtures/make-tiny-gguf.js";
import {
  bf16BitsToF32, decodeBf16, decodeF16, dequantizeQ8_0, encodeF32, f16BitsToF32, f32ToBf16, f32ToF16, quantizeQ8_0,
} from "../fixtures/quantize.js";
import { disposeOracle, oracleDetokenize, oracleGreedy, oracleGreedyDetailed, oracleTokenize } from "../helpers/llama-oracle.js";

const PROMPT = "Once upon a time, there was a little robot";
const N_GREEDY = 32;
const TIMEOUT_MS = 120_000;

const tmp = mkdtempSync(join(tmpdir(), "thinkcache-fixtures-"));
afterAll(async () => {
  await disposeOracle();
  rmSync(tmp, { recursive: true, force: true });
});

const sha256 = (path: string): string => createHash("sha256").update(readFileSync(path)).digest("hex");

describe("quantize.ts codecs (ggml bit patterns)", () => {
  it("f32 -> f16 rounds to nearest even, with subnormals, overflow and NaN", () => {
    expect(f32ToF16(1)).toBe(0x3c00);
    expect(f32ToF16(-2)).toBe(0xc000);
    expect(f32ToF16(65504)).toBe(0x7bff);
    expect(f32ToF16(65519.99)).toBe(0x7bff);
    expect(f32ToF16(65520)).toBe(0x7c00); // ties to even rounds up into inf
    expect(f32ToF16(1 + 2 ** -11)).toBe(0x3c00); // tie, even stays
    expect(f32ToF16(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie, odd rounds up
    expect(f32ToF16(2 ** -24)).toBe(0x0001);
    expect(f32ToF16(2 ** -25)).toBe(0x0000); // tie with 0, even
    expect(f32ToF16(3 * 2 ** -26)).toBe(0x0001);
    expect(f32ToF16(2 ** -14 - 2 ** -25)).toBe(0x0400); // subnormal carries into the smallest normal
    expect(f32ToF16(-0)).toBe(0x8000);
    expect(f32ToF16(Infinity)).toBe(0x7c00);
    expect(Number.isNaN(f16BitsToF32(f32ToF16(NaN)))).toBe(true);
    for (let h = 0; h < 0x10000; h++) {
      const x = f16BitsToF32(h);
      if (!Number.isNaN(x)) expect(f32ToF16(x)).toBe(h); // every f16 value survives f16 -> f32 -> f16
    }
  });

  it("f32 -> bf16 rounds to nearest even", () => {
    expect(f32ToBf16(1)).toBe(0x3f80);
    expect(f32ToBf16(1 + 2 ** -8)).toBe(0x3f80); // tie, even stays
    expect(f32ToBf16(1 + 3 * 2 ** -8)).toBe(0x3f82); // tie, odd rounds up
    expect(f32ToBf16(-3.140625)).toBe(0xc049);
    expect(bf16BitsToF32(f32ToBf16(Infinity))).toBe(Infinity);
    expect(Number.isNaN(bf16BitsToF32(f32ToBf16(NaN)))).toBe(true);
  });

  it("Q8_0 follows quantize_row_q8_0_ref (roundf half away from zero, d stored as f16)", () => {
    const x = new Float32Array(64);
    for (let i = 0; i < 32; i++) x[i] = (i - 16) / 16; // amax 1: d = 1/127, id = 127
    x.set([-2.5, 127, 0.5, -0.5, 1.5], 32); // second block: amax 127, so d = 1 and x * id is exact
    const q = Array.from(quantizeQ8_0(x));
    const u16 = (o: number): number => q[o]! | (q[o + 1]! << 8);
    const i8 = (o: number): number => (q[o]! << 24) >> 24;
    expect(q.length).toBe(68);
    expect(u16(0)).toBe(f32ToF16(Math.fround(1 / 127)));
    expect(i8(2)).toBe(-127); // x = -1
    expect(i8(2 + 16)).toBe(0);
    expect(u16(34)).toBe(0x3c00);
    expect([36, 37, 38, 39, 40].map(i8)).toEqual([-3, 127, 1, -1, 2]); // roundf: half away from zero
    const y = dequantizeQ8_0(new Uint8Array(q), 64);
    for (let i = 0; i < 32; i++) expect(Math.abs(y[i]! - x[i]!)).toBeLessThanOrEqual(0.5 / 127 + 1e-3);
    expect(Array.from(quantizeQ8_0(new Float32Array(32))).every((b) => b === 0)).toBe(true); // d = 0 -> id = 0
  });
});

describe("gguf-writer.ts", () => {
  const tensors = (): GgufTensorSpec[] => {
    const v = new Float32Array(2 * 64).map((_, i) => Math.sin(i) * 3);
    return [
      { name: "a.f32", ne: [64, 2], type: "F32", data: v },
      { name: "b.f16", ne: [64, 2], type: "F16", data: v },
      { name: "c.bf16", ne: [128], type: "BF16", data: v },
      { name: "d.q8_0", ne: [64, 2], type: "Q8_0", data: v },
      { name: "e.raw_i8", ne: [3], type: 24, raw: new Uint8Array([1, 2, 255]) },
    ];
  };
  const metadata = (alignment: number): GgufSpec["metadata"] => [
    ["general.architecture", gv.str("roundtrip")],
    ["general.alignment", gv.u32(alignment)],
    ["rt.u8", gv.u8(255)],
    ["rt.i8", gv.i8(-128)],
    ["rt.u16", gv.u16(65535)],
    ["rt.i16", gv.i16(-32768)],
    ["rt.u32", gv.u32(4294967295)],
    ["rt.i32", gv.i32(-2147483648)],
    ["rt.f32", gv.f32(0.1)],
    ["rt.f64", gv.f64(0.1)],
    ["rt.u64", gv.u64(2n ** 64n - 1n)],
    ["rt.i64", gv.i64(-(2n ** 63n))],
    ["rt.bool_t", gv.bool(true)],
    ["rt.bool_f", gv.bool(false)],
    ["rt.str", gv.str("héllo ▁wörld 🦙")],
    ["rt.str_empty", gv.str("")],
    ["rt.arr.u8", gv.arr("UINT8", [0, 255])],
    ["rt.arr.i8", gv.arr("INT8", [-128, 127])],
    ["rt.arr.u16", gv.arr("UINT16", [0, 65535])],
    ["rt.arr.i16", gv.arr("INT16", [-32768, 32767])],
    ["rt.arr.u32", gv.arr("UINT32", [0, 4294967295])],
    ["rt.arr.i32", gv.arr("INT32", [-2147483648, 7])],
    ["rt.arr.f32", gv.arr("FLOAT32", [1.5, -0.25])],
    ["rt.arr.f64", gv.arr("FLOAT64", [Math.PI, -1e300])],
    ["rt.arr.u64", gv.arr("UINT64", [0n, 2n ** 64n - 1n])],
    ["rt.arr.i64", gv.arr("INT64", [-(2n ** 63n), 2n ** 63n - 1n])],
    ["rt.arr.bool", gv.arr("BOOL", [true, false, true])],
    ["rt.arr.str", gv.arr("STRING", ["a", "", "ü▁"])],
    ["rt.arr.empty", gv.arr("INT32", [])],
    ["rt.arr.nested", gv.arr("ARRAY", [gv.arr("STRING", ["x", "y"]), gv.arr("ARRAY", [gv.arr("INT16", [1, -2]), gv.arr("BOOL", [])])])],
  ];

  for (const [version, alignment] of [[3, 32], [2, 64], [3, 1]] as const) {
    it(`round-trips every metadata type and tensor layout (v${version}, alignment ${alignment})`, async () => {
      const path = join(tmp, `rt-v${version}-a${alignment}.gguf`);
      const spec: GgufSpec = { version, metadata: metadata(alignment), tensors: tensors() };
      const layout = writeGgufSync(path, spec);
      const file = readFileSync(path);
      expect(file.length).toBe(layout.totalBytes);
      expect(file.subarray(0, 4).toString("latin1")).toBe("GGUF");
      expect(file.readUInt32LE(4)).toBe(version);

      const info = await readGgufFileInfo(path, { logWarnings: false, sourceType: "filesystem" });
      const rt = (info.metadata as any).rt;
      expect(info.version).toBe(version);
      expect((info.metadata as any).general.alignment).toBe(alignment);
      expect(rt).toMatchObject({
        u8: 255, i8: -128, u16: 65535, i16: -32768, u32: 4294967295, i32: -2147483648, f32: Math.fround(0.1), f64: 0.1,
        u64: 2n ** 64n - 1n, i64: -(2n ** 63n), bool_t: true, bool_f: false, str: "héllo ▁wörld 🦙", str_empty: "",
      });
      expect(rt.arr).toEqual({
        u8: [0, 255], i8: [-128, 127], u16: [0, 65535], i16: [-32768, 32767], u32: [0, 4294967295], i32: [-2147483648, 7],
        f32: [1.5, -0.25], f64: [Math.PI, -1e300], u64: [0n, 2n ** 64n - 1n], i64: [-(2n ** 63n), 2n ** 63n - 1n],
        bool: [true, false, true], str: ["a", "", "ü▁"], empty: [], nested: [["x", "y"], [[1, -2], []]],
      });

      // Tensor infos and data, read back independently: the data section starts at the aligned end of the infos.
      const ti = info.tensorInfo!;
      expect(ti.map((t) => [t.name, t.dimensions.map(Number), t.ggmlType])).toEqual(
        spec.tensors.map((t) => [t.name, t.ne, typeof t.type === "number" ? t.type : { F32: 0, F16: 1, BF16: 30, Q8_0: 8 }[t.type]]));
      const dataStart = Math.ceil(Number(info.infoEndOffset) / alignment) * alignment;
      expect(dataStart).toBe(layout.dataOffset);
      for (const t of ti) expect(Number(t.offset) % alignment).toBe(0);
      const bytesOf = (i: number): Uint8Array => {
        const o = dataStart + Number(ti[i]!.offset);
        return new Uint8Array(file.buffer, file.byteOffset + o, layout.tensorBytes[i]);
      };
      const src = spec.tensors[0]!.data!;
      expect(Buffer.from(bytesOf(0)).equals(Buffer.from(encodeF32(src)))).toBe(true);
      expect(Array.from(decodeF16(bytesOf(1)))).toEqual(Array.from(src, (x) => f16BitsToF32(f32ToF16(x))));
      expect(Array.from(decodeBf16(bytesOf(2)))).toEqual(Array.from(src, (x) => bf16BitsToF32(f32ToBf16(x))));
      expect(Buffer.from(bytesOf(3)).equals(Buffer.from(quantizeQ8_0(src)))).toBe(true);
      expect(Array.from(bytesOf(4))).toEqual([1, 2, 255]);
      expect(file.length % alignment).toBe(0); // padded after the last tensor too
    });
  }

  it("rejects bad input with a message naming the problem", () => {
    const bad = (spec: Partial<GgufSpec>) => () => writeGgufSync(join(tmp, "bad.gguf"), { metadata: [], tensors: [], ...spec });
    expect(bad({ tensors: [{ name: "q", ne: [30], type: "Q8_0", data: new Float32Array(30) }] })).toThrow(/ne\[0\] % 32/);
    expect(bad({ tensors: [{ name: "x", ne: [4], type: "F32", data: new Float32Array(3) }] })).toThrow(/x has 3 values/);
    expect(bad({ metadata: [["general.alignment", gv.u32(24)]] })).toThrow(/power of two/);
    expect(bad({ metadata: [["k", gv.u8(1)], ["k", gv.u8(2)]] })).toThrow(/duplicate metadata key k/);
  });
});

describe("make-tiny-gguf.ts", () => {
  it("is deterministic: same seed, same bytes; another seed, other weights", () => {
    const a = makeTinyGguf({ arch: "llama", type: "q8_0", seed: 7, outPath: join(tmp, "a.gguf") });
    const b = makeTinyGguf({ arch: "llama", type: "q8_0", seed: 7, outPath: join(tmp, "b.gguf") });
    const c = makeTinyGguf({ arch: "llama", type: "q8_0", seed: 8, outPath: join(tmp, "c.gguf") });
    expect(a.bytes).toBe(b.bytes);
    expect(sha256(a.path)).toBe(sha256(b.path));
    expect(sha256(a.path)).not.toBe(sha256(c.path));
  });

  it("ensureFixture caches by content: a second call returns the same file untouched", () => {
    const p1 = ensureFixture("llama", "f16");
    const h1 = sha256(p1);
    expect(ensureFixture("llama", "f16")).toBe(p1);
    expect(sha256(p1)).toBe(h1);
    expect(ensureFixture("llama", "f16", { seed: 2 })).not.toBe(p1);
  });

  it("writes llama.cpp's metadata keys and tensor names", async () => {
    const info = await readGgufFileInfo(ensureFixture("qwen3", "q8_0"), { logWarnings: false, ignoreKeys: ["tokenizer.ggml.merges", "tokenizer.chat_template"] });
    const m = info.metadata as any;
    expect(m.general.architecture).toBe("qwen3");
    expect(m.qwen3).toMatchObject({
      context_length: 4096, embedding_length: 64, block_count: 2, feed_forward_length: 128,
      attention: { head_count: 4, head_count_kv: 2, key_length: 32, value_length: 32 },
    });
    const tok = m.tokenizer.ggml;
    expect(tok).toMatchObject({ model: "gpt2", pre: "qwen2", bos_token_id: 151643, eos_token_id: 151645, padding_token_id: 151643, add_bos_token: false });
    expect(tok.tokens.length).toBe(151936);
    expect(tok.tokens[151645]).toBe("<|im_end|>");
    expect(tok.tokens[151700]).toBe("[PAD151700]");
    expect([tok.token_type[0], tok.token_type[151644], tok.token_type[151667], tok.token_type[151700]]).toEqual([1, 3, 4, 5]);
    const names = info.tensorInfo!.map((t) => t.name);
    expect(names).toContain("blk.1.attn_q_norm.weight");
    expect(names).not.toContain("output.weight");
    const byName = new Map(info.tensorInfo!.map((t) => [t.name, t]));
    expect(byName.get("blk.0.attn_q.weight")!.dimensions.map(Number)).toEqual([64, 128]); // ne = [n_in, n_out]
    expect(byName.get("blk.0.attn_output.weight")!.dimensions.map(Number)).toEqual([128, 64]);
    expect(byName.get("blk.0.attn_k_norm.weight")!.ggmlType).toBe(0); // norms stay F32
    expect(byName.get("token_embd.weight")!.ggmlType).toBe(8);
  });
});

describe.each(TINY_ARCHES.flatMap((a) => TINY_WEIGHT_TYPES.map((t) => [a, t] as [TinyArch, TinyWeightType])))("fixture %s %s in llama.cpp", (arch, type) => {
  it(`greedy-decodes ${N_GREEDY} varied tokens`, async () => {
    const path = ensureFixture(arch, type);
    const prompt = await oracleTokenize(path, PROMPT);
    expect(prompt.length).toBeGreaterThan(3);
    // llama.cpp keeps the SentencePiece space prefix when detokenizing without remove_special.
    expect((await oracleDetokenize(path, prompt)).replace(arch === "llama" ? /^ / : /^$/, "")).toBe(PROMPT);
    const tokens = await oracleGreedy(path, prompt, N_GREEDY);
    expect(tokens).toHaveLength(N_GREEDY);
    expect(new Set(tokens).size).toBeGreaterThanOrEqual(8);
  }, TIMEOUT_MS);
});

describe("fixture tokenizers in llama.cpp", () => {
  it("qwen fixtures carry the real Qwen vocabulary", async () => {
    const path = ensureFixture("qwen2", "q8_0");
    expect(await oracleTokenize(path, "Hello world")).toEqual([9707, 1879]);
    expect(await oracleTokenize(path, "<|im_start|>user\n", { special: true })).toEqual([151644, 872, 198]);
    expect(await oracleTokenize(path, "<|im_start|>", { special: false })).not.toContain(151644);
  }, TIMEOUT_MS);

  it("the llama fixture is SentencePiece with BOS and byte fallback", async () => {
    const path = ensureFixture("llama", "f32");
    const t = await oracleTokenize(path, "the sun é");
    expect(t[0]).toBe(1); // BOS
    expect(t.some((id) => id >= 3 && id < 3 + 256)).toBe(true); // é has no piece: <0xC3><0xA9>
    expect(await oracleDetokenize(path, t)).toBe(" the sun é"); // the space prefix stays (remove_special is off)
  }, TIMEOUT_MS);

  it("GGUF v2 with alignment 64 decodes exactly like v3 with the default alignment", async () => {
    const v3 = ensureFixture("llama", "q8_0");
    const v2 = ensureFixture("llama", "q8_0", { ggufVersion: 2, alignment: 64 });
    const prompt = await oracleTokenize(v3, PROMPT);
    expect(await oracleGreedy(v2, prompt, 16)).toEqual(await oracleGreedy(v3, prompt, 16));
  }, TIMEOUT_MS);
});

describe("greedy margins (top-1 minus top-2 logit), f32 fixtures", () => {
  it.each(TINY_ARCHES)("%s: no exact ties in the first 32 steps", async (arch) => {
    const path = ensureFixture(arch, "f32");
    const steps = await oracleGreedyDetailed(path, await oracleTokenize(path, PROMPT), N_GREEDY, { topK: 2 });
    const margins = steps.map((s) => s.margin).sort((a, b) => a - b);
    console.log(`[fixtures-oracle] ${arch} f32 greedy margins: min ${margins[0]!.toFixed(4)}, median ${margins[margins.length >> 1]!.toFixed(3)}`);
    expect(margins[0]).toBeGreaterThan(1e-3);
  }, TIMEOUT_MS);
});
