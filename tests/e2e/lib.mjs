// Helpers for the e2e tests: start `merlin serve` on a free loopback port, reference outputs
// from `merlin run`, metrics and raw HTTP.
import { spawn, execFileSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.MERLIN_BIN;
export const MODEL = process.env.MERLIN_MODEL ?? path.resolve(here, '../../models/tiny-coder-target');
export const MODEL_ID = path.basename(MODEL);
if (!BIN) throw new Error('MERLIN_BIN is not set (run through tests/e2e/run.sh path/to/merlin)');

// Starts a server with --port 0 and reads the chosen port from its "listening on" line.
export async function startServer(extraArgs = [], { timeoutMs = 120000, env = undefined } = {}) {
  const args = ['serve', '-m', MODEL, '--host', '127.0.0.1', '--port', '0', ...extraArgs];
  const proc = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], env: env ? { ...process.env, ...env } : process.env });
  let log = '';
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start in time:\n${log}`)), timeoutMs);
    const onData = (d) => {
      log += d.toString();
      const m = log.match(/listening on http:\/\/127\.0\.0\.1:(\d+)/);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    };
    proc.stderr.on('data', onData);
    proc.stdout.on('data', onData);
    proc.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited early (${code}):\n${log}`));
    });
  });
  proc.removeAllListeners('exit');
  const exited = new Promise((resolve) => proc.on('exit', (code, sig) => resolve({ code, sig })));
  const base = `http://127.0.0.1:${port}`;
  return {
    proc,
    port,
    base,
    exited,
    log: () => log,
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode !== null) return proc.exitCode;
      proc.kill(signal);
      const r = await Promise.race([exited, new Promise((res) => setTimeout(() => res(null), 20000))]);
      if (!r) {
        proc.kill('SIGKILL');
        throw new Error('server did not exit within 20 s of ' + signal);
      }
      return r.code;
    },
  };
}

// Greedy reference text from the CLI, outside any server.
export function runGreedy(prompt, n) {
  const out = execFileSync(BIN, ['run', '-m', MODEL, '-p', prompt, '-n', String(n), '--temp', '0', '--json'], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    maxBuffer: 1 << 24,
  });
  const line = out.trim().split('\n').filter((l) => l.startsWith('{')).pop();
  return JSON.parse(line).text;
}

export async function postJson(base, p, body, headers = {}) {
  const res = await fetch(base + p, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' || body instanceof Uint8Array ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: res.status, json, text, headers: res.headers };
}

export async function tokenCount(base, content, headers = {}) {
  const r = await postJson(base, '/tokenize', { content }, headers);
  if (r.status !== 200) throw new Error('tokenize failed: ' + r.text);
  return r.json.tokens.length;
}

// Sum of all samples of Prometheus metrics whose name matches `re`.
export async function metric(base, re, headers = {}) {
  const res = await fetch(base + '/metrics', { headers });
  const text = await res.text();
  let sum = 0;
  let found = false;
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || !line.trim()) continue;
    const [name] = line.split(/[ {]/);
    if (re.test(name)) {
      sum += Number(line.trim().split(/\s+/).pop());
      found = true;
    }
  }
  return found ? sum : null;
}

// Raw SSE: [{event, data}] in order.
export function parseSse(text) {
  const events = [];
  for (const block of text.split('\n\n')) {
    if (!block.trim()) continue;
    let event = null;
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) continue;
      if (line.startsWith('event: ')) event = line.slice(7);
      else if (line.startsWith('data: ')) data.push(line.slice(6));
    }
    if (event === null && data.length === 0) continue;
    events.push({ event, data: data.join('\n') });
  }
  return events;
}

export const chatPrompt = (user) => `<|im_start|>user\n${user}<|im_end|>\n<|im_start|>assistant\n`;
