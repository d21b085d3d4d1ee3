// Accuracy of the tiny reasoner on the held-out tasks (ALGORITHMS.md §5 P2, free-running greedy), through our
// engine, optionally compared with llama.cpp (node-llama-cpp 3.21.1, the oracle of test/helpers/llama-oracle.ts).
//
//   npx tsx tiny/eval.ts --model tiny/model/thinkcache-tiny-reasoner.gguf [--n 100] [--tasks add,chase,cups]
//        [--llama 5] [--threads 2] [--max-tokens 2048] [--json out.json]
//   npx tsx tiny/eval.ts --model M.gguf --check-tokenizer tokens.json   (from `tasks.py --dump-tokens tokens.json`)
//
// Each problem: the chat template with the generation prompt (BOS + <|im_start|>user ... <|im_start|>assistant\n),
// greedy decoding until <|im_end|> (EOG) or --max-tokens; the answer is the text after </think>, trimmed, compared
// exactly with the reference. --llama N runs the first N problems of each task through llama.cpp as well, with the
// same prompt tokens, and reports whether the answers and the generated tokens agree.
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { loadModel } from "../lib/index.js";
import { disposeOracle, oracleModel, oracleTokenize } from "../test/helpers/llama-oracle.js";

const here = dirname(fileURLToPath(import.meta.url));
const TASKS = ["add", "chase", "cups"] as const;

interface Problem { task: string; seed: number; question: string; answer: string; chain: string }

function loadTests(task: string, n: number): Problem[] {
  const lines = readFileSync(join(here, "data", `test-${task}.jsonl`), "utf8").split("\n").filter((l) => l.trim() !== "");
  return lines.slice(0, n).map((l) => JSON.parse(l) as Problem);
}

/** The answer after the last </think>, up to the end of the text (EOG tokens are not rendered). */
export function extractAnswer(text: string): string | null {
  const i = text.lastIndexOf("</think>");
  if (i < 0) return null;
  return text.slice(i + "</think>".length).replace(/<\|im_end\|>[\s\S]*$/, "").trim();
}

async function oracleGenerate(modelPath: string, prompt: number[], maxTokens: number, eog: Set<number>): Promise<number[]> {
  const model = await oracleModel(modelPath);
  const contextSize = Math.ceil((prompt.length + maxTokens + 1) / 64) * 64;
  const context = await model.createContext({ contextSize, batchSize: contextSize, threads: 1, sequences: 1 });
  try {
    const out: number[] = [];
    for await (const t of context.getSequence().evaluate(prompt as any, { temperature: 0, yieldEogToken: true })) {
      out.push(t);
      if (eog.has(t) || out.length >= maxTokens) break;
    }
    return out;
  } finally {
    await context.dispose();
  }
}

async function main(argv: string[]): Promise<void> {
  const opt: Record<string, string> = {};
  for (let i = 0; i < argv.length; i += 2) opt[argv[i]!.replace(/^--/, "")] = argv[i + 1] ?? "";
  const modelPath = opt.model ?? join(here, "model", "thinkcache-tiny-reasoner.gguf");
  const n = Number(opt.n ?? 100);
  const tasks = (opt.tasks ?? TASKS.join(",")).split(",");
  const nLlama = Number(opt.llama ?? 0);
  const maxTokens = Number(opt["max-tokens"] ?? 2048);
  const threads = Number(opt.threads ?? 2);

  await using model = await loadModel({ path: modelPath });
  const tok = model.tokenizer;
  const eog = new Set<number>([tok.eos!, tok.encode("<|im_end|>", { addBos: false, parseSpecial: true })[0]!]);

  if (opt["check-tokenizer"]) {
    const dump = JSON.parse(readFileSync(opt["check-tokenizer"], "utf8")) as { rows: Array<{ task: string; text: string; ids: number[] }> };
    let ok = 0, okLlama = 0, okDecode = 0;
    for (const r of dump.rows) {
      const ours = tok.encode(r.text, { addBos: false, parseSpecial: true });
      const llama = await oracleTokenize(modelPath, r.text, { addBos: false, special: true });
      const same = ours.length === r.ids.length && ours.every((t, i) => t === r.ids[i]);
      const sameLlama = llama.length === r.ids.length && llama.every((t, i) => t === r.ids[i]);
      const dec = tok.decode(r.ids, { special: true } as any);
      ok += same ? 1 : 0;
      okLlama += sameLlama ? 1 : 0;
      okDecode += dec === r.text ? 1 : 0;
      if (!same || !sameLlama) console.log(`MISMATCH ${r.task} ${JSON.stringify(r.text.slice(0, 60))} python ${r.ids.length} ours ${ours.length} llama ${llama.length}`);
    }
    console.log(`tokenizer: python == lib ${ok}/${dump.rows.length}, python == llama.cpp ${okLlama}/${dump.rows.length}, lib decode round trip ${okDecode}/${dump.rows.length}`);
    await disposeOracle();
    return;
  }

  await using ctx = await model.createContext({ contextSize: 4096, threads });
  const rows: Array<Record<string, unknown>> = [];
  const table: Array<Record<string, unknown>> = [];
  for (const task of tasks) {
    const probs = loadTests(task, n);
    let correct = 0, genTokens = 0, hitMax = 0, llamaSame = 0, llamaAnsSame = 0, llamaCorrect = 0, llamaRuns = 0;
    const t0 = performance.now();
    for (let pi = 0; pi < probs.length; pi++) {
      const p = probs[pi]!;
      const promptText = model.applyChatTemplate([{ role: "user", content: p.question }], { addGenerationPrompt: true });
      const prompt = tok.encode(promptText, { addBos: false, parseSpecial: true }); // the template writes <s> itself
      const seq = ctx.acquireSequence();
      let tokens: number[] = [];
      try {
        for await (const ev of seq.generate(prompt, { maxTokens, stopAtEog: true })) {
          if (ev.type === "finish") tokens = ev.tokens;
        }
      } finally {
        await seq.dispose();
      }
      const text = tok.decode(tokens.filter((t) => !eog.has(t)));
      const ans = extractAnswer(text);
      const ok = ans === p.answer;
      correct += ok ? 1 : 0;
      genTokens += tokens.length;
      if (!eog.has(tokens[tokens.length - 1]!)) hitMax++;
      const row: Record<string, unknown> = { task, seed: p.seed, ok, answer: ans, expected: p.answer, tokens: tokens.length, prompt: prompt.length };
      if (pi < nLlama) {
        const ref = await oracleGenerate(modelPath, prompt, maxTokens, eog);
        const refAns = extractAnswer(tok.decode(ref.filter((t) => !eog.has(t))));
        let firstDiff = -1;
        for (let i = 0; i < Math.max(ref.length, tokens.length); i++) if (ref[i] !== tokens[i]) { firstDiff = i; break; }
        llamaRuns++;
        llamaSame += firstDiff < 0 ? 1 : 0;
        llamaAnsSame += refAns === ans ? 1 : 0;
        llamaCorrect += refAns === p.answer ? 1 : 0;
        Object.assign(row, { llamaAnswer: refAns, llamaTokensEqual: firstDiff < 0, llamaFirstDiff: firstDiff });
      }
      rows.push(row);
      if (opt.verbose) console.log(JSON.stringify(row));
    }
    const s = (performance.now() - t0) / 1000;
    const line = {
      task, n: probs.length, accuracy: correct / probs.length, correct, meanGenTokens: Math.round(genTokens / probs.length),
      hitMaxTokens: hitMax, seconds: Math.round(s),
      ...(llamaRuns ? { llamaRuns, llamaTokensEqual: llamaSame, llamaAnswersEqual: llamaAnsSame, llamaCorrect } : {}),
    };
    table.push(line);
    console.log(JSON.stringify(line));
  }
  console.log("\n| task | n | accuracy (ours) | mean generated tokens | hit max tokens |" + (nLlama ? " llama.cpp: same tokens / same answer / correct |" : ""));
  console.log("|---|---|---|---|---|" + (nLlama ? "---|" : ""));
  for (const t of table) {
    console.log(`| ${t.task} | ${t.n} | ${((t.accuracy as number) * 100).toFixed(1)}% | ${t.meanGenTokens} | ${t.hitMaxTokens} |` +
      (t.llamaRuns ? ` ${t.llamaTokensEqual}/${t.llamaRuns} / ${t.llamaAnswersEqual}/${t.llamaRuns} / ${t.llamaCorrect}/${t.llamaRuns} |` : ""));
  }
  if (opt.json) writeFileSync(opt.json, JSON.stringify({ model: modelPath, maxTokens, table, rows }, null, 1));
  await disposeOracle();
}

main(process.argv.slice(2)).catch((e) => {
  console.error(e);
  process.exit(1);
});
