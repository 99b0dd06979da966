// Sign-in end to end: the real Portcullis binary, oidc-provider as the IdP, headless Chromium.
import assert from 'node:assert/strict';
import * as jose from 'jose';
import { after, before, describe, test } from 'node:test';
import {
  config, cookieHeader, freePort, idpLogin, launchBrowser, request, startEcho, startIdp, startPortcullis, tmpdir,
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

/** One Portcullis + IdP pair; `idTokenTtl` shortens ID tokens. */
async function setup({ idTokenTtl = 3600, startIdpFirst = true } = {}) {
  const port = await freePort();
  const idpPort = await freePort();
  const dir = tmpdir('portcullis-e2e-');
  const hosts = ['app.test', 'any.test'];
  const idpOpts = {
    port: idpPort,
    idTokenTtl,
    redirectUris: hosts.map((h) => `https://${h}:${port}/.portcullis/callback`),
    postLogoutRedirectUris: hosts.map((h) => `https://${h}:${port}/.portcullis/signed_out`),
  };
  const idp = startIdpFirst ? await startIdp(idpOpts) : null;
  const yaml = config({ port, idpPort, echo: echo.url, dir });
  const proxy = await startPortcullis({ dir, yaml, port, waitForIdp: startIdpFirst });
  return { port, idpPort, dir, yaml, idp, idpOpts, proxy, app: `https://app.test:${port}` };
}

async function signIn(context, url, user) {
  const page = await context.newPage();
  await page.goto(url, { waitUntil: 'domcontentloaded' });
  assert.match(page.url(), /^http:\/\/127\.0\.0\.1:\d+\/interaction\//, 'a private window is sent to the IdP');
  await idpLogin(page, user);
  return page;
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
      const session = cookies.find((c) => c.name === '_portcullis');
      assert.ok(session, 'session cookie set');
      assert.equal(session.secure, true);
      assert.equal(session.httpOnly, true);
      assert.equal(session.sameSite, 'Lax');
      assert.equal(session.domain, 'app.test', 'host-only cookie');
      assert.deepEqual((await context.cookies()).filter((c) => c.name.startsWith('_portcullis_csrf')), [], 'login cookie cleared');
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
      assert.equal(await page.locator('a[href="/.portcullis/sign_out"]').count(), 1);
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
      const forged = good.replace(/(_portcullis=v1\.1\.)(.)/, (m, p, c) => p + (c === 'A' ? 'B' : 'A'));
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
      assert.equal((await other.cookies(s.app)).some((c) => c.name === '_portcullis'), false);
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
      const logins = async () => (await context.cookies()).filter((c) => c.name.startsWith('_portcullis_csrf'));
      const first = await context.newPage();
      const second = await context.newPage();
      for (const [page, path] of [[first, '/first'], [second, '/second']]) {
        await page.goto(`${s.app}${path}`, { waitUntil: 'domcontentloaded' });
        assert.match(page.url(), /^http:\/\/127\.0\.0\.1:\d+\/interaction\//);
      }
      const pending = await logins();
      assert.equal(pending.length, 2, 'one login cookie per sign-in in progress');
      for (const c of pending) assert.equal(c.path, '/.portcullis/');
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
      assert.deepEqual(await names('/x'), ['_portcullis']);
      assert.deepEqual(await names('/.portcullis/sign_out'), ['_portcullis', '_portcullis_signout']);
      const sessionCookie = (await context.cookies(s.app)).find((c) => c.name === '_portcullis');
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
      assert.equal((await context.cookies(s.app)).some((c) => c.name === '_portcullis'), false, 'cookie cleared');
      const replay = await request(s.port, 'app.test', '/x', { headers: { cookie: stolen, accept: 'application/json' } });
      assert.equal(replay.status, 401, 'a copy of the cookie taken before sign-out still works');
      // The IdP session is over: the next visit shows its login form again.
      await page.goto(`${s.app}/`, { waitUntil: 'domcontentloaded' });
      await page.waitForSelector('input[name=login]', { timeout: 15000 });
      // Restart Portcullis on the same data_dir: the revocation is remembered.
      assert.equal(await s.proxy.stop(), 0, 'SIGTERM exits 0');
      const again = await startPortcullis({ dir: s.dir, yaml: s.yaml, port: s.port, waitForIdp: true });
      try {
        const r = await request(s.port, 'app.test', '/x', { headers: { cookie: stolen, accept: 'application/json' } });
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
    let idp2;
    try {
      const a = await browser.newContext({ ignoreHTTPSErrors: true });
      await signIn(a, `${s.app}/before`, 'alice');
      await a.close();
      // The IdP restarts with new signing keys; Portcullis still holds the old JWKS.
      await s.idp.close();
      idp2 = await startIdp(s.idpOpts);
      const b = await browser.newContext({ ignoreHTTPSErrors: true });
      const page = await signIn(b, `${s.app}/after-rotation`, 'alice');
      assert.equal(page.url(), `${s.app}/after-rotation`);
      assert.equal(seen(await page.locator('body').innerText()).target, '/after-rotation');
      await b.close();
    } finally {
      await s.proxy.stop();
      await idp2?.close();
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
      assert.ok(set.some((c) => c.startsWith('_portcullis=v1.')), 'a refreshed session cookie was set');
      assert.ok(
        set.some((c) => c.startsWith('_portcullis_signout=') && c.includes('Path=/.portcullis/sign_out;') && !c.includes('Max-Age=0')),
        'the refreshed ID token is kept for sign-out',
      );
      await context.close();
    } finally {
      await s.proxy.stop();
      await s.idp.close();
    }
  });

  test('with the IdP down at start, public paths still serve and protected ones answer 503 until it is up', async () => {
    const s = await setup({ startIdpFirst: false });
    let idp;
    try {
      const down = await request(s.port, 'app.test', '/', { headers: { accept: 'text/html' } });
      assert.equal(down.status, 503);
      assert.match(down.body, /sign-in service cannot be reached/);
      const pub = await request(s.port, 'public.test', '/open', { headers: { accept: 'text/html' } });
      assert.equal(pub.status, 200);
      assert.equal(JSON.parse(pub.body).target, '/open');

      idp = await startIdp(s.idpOpts);
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
      await idp?.close();
    }
  });
});
