// `merlin serve` through the official SDKs: completions, chat, messages (plain and streamed),
// usage, greedy equality with `merlin run`, concurrency, prefix reuse, the bad-request catalogue.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import {
  startServer, runGreedy, postJson, tokenCount, metric, parseSse, chatPrompt, MODEL_ID,
} from './lib.mjs';

const KEY = 'sk-merlin-test';
const AUTH = { authorization: `Bearer ${KEY}` };
let srv, openai, anthropic;

before(async () => {
  srv = await startServer(['--api-key', KEY, '--parallel', '8', '--ctx', '1024', '--max-body-bytes', '200000']);
  openai = new OpenAI({ apiKey: KEY, baseURL: srv.base + '/v1', maxRetries: 0, timeout: 300000 });
  anthropic = new Anthropic({ apiKey: KEY, baseURL: srv.base, maxRetries: 0, timeout: 300000 });
});

after(async () => {
  if (srv) assert.equal(await srv.stop('SIGTERM'), 0, 'server exits 0 on SIGTERM');
});

const PROMPT = 'def fibonacci(n):\n';
const N = 24;

test('GET /v1/models and /health', async () => {
  const models = await openai.models.list();
  assert.deepEqual(models.data.map((m) => m.id), [MODEL_ID]);
  const h = await fetch(srv.base + '/health');
  assert.equal(h.status, 200);
});

test('completion: greedy equals merlin run; usage matches /tokenize', async () => {
  const ref = runGreedy(PROMPT, N);
  const r = await openai.completions.create({ model: MODEL_ID, prompt: PROMPT, max_tokens: N, temperature: 0 });
  assert.equal(r.object, 'text_completion');
  assert.equal(r.choices[0].text, ref);
  assert.equal(r.usage.prompt_tokens, await tokenCount(srv.base, PROMPT, AUTH));
  assert.ok(r.usage.completion_tokens > 0 && r.usage.completion_tokens <= N);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
  if (r.usage.completion_tokens < N) assert.equal(r.choices[0].finish_reason, 'stop');
});

test('completion: stream equals non-stream, usage chunk, finish chunk', async () => {
  const plain = await openai.completions.create({ prompt: PROMPT, max_tokens: N, temperature: 0 });
  const stream = await openai.completions.create({
    prompt: PROMPT, max_tokens: N, temperature: 0, stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  let finish = null;
  let usage = null;
  for await (const c of stream) {
    assert.equal(c.object, 'text_completion');
    if (c.choices.length) {
      text += c.choices[0].text;
      if (c.choices[0].finish_reason) finish = c.choices[0].finish_reason;
    }
    if (c.usage) {
      assert.equal(c.choices.length, 0, 'usage chunk has no choices');
      usage = c.usage;
    }
  }
  assert.equal(text, plain.choices[0].text);
  assert.equal(finish, plain.choices[0].finish_reason);
  assert.deepEqual(
    [usage.prompt_tokens, usage.completion_tokens],
    [plain.usage.prompt_tokens, plain.usage.completion_tokens],
  );
});

test('completion: token-id prompt, echo, n with seed, stop, logprobs', async () => {
  const ids = (await postJson(srv.base, '/tokenize', { content: PROMPT }, AUTH)).json.tokens;
  const a = await openai.completions.create({ prompt: ids, max_tokens: 8, temperature: 0 });
  const b = await openai.completions.create({ prompt: PROMPT, max_tokens: 8, temperature: 0, echo: true });
  assert.equal(b.choices[0].text, PROMPT + a.choices[0].text);
  const n = await openai.completions.create({ prompt: PROMPT, max_tokens: 8, temperature: 1.0, n: 3, seed: 42 });
  assert.deepEqual(n.choices.map((c) => c.index), [0, 1, 2]);
  const n2 = await openai.completions.create({ prompt: PROMPT, max_tokens: 8, temperature: 1.0, n: 3, seed: 42 });
  assert.deepEqual(n2.choices.map((c) => c.text), n.choices.map((c) => c.text), 'same seed, same texts');
  assert.ok(new Set(n.choices.map((c) => c.text)).size > 1, 'choice i uses seed + i');
  const lp = await openai.completions.create({ prompt: PROMPT, max_tokens: 6, temperature: 0, logprobs: 2 });
  const L = lp.choices[0].logprobs;
  assert.equal(L.tokens.length, lp.usage.completion_tokens);
  assert.equal(L.token_logprobs.length, L.tokens.length);
  assert.equal(L.text_offset.length, L.tokens.length);
  assert.ok(L.top_logprobs.every((d) => Object.keys(d).length <= 2));
  assert.ok(L.token_logprobs.every((x) => x <= 0));
});

test('chat: equals completion of the templated prompt; stream equals plain; usage', async () => {
  const user = 'Write a function that adds two numbers.';
  const viaCompletion = await openai.completions.create({ prompt: chatPrompt(user), max_tokens: N, temperature: 0 });
  const r = await openai.chat.completions.create({
    model: MODEL_ID, messages: [{ role: 'user', content: user }], max_tokens: N, temperature: 0,
  });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(r.choices[0].message.content, viaCompletion.choices[0].text);
  assert.equal(r.usage.prompt_tokens, await tokenCount(srv.base, chatPrompt(user), AUTH));
  const stream = await openai.chat.completions.create({
    messages: [{ role: 'user', content: [{ type: 'text', text: user }] }], max_completion_tokens: N, temperature: 0,
    stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  let first = true;
  let finish = null;
  let usage = null;
  for await (const c of stream) {
    assert.equal(c.object, 'chat.completion.chunk');
    if (first) {
      assert.equal(c.choices[0].delta.role, 'assistant');
      first = false;
    }
    if (c.choices.length) {
      text += c.choices[0].delta.content ?? '';
      if (c.choices[0].finish_reason) finish = c.choices[0].finish_reason;
    }
    if (c.usage) usage = c.usage;
  }
  assert.equal(text, r.choices[0].message.content);
  assert.equal(finish, r.choices[0].finish_reason);
  assert.equal(usage.completion_tokens, r.usage.completion_tokens);
  assert.equal(usage.prompt_tokens, r.usage.prompt_tokens);
});

test('chat: logprobs with top_logprobs', async () => {
  const r = await openai.chat.completions.create({
    messages: [{ role: 'user', content: 'hi' }], max_tokens: 5, temperature: 0, logprobs: true, top_logprobs: 3,
  });
  const c = r.choices[0].logprobs.content;
  assert.equal(c.length, r.usage.completion_tokens);
  for (const t of c) {
    assert.equal(typeof t.token, 'string');
    assert.ok(t.logprob <= 0);
    assert.ok(Array.isArray(t.bytes));
    assert.equal(t.top_logprobs.length, 3);
    assert.ok(t.logprob >= t.top_logprobs[2].logprob - 1e-4, 'greedy token is at least the 3rd best');
  }
});

test('messages: plain and streamed agree; usage; event sequence', async () => {
  const user = 'Write a function that adds two numbers.';
  const viaCompletion = await openai.completions.create({ prompt: chatPrompt(user), max_tokens: N, temperature: 0 });
  const m = await anthropic.messages.create({
    model: MODEL_ID, max_tokens: N, temperature: 0, messages: [{ role: 'user', content: user }],
  });
  assert.equal(m.type, 'message');
  assert.equal(m.role, 'assistant');
  assert.equal(m.content[0].type, 'text');
  assert.equal(m.content[0].text, viaCompletion.choices[0].text);
  assert.equal(m.usage.input_tokens, await tokenCount(srv.base, chatPrompt(user), AUTH));
  assert.equal(m.usage.output_tokens, viaCompletion.usage.completion_tokens);
  assert.equal(m.stop_reason, viaCompletion.choices[0].finish_reason === 'length' ? 'max_tokens' : 'end_turn');
  const ct = await anthropic.messages.countTokens({ model: MODEL_ID, messages: [{ role: 'user', content: user }] });
  assert.equal(ct.input_tokens, m.usage.input_tokens);

  const stream = anthropic.messages.stream({
    model: MODEL_ID, max_tokens: N, temperature: 0, messages: [{ role: 'user', content: user }],
  });
  const final = await stream.finalMessage();
  assert.equal(final.content[0].text, m.content[0].text);
  assert.equal(final.stop_reason, m.stop_reason);
  assert.equal(final.usage.output_tokens, m.usage.output_tokens);

  // The raw event sequence.
  const res = await fetch(srv.base + '/v1/messages', {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': KEY, 'anthropic-version': '2023-06-01' },
    body: JSON.stringify({ model: MODEL_ID, max_tokens: 6, temperature: 0, stream: true,
      messages: [{ role: 'user', content: user }] }),
  });
  const events = parseSse(await res.text());
  const names = events.map((e) => e.event);
  assert.deepEqual(names.slice(0, 3), ['message_start', 'content_block_start', 'ping']);
  assert.deepEqual(names.slice(-3), ['content_block_stop', 'message_delta', 'message_stop']);
  assert.ok(names.slice(3, -3).every((n) => n === 'content_block_delta'));
  for (const e of events) assert.equal(JSON.parse(e.data).type, e.event);
  const delta = JSON.parse(events.at(-2).data);
  assert.equal(delta.delta.stop_reason, 'max_tokens');
  assert.equal(delta.usage.output_tokens, 6);
});

test('messages: prefill continues the assistant turn; stop_sequences give stop_sequence', async () => {
  // A final assistant message is a prefill: the answer continues it (same as a completion of
  // the templated prompt followed by the prefill).
  const user = 'Write a fibonacci function.';
  const prefill = 'def fibonacci(n):';
  const msgs = [{ role: 'user', content: user }, { role: 'assistant', content: prefill }];
  const viaCompletion = await openai.completions.create({ prompt: chatPrompt(user) + prefill, max_tokens: N, temperature: 0 });
  const m = await anthropic.messages.create({ max_tokens: N, temperature: 0, messages: msgs });
  const text = m.content[0].text;
  assert.equal(text, viaCompletion.choices[0].text);
  // Stop at a sequence from the middle of the greedy output.
  let at = -1;
  let seq = '';
  for (let i = 2; i + 3 <= text.length; ++i) {
    seq = text.slice(i, i + 3);
    if (text.indexOf(seq) === i && seq.trim().length === 3) {
      at = i;
      break;
    }
  }
  assert.ok(at > 0, `greedy output long and varied enough to cut: ${JSON.stringify(text)}`);
  const s = await anthropic.messages.create({ max_tokens: N, temperature: 0, stop_sequences: ['@@@never', seq], messages: msgs });
  assert.equal(s.stop_reason, 'stop_sequence');
  assert.equal(s.stop_sequence, seq);
  assert.equal(s.content[0].text, text.slice(0, at));
  const c = await openai.completions.create({ prompt: chatPrompt(user) + prefill, max_tokens: N, temperature: 0, stop: seq });
  assert.equal(c.choices[0].text, text.slice(0, at));
  assert.equal(c.choices[0].finish_reason, 'stop');
});

test('32 concurrent streaming clients each get the stream of their prompt alone', async () => {
  const prompts = Array.from({ length: 8 }, (_, i) => `def helper_${i}(x, y):\n    `);
  const alone = [];
  for (const p of prompts) {
    alone.push((await openai.completions.create({ prompt: p, max_tokens: 16, temperature: 0 })).choices[0].text);
  }
  const runs = Array.from({ length: 32 }, async (_, i) => {
    const stream = await openai.completions.create({
      prompt: prompts[i % prompts.length], max_tokens: 16, temperature: 0, stream: true,
    });
    let text = '';
    let finish = null;
    for await (const c of stream) {
      if (c.choices.length) {
        text += c.choices[0].text;
        finish = c.choices[0].finish_reason ?? finish;
      }
    }
    return { text, finish };
  });
  const results = await Promise.all(runs);
  results.forEach((r, i) => {
    assert.ok(r.finish, `stream ${i} has a finish_reason`);
    assert.equal(r.text, alone[i % prompts.length], `stream ${i}`);
  });
});

test('prefix reuse: same long prompt twice hits the prefix cache, same result', async () => {
  const long = Array.from({ length: 40 }, (_, i) => `    value_${i} = compute(${i}, data[${i}])\n`).join('');
  const prompt = `def process(data):\n${long}`;
  const hits0 = await metric(srv.base, /prefix_cache_hit/, AUTH);
  assert.notEqual(hits0, null, '/metrics exposes a prefix cache hit counter');
  const a = await openai.completions.create({ prompt, max_tokens: 8, temperature: 0 });
  const hits1 = await metric(srv.base, /prefix_cache_hit/, AUTH);
  const b = await openai.completions.create({ prompt, max_tokens: 8, temperature: 0 });
  const hits2 = await metric(srv.base, /prefix_cache_hit/, AUTH);
  assert.equal(b.choices[0].text, a.choices[0].text);
  assert.ok(hits2 > hits1, `prefix cache hits grew (${hits0} -> ${hits1} -> ${hits2})`);
  assert.ok(b.usage.prompt_tokens_details.cached_tokens > 0, 'usage reports cached tokens');
});

test('client disconnect cancels the request; server stays healthy', async () => {
  const ctl = new AbortController();
  const stream = await openai.completions.create(
    { prompt: PROMPT, max_tokens: 400, temperature: 0, stream: true, ignore_eos: true },
    { signal: ctl.signal },
  );
  let chunks = 0;
  try {
    for await (const c of stream) {
      if (++chunks === 3) ctl.abort();
    }
  } catch (e) {
    assert.ok(ctl.signal.aborted);
  }
  const cancelled = async () => metric(srv.base, /requests_cancelled/, AUTH);
  let ok = false;
  for (let i = 0; i < 100 && !ok; ++i) {
    const c = await cancelled();
    ok = c !== null && c > 0;
    if (!ok) await new Promise((r) => setTimeout(r, 100));
  }
  assert.ok(ok, 'the engine counted a cancelled request');
  const r = await openai.completions.create({ prompt: PROMPT, max_tokens: 2, temperature: 0 });
  assert.equal(r.choices.length, 1);
});

// ---- the bad-request catalogue ----------------------------------------------------------------

async function openaiError(p) {
  try {
    await p;
  } catch (e) {
    return e;
  }
  assert.fail('expected an error');
}

test('errors through the OpenAI SDK', async () => {
  let e = await openaiError(openai.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }] }));
  assert.equal(e.status, 404);
  assert.equal(e.code, 'model_not_found');
  assert.ok(e instanceof OpenAI.NotFoundError);

  e = await openaiError(openai.chat.completions.create({ messages: [] }));
  assert.equal(e.status, 400);
  assert.equal(e.type, 'invalid_request_error');
  assert.equal(e.param, 'messages');

  e = await openaiError(openai.completions.create({ prompt: 'x', temperature: 'hot' }));
  assert.equal(e.status, 400);
  assert.equal(e.param, 'temperature');

  e = await openaiError(openai.chat.completions.create({
    messages: [{ role: 'user', content: 'x' }], response_format: { type: 'json_object' },
  }));
  assert.equal(e.status, 400);
  assert.match(e.message, /not supported/);

  e = await openaiError(openai.chat.completions.create({
    messages: [{ role: 'user', content: 'x' }], tools: [{ type: 'function', function: { name: 'f', parameters: {} } }],
  }));
  assert.equal(e.status, 400);
  assert.equal(e.param, 'tools');

  e = await openaiError(openai.completions.create({ prompt: 'x', max_tokens: 100000 }));
  assert.equal(e.status, 400);
  assert.equal(e.code, 'context_length_exceeded');

  e = await openaiError(openai.completions.create({ prompt: 'x', frobnicate: true }));
  assert.equal(e.status, 400);
  assert.match(e.message, /frobnicate/);

  const bad = new OpenAI({ apiKey: 'wrong', baseURL: srv.base + '/v1', maxRetries: 0 });
  e = await openaiError(bad.models.list());
  assert.equal(e.status, 401);
  assert.ok(e instanceof OpenAI.AuthenticationError);
  e = await openaiError(bad.completions.create({ prompt: 'x' }));
  assert.equal(e.status, 401);
  assert.equal(e.code, 'invalid_api_key');
});

test('errors through the Anthropic SDK', async () => {
  const ae = async (p) => {
    try {
      await p;
    } catch (e) {
      return e;
    }
    assert.fail('expected an error');
  };
  let e = await ae(anthropic.messages.create({ model: 'claude-x', max_tokens: 5, messages: [{ role: 'user', content: 'x' }] }));
  assert.equal(e.status, 404);
  assert.equal(e.error.type, 'error');
  assert.equal(e.error.error.type, 'not_found_error');

  e = await ae(anthropic.messages.create({ messages: [{ role: 'user', content: 'x' }] }));
  assert.equal(e.status, 400);
  assert.equal(e.error.error.type, 'invalid_request_error');
  assert.match(e.error.error.message, /max_tokens/);

  e = await ae(anthropic.messages.create({ max_tokens: 5, messages: [] }));
  assert.equal(e.status, 400);

  e = await ae(anthropic.messages.create({ max_tokens: 5, temperature: 1.5, messages: [{ role: 'user', content: 'x' }] }));
  assert.equal(e.status, 400);

  const bad = new Anthropic({ apiKey: 'wrong', baseURL: srv.base, maxRetries: 0 });
  e = await ae(bad.messages.create({ max_tokens: 5, messages: [{ role: 'user', content: 'x' }] }));
  assert.equal(e.status, 401);
  assert.equal(e.error.error.type, 'authentication_error');
});

test('errors the SDKs cannot send: raw HTTP', async () => {
  // malformed JSON
  let r = await postJson(srv.base, '/v1/chat/completions', '{"messages": [', AUTH);
  assert.equal(r.status, 400);
  assert.equal(r.json.error.type, 'invalid_request_error');
  // invalid UTF-8
  const bytes = Buffer.concat([Buffer.from('{"prompt":"'), Buffer.from([0xff, 0xfe]), Buffer.from('"}')]);
  r = await postJson(srv.base, '/v1/completions', bytes, AUTH);
  assert.equal(r.status, 400);
  assert.match(r.json.error.message, /UTF-8/);
  r = await postJson(srv.base, '/v1/messages', Buffer.concat([Buffer.from('{"max_tokens":1,"messages":[{"role":"user","content":"'), Buffer.from([0xc0, 0xaf]), Buffer.from('"}]}')]),
    { 'x-api-key': KEY });
  assert.equal(r.status, 400);
  assert.equal(r.json.type, 'error');
  assert.equal(r.json.error.type, 'invalid_request_error');
  // oversized body: 413 in each API's shape
  const huge = JSON.stringify({ prompt: 'x'.repeat(300000) });
  r = await postJson(srv.base, '/v1/completions', huge, AUTH);
  assert.equal(r.status, 413);
  assert.equal(typeof r.json.error.message, 'string');
  r = await postJson(srv.base, '/v1/messages', JSON.stringify({ max_tokens: 1, messages: [{ role: 'user', content: 'x'.repeat(300000) }] }), { 'x-api-key': KEY });
  assert.equal(r.status, 413);
  assert.equal(r.json.error.type, 'request_too_large');
  // missing key
  r = await postJson(srv.base, '/v1/completions', { prompt: 'x' });
  assert.equal(r.status, 401);
  assert.equal(r.json.error.type, 'invalid_request_error');
  r = await postJson(srv.base, '/v1/messages', { max_tokens: 1, messages: [{ role: 'user', content: 'x' }] });
  assert.equal(r.status, 401);
  assert.equal(r.json.error.type, 'authentication_error');
  // wrong field type at the top level
  r = await postJson(srv.base, '/v1/completions', '[1,2]', AUTH);
  assert.equal(r.status, 400);
  // unknown route
  r = await postJson(srv.base, '/v1/nope', {}, AUTH);
  assert.equal(r.status, 404);
  assert.equal(typeof r.json.error.message, 'string');
  // tokenize / detokenize round trip
  const t = await postJson(srv.base, '/tokenize', { content: 'def f(x):', with_pieces: true }, AUTH);
  assert.ok(t.json.tokens.every((p) => typeof p.id === 'number' && typeof p.piece === 'string'));
  const d = await postJson(srv.base, '/detokenize', { tokens: t.json.tokens.map((p) => p.id) }, AUTH);
  assert.equal(d.json.content, 'def f(x):');
});
