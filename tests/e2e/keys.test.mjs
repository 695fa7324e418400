// API keys kept out of `ps` (MERLIN_API_KEY, --api-key-file), --api-key still working with a
// warning, and a log that holds no key and no prompt text unless --log-requests is given.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { startServer, MODEL_ID } from './lib.mjs';

const SECRET_PROMPT = 'def secret_prompt_marker_7f3a(x):\n';

async function tryKey(srv, key) {
  const openai = new OpenAI({ apiKey: key, baseURL: srv.base + '/v1', maxRetries: 0 });
  try {
    await openai.completions.create({ prompt: SECRET_PROMPT, max_tokens: 2 });
    return 200;
  } catch (e) {
    return e.status;
  }
}

function cmdline(pid) {
  return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
}

test('MERLIN_API_KEY: required, not on the command line, not in the log', async () => {
  const key = 'sk-env-key-4b1d';
  const srv = await startServer([], { env: { MERLIN_API_KEY: key } });
  try {
    assert.equal(await tryKey(srv, key), 200);
    assert.equal(await tryKey(srv, 'wrong'), 401);
    const anthropic = new Anthropic({ apiKey: key, baseURL: srv.base, maxRetries: 0 });
    const m = await anthropic.messages.create({ model: MODEL_ID, max_tokens: 2, messages: [{ role: 'user', content: 'hi' }] });
    assert.equal(m.type, 'message');
    assert.ok(!cmdline(srv.proc.pid).includes(key));
  } finally {
    assert.equal(await srv.stop(), 0);
  }
  assert.ok(!srv.log().includes(key), 'the key is not logged');
  assert.ok(!srv.log().includes('secret_prompt_marker'), 'no prompt text without --log-requests');
  assert.match(srv.log(), /API key required \(1 key\)/);
});

test('--api-key-file: several keys, blank lines and # comments ignored', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'merlin-keys-'));
  const file = path.join(dir, 'keys');
  fs.writeFileSync(file, '# team keys\n\nsk-file-one\n   sk-file-two  \r\n# sk-commented-out\n', { mode: 0o600 });
  const srv = await startServer(['--api-key-file', file]);
  try {
    assert.equal(await tryKey(srv, 'sk-file-one'), 200);
    assert.equal(await tryKey(srv, 'sk-file-two'), 200);
    assert.equal(await tryKey(srv, 'sk-commented-out'), 401);
    assert.equal(await tryKey(srv, '# team keys'), 401);
  } finally {
    assert.equal(await srv.stop(), 0);
    fs.rmSync(dir, { recursive: true });
  }
  assert.match(srv.log(), /API key required \(2 keys\)/);
  assert.ok(!srv.log().includes('sk-file-'), 'no key in the log');
});

test('--api-key still works, with a warning that ps shows it', async () => {
  const srv = await startServer(['--api-key', 'sk-argv-key']);
  try {
    assert.equal(await tryKey(srv, 'sk-argv-key'), 200);
    assert.equal(await tryKey(srv, 'nope'), 401);
  } finally {
    assert.equal(await srv.stop(), 0);
  }
  assert.match(srv.log(), /warning: --api-key is visible to every user/);
});

test('--log-requests logs request bodies, never the key', async () => {
  const key = 'sk-logged-run-9c2e';
  const srv = await startServer(['--log-requests'], { env: { MERLIN_API_KEY: key } });
  try {
    assert.equal(await tryKey(srv, key), 200);
  } finally {
    assert.equal(await srv.stop(), 0);
  }
  assert.ok(srv.log().includes('secret_prompt_marker'), 'the prompt is logged when asked for');
  assert.ok(!srv.log().includes(key), 'the key is still not logged');
});

test('a key file that cannot be read or holds no key is an error at start', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'merlin-keys-'));
  const empty = path.join(dir, 'empty');
  fs.writeFileSync(empty, '# nothing\n\n');
  for (const f of [empty, path.join(dir, 'missing')]) {
    await assert.rejects(startServer(['--api-key-file', f], { timeoutMs: 60000 }), /exited early/);
  }
  fs.rmSync(dir, { recursive: true });
});
