// `docker compose --profile demo up`, as the README tells a user to try Portcullis: the demo IdP,
// Portcullis and the OpenClaw gateway, all built from the clean copy of the repository
// (tests/docker/run built the images), on a real Docker engine; headless Chromium on the host
// opens https://localhost. Through Docker's port publishing the gateway sees the bridge's
// address as the client, not loopback, so no network namespace is needed here.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  PROJECT, assertConnected, assertUnprivileged, connects, cookieHeader, docker, launchBrowser,
  project, published, recordSockets, request, run, signIn, sleep,
} from './lib.mjs';

const ORIGIN = 'https://localhost';
const IDP = 'http://localhost:5556';
const DEMO = { email: 'demo@example.com', password: 'demo' };
const REFUSED = { email: 'guest@example.com', password: 'demo' };
const demo = project({ env: { COMPOSE_PROFILES: 'demo' } });
const gatewayLogs = () => demo.logs('openclaw-demo');
let browser;
/** The demo user's browser, signed in by the first test and kept across the restart. */
let signedIn;

before(async () => {
  assert.ok(!fs.existsSync(path.join(PROJECT, '.env')), 'the demo runs without a .env');
  await demo.down();
  const up = Date.now();
  await demo.compose(['--profile', 'demo', 'up', '-d']);
  const healthy = await demo.healthy('portcullis-demo');
  await demo.logged('openclaw-demo', '[gateway] ready');
  console.log(`demo profile up: portcullis-demo healthy after ${healthy.toFixed(0)} s, gateway ready after ${((Date.now() - up) / 1000).toFixed(0)} s`);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  await demo.down();
});

test('the demo user signs in and lands in the OpenClaw control UI, its WebSocket connected (hello-ok)', async () => {
  signedIn = await signIn(browser, `${ORIGIN}/`, IDP, DEMO.email, DEMO.password);
  const hello = await assertConnected(signedIn, ORIGIN, gatewayLogs);
  assert.equal(hello.payload.auth.role, 'operator');
  const names = (await signedIn.context.cookies(ORIGIN)).map((c) => c.name);
  assert.ok(names.includes('__Host-_portcullis'), `session cookie set: ${names}`);
});

test('a user the demo policy refuses gets the 403 page and no WebSocket', async () => {
  const { context, page, sockets } = await signIn(browser, `${ORIGIN}/`, IDP, REFUSED.email, REFUSED.password);
  await page.waitForURL((u) => u.origin === ORIGIN, { timeout: 15000 });
  const text = await page.locator('body').innerText();
  assert.match(text, /403/);
  assert.match(text, /guest@example\.com/);
  await page.waitForLoadState('networkidle', { timeout: 15000 });
  assert.equal(sockets.length, 0, 'the 403 page opens no socket');
  const r = await request('localhost', '/', { headers: { cookie: await cookieHeader(context, ORIGIN), accept: 'text/html' } });
  assert.equal(r.status, 403);
  await context.close();
});

test('a wrong password is refused by the demo IdP', async () => {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  await page.goto(`${ORIGIN}/`, { waitUntil: 'domcontentloaded' });
  await page.fill('input[name=login]', DEMO.email);
  await page.fill('input[name=password]', 'not the password');
  await Promise.all([page.waitForNavigation({ waitUntil: 'domcontentloaded' }), page.click('button[type=submit]')]);
  assert.ok(page.url().startsWith(`${IDP}/interaction/`), `still at the IdP: ${page.url()}`);
  assert.match(await page.locator('body').innerText(), /wrong password/i);
  await context.close();
});

test('the gateway is published on no host port; only 127.0.0.1:443 and :5556 are', async () => {
  assert.deepEqual(published(await demo.inspect('openclaw-demo')), []);
  assert.deepEqual(published(await demo.inspect('portcullis-demo')), [], 'Portcullis uses demo-idp\'s network');
  assert.deepEqual(published(await demo.inspect('demo-idp')).sort(), ['127.0.0.1:443->443/tcp', '127.0.0.1:5556->5556/tcp']);
  assert.equal(await connects(18789), false, '127.0.0.1:18789 accepts a connection');
});

test('Portcullis runs as uid 10001 and its healthcheck reports healthy', async () => {
  const uid = await demo.exec('portcullis-demo', ['id', '-u']);
  assert.equal(uid.stdout.trim(), '10001');
  const state = (await demo.inspect('portcullis-demo')).State;
  assert.equal(state.Health.Status, 'healthy');
  assert.equal(state.Health.Log.at(-1).ExitCode, 0);
});

test('the image binds 443 as uid 10001 through its file capability, with ip_unprivileged_port_start=1024', async () => {
  // Docker (20.10+) lets any user bind any port in a container; with the kernel's default floor
  // back, only the capability on /usr/local/bin/portcullis can let it listen on 443.
  const id = await docker('run', '-d', '--rm', '--network', 'none',
    '--sysctl', 'net.ipv4.ip_unprivileged_port_start=1024',
    '-v', `${path.join(PROJECT, 'deploy', 'demo')}:/config:ro`, 'portcullis:local');
  try {
    const exec = async (args) => run('docker', ['exec', id, ...args]);
    let logs = '';
    for (let i = 0; i < 60 && !/portcullis listening addr=0\.0\.0\.0:443/.test(logs); i++) {
      await sleep(250);
      const r = await run('docker', ['logs', id]);
      logs = r.stdout + r.stderr;
    }
    assert.match(logs, /portcullis listening addr=0\.0\.0\.0:443/, logs);
    const listening = await exec(['cat', '/proc/net/tcp']);
    assert.match(listening.stdout, /:01BB 00000000:0000 0A/, 'a socket listens on port 443 (0x01BB)');
    await assertUnprivileged(exec);
  } finally {
    await run('docker', ['rm', '--force', '--volumes', id]);
  }
});

test('`docker compose exec ... portcullis explain` answers on the running config', async () => {
  const allow = await demo.exec('portcullis-demo', ['portcullis', 'explain', '--url', `${ORIGIN}/`, '--email', DEMO.email]);
  assert.equal(allow.code, 0, allow.stderr);
  assert.match(allow.stdout, /^allow/);
  const deny = await demo.exec('portcullis-demo', ['portcullis', 'explain', '--url', `${ORIGIN}/`, '--email', REFUSED.email]);
  assert.match(deny.stdout, /^deny/, deny.stdout + deny.stderr);
});

test('the demo gateway keeps `openclaw config set` in its state volume and refuses writes to its gateway section', async () => {
  const openclaw = (...args) => demo.exec('openclaw-demo', ['openclaw', ...args]);
  const set = await openclaw('config', 'set', 'ui.seamColor', '#4f7cff');
  assert.equal(set.code, 0, set.stdout + set.stderr);
  const refused = await openclaw('config', 'set', 'gateway.auth.mode', 'none');
  assert.notEqual(refused.code, 0, `gateway.auth.mode none was accepted: ${refused.stdout}`);
  assert.match(refused.stdout + refused.stderr, /cannot update external \$include target \/etc\/openclaw\/openclaw-gateway\.json/);
  const proxies = await openclaw('config', 'get', 'gateway.trustedProxies', '--json');
  assert.deepEqual(JSON.parse(proxies.stdout), ['172.28.53.30']);
  const mode = await openclaw('config', 'get', 'gateway.auth.mode');
  assert.equal(mode.stdout.trim(), 'trusted-proxy');
});

test('a route added to the mounted config on the host is served within seconds', async () => {
  const file = path.join(PROJECT, 'deploy', 'demo', 'config.yaml');
  const discovery = () => request('idp.localhost', '/.well-known/openid-configuration').catch((e) => ({ status: e.message }));
  assert.notEqual((await discovery()).status, 200, 'no such route yet');
  const added = `${fs.readFileSync(file, 'utf8')}  # Added by the Docker test while running: the IdP's discovery document, public.
  - from: https://idp.localhost
    to: http://localhost:5556
    allow_public_unauthenticated_access: true
`;
  // As an editor saves: a new file renamed over the old one (the directory mount shows it).
  fs.writeFileSync(`${file}.new`, added);
  fs.renameSync(`${file}.new`, file);
  const start = Date.now();
  let r;
  while (Date.now() - start < 10000) {
    r = await discovery();
    if (r.status === 200) break;
    await sleep(200);
  }
  assert.equal(r.status, 200, `the new route is not served after 10 s:\n${(await demo.logs('portcullis-demo')).slice(-2000)}`);
  assert.equal(JSON.parse(r.body).issuer, IDP);
  console.log(`the added route was served ${((Date.now() - start) / 1000).toFixed(1)} s after the edit`);
});

test('docker compose restart keeps a signed-in browser signed in and a revoked cookie revoked', async () => {
  assert.ok(signedIn, 'the first test signed in');
  const kept = await cookieHeader(signedIn.context, ORIGIN);
  // Another browser signs in, keeps a copy of its cookie, and signs out: Portcullis revokes the
  // session (in its data volume) before sending the browser to the IdP.
  const other = await signIn(browser, `${ORIGIN}/`, IDP, DEMO.email, DEMO.password);
  await other.page.waitForURL((u) => u.origin === ORIGIN, { timeout: 15000 });
  const stolen = await cookieHeader(other.context, ORIGIN);
  const json = (cookie) => request('localhost', '/', { headers: { cookie, accept: 'application/json' } });
  assert.equal((await json(stolen)).status, 200);
  await other.page.goto(`${ORIGIN}/.portcullis/sign_out`, { waitUntil: 'domcontentloaded' });
  assert.equal((await json(stolen)).status, 401, 'the cookie copied before sign-out is refused');
  await other.context.close();
  assert.equal((await json(kept)).status, 200);

  const from = (await demo.logs('openclaw-demo')).length;
  await demo.compose(['--profile', 'demo', 'restart']);
  await demo.healthy('portcullis-demo');
  await demo.logged('openclaw-demo', '[gateway] ready', { from });

  assert.equal((await json(kept)).status, 200, 'the signed-in cookie still opens a session (the same cookie secret)');
  assert.equal((await json(stolen)).status, 401, 'the revoked cookie stays revoked (the data volume)');
  const color = await demo.exec('openclaw-demo', ['openclaw', 'config', 'get', 'ui.seamColor']);
  assert.equal(color.stdout.trim(), '#4f7cff', 'the gateway\'s setting stays (its state volume)');
  // The browser itself: straight back into the control UI, no sign-in, connected again.
  const page = await signedIn.context.newPage();
  const sockets = recordSockets(page);
  await page.goto(`${ORIGIN}/`, { waitUntil: 'domcontentloaded' });
  assert.equal(new URL(page.url()).origin, ORIGIN, `not sent to sign in again: ${page.url()}`);
  await assertConnected({ page, sockets }, ORIGIN, gatewayLogs);
  await signedIn.context.close();
});
