// Code completion (FIM) through `merlin serve`: OpenAI SDK completions with `suffix`, llama.cpp
// /infill and Mistral /v1/fim/completions give `merlin run`'s greedy text on the raw FIM prompt;
// a superseded request (same X-Client-Id) ends at once as cancelled; no FIM tokens -> 400.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import { spawn } from 'node:child_process';
import { startServer, runGreedy, postJson, parseSse, metric, BIN, MODEL, MODEL_ID } from './lib.mjs';

// startServer() always serves MODEL; this serves another folder (and is killed at the end).
async function serveModel(dir) {
  const proc = spawn(BIN, ['serve', '-m', dir, '--host', '127.0.0.1', '--port', '0', '--ctx', '512'],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not start:\n' + log)), 120000);
    const on = (d) => {
      log += d.toString();
      const m = log.match(/listening on http:\/\/127\.0\.0\.1:(\d+)/);
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    };
    proc.stderr.on('data', on);
    proc.stdout.on('data', on);
    proc.on('exit', (c) => { clearTimeout(timer); reject(new Error(`server exited (${c}):\n` + log)); });
  });
  proc.removeAllListeners('exit');
  const exited = new Promise((r) => proc.on('exit', r));
  return { base: `http://127.0.0.1:${port}`, stop: async () => { proc.kill('SIGTERM'); await exited; } };
}

let srv, openai;

before(async () => {
  // No time budget: the text must not depend on the machine's speed.
  srv = await startServer(['--parallel', '4', '--ctx', '1024', '--fim-time-budget-ms', '0']);
  openai = new OpenAI({ apiKey: 'none', baseURL: srv.base + '/v1', maxRetries: 0, timeout: 300000 });
});

after(async () => {
  if (srv) assert.equal(await srv.stop('SIGTERM'), 0);
});

const PREFIX = 'def fib(n):\n    if n < 2:\n        return n\n';
const SUFFIX = '\n\ndef main():\n    print(fib(10))\n';
const N = 24;

// The server's editor rules on top of the raw greedy text: stop before a completed line equal
// to the suffix's first non-empty line; whitespace-only -> ''.
function reference(prefix, suffix, n) {
  let text = runGreedy(`<fim_prefix>${prefix}<fim_suffix>${suffix}<fim_middle>`, n);
  const line = suffix.split('\n').map((l) => l.trim()).find((l) => l) ?? '';
  let ls = 0;
  for (let i = 0; i < text.length; ++i) {
    if (text[i] !== '\n') continue;
    if (line && text.slice(ls, i).trim() === line) {
      text = text.slice(0, ls);
      break;
    }
    ls = i + 1;
  }
  return text.trim() ? text : '';
}

let refCache;
const ref = () => (refCache ??= reference(PREFIX, SUFFIX, N));

test('OpenAI SDK: completions with suffix equal merlin run on the raw FIM prompt', async () => {
  const r = await openai.completions.create({ model: MODEL_ID, prompt: PREFIX, suffix: SUFFIX, max_tokens: N, temperature: 0 });
  assert.equal(r.object, 'text_completion');
  assert.equal(r.choices[0].text, ref());
  const stream = await openai.completions.create({ prompt: PREFIX, suffix: SUFFIX, max_tokens: N, temperature: 0, stream: true });
  let text = '';
  for await (const c of stream) if (c.choices.length) text += c.choices[0].text;
  assert.equal(text, ref());
});

test('/infill: llama.cpp shape, streamed and not', async () => {
  const r = await postJson(srv.base, '/infill', { input_prefix: PREFIX, input_suffix: SUFFIX, n_predict: N, id_slot: -1 });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.content, ref());
  assert.equal(r.json.stop, true);
  assert.ok(r.json.tokens_evaluated > 20);
  assert.ok('predicted_ms' in r.json.timings);
  const s = await postJson(srv.base, '/infill', { input_prefix: PREFIX, input_suffix: SUFFIX, n_predict: N, stream: true });
  const evs = parseSse(s.text).map((e) => JSON.parse(e.data));
  assert.equal(evs.at(-1).stop, true);
  assert.equal(evs.slice(0, -1).map((e) => e.content).join(''), ref());
});

test('/v1/fim/completions: Mistral shape, streamed and not', async () => {
  const r = await postJson(srv.base, '/v1/fim/completions', { model: MODEL_ID, prompt: PREFIX, suffix: SUFFIX, max_tokens: N, temperature: 0 });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.choices[0].message.content, ref());
  const s = await postJson(srv.base, '/v1/fim/completions', { prompt: PREFIX, suffix: SUFFIX, max_tokens: N, stream: true });
  const evs = parseSse(s.text);
  assert.equal(evs.at(-1).data, '[DONE]');
  const chunks = evs.slice(0, -1).map((e) => JSON.parse(e.data));
  assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk'));
  assert.equal(chunks.map((c) => c.choices[0].delta.content ?? '').join(''), ref());
});

test('a superseded request ends at once with finish_reason cancelled', async () => {
  const before = (await metric(srv.base, /^merlin_requests_cancelled_total$/)) ?? 0;
  let prefix = '';
  for (let i = 0; i < 20; ++i) prefix += `value_${i} = compute(${i})\n`;
  const first = postJson(srv.base, '/v1/completions',
    { prompt: prefix, suffix: '\n', max_tokens: 600, ignore_eos: true }, { 'x-client-id': 'e2e-editor' });
  await new Promise((r) => setTimeout(r, 700));
  const t0 = Date.now();
  const second = await postJson(srv.base, '/v1/completions',
    { prompt: prefix + 'total = ', suffix: '\n', max_tokens: 4 }, { 'x-client-id': 'e2e-editor' });
  const r1 = await first;
  assert.ok(Date.now() - t0 < 5000);
  assert.equal(r1.status, 200, r1.text);
  assert.equal(r1.json.choices[0].finish_reason, 'cancelled');
  assert.equal(r1.json.choices[0].text, '');
  assert.equal(second.status, 200, second.text);
  assert.ok(second.json.usage.prompt_tokens_details.cached_tokens >= 64, second.text);
  assert.ok((await metric(srv.base, /^merlin_requests_cancelled_total$/)) > before);
});

test('a model without FIM tokens gets 400', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'merlin-nofim-'));
  for (const f of fs.readdirSync(MODEL)) {
    if (f.startsWith('tokenizer')) {
      fs.writeFileSync(path.join(dir, f), fs.readFileSync(path.join(MODEL, f), 'utf8').replaceAll('<fim_', '<nofim_'));
    } else {
      fs.symlinkSync(path.join(MODEL, f), path.join(dir, f));
    }
  }
  const s = await serveModel(dir);
  try {
    for (const [p, body] of [['/infill', { input_prefix: 'a', input_suffix: 'b' }],
                             ['/v1/fim/completions', { prompt: 'a', suffix: 'b' }],
                             ['/v1/completions', { prompt: 'a', suffix: 'b' }]]) {
      const r = await postJson(s.base, p, body);
      assert.equal(r.status, 400, `${p}: ${r.text}`);
      assert.equal(r.json.error.code, 'fim_not_supported');
    }
  } finally {
    await s.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
