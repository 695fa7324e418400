// Graceful shutdown: SIGTERM during streams ends each of them with a proper final event (an
// error event for the interrupted generation) and the process exits 0 without hanging.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, parseSse } from './lib.mjs';

async function readAll(res) {
  const reader = res.body.getReader();
  let text = '';
  const dec = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    text += dec.decode(value, { stream: true });
  }
  return text;
}

test('SIGTERM ends in-flight streams properly and exits 0', async () => {
  const srv = await startServer(['--parallel', '4']);
  const start = async (path, body) => {
    const res = await fetch(srv.base + path, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
    });
    assert.equal(res.status, 200);
    return res;
  };
  const oa = await start('/v1/chat/completions', {
    messages: [{ role: 'user', content: 'count' }], max_tokens: 900, ignore_eos: true, temperature: 0, stream: true,
  });
  const an = await start('/v1/messages', {
    messages: [{ role: 'user', content: 'count' }], max_tokens: 900, temperature: 0, stream: true,
  });
  const pa = readAll(oa);
  const pb = readAll(an);
  await new Promise((r) => setTimeout(r, 1000));
  const code = await srv.stop('SIGTERM');
  assert.equal(code, 0);
  const a = parseSse(await pa);
  const b = parseSse(await pb);
  assert.equal(a.at(-1).data, '[DONE]');
  const lastA = JSON.parse(a.at(-2).data);
  assert.ok(lastA.error || lastA.choices?.[0]?.finish_reason, 'OpenAI stream ends with an error or a finish chunk');
  const lastB = b.at(-1);
  assert.ok(lastB.event === 'error' || lastB.event === 'message_stop', `Anthropic stream ends properly (${lastB.event})`);
  if (lastB.event === 'error') assert.equal(JSON.parse(lastB.data).type, 'error');
});
