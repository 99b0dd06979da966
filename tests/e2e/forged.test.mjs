// Forged ID tokens and stolen codes, end to end through the real binary.
//
// A hostile identity provider (discovery, JWKS, token endpoint: the parts Portcullis talks to)
// answers the code exchange with whatever ID token a test mints, so every way an ID token can be
// wrong is tried against the real callback: `alg: none`, HS256 keyed with the public key, another
// issuer, another audience, a wrong or missing nonce, an expired token, a key that is not the
// IdP's. A correctly signed token is the control that shows the set-up would let a user in.
// The last test uses the real oidc-provider: a code issued to another client, injected into
// Portcullis's callback with Portcullis's own state, is not redeemed.
import assert from 'node:assert/strict';
import http from 'node:http';
import { once } from 'node:events';
import * as jose from 'jose';
import { after, before, describe, test } from 'node:test';
import {
  config, idpLogin, launchBrowser, request, startEcho, startIdp, startPortcullis, tmpdir,
} from './lib.mjs';

/**
 * The hostile IdP, on a port of its own choosing; `mint({ nonce, issuer })` makes the ID token of
 * the next code exchange.
 */
async function startHostileIdp() {
  const { publicKey, privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
  const jwk = { ...(await jose.exportJWK(publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' };
  const state = { mint: null, exchanges: 0 };
  let issuer;
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, issuer);
    const json = (code, body) => { res.writeHead(code, { 'content-type': 'application/json' }); res.end(JSON.stringify(body)); };
    if (url.pathname === '/.well-known/openid-configuration') {
      return json(200, {
        issuer,
        authorization_endpoint: `${issuer}/auth`,
        token_endpoint: `${issuer}/token`,
        jwks_uri: `${issuer}/jwks`,
        response_types_supported: ['code'],
        subject_types_supported: ['public'],
        id_token_signing_alg_values_supported: ['RS256'],
      });
    }
    if (url.pathname === '/jwks') return json(200, { keys: [jwk] });
    if (url.pathname === '/token' && req.method === 'POST') {
      let body = '';
      for await (const c of req) body += c;
      state.exchanges += 1;
      const idToken = await state.mint({ nonce: state.nonce, issuer });
      return json(200, { access_token: 'at', token_type: 'Bearer', expires_in: 3600, id_token: idToken });
    }
    json(404, {});
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  issuer = `http://127.0.0.1:${server.address().port}`;
  return { issuer, port: server.address().port, privateKey, publicKey, state, close: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }) };
}

function claims(issuer, nonce, over = {}) {
  const now = Math.floor(Date.now() / 1000);
  return {
    iss: issuer, aud: 'portcullis', sub: 'alice', email: 'alice@example.com', email_verified: true,
    iat: now, exp: now + 600, nonce, ...over,
  };
}

const setCookies = (r) => [r.headers['set-cookie'] || []].flat();
const sessionCookie = (r) => setCookies(r).map((c) => c.split(';')[0]).find((c) => /^__Host-_portcullis=./.test(c));

let echo;
before(async () => { echo = await startEcho('forged'); });
after(() => echo?.stop());

describe('ID tokens Portcullis must not accept', () => {
  let idp;
  let proxy;
  let port;
  before(async () => {
    idp = await startHostileIdp();
    const dir = tmpdir('portcullis-forged-');
    proxy = await startPortcullis({ dir, yaml: config({ idpPort: idp.port, echo: echo.url, dir }), waitForIdp: true });
    ({ port } = proxy);
  });
  after(async () => { await proxy?.stop(); await idp?.close(); });

  /** One sign-in through the callback with the minted token; returns the callback's answer. */
  async function signInWith(mint) {
    const start = await request(port, 'app.test', '/wanted', { headers: { accept: 'text/html' } });
    assert.equal(start.status, 302);
    const authorize = new URL(start.headers.location);
    assert.equal(authorize.origin, idp.issuer, `sent to the IdP, not ${start.headers.location}`);
    const login = setCookies(start).map((c) => c.split(';')[0]).join('; ');
    idp.state.nonce = authorize.searchParams.get('nonce');
    idp.state.mint = mint;
    const before = idp.state.exchanges;
    const cb = await request(port, 'app.test',
      `/.portcullis/callback?code=c0de&state=${encodeURIComponent(authorize.searchParams.get('state'))}`,
      { headers: { cookie: login, accept: 'text/html' } });
    assert.equal(idp.state.exchanges, before + 1, 'the code was exchanged');
    return cb;
  }

  async function refused(mint) {
    const cb = await signInWith(mint);
    assert.equal(sessionCookie(cb), undefined, `a session was made: ${JSON.stringify(cb.headers)}`);
    assert.ok(cb.status >= 400, `status ${cb.status}`);
    assert.doesNotMatch(cb.body, /eyJ[\w-]+\.[\w-]+/, 'the page shows no token');
  }

  test('control: a correctly signed token signs the user in', async () => {
    const cb = await signInWith(({ nonce, issuer }) =>
      new jose.SignJWT(claims(issuer, nonce)).setProtectedHeader({ alg: 'RS256', kid: 'k1' }).sign(idp.privateKey));
    assert.equal(cb.status, 302);
    assert.equal(new URL(cb.headers.location).pathname, '/wanted');
    const cookie = sessionCookie(cb);
    assert.ok(cookie);
    const r = await request(port, 'app.test', '/wanted', { headers: { cookie } });
    assert.equal(r.status, 200);
  });

  test('alg: none', () => refused(({ nonce, issuer }) => new jose.UnsecuredJWT(claims(issuer, nonce)).encode()));

  test('HS256 keyed with the IdP public key', () => refused(async ({ nonce, issuer }) => {
    const pem = await jose.exportSPKI(idp.publicKey);
    return new jose.SignJWT(claims(issuer, nonce)).setProtectedHeader({ alg: 'HS256', kid: 'k1' }).sign(Buffer.from(pem));
  }));

  test('another issuer', () => refused(({ nonce }) =>
    new jose.SignJWT(claims('http://evil.test', nonce)).setProtectedHeader({ alg: 'RS256', kid: 'k1' }).sign(idp.privateKey)));

  test('another audience', () => refused(({ nonce, issuer }) =>
    new jose.SignJWT(claims(issuer, nonce, { aud: 'other-client' })).setProtectedHeader({ alg: 'RS256', kid: 'k1' }).sign(idp.privateKey)));

  test('a nonce from another login, and none at all', async () => {
    await refused(({ issuer }) =>
      new jose.SignJWT(claims(issuer, 'someone-elses-nonce')).setProtectedHeader({ alg: 'RS256', kid: 'k1' }).sign(idp.privateKey));
    await refused(({ issuer }) =>
      new jose.SignJWT(claims(issuer, undefined)).setProtectedHeader({ alg: 'RS256', kid: 'k1' }).sign(idp.privateKey));
  });

  test('an expired token', () => refused(({ nonce, issuer }) => {
    const now = Math.floor(Date.now() / 1000);
    return new jose.SignJWT(claims(issuer, nonce, { iat: now - 7200, exp: now - 3600 }))
      .setProtectedHeader({ alg: 'RS256', kid: 'k1' }).sign(idp.privateKey);
  }));

  test('a key the IdP does not publish, under its key id', () => refused(async ({ nonce, issuer }) => {
    const { privateKey } = await jose.generateKeyPair('RS256');
    return new jose.SignJWT(claims(issuer, nonce)).setProtectedHeader({ alg: 'RS256', kid: 'k1' }).sign(privateKey);
  }));

  test('a tampered payload', () => refused(async ({ nonce, issuer }) => {
    const good = await new jose.SignJWT(claims(issuer, nonce)).setProtectedHeader({ alg: 'RS256', kid: 'k1' }).sign(idp.privateKey);
    const [h, , s] = good.split('.');
    const evil = Buffer.from(JSON.stringify(claims(issuer, nonce, { email: 'root@example.com' }))).toString('base64url');
    return `${h}.${evil}.${s}`;
  }));
});

test('a code issued to another client, injected with our state, is not redeemed', async () => {
  const dir = tmpdir('portcullis-forged-');
  const idp = await startIdp();
  const proxy = await startPortcullis({ dir, yaml: config({ idpPort: idp.port, echo: echo.url, dir }) });
  const { port } = proxy;
  await idp.attach({
    redirectUris: [`https://app.test:${port}/.portcullis/callback`],
    postLogoutRedirectUris: [`https://app.test:${port}/.portcullis/signed_out`],
  });
  await proxy.idpDiscovered();
  const browser = await launchBrowser();
  try {
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await context.newPage();
    // The victim's browser starts a sign-in: it holds Portcullis's login cookie for this state.
    await page.goto(`https://app.test:${port}/`, { waitUntil: 'domcontentloaded' });
    let authorize;
    page.on('request', (r) => { if (r.url().includes('/auth?')) authorize = authorize || r.url(); });
    await page.goto(`https://app.test:${port}/`, { waitUntil: 'domcontentloaded' });
    assert.ok(authorize, 'saw the authorization request');
    const ours = new URL(authorize);
    // The attacker's authorization, for another client, carrying the victim's state back.
    const theirs = new URL(ours);
    theirs.searchParams.set('client_id', 'other-client');
    theirs.searchParams.delete('code_challenge');
    theirs.searchParams.delete('code_challenge_method');
    theirs.searchParams.set('scope', 'openid email');
    let callback;
    page.on('response', (r) => { if (r.url().includes('/.portcullis/callback')) callback = r; });
    await page.goto(theirs.toString(), { waitUntil: 'domcontentloaded' });
    await idpLogin(page, 'alice');
    assert.ok(callback, 'the IdP sent the code to our callback');
    assert.match(callback.url(), /[?&]code=/);
    assert.ok(callback.status() >= 400, `status ${callback.status()}`);
    assert.equal((await context.cookies(`https://app.test:${port}`)).some((c) => c.name === '__Host-_portcullis'), false);
    await context.close();
  } finally {
    await browser.close();
    await proxy.stop();
    await idp.close();
  }
});
