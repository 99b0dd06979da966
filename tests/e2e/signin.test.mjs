// Sign-in end to end: the real Portcullis binary, oidc-provider as the IdP, headless Chromium.
import assert from 'node:assert/strict';
import * as jose from 'jose';
import { after, before, describe, test } from 'node:test';
import {
  config, cookieHeader, DISABLED, idpLogin, launchBrowser, request, startEcho, startIdp, startPortcullis, tmpdir,
} from './lib.mjs';

let browser;
let echo;

before(async () => {
  browser = await launchBrowser();
  echo = await startEcho('e2e');
});
after(async () => {
  await browser?.close();
  echo?.stop();
});

/**
 * One Portcullis + IdP pair; `idTokenTtl` shortens ID tokens. Both pick their own ports; the IdP
 * runs its provider once Portcullis's port (in its redirect URIs) is known. With `idpDown`, the
 * IdP cannot be reached until the test calls `s.idp.attach(s.idpOpts)`.
 */
async function setup({ idTokenTtl = 3600, idpDown = false } = {}) {
  const dir = tmpdir('portcullis-e2e-');
  const idp = await startIdp({ down: idpDown });
  const yaml = config({ idpPort: idp.port, echo: echo.url, dir });
  const proxy = await startPortcullis({ dir, yaml });
  const { port } = proxy;
  const hosts = ['app.test', 'any.test'];
  const idpOpts = {
    idTokenTtl,
    redirectUris: hosts.map((h) => `https://${h}:${port}/.portcullis/callback`),
    postLogoutRedirectUris: hosts.map((h) => `https://${h}:${port}/.portcullis/signed_out`),
  };
  if (!idpDown) {
    await idp.attach(idpOpts);
    await proxy.idpDiscovered();
  }
  return { port, idpPort: idp.port, dir, yaml, idp, idpOpts, proxy, app: `https://app.test:${port}` };
}

async function signIn(context, url, user) {
  const page = await context.newPage();
  await page.goto(url, { waitUntil: 'domcontentloaded' });
  assert.match(page.url(), /^http:\/\/127\.0\.0\.1:\d+\/interaction\//, 'a private window is sent to the IdP');
  await idpLogin(page, user);
  return page;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Serves `html` as the page at `url` (another site, or a sibling host, in the tests below). */
async function hostilePage(context, url, html) {
  const page = await context.newPage();
  await page.route(url, (route) => route.fulfill({ status: 200, contentType: 'text/html', body: html }));
  await page.goto(url, { waitUntil: 'domcontentloaded' });
  return page;
}

/** Who-am-I for the cookies the browser context holds for `app` (all it would send). */
async function whoami(context, app) {
  const { port } = new URL(app);
  const cookie = await cookieHeader(context, app);
  const r = await request(port, 'app.test', '/.portcullis/', { headers: { cookie, accept: 'application/json' } });
  return JSON.parse(r.body);
}

function seen(text) {
  return JSON.parse(text);
}

function header(s, name) {
  return s.headers.filter(([k]) => k === name).map(([, v]) => v);
}

describe('sign-in with OpenID Connect', () => {
  test('a browser is sent to the IdP, signs in, and lands on the path it asked for', async () => {
    const s = await setup();
    try {
      const context = await browser.newContext({ ignoreHTTPSErrors: true });
      const page = await signIn(context, `${s.app}/some/path?x=1`, 'alice');
      assert.equal(page.url(), `${s.app}/some/path?x=1`);
      const body = seen(await page.locator('body').innerText());
      assert.equal(body.target, '/some/path?x=1');
      assert.deepEqual(header(body, 'x-forwarded-user'), ['alice@example.com']);
      assert.deepEqual(header(body, 'x-portcullis-claim-email'), ['alice@example.com']);
      assert.deepEqual(header(body, 'x-portcullis-claim-groups'), ['staff,openclaw-admins']);
      // The assertion verifies against Portcullis's JWKS with an independent verifier (jose).
      const [assertion] = header(body, 'x-portcullis-jwt-assertion');
      const jwks = JSON.parse((await request(s.port, 'app.test', '/.well-known/portcullis/jwks.json')).body);
      const { payload, protectedHeader } = await jose.jwtVerify(assertion, jose.createLocalJWKSet(jwks), {
        algorithms: ['ES256'], issuer: s.app, audience: '127.0.0.1',
      });
      assert.equal(protectedHeader.alg, 'ES256');
      assert.equal(payload.sub, 'alice');
      assert.equal(payload.email, 'alice@example.com');
      assert.deepEqual(payload.groups, ['staff', 'openclaw-admins']);
      assert.ok(payload.exp > payload.iat && payload.exp - payload.iat <= 300);
      // A token signed by another key does not verify against that JWKS.
      const { privateKey } = await jose.generateKeyPair('ES256');
      const forged = await new jose.SignJWT({ email: 'alice@example.com' }).setProtectedHeader({ alg: 'ES256', kid: jwks.keys[0].kid })
        .setIssuer(s.app).setAudience('127.0.0.1').setSubject('alice').setExpirationTime('5m').sign(privateKey);
      await assert.rejects(jose.jwtVerify(forged, jose.createLocalJWKSet(jwks)));

      assert.equal(header(body, 'cookie').join(';').includes('_portcullis'), false, 'the session cookie reached the upstream');
      const cookies = await context.cookies(s.app);
      const session = cookies.find((c) => c.name === '__Host-_portcullis');
      assert.ok(session, 'session cookie set');
      assert.equal(session.secure, true);
      assert.equal(session.httpOnly, true);
      assert.equal(session.sameSite, 'Lax');
      assert.equal(session.domain, 'app.test', 'host-only cookie');
      assert.deepEqual((await context.cookies()).filter((c) => c.name.startsWith('__Host-_portcullis_csrf')), [], 'login cookie cleared');
      // Identity a client claims for itself never reaches the upstream, signed in or not.
      const cookie = await cookieHeader(context, s.app);
      const spoof = {
        'x-forwarded-user': 'root@example.com', 'x_forwarded_user': 'root@example.com', 'x-portcullis-jwt-assertion': 'forged',
        'x-portcullis-claim-email': 'root@example.com', 'x-portcullis-claim-groups': 'admins', 'x-forwarded-for': '10.0.0.1',
      };
      const spoofed = seen((await request(s.port, 'app.test', '/spoof', { headers: { cookie, accept: 'application/json', ...spoof } })).body);
      assert.deepEqual(header(spoofed, 'x-forwarded-user'), ['alice@example.com']);
      assert.deepEqual(header(spoofed, 'x-portcullis-claim-email'), ['alice@example.com']);
      assert.deepEqual(header(spoofed, 'x-portcullis-claim-groups'), ['staff,openclaw-admins']);
      assert.deepEqual(header(spoofed, 'x_forwarded_user'), []);
      assert.deepEqual(header(spoofed, 'x-forwarded-for'), ['127.0.0.1']);
      assert.notEqual(header(spoofed, 'x-portcullis-jwt-assertion')[0], 'forged');
      const anon = seen((await request(s.port, 'public.test', '/spoof', { headers: spoof })).body);
      for (const h of Object.keys(spoof).filter((h) => h !== 'x-forwarded-for')) assert.deepEqual(header(anon, h), [], h);
      // The who-am-I page shows the user, never a token.

      const who = await request(s.port, 'app.test', '/.portcullis/', { headers: { cookie: await cookieHeader(context, s.app), accept: 'application/json' } });
      const me = JSON.parse(who.body);
      assert.equal(me.email, 'alice@example.com');
      assert.deepEqual(me.groups, ['staff', 'openclaw-admins']);
      // The value an `issuer_subject` header carries (what OpenClaw's allowUsers lists).
      assert.equal(me.issuer_subject, `${s.idp.issuer}#alice`);
      assert.equal(/eyJ/.test(who.body), false, 'a token appeared on the who-am-I page');
      // A WebSocket from the page works through the proxy with the session.
      const echoed = await page.evaluate(async () => new Promise((resolve) => {
        const ws = new WebSocket(`wss://${location.host}/ws`);
        ws.onopen = () => ws.send('ping');
        ws.onmessage = (m) => { resolve(m.data); ws.close(); };
        ws.onerror = () => resolve('error');
      }));
      assert.equal(echoed, 'ping');
      // The access log names the user, and never the query string.
      const access = s.proxy.logs.join('').split('\n').filter((l) => l.includes('portcullis::access'));
      const line = access.find((l) => l.includes('path=/some/path') && l.includes('status=200'));
      assert.ok(line, access.join('\n'));
      assert.match(line, /user="?alice@example\.com/);
      assert.match(line, /decision="?allow/);

      assert.equal(access.some((l) => l.includes('x=1')), false, 'a query string was logged');
      await context.close();

    } finally {
      await s.proxy.stop();
      await s.idp.close();
    }
  });

  test('a user the policy refuses gets a 403 page naming them, and no WebSocket', async () => {
    const s = await setup();
    try {
      const context = await browser.newContext({ ignoreHTTPSErrors: true });
      const page = await context.newPage();
      const first = await page.goto(`${s.app}/`, { waitUntil: 'domcontentloaded' });
      assert.ok(first);
      await idpLogin(page, 'bob');
      const text = await page.locator('body').innerText();
      assert.match(text, /403/);
      assert.match(text, /bob@other\.test/);
      assert.equal(await page.locator('form[method=post][action="/.portcullis/sign_out"] button').count(), 1);
      const ws = await page.evaluate(async () => new Promise((resolve) => {
        const w = new WebSocket(`wss://${location.host}/ws`);
        w.onopen = () => resolve('open');
        w.onerror = () => resolve('refused');
      }));
      assert.equal(ws, 'refused');
      // The same account passes a route that lets any signed-in user in.
      await page.goto(`https://any.test:${s.port}/x`, { waitUntil: 'domcontentloaded' });
      if (page.url().includes('/interaction/')) await idpLogin(page, 'bob');
      assert.equal(seen(await page.locator('body').innerText()).target, '/x');
      await context.close();
    } finally {
      await s.proxy.stop();
      await s.idp.close();
    }
  });

  test('an unverified email never satisfies a domain rule', async () => {
    const s = await setup();
    try {
      const context = await browser.newContext({ ignoreHTTPSErrors: true });
      const page = await signIn(context, `${s.app}/`, 'carol');
      assert.match(await page.locator('body').innerText(), /403/);
      await context.close();
    } finally {
      await s.proxy.stop();
      await s.idp.close();
    }
  });

  test('requests that are not navigations get 401, forged cookies are no session', async () => {
    const s = await setup();
    try {
      const api = await request(s.port, 'app.test', '/api', { headers: { accept: 'application/json' } });
      assert.equal(api.status, 401);
      const post = await request(s.port, 'app.test', '/api', { method: 'POST', headers: { accept: 'text/html' }, body: 'x' });
      assert.equal(post.status, 401);
      const nav = await request(s.port, 'app.test', '/page', { headers: { accept: 'text/html' } });
      assert.equal(nav.status, 302);
      assert.match(nav.headers.location, new RegExp(`^http://127\\.0\\.0\\.1:${s.idpPort}/auth\\?`));
      const loc = new URL(nav.headers.location);
      assert.equal(loc.searchParams.get('code_challenge_method'), 'S256');
      assert.ok(loc.searchParams.get('state') && loc.searchParams.get('nonce'));
      assert.equal(loc.searchParams.get('redirect_uri'), `${s.app}/.portcullis/callback`);
      const context = await browser.newContext({ ignoreHTTPSErrors: true });
      await signIn(context, `${s.app}/`, 'alice');
      const good = await cookieHeader(context, s.app);
      assert.equal((await request(s.port, 'app.test', '/x', { headers: { cookie: good, accept: 'application/json' } })).status, 200);
      const forged = good.replace(/(__Host-_portcullis=v1\.1\.)(.)/, (m, p, c) => p + (c === 'A' ? 'B' : 'A'));
      assert.notEqual(forged, good);
      assert.equal((await request(s.port, 'app.test', '/x', { headers: { cookie: forged, accept: 'application/json' } })).status, 401);
      // A session made for app.test does not open on another route host.
      assert.equal((await request(s.port, 'any.test', '/x', { headers: { cookie: good, accept: 'application/json' } })).status, 401);
      await context.close();
    } finally {
      await s.proxy.stop();
      await s.idp.close();
    }
  });

  test('a wrong state and a replayed callback are refused', async () => {
    const s = await setup();
    try {
      const context = await browser.newContext({ ignoreHTTPSErrors: true });
      const page = await context.newPage();
      await page.goto(`${s.app}/`, { waitUntil: 'domcontentloaded' });
      // The login cookie exists now; a callback with another state must fail.
      const bad = await page.goto(`${s.app}/.portcullis/callback?code=made-up&state=wrong`, { waitUntil: 'domcontentloaded' });
      assert.equal(bad.status(), 400);
      // A real sign-in, recording the callback URL.
      let callback;
      page.on('request', (r) => { if (r.url().includes('/.portcullis/callback')) callback = r.url(); });
      await page.goto(`${s.app}/`, { waitUntil: 'domcontentloaded' });
      await idpLogin(page, 'alice');
      assert.ok(callback, 'callback seen');
      assert.equal(page.url(), `${s.app}/`);
      const replay = await page.goto(callback, { waitUntil: 'domcontentloaded' });
      assert.equal(replay.status(), 400);
      // A replayed callback in a fresh browser (no login cookie) is refused too.
      const other = await browser.newContext({ ignoreHTTPSErrors: true });
      const p2 = await other.newPage();
      assert.equal((await p2.goto(callback, { waitUntil: 'domcontentloaded' })).status(), 400);
      assert.equal((await other.cookies(s.app)).some((c) => c.name === '__Host-_portcullis'), false);
      await other.close();
      await context.close();
    } finally {
      await s.proxy.stop();
      await s.idp.close();
    }
  });

  test('sign-ins started in two tabs at once both complete', async () => {
    const s = await setup();
    try {
      const context = await browser.newContext({ ignoreHTTPSErrors: true });
      const logins = async () => (await context.cookies()).filter((c) => c.name.startsWith('__Host-_portcullis_csrf'));
      const first = await context.newPage();
      const second = await context.newPage();
      for (const [page, path] of [[first, '/first'], [second, '/second']]) {
        await page.goto(`${s.app}${path}`, { waitUntil: 'domcontentloaded' });
        assert.match(page.url(), /^http:\/\/127\.0\.0\.1:\d+\/interaction\//);
      }
      const pending = await logins();
      assert.equal(pending.length, 2, 'one login cookie per sign-in in progress');
      // This host's alone (`__Host-`: Path=/, no Domain), so no other host can plant one.
      for (const c of pending) assert.deepEqual([c.path, c.domain, c.secure], ['/', 'app.test', true]);
      // The tab that left first comes back first, and the other one still completes.
      await idpLogin(first, 'alice');
      assert.equal(first.url(), `${s.app}/first`);
      assert.equal((await logins()).length, 1, 'the other tab keeps its login cookie');
      await idpLogin(second, 'alice');
      assert.equal(second.url(), `${s.app}/second`);
      assert.equal(seen(await second.locator('body').innerText()).target, '/second');
      assert.deepEqual(await logins(), [], 'every login cookie is used up');
      await context.close();
    } finally {
      await s.proxy.stop();
      await s.idp.close();
    }
  });

  test('sign-out ends the session at the IdP too; the old cookie is refused, also after a restart', async () => {
    const s = await setup();
    try {
      const context = await browser.newContext({ ignoreHTTPSErrors: true });
      const page = await signIn(context, `${s.app}/`, 'alice');
      const stolen = await cookieHeader(context, s.app);
      assert.equal((await request(s.port, 'app.test', '/x', { headers: { cookie: stolen, accept: 'application/json' } })).status, 200);
      // The session cookie, sent with every request, is small; the ID token (most of a
      // session's size) is in a cookie sent to the sign-out endpoint alone.
      const names = async (path) => (await context.cookies(`${s.app}${path}`)).map((c) => c.name).sort();
      assert.deepEqual(await names('/x'), ['__Host-_portcullis']);
      assert.deepEqual(await names('/.portcullis/sign_out'), ['__Host-_portcullis', '__Secure-_portcullis_signout']);
      const sessionCookie = (await context.cookies(s.app)).find((c) => c.name === '__Host-_portcullis');
      assert.ok(sessionCookie.value.length < 512, `session cookie of ${sessionCookie.value.length} bytes`);
      const ends = [];
      page.on('request', (r) => {
        const u = new URL(r.url());
        if (u.searchParams.has('post_logout_redirect_uri')) ends.push(u);
      });
      await page.goto(`${s.app}/.portcullis/sign_out`, { waitUntil: 'domcontentloaded' });
      assert.equal(ends.length, 1, 'sent to the IdP\'s end-session endpoint');
      const hint = ends[0].searchParams.get('id_token_hint');
      assert.ok(hint, `no id_token_hint: ${ends[0]}`);
      const claims = JSON.parse(Buffer.from(hint.split('.')[1], 'base64url').toString());
      assert.equal(claims.sub, 'alice', 'the hint is the signed-in user\'s ID token');
      // oidc-provider asks for confirmation (RP-initiated logout).
      await page.waitForSelector('button[name=logout]', { timeout: 15000 });
      await Promise.all([page.waitForNavigation({ waitUntil: 'domcontentloaded' }), page.click('button[name=logout]')]);
      assert.equal(new URL(page.url()).pathname, '/.portcullis/signed_out');
      assert.match(await page.locator('body').innerText(), /signed out/i);
      assert.equal((await context.cookies(s.app)).some((c) => c.name === '__Host-_portcullis'), false, 'cookie cleared');
      const replay = await request(s.port, 'app.test', '/x', { headers: { cookie: stolen, accept: 'application/json' } });
      assert.equal(replay.status, 401, 'a copy of the cookie taken before sign-out still works');
      // The IdP session is over: the next visit shows its login form again.
      await page.goto(`${s.app}/`, { waitUntil: 'domcontentloaded' });
      await page.waitForSelector('input[name=login]', { timeout: 15000 });
      // Restart Portcullis on the same data_dir: the revocation is remembered. The new process
      // may listen on another port; the cookie is the host's, whatever the port.
      assert.equal(await s.proxy.stop(), 0, 'SIGTERM exits 0');
      const again = await startPortcullis({ dir: s.dir, yaml: s.yaml, waitForIdp: true });
      try {
        const r = await request(again.port, 'app.test', '/x', { headers: { cookie: stolen, accept: 'application/json' } });
        assert.equal(r.status, 401, 'revocation forgotten across a restart');
      } finally {
        await again.stop();
      }
      await context.close();
    } finally {
      await s.proxy.stop();
      await s.idp.close();
    }
  });

  test('an ID token signed by a key Portcullis has not seen makes it fetch the keys again', async () => {
    const s = await setup();
    try {
      const a = await browser.newContext({ ignoreHTTPSErrors: true });
      await signIn(a, `${s.app}/before`, 'alice');
      await a.close();
      // The IdP comes back with new signing keys (a new provider at the same address);
      // Portcullis still holds the old JWKS.
      await s.idp.attach(s.idpOpts);
      const b = await browser.newContext({ ignoreHTTPSErrors: true });
      const page = await signIn(b, `${s.app}/after-rotation`, 'alice');
      assert.equal(page.url(), `${s.app}/after-rotation`);
      assert.equal(seen(await page.locator('body').innerText()).target, '/after-rotation');
      await b.close();
    } finally {
      await s.proxy.stop();
      await s.idp.close();
    }
  });

  test('an expired ID token is refreshed with the refresh token and the user stays in', async () => {

    const s = await setup({ idTokenTtl: 2 });
    try {
      const context = await browser.newContext({ ignoreHTTPSErrors: true });
      await signIn(context, `${s.app}/`, 'alice');
      const cookie = await cookieHeader(context, s.app);
      await new Promise((r) => setTimeout(r, 3500));
      const r = await request(s.port, 'app.test', '/after', { headers: { cookie, accept: 'application/json' } });
      assert.equal(r.status, 200, r.body);
      assert.deepEqual(header(seen(r.body), 'x-forwarded-user'), ['alice@example.com']);
      const set = [r.headers['set-cookie']].flat().filter(Boolean);
      assert.ok(set.some((c) => c.startsWith('__Host-_portcullis=v1.')), 'a refreshed session cookie was set');
      assert.ok(
        set.some((c) => c.startsWith('__Secure-_portcullis_signout=') && c.includes('Path=/.portcullis/sign_out;') && !c.includes('Max-Age=0')),
        'the refreshed ID token is kept for sign-out',
      );
      await context.close();
    } finally {
      await s.proxy.stop();
      await s.idp.close();
    }
  });

  test('with the IdP down at start, public paths still serve and protected ones answer 503 until it is up', async () => {
    const s = await setup({ idpDown: true });
    try {
      const down = await request(s.port, 'app.test', '/', { headers: { accept: 'text/html' } });
      assert.equal(down.status, 503);
      assert.match(down.body, /sign-in service cannot be reached/);
      const pub = await request(s.port, 'public.test', '/open', { headers: { accept: 'text/html' } });
      assert.equal(pub.status, 200);
      assert.equal(JSON.parse(pub.body).target, '/open');

      // Portcullis has tried the IdP and failed before it comes up.
      await s.proxy.waitForLog('identity provider discovery failed');
      await s.idp.attach(s.idpOpts);
      const end = Date.now() + 20000;
      let status = 503;
      while (status === 503 && Date.now() < end) {
        await new Promise((r) => setTimeout(r, 250));
        status = (await request(s.port, 'app.test', '/', { headers: { accept: 'text/html' } })).status;
      }
      assert.equal(status, 302, 'discovery did not recover within the backoff cap');
      const context = await browser.newContext({ ignoreHTTPSErrors: true });
      const page = await signIn(context, `${s.app}/ok`, 'alice');
      assert.equal(page.url(), `${s.app}/ok`);
      await context.close();
    } finally {
      await s.proxy.stop();
      await s.idp.close();
    }
  });
  test('a sign-out link on another site is not acted on; the button it leads to is', async () => {
    const s = await setup();
    try {
      const context = await browser.newContext({ ignoreHTTPSErrors: true });
      await signIn(context, `${s.app}/`, 'alice');
      const evil = `https://evil.test:${s.port}/`;
      const page = await hostilePage(context, evil, `<a id="go" href="${s.app}/.portcullis/sign_out">win a prize</a>
        <form id="f" method="post" action="${s.app}/.portcullis/sign_out"></form>`);
      await Promise.all([page.waitForNavigation({ waitUntil: 'domcontentloaded' }), page.click('#go')]);
      assert.equal(new URL(page.url()).pathname, '/.portcullis/sign_out');
      assert.match(await page.locator('body').innerText(), /another site asked to sign you out/);
      assert.equal((await whoami(context, s.app)).email, 'alice@example.com', 'a cross-site link signed the user out');
      // A cross-site form POST carries no SameSite=Lax cookie, and is refused by its Origin anyway.
      const form = await hostilePage(context, evil, `<form id="f" method="post" action="${s.app}/.portcullis/sign_out"></form>`);
      await Promise.all([form.waitForNavigation({ waitUntil: 'domcontentloaded' }), form.evaluate(() => document.getElementById('f').submit())]);
      assert.equal((await whoami(context, s.app)).email, 'alice@example.com', 'a cross-site POST signed the user out');
      // The button on the confirmation page is the user's own, same-origin POST; the browser
      // then goes on to end the session at the IdP.
      const ends = page.waitForRequest((r) => new URL(r.url()).searchParams.has('post_logout_redirect_uri'));
      await page.click('form[action="/.portcullis/sign_out"] button');
      assert.ok(new URL((await ends).url()).searchParams.get('id_token_hint'), 'no id_token_hint');
      assert.equal((await whoami(context, s.app)).signed_in, false);
      await context.close();
    } finally {
      await s.proxy.stop();
      await s.idp.close();
    }
  });

  test('a session or login cookie planted from a sibling host never signs the browser in as someone else', async () => {
    const s = await setup();
    try {
      // Bob signs in on app.test in his own browser (and is refused there, but holds a session
      // cookie for app.test): the cookie a sibling host's page would plant.
      const bobs = await browser.newContext({ ignoreHTTPSErrors: true });
      await signIn(bobs, `${s.app}/`, 'bob');
      const bob = (await bobs.cookies(s.app)).find((c) => c.name === '__Host-_portcullis');
      assert.ok(bob, 'bob has a session cookie');
      await bobs.close();
      const plant = `<script>
        for (const name of ['_portcullis', '__Host-_portcullis', '__Secure-_portcullis']) {
          document.cookie = name + '=${bob.value}; Domain=app.test; Path=/; Secure; SameSite=Lax';
        }
      </script>`;
      const sibling = `https://evil.app.test:${s.port}/`;
      // A browser that is not signed in is not signed in as bob.
      const victim = await browser.newContext({ ignoreHTTPSErrors: true });
      await hostilePage(victim, sibling, plant);
      const planted = (await victim.cookies(s.app)).map((c) => c.name).sort();
      assert.ok(planted.includes('_portcullis'), `the bare name was planted: ${planted}`);
      assert.ok(!planted.includes('__Host-_portcullis'), 'the browser took a __Host- cookie with a Domain');
      assert.equal((await whoami(victim, s.app)).signed_in, false);
      // A signed-in browser stays who it is.
      await signIn(victim, `${s.app}/`, 'alice');
      await hostilePage(victim, sibling, plant);
      assert.equal((await whoami(victim, s.app)).email, 'alice@example.com');
      await victim.close();

      // Login CSRF by a planted login cookie: the attacker begins a sign-in, keeps its login
      // cookie, signs in at the IdP as himself, and keeps the callback unredeemed (his own
      // browser comes back without the login cookie, so Portcullis redeems nothing). The
      // victim's browser gets his login cookie from the sibling host and is sent to that
      // callback.
      const attacker = await browser.newContext({ ignoreHTTPSErrors: true });
      const a = await attacker.newPage();
      let callback;
      a.on('request', (r) => { if (new URL(r.url()).pathname === '/.portcullis/callback') callback = r.url(); });
      await a.goto(`${s.app}/`, { waitUntil: 'domcontentloaded' });
      const login = (await attacker.cookies(s.app)).find((c) => c.name.includes('_csrf_'));
      assert.ok(login, 'the attacker has a login cookie');
      assert.ok(login.name.startsWith('__Host-'), `login cookie ${login.name}`);
      await attacker.clearCookies({ name: login.name });
      await idpLogin(a, 'bob');
      assert.ok(callback, 'the attacker has his callback');
      await attacker.close();
      const fresh = await browser.newContext({ ignoreHTTPSErrors: true });
      const bare = login.name.replace(/^__Host-/, '');
      await hostilePage(fresh, sibling, `<script>
        for (const name of ['${login.name}', '__Secure-${bare}', '${bare}']) {
          document.cookie = name + '=${login.value}; Domain=app.test; Path=/; Secure; SameSite=Lax';
        }
      </script>`);
      const v = await fresh.newPage();
      await v.goto(callback, { waitUntil: 'domcontentloaded' });
      assert.equal((await whoami(fresh, s.app)).signed_in, false, 'a planted login cookie signed the browser in');
      await fresh.close();
    } finally {
      await s.proxy.stop();
      await s.idp.close();
    }
  });

  test('an open WebSocket lives while its session is refreshed and ends once the IdP disables the user', async () => {
    const s = await setup({ idTokenTtl: 2 });
    try {
      const context = await browser.newContext({ ignoreHTTPSErrors: true });
      const page = await signIn(context, `${s.app}/`, 'alice');
      const before = await cookieHeader(context, s.app);
      await page.evaluate(() => new Promise((resolve, reject) => {
        const w = new WebSocket(`wss://${location.host}/ws`);
        window.ws = w;
        window.wsClosed = null;
        w.onopen = () => resolve();
        w.onerror = () => reject(new Error('refused'));
        w.onclose = (e) => { window.wsClosed = { code: e.code, reason: e.reason }; };
      }));
      // Two ID token lifetimes: the socket's session was refreshed, and it still carries data.
      await sleep(4500);
      assert.ok(s.idp.grants.refresh >= 1, 'no refresh happened');
      const echoed = await page.evaluate(() => new Promise((resolve) => {
        window.ws.onmessage = (m) => resolve(m.data);
        window.ws.send('still here');
      }));
      assert.equal(echoed, 'still here');
      // The browser's cookie from before the socket's refresh gets that same refresh: no
      // second use of the refresh token.
      const grants = s.idp.grants.refresh;
      const r = await request(s.port, 'app.test', '/after', { headers: { cookie: before, accept: 'application/json' } });
      assert.equal(r.status, 200, r.body);
      assert.equal(s.idp.grants.refresh, grants, 'the refresh was not shared');
      // Disabled at the IdP: the next refresh fails and the socket is closed, saying why.
      DISABLED.add('alice');
      const end = Date.now() + 10000;
      let closed = null;
      while (!closed && Date.now() < end) {
        await sleep(200);
        closed = await page.evaluate(() => window.wsClosed);
      }
      assert.deepEqual(closed, { code: 1008, reason: 'session expired: sign in again' });
      // A request of the disabled user's is sent to sign in again, its cookies cleared.
      const again = await request(s.port, 'app.test', '/later', { headers: { cookie: await cookieHeader(context, s.app), accept: 'text/html' } });
      assert.equal(again.status, 302, again.body);
      assert.ok(again.headers.location.startsWith(`http://127.0.0.1:${s.idpPort}/auth?`), again.headers.location);
      const cleared = [again.headers['set-cookie']].flat().filter(Boolean);
      assert.ok(cleared.some((c) => c.startsWith('__Host-_portcullis=;') && c.includes('Max-Age=0')), String(cleared));
      await context.close();
    } finally {
      DISABLED.delete('alice');
      await s.proxy.stop();
      await s.idp.close();
    }
  });
  test('the pages that show who is signed in show a hostile name from the IdP as text', async () => {
    const s = await setup();
    try {
      const context = await browser.newContext({ ignoreHTTPSErrors: true });
      const page = await context.newPage();
      const dialogs = [];
      page.on('dialog', async (d) => { dialogs.push(d.message()); await d.dismiss(); });
      await page.goto(`${s.app}/`, { waitUntil: 'domcontentloaded' });
      await idpLogin(page, 'mallory');
      // The 403 page (the domain is not example.com), then who-am-I.
      assert.match(await page.locator('body').innerText(), /403/);
      const shown = [await page.locator('body').innerText()];
      const injected = [await page.locator('script, img, svg').count()];
      await page.goto(`${s.app}/.portcullis/`, { waitUntil: 'domcontentloaded' });
      shown.push(await page.locator('body').innerText());
      injected.push(await page.locator('script, img, svg').count());
      assert.deepEqual(injected, [0, 0], 'markup from the IdP became elements');
      assert.ok(shown[0].includes('<script>alert(1)</script>@evil.test'), shown[0]);
      assert.ok(shown[1].includes('</p><img/src=x/onerror=alert(2)>'), shown[1]);
      assert.ok(shown[1].includes('"><svg/onload=alert(3)>'), shown[1]);
      assert.deepEqual(dialogs, []);
      await context.close();
    } finally {
      await s.proxy.stop();
      await s.idp.close();
    }
  });
  test('a callback without its state is refused, and the same callback with it completes', async () => {
    const s = await setup();
    try {
      const context = await browser.newContext({ ignoreHTTPSErrors: true });
      const page = await context.newPage();
      let callback;
      page.on('request', (r) => { if (!callback && new URL(r.url()).pathname === '/.portcullis/callback') callback = r.url(); });
      await page.goto(`${s.app}/kept`, { waitUntil: 'domcontentloaded' });
      // The login cookie is kept aside while the IdP sends the browser back, so the code is
      // not redeemed then.
      const login = (await context.cookies(s.app)).find((c) => c.name.includes('_csrf_'));
      await context.clearCookies({ name: login.name });
      await idpLogin(page, 'alice');
      assert.ok(callback, 'the callback was seen');
      await context.addCookies([login]);
      const withoutState = new URL(callback);
      withoutState.searchParams.delete('state');
      const refused = await page.goto(withoutState.toString(), { waitUntil: 'domcontentloaded' });
      assert.equal(refused.status(), 400);
      assert.equal((await context.cookies(s.app)).some((c) => c.name === '__Host-_portcullis'), false);
      // The control: the login cookie and the code were good.
      await context.addCookies([login]);
      await page.goto(callback, { waitUntil: 'domcontentloaded' });
      assert.equal(page.url(), `${s.app}/kept`);
      await context.close();
    } finally {
      await s.proxy.stop();
      await s.idp.close();
    }
  });

  test('sign-ins started over and over with long return paths never lock the user out', async () => {
    const s = await setup();
    try {
      const context = await browser.newContext({ ignoreHTTPSErrors: true });
      await signIn(context, `${s.app}/`, 'alice');
      const page = await context.newPage();
      // The IdP is gone: each sign-in stays in progress and keeps its login cookie, as when a
      // page on another site sends the browser to sign_in again and again.
      await s.idp.close();
      const long = `/?${'A'.repeat(2900)}`;
      for (let i = 0; i < 20; i++) {
        await page.goto(`${s.app}/.portcullis/sign_in?redirect_uri=${encodeURIComponent(long)}`).catch(() => {});
      }
      const logins = (await context.cookies(s.app)).filter((c) => c.name.includes('_csrf_'));
      assert.ok(logins.length >= 1 && logins.length <= 8, `${logins.length} login cookies kept`);
      for (const c of logins) assert.ok(c.value.length < 2000, `a login cookie of ${c.value.length} bytes`);
      const fresh = await context.newPage();
      const r = await fresh.goto(`${s.app}/still-in`, { waitUntil: 'domcontentloaded' });
      assert.equal(r.status(), 200);
      assert.equal(fresh.url(), `${s.app}/still-in`);
      await context.close();
    } finally {
      await s.proxy.stop();
      await s.idp.close();
    }
  });

  test('sign_in?redirect_uri= comes back only to a path on this host', async () => {
    const s = await setup();
    try {
      const context = await browser.newContext({ ignoreHTTPSErrors: true });
      // Signed in at the IdP once: each sign-in below goes there and straight back.
      await signIn(context, `${s.app}/`, 'alice');
      const page = await context.newPage();
      const land = async (to) => {
        await page.goto(`${s.app}/.portcullis/sign_in?redirect_uri=${encodeURIComponent(to)}`, { waitUntil: 'domcontentloaded' });
        return page.url();
      };
      assert.equal(await land('/ok?x=1'), `${s.app}/ok?x=1`, 'the control: a path on this host');
      for (const evil of [
        '//evil.test/x', '/\\evil.test', 'https:evil.test', 'https://evil.test/', 'http://evil.test',
        '/%2F%2Fevil.test', '/%5Cevil.test', 'javascript:alert(1)', ' //evil.test', '/a\r\nLocation: https://evil.test',
      ]) {
        assert.equal(await land(evil), `${s.app}/`, `redirect_uri=${JSON.stringify(evil)}`);
      }
      await context.close();
    } finally {
      await s.proxy.stop();
      await s.idp.close();
    }
  });
});
