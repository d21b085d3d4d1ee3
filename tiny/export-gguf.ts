// Exports the tiny reasoner to GGUF with the project's own writer (test/fixtures/gguf-writer.ts).
//   /usr/bin/python3 tiny/train.py --out tiny/checkpoints/run1 --export tiny/checkpoints/run1/weights
//   npx tsx tiny/export-gguf.ts --weights tiny/checkpoints/run1/weights --out tiny/model/thinkcache-tiny-reasoner.gguf [--type f16|f32|q8_0]
// Input: manifest.json (shape, vocabulary, tensor list) and one float32 .npy per tensor, as train.py writes them.
// Output: a `llama`-architecture GGUF as llama.cpp's converter writes one: RoPE NORM (train.py trains in that
// pair layout, so q/k are not permuted), untied output.weight, SentencePiece-style vocabulary
// (tokenizer.ggml.model "llama", one token per character, byte fallback, add_space_prefix false) whose
// <|im_start|>/<|im_end|> are CONTROL tokens and <think>/</think> USER_DEFINED (as in DeepSeek-R1-Distill / Qwen3),
// eos = <|im_end|>, and a ChatML chat template. 2-D tensors in the chosen type, norm weights F32.
import { mkdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { type GgmlTypeName, type GgufTensorSpec, type GgufValue, gv, writeGgufSync } from "../test/fixtures/gguf-writer.js";

export interface TinyManifest {
  arch: "llama";
  n_embd: number;
  n_layer: number;
  n_head: number;
  n_head_kv: number;
  n_ff: number;
  head_dim: number;
  rope_base: number;
  rms_eps: number;
  n_ctx_train: number;
  vocab: { tokens: string[]; types: number[]; scores: number[]; bos: number; eos: number; unk: number; chat_template: string };
  tensors: Array<{ name: string; file: string; shape: number[] }>;
  params: number;
  train: Record<string, unknown>;
}

/** A little-endian float32, C-order .npy file (what numpy.save writes for a float32 array). */
export function readNpyF32(path: string): { shape: number[]; data: Float32Array } {
  const buf = readFileSync(path);
  if (buf.toString("latin1", 1, 6) !== "NUMPY") throw new Error(`${path}: not a .npy file`);
  const major = buf[6]!;
  const hlen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const hstart = major === 1 ? 10 : 12;
  const header = buf.toString("latin1", hstart, hstart + hlen);
  if (!/'descr':\s*'<f4'/.test(header) || /'fortran_order':\s*True/.test(header)) throw new Error(`${path}: expected '<f4' C-order, got ${header}`);
  const m = /'shape':\s*\(([^)]*)\)/.exec(header);
  const shape = m![1]!.split(",").map((s) => s.trim()).filter((s) => s !== "").map(Number);
  const off = hstart + hlen;
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = buf.readFloatLE(off + 4 * i);
  return { shape, data };
}

const FILE_TYPE: Record<string, number> = { f32: 0, f16: 1, q8_0: 7 };
const GGML: Record<string, GgmlTypeName> = { f32: "F32", f16: "F16", q8_0: "Q8_0" };

export function exportTinyGguf(weightsDir: string, outPath: string, type: "f32" | "f16" | "q8_0" = "f16", name = "thinkcache-tiny-reasoner"): { bytes: number; params: number } {
  const m = JSON.parse(readFileSync(join(weightsDir, "manifest.json"), "utf8")) as TinyManifest;
  const v = m.vocab;
  const md: Array<[string, GgufValue]> = [
    ["general.architecture", gv.str("llama")],
    ["general.name", gv.str(name)],
    ["general.file_type", gv.u32(FILE_TYPE[type]!)],
    ["llama.context_length", gv.u32(m.n_ctx_train)],
    ["llama.embedding_length", gv.u32(m.n_embd)],
    ["llama.block_count", gv.u32(m.n_layer)],
    ["llama.feed_forward_length", gv.u32(m.n_ff)],
    ["llama.attention.head_count", gv.u32(m.n_head)],
    ["llama.attention.head_count_kv", gv.u32(m.n_head_kv)],
    ["llama.rope.freq_base", gv.f32(m.rope_base)],
    ["llama.rope.dimension_count", gv.u32(m.head_dim)],
    ["llama.attention.layer_norm_rms_epsilon", gv.f32(m.rms_eps)],
    ["llama.vocab_size", gv.u32(v.tokens.length)],
    ["tokenizer.ggml.model", gv.str("llama")],
    ["tokenizer.ggml.tokens", gv.arr("STRING", v.tokens)],
    ["tokenizer.ggml.scores", gv.arr("FLOAT32", v.scores)],
    ["tokenizer.ggml.token_type", gv.arr("INT32", v.types)],
    ["tokenizer.ggml.bos_token_id", gv.u32(v.bos)],
    ["tokenizer.ggml.eos_token_id", gv.u32(v.eos)],
    ["tokenizer.ggml.unknown_token_id", gv.u32(v.unk)],
    ["tokenizer.ggml.add_bos_token", gv.bool(true)],
    ["tokenizer.ggml.add_eos_token", gv.bool(false)],
    ["tokenizer.ggml.add_space_prefix", gv.bool(false)],
    ["tokenizer.chat_template", gv.str(v.chat_template)],
  ];
  if (type === "q8_0") md.push(["general.quantization_version", gv.u32(2)]);
  const tensors: GgufTensorSpec[] = [];
  for (const t of m.tensors) {
    const { shape, data } = readNpyF32(join(weightsDir, t.file));
    if (shape.join(",") !== t.shape.join(",")) throw new Error(`${t.name}: shape ${shape} != manifest ${t.shape}`);
    // torch Linear weight is (n_out, n_in) row-major = ggml ne [n_in, n_out]; embeddings (n_vocab, n_embd) likewise.
    const ne = [...shape].reverse();
    tensors.push({ name: t.name, ne, type: shape.length === 2 ? GGML[type]! : "F32", data });
  }
  // llama.cpp's tensor order: token_embd, blocks, output_norm, output (any order loads; keep the converter's).
  const rank = (n: string): number => (n === "token_embd.weight" ? -1 : n.startsWith("blk.") ? Number(n.split(".")[1]) : 1e9 + (n === "output.weight" ? 1 : 0));
  tensors.sort((a, b) => rank(a.name) - rank(b.name));
  const out = resolve(outPath);
  mkdirSync(dirname(out), { recursive: true });
  const tmp = `${out}.tmp-${process.pid}`;
  try {
    const layout = writeGgufSync(tmp, { version: 3, metadata: md, tensors });
    renameSync(tmp, out);
    return { bytes: layout.totalBytes, params: m.params };
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

function main(argv: string[]): void {
  let weights = "";
  let out = "";
  let type: "f32" | "f16" | "q8_0" = "f16";
  for (let i = 0; i < argv.length; i++) {
    const f = argv[i];
    const val = argv[++i];
    if (val === undefined) throw new Error(`${f} needs a value`);
    if (f === "--weights") weights = val;
    else if (f === "--out") out = val;
    else if (f === "--type") {
      if (!(val in FILE_TYPE)) throw new Error(`--type must be f32, f16 or q8_0`);
      type = val as typeof type;
    } else throw new Error(`unknown option ${f}`);
  }
  if (!weights || !out) throw new Error("usage: export-gguf.ts --weights DIR --out FILE.gguf [--type f16|f32|q8_0]");
  const r = exportTinyGguf(weights, out, type);
  console.log(JSON.stringify({ out, type, ...r }));
}

if (process.argv[1] && resolve(process.argv[1]).endsWith("export-gguf.ts")) {
  try {
    main(process.argv.slice(2));
  } catch (e) {
    console.error((e as Error).message);
    process.exit(1);
  }
}
