// Overload through the official SDKs: with the queue full (--max-queue), the OpenAI SDK surfaces
// the 429 as RateLimitError and the Anthropic SDK the 529 as OverloadedError, both with
// Retry-After.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { startServer, metric, MODEL_ID } from './lib.mjs';

let srv, openai, anthropic;

before(async () => {
  srv = await startServer(['--parallel', '1', '--max-queue', '1', '--ctx', '4096', '--request-timeout', '30']);
  openai = new OpenAI({ apiKey: 'none', baseURL: srv.base + '/v1', maxRetries: 0, timeout: 300000 });
  anthropic = new Anthropic({ apiKey: 'none', baseURL: srv.base, maxRetries: 0, timeout: 300000 });
});

after(async () => {
  if (srv) assert.equal(await srv.stop('SIGTERM'), 0, 'server exits 0 on SIGTERM');
});

async function waitFor(cond, ms = 30000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return false;
}

// Fills the chat lane: one request running, then one waiting (a second sent at once could find
// the first still waiting and be refused). Each would generate 4000 tokens (seconds); aborted
// by the caller. Returns the abort controller.
async function fillChatLane() {
  const ctl = new AbortController();
  const gauge = (name) => metric(srv.base, new RegExp(`^merlin_requests_${name}$`));
  for (let i = 0; i < 2; ++i) {
    openai.chat.completions
      .create({ messages: [{ role: 'user', content: `busy ${i}` }], max_tokens: 4000, ignore_eos: true },
        { signal: ctl.signal })
      .catch((e) => { if (!ctl.signal.aborted) console.error('busy request failed:', String(e)); });
    const ok = await waitFor(async () => (await gauge('running')) === 1 && (await gauge('waiting')) === i);
    assert.ok(ok, `busy request ${i} did not start: running ${await gauge('running')}, waiting ${await gauge('waiting')}`);
  }
  return ctl;
}

test('OpenAI SDK: a full queue is a RateLimitError (429) with Retry-After', async () => {
  const ctl = await fillChatLane();
  try {
    await openai.chat.completions.create({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 });
    assert.fail('expected a 429');
  } catch (e) {
    assert.ok(e instanceof OpenAI.RateLimitError, `got ${e?.constructor?.name}: ${e}`);
    assert.equal(e.status, 429);
    assert.equal(e.code, 'rate_limit_exceeded');
    assert.ok(Number(e.headers.get('retry-after')) >= 1);
  } finally {
    ctl.abort();
  }
  assert.ok(await waitFor(async () => (await metric(srv.base, /^merlin_requests_running$/)) === 0));
});

test('Anthropic SDK: a full queue is an OverloadedError (529) with Retry-After', async () => {
  const ctl = await fillChatLane();
  try {
    await anthropic.messages.create({ model: MODEL_ID, max_tokens: 2, messages: [{ role: 'user', content: 'hi' }] });
    assert.fail('expected a 529');
  } catch (e) {
    assert.equal(e.status, 529, String(e));
    assert.ok(e instanceof Anthropic.InternalServerError, `got ${e?.constructor?.name}`);
    if (Anthropic.OverloadedError) assert.ok(e instanceof Anthropic.OverloadedError);
    assert.equal(e.error?.error?.type, 'overloaded_error');
    assert.ok(Number(e.headers.get('retry-after')) >= 1);
  } finally {
    ctl.abort();
  }
  assert.ok(await waitFor(async () => (await metric(srv.base, /^merlin_requests_running$/)) === 0));
});
