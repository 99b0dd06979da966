// Helpers for the Docker suite: `docker compose` in the clean copy of the repository that
// tests/docker/run made (PORTCULLIS_DOCKER_PROJECT), headless Debian Chromium (playwright-core)
// on the host, raw HTTPS requests to the published ports.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import { chromium } from 'playwright-core';

/** The clean copy (git archive) the images were built from; compose runs there. */
export const PROJECT = process.env.PORTCULLIS_DOCKER_PROJECT;
assert.ok(PROJECT && fs.existsSync(path.join(PROJECT, 'docker-compose.yaml')),
  'PORTCULLIS_DOCKER_PROJECT must name the copy of the repository to run in (tests/docker/run sets it)');
/** One project name for every run, so that the runner can clear what an aborted run left. */
export const PROJECT_NAME = process.env.COMPOSE_PROJECT_NAME || 'portcullis-dockertest';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Runs a command; resolves { code, stdout, stderr } (never rejects on a non-zero exit). */
export function run(cmd, args, { env = {}, cwd = PROJECT, timeout = 600000, input } = {}) {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, {
      cwd, timeout, maxBuffer: 64 * 1024 * 1024,
      env: { ...process.env, COMPOSE_PROJECT_NAME: PROJECT_NAME, ...env },
    }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') return reject(err);
      resolve({ code: err ? err.code : 0, stdout: String(stdout), stderr: String(stderr) });
    });
    if (input !== undefined) child.stdin.end(input);
  });
}

/**
 * `docker compose ARGS` in the project; `files` are the compose files (-f), `env` extra
 * variables. Throws with its output on a non-zero exit unless `check` is false.
 */
export async function compose(args, { files = [], env = {}, check = true, timeout } = {}) {
  const f = files.flatMap((x) => ['-f', x]);
  const r = await run('docker', ['compose', ...f, ...args], { env, timeout });
  if (check && r.code !== 0) {
    throw new Error(`docker compose ${args.join(' ')} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
  }
  return r;
}

/** `docker ARGS`; throws on a non-zero exit. */
export async function docker(...args) {
  const r = await run('docker', args);
  if (r.code !== 0) throw new Error(`docker ${args.join(' ')} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
  return r.stdout.trim();
}

/** A compose handle for one profile set-up: the project's compose files and environment. */
export function project({ files = [], env = {} } = {}) {
  const c = {
    compose: (args, opts = {}) => compose(args, { files, env, ...opts }),
    /** The container id of `service`. */
    async id(service) {
      const { stdout } = await c.compose(['ps', '-q', service]);
      const id = stdout.trim();
      assert.ok(id, `no container for ${service}`);
      return id;
    },
    async inspect(service) {
      return JSON.parse(await docker('inspect', await c.id(service)))[0];
    },
    /** `docker compose exec -T service ARGS`: { code, stdout, stderr }. */
    exec: (service, args, opts = {}) => c.compose(['exec', '-T', service, ...args], { check: false, ...opts }),
    logs: async (service) => (await c.compose(['logs', '--no-color', '--no-log-prefix', service], { check: false })).stdout,
    /** Waits until the service's healthcheck says healthy; returns the seconds it took. */
    async healthy(service, ms = 120000) {
      const start = Date.now();
      let status;
      while (Date.now() - start < ms) {
        status = (await c.inspect(service)).State.Health?.Status;
        if (status === 'healthy') return (Date.now() - start) / 1000;
        await sleep(1000);
      }
      throw new Error(`${service} not healthy after ${ms} ms (${status}):\n${(await c.logs(service)).slice(-4000)}`);
    },
    /** Waits until `pattern` is in the service's log (from the `from`-th character on). */
    async logged(service, pattern, { ms = 120000, from = 0 } = {}) {
      const start = Date.now();
      for (;;) {
        const text = (await c.logs(service)).slice(from);
        if (typeof pattern === 'string' ? text.includes(pattern) : pattern.test(text)) return;
        if (Date.now() - start > ms) throw new Error(`no "${pattern}" in ${service}'s log after ${ms} ms:\n${text.slice(-4000)}`);
        await sleep(500);
      }
    },
    /** Removes everything of the project: containers, networks, volumes. */
    async down() {
      await c.compose(['down', '-v', '--remove-orphans', '--timeout', '20'], { check: false });
      const { stdout } = await c.compose(['ps', '-a', '-q'], { check: false });
      assert.equal(stdout.trim(), '', 'containers left after docker compose down');
    },
  };
  return c;
}

/** Headless Debian Chromium; `resolve` maps host names to 127.0.0.1 (the published ports). */
export async function launchBrowser(resolve = []) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
      '--no-first-run', '--disable-component-update', '--disable-sync',
      ...(resolve.length ? [`--host-resolver-rules=${resolve.map((h) => `MAP ${h} 127.0.0.1`).join(', ')}`] : []),
    ],
  });
}

/**
 * Opens `url` in a fresh context (WebSocket frames recorded), is sent to the demo IdP's login
 * page and signs in as `email` / `password`. Returns { context, page, sockets }.
 */
export async function signIn(browser, url, idpOrigin, email, password) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const sockets = recordSockets(page);
  await page.goto(url, { waitUntil: 'domcontentloaded' });
  assert.ok(page.url().startsWith(`${idpOrigin}/interaction/`), `sent to the IdP's login page, not ${page.url()}`);
  await page.fill('input[name=login]', email);
  await page.fill('input[name=password]', password);
  await Promise.all([page.waitForNavigation({ waitUntil: 'domcontentloaded' }), page.click('button[type=submit]')]);
  return { context, page, sockets };
}

/** Records the frames every WebSocket of `page` receives. */
export function recordSockets(page) {
  const sockets = [];
  page.on('websocket', (ws) => {
    const s = { url: ws.url(), received: [], closed: false };
    sockets.push(s);
    ws.on('framereceived', (f) => s.received.push(String(f.payload)));
    ws.on('close', () => { s.closed = true; });
  });
  return sockets;
}

/**
 * Waits until a socket received OpenClaw's `hello-ok` (the gateway's answer to the control UI's
 * connect); returns that frame. `logs()` gives the gateway's log for the failure message.
 */
export async function helloOk(sockets, logs, ms = 60000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    for (const s of sockets) {
      for (const f of s.received) {
        if (f.includes('"hello-ok"')) return { socket: s, frame: JSON.parse(f) };
      }
    }
    await sleep(200);
  }
  const seen = sockets.map((s) => `${s.url}: ${s.received.slice(0, 5).join(' | ')}`).join('\n');
  throw new Error(`no hello-ok within ${ms} ms; sockets:\n${seen}\ngateway log tail:\n${(await logs()).slice(-3000)}`);
}

/** The control UI loaded through Portcullis and connected: asserts it, returns the hello frame. */
export async function assertConnected({ page, sockets }, origin, logs) {
  await page.waitForURL((u) => u.origin === origin, { timeout: 30000 });
  await page.waitForFunction(() => document.title.includes('OpenClaw'), null, { timeout: 60000 });
  const { socket, frame } = await helloOk(sockets, logs);
  assert.equal(frame.ok, true);
  assert.equal(frame.payload.type, 'hello-ok');
  assert.ok(socket.url.startsWith(`wss://${new URL(origin).host}`), `the UI's socket goes through Portcullis: ${socket.url}`);
  return frame;
}

/** The `Cookie` header a browser context would send to `url`. */
export async function cookieHeader(context, url) {
  return (await context.cookies(url)).map((c) => `${c.name}=${c.value}`).join('; ');
}

/**
 * A raw HTTPS request to 127.0.0.1:`port` with SNI and Host `host`. `ca` (PEM) verifies the
 * certificate; without it any certificate is taken. Resolves { status, headers, body, authorized }.
 */
export function request(host, pathAndQuery, { port = 443, headers = {}, ca } = {}) {
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: '127.0.0.1', port, servername: host, path: pathAndQuery, method: 'GET',
      headers: { host, ...headers }, rejectUnauthorized: Boolean(ca), ca, agent: false, timeout: 15000,
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({
        status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString(),
        authorized: res.socket.authorized,
      }));
    });
    req.on('timeout', () => req.destroy(new Error(`https://${host}${pathAndQuery}: timed out`)));
    req.on('error', reject);
    req.end();
  });
}

/** Whether a TCP connection to 127.0.0.1:`port` is accepted. */
export function connects(port, host = '127.0.0.1') {
  return new Promise((resolve) => {
    const s = net.connect({ host, port, timeout: 3000 });
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
    s.once('timeout', () => { s.destroy(); resolve(false); });
  });
}

/** The host ports a container publishes, as ["127.0.0.1:443->443/tcp", ...]. */
export function published(inspect) {
  return Object.entries(inspect.NetworkSettings.Ports || {}).flatMap(([port, binds]) =>
    (binds || []).map((b) => `${b.HostIp}:${b.HostPort}->${port}`));
}

/**
 * Inside a Portcullis container started with net.ipv4.ip_unprivileged_port_start=1024 (`exec`
 * runs a command there: { code, stdout, stderr }): it runs as uid 10001, and the capability that
 * lets it bind 443 is its binary's, not its user's: the same user in the same container cannot
 * bind a port below 1024 with another program.
 */
export async function assertUnprivileged(exec) {
  const floor = await exec(['cat', '/proc/sys/net/ipv4/ip_unprivileged_port_start']);
  assert.equal(floor.stdout.trim(), '1024', 'the container was started with ip_unprivileged_port_start=1024');
  const uid = await exec(['id', '-u']);
  assert.equal(uid.stdout.trim(), '10001', `runs as uid 10001: ${uid.stdout}${uid.stderr}`);
  const other = await exec(['perl', '-MIO::Socket::INET', '-e',
    'IO::Socket::INET->new(LocalPort => 444, Listen => 1, ReuseAddr => 1) ? exit 0 : exit 3']);
  assert.equal(other.code, 3, `another program bound port 444 as uid 10001 (exit ${other.code}): ${other.stderr}`);
}
