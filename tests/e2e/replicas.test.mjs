// Two Portcullis replicas behind HAProxy (TCP mode: TLS passes through, round-robin, health
// checks on /readyz), sharing sign-outs through a real redis-server (`session_store`): Debian's
// `haproxy` and `redis-server`, started here on loopback ports, the real binary, oidc-provider
// and headless Chromium.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  candidatePort, COOKIE_SECRET, CLIENT_SECRET, cookieHeader, idpLogin, launchBrowser, request, startEcho,
  startIdp, startPortcullis, tmpdir,
} from './lib.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A program run in the foreground; `stop()` kills it and waits. */
function run(cmd, args, logs = []) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  for (const s of [child.stdout, child.stderr]) s.on('data', (d) => logs.push(String(d)));
  const exited = new Promise((r) => child.once('exit', r));
  return {
    child, logs,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

async function listening(port, ms = 10000) {
  const end = Date.now() + ms;
  for (;;) {
    const ok = await new Promise((r) => {
      const s = net.connect(port, '127.0.0.1', () => { s.destroy(); r(true); });
      s.on('error', () => r(false));
    });
    if (ok) return;
    if (Date.now() > end) throw new Error(`nothing listens on ${port}`);
    await sleep(50);
  }
}

/** redis-server on `port`, nothing saved (a restart starts empty). */
async function startRedis(port) {
  const r = run('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']);
  await listening(port);
  return r;
}

let dir;
let idp;
let echo;
let redis;
let redisPort;
let replicas;
let haproxy;
let front;
let browser;

/** The admin listener's port, from the replica's log. */
async function adminPort(p) {
  const [, port] = await p.waitForLog(/admin listener.*\baddr=\S*:(\d+)/);
  return Number(port);
}

before(async () => {
  dir = tmpdir('portcullis-replicas-');
  echo = await startEcho('replicas');
  redisPort = await candidatePort();
  redis = await startRedis(redisPort);
  idp = await startIdp();
  front = await candidatePort();
  const yaml = (name) => `address: 127.0.0.1:0
metrics_address: 127.0.0.1:0
data_dir: ${dir}/${name}
cookie_secret: ${COOKIE_SECRET}
session_store: redis://127.0.0.1:${redisPort}/0
idp_provider_url: ${idp.issuer}
idp_client_id: portcullis
idp_client_secret: ${CLIENT_SECRET}
routes:
  - from: https://app.test
    to: ${echo.url}
    allow_websockets: true
    policy:
      - allow:
          or:
            - domain: { is: example.com }
`;
  replicas = {};
  for (const name of ['a', 'b']) {
    replicas[name] = await startPortcullis({ dir: path.join(dir, name), yaml: yaml(name) });
    replicas[name].admin = await adminPort(replicas[name]);
  }
  await idp.attach({
    redirectUris: [`https://app.test:${front}/.portcullis/callback`],
    postLogoutRedirectUris: [`https://app.test:${front}/.portcullis/signed_out`],
  });
  for (const r of Object.values(replicas)) {
    await r.idpDiscovered();
    await r.waitForLog('session store reachable');
  }
  const cfg = path.join(dir, 'haproxy.cfg');
  fs.writeFileSync(cfg, `global
  maxconn 1000
defaults
  mode tcp
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  retries 3
  option redispatch
frontend portcullis
  bind 127.0.0.1:${front}
  default_backend replicas
backend replicas
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter 200ms fall 2 rise 2
  server a 127.0.0.1:${replicas.a.port} check port ${replicas.a.admin}
  server b 127.0.0.1:${replicas.b.port} check port ${replicas.b.admin}
`);
  haproxy = run('haproxy', ['-f', cfg, '-db']);
  await listening(front);
  await sleep(600); // both servers' first health checks
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  await haproxy?.stop();
  for (const r of Object.values(replicas ?? {})) await r.stop();
  await redis?.stop();
  await idp?.close();
  echo?.stop();
  if (!process.env.PORTCULLIS_KEEP_TMP) fs.rmSync(dir, { recursive: true, force: true });
});

/** How many access-log lines for `p` name `urlPath`. */
const served = (p, urlPath) => p.logs.join('').replace(/\x1b\[[0-9;]*m/g, '').split('\n').filter((l) => l.includes('portcullis::access') && l.includes(`path=${urlPath} `)).length;

/** Status of a GET through a new connection, to `port` (HAProxy unless a replica's). */
async function status(port, cookie, urlPath = '/x') {
  try {
    const r = await request(port, 'app.test', urlPath, { headers: { cookie, accept: 'application/json' } });
    return r.status;
  } catch (e) {
    return `error ${e.code ?? e.message}`;
  }
}

/** Waits (at most `ms`) until every port answers `want` for the cookie. */
async function until(ports, cookie, want, ms) {
  const end = Date.now() + ms;
  for (;;) {
    const got = await Promise.all(ports.map((p) => status(p, cookie)));
    if (got.every((s) => s === want)) return;
    if (Date.now() > end) throw new Error(`after ${ms} ms: ${JSON.stringify(got)}, not all ${want}`);
    await sleep(20);
  }
}

let cookie;

describe('two replicas behind HAProxy, sign-outs shared through Redis', () => {
  test('a browser signs in through HAProxy and both replicas serve its requests', async () => {
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await context.newPage();
    await page.goto(`https://app.test:${front}/first`, { waitUntil: 'domcontentloaded' });
    await idpLogin(page, 'alice');
    assert.equal(page.url(), `https://app.test:${front}/first`);
    const cookies = await context.cookies(`https://app.test:${front}`);
    cookie = await cookieHeader(context, `https://app.test:${front}`);
    // Each new browser context opens its own connection, which HAProxy sends round-robin.
    for (let i = 0; i < 6; i++) {
      const c = await browser.newContext({ ignoreHTTPSErrors: true });
      await c.addCookies(cookies);
      const p = await c.newPage();
      const r = await p.goto(`https://app.test:${front}/spread-${i}`, { waitUntil: 'domcontentloaded' });
      assert.equal(r.status(), 200);
      await c.close();
    }
    const counts = ['a', 'b'].map((n) => [0, 1, 2, 3, 4, 5].reduce((sum, i) => sum + served(replicas[n], `/spread-${i}`), 0));
    assert.ok(counts[0] > 0 && counts[1] > 0, `served by a: ${counts[0]}, b: ${counts[1]}`);
    await context.close();
  });

  test('a sign-out through one replica is refused by both within a second and closes a WebSocket held on the other', async () => {
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await context.newPage();
    await page.goto(`https://app.test:${front}/again`, { waitUntil: 'domcontentloaded' });
    await idpLogin(page, 'alice');
    const mine = await cookieHeader(context, `https://app.test:${front}`);
    // A page served by replica b itself (cookies are per host, not per port) holds a socket there.
    const onB = await context.newPage();
    await onB.goto(`https://app.test:${replicas.b.port}/ws-page`, { waitUntil: 'domcontentloaded' });
    await onB.evaluate(() => new Promise((resolve, reject) => {
      const ws = new WebSocket(`wss://${location.host}/ws`);
      window.__socketClosed = new Promise((r) => { ws.onclose = (e) => r({ code: e.code, reason: e.reason }); });
      ws.onopen = () => resolve();
      ws.onerror = () => reject(new Error('socket refused'));
    }));
    const ports = [replicas.a.port, replicas.b.port];
    assert.deepEqual(await Promise.all(ports.map((p) => status(p, mine))), [200, 200]);
    const r = await request(replicas.a.port, 'app.test', '/.portcullis/sign_out', {
      headers: { cookie: mine, 'sec-fetch-site': 'same-origin' },
    });
    assert.equal(r.status, 302);
    const t0 = Date.now();
    await until(ports, mine, 401, 1000);
    const closed = await onB.evaluate(() => Promise.race([window.__socketClosed, new Promise((r) => setTimeout(() => r(null), 1000))]));
    assert.equal(closed?.code, 1008, `the socket on b: ${JSON.stringify(closed)}`);
    assert.match(closed.reason, /signed out/);
    console.log(`# sign-out refused by both replicas after ${Date.now() - t0} ms`);
    // The first browser's session is another one: it still passes.
    assert.equal(await status(front, cookie), 200);
    await context.close();
  });

  test('Redis stopped and started again: requests keep flowing, and a sign-out made meanwhile reaches the other replica after', async () => {
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await context.newPage();
    await page.goto(`https://app.test:${front}/outage`, { waitUntil: 'domcontentloaded' });
    await idpLogin(page, 'alice');
    const during = await cookieHeader(context, `https://app.test:${front}`);
    await context.close();
    let stop = false;
    const failures = [];
    let ok = 0;
    const loop = (async () => {
      while (!stop) {
        const s = await status(front, cookie);
        if (s === 200) ok += 1; else failures.push(s);
      }
    })();
    await redis.stop();
    await Promise.all(Object.values(replicas).map((r) => r.waitForLog('session store unreachable')));
    const r = await request(replicas.b.port, 'app.test', '/.portcullis/sign_out', {
      headers: { cookie: during, 'sec-fetch-site': 'same-origin' },
    });
    assert.equal(r.status, 302);
    assert.equal(await status(replicas.b.port, during), 401, 'refused at once where it signed out');
    assert.equal(await status(replicas.a.port, during), 200, 'a cannot know yet');
    await sleep(500);
    redis = await startRedis(redisPort);
    await until([replicas.a.port, replicas.b.port], during, 401, 5000);
    await sleep(300);
    stop = true;
    await loop;
    assert.deepEqual(failures, [], `requests failed while Redis was down (${ok} passed)`);
    assert.ok(ok > 20, `only ${ok} requests`);
  });

  test('one replica killed under a request loop: only the requests in flight on it are lost', async () => {
    const workers = 4;
    let stop = false;
    const results = [];
    const loops = [...Array(workers)].map(async () => {
      while (!stop) results.push({ at: Date.now(), status: await status(front, cookie) });
    });
    await sleep(700);
    const killed = Date.now();
    replicas.a.child.kill('SIGKILL');
    await sleep(2000);
    stop = true;
    await Promise.all(loops);
    const failed = results.filter((r) => r.status !== 200);
    assert.ok(failed.length <= workers, `${failed.length} failed (at most one in flight per worker): ${JSON.stringify(failed)}`);
    const late = results.filter((r) => r.at > killed + 1000);
    assert.ok(late.length > 10 && late.every((r) => r.status === 200), `after the health checks: ${JSON.stringify(late.filter((r) => r.status !== 200))}`);
    assert.ok(served(replicas.b, '/x') > 0);
  });
});
