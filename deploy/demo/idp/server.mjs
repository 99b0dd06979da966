// DEMO ONLY: a throw-away OpenID Connect identity provider for `docker compose --profile demo`
// (and the Docker test suite), built on oidc-provider as the no-Docker demo's is. Users,
// passwords and clients come from a JSON file (DEMO_IDP_CONFIG, default /etc/demo-idp/idp.json;
// deploy/demo/idp.json is the demo's); everything is kept in memory and forgotten on restart.
// Never put it in front of anything real: its passwords are public and it speaks plain HTTP.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import Provider from 'oidc-provider';

const file = process.env.DEMO_IDP_CONFIG || '/etc/demo-idp/idp.json';
const settings = JSON.parse(fs.readFileSync(file, 'utf8'));
const { issuer, port = 5556, clients = [], users = [] } = settings;
if (!issuer || users.length === 0 || clients.length === 0) {
  console.error(`demo-idp: ${file} needs "issuer", "clients" and "users"`);
  process.exit(1);
}
/** The account id (the ID token's `sub`) is the user's `id`, else the email's local part. */
const accounts = new Map(users.map((u) => [u.id || u.email.split('@')[0], u]));
const byLogin = new Map(users.map((u) => [u.email.toLowerCase(), u.id || u.email.split('@')[0]]));

// Fresh signing keys on every start, as the no-Docker demo's IdP has.
const jwk = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });

const provider = new Provider(issuer, {
  jwks: { keys: [{ ...jwk, kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' }] },
  clients: clients.map((c) => ({
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    ...c,
  })),
  async findAccount(ctx, id) {
    const u = accounts.get(id);
    if (!u) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: u.email, email_verified: true, name: u.name || u.email, groups: u.groups || [] };
      },
    };
  },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name', 'groups'] },
  ttl: { IdToken: 3600, AccessToken: 3600, RefreshToken: 86400, Session: 86400, Grant: 86400, Interaction: 600 },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  features: { devInteractions: { enabled: false }, rpInitiatedLogout: { enabled: true } },
  cookies: { keys: [crypto.randomBytes(32).toString('base64')] },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  async loadExistingGrant(ctx) {
    // Consent is implied: a demo has no consent screen.
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid email profile offline_access');
    await grant.save();
    return grant;
  },
});
provider.on('server_error', (ctx, err) => console.error('demo-idp server_error', err));

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginPage(res, uid, { login = '', error = '' } = {}) {
  const hint = settings.loginHint ? `<p class="hint">${escape(settings.loginHint)}</p>` : '';
  const body = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in: demo identity provider</title>
<style>body{font-family:system-ui,sans-serif;max-width:22rem;margin:4rem auto;padding:0 1rem}
input,button{display:block;width:100%;box-sizing:border-box;margin:.4rem 0 1rem;padding:.5rem;font-size:1rem}
.error{color:#b00020}.hint{color:#555}</style></head>
<body><h1>Demo sign-in</h1>${hint}${error ? `<p class="error">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}/login">
<label>Email <input name="login" type="email" autocomplete="username" value="${escape(login)}" autofocus required></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button></form></body></html>`;
  res.writeHead(error ? 401 : 200, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
    // No form-action: Chromium applies it to the redirects after the POST too (to the application).
    'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
  });
  res.end(body);
}

async function readForm(req) {
  let text = '';
  for await (const chunk of req) {
    text += chunk;
    if (text.length > 16384) throw new Error('form too large');
  }
  return new URLSearchParams(text);
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error('interaction mismatch');
  if (details.prompt.name !== 'login') {
    // Consent (never asked for: loadExistingGrant grants the scopes up front).
    await provider.interactionFinished(req, res, { consent: {} }, { mergeWithLastSubmission: true });
    return;
  }
  if (req.method === 'GET' && !action) return loginPage(res, uid);
  if (req.method === 'POST' && action === 'login') {
    const form = await readForm(req);
    const login = (form.get('login') || '').trim();
    const id = byLogin.get(login.toLowerCase());
    const user = id && accounts.get(id);
    const given = Buffer.from(form.get('password') || '');
    const want = Buffer.from(user ? user.password : '');
    if (!user || given.length !== want.length || !crypto.timingSafeEqual(given, want)) {
      return loginPage(res, uid, { login, error: 'Unknown email or wrong password.' });
    }
    await provider.interactionFinished(req, res, { login: { accountId: id } }, { mergeWithLastSubmission: false });
    return;
  }
  res.writeHead(405).end();
}

const callback = provider.callback();
const server = http.createServer(async (req, res) => {
  const m = /^\/interaction\/([\w-]+)(?:\/(login))?\/?(?:\?.*)?$/.exec(req.url);
  if (!m) return callback(req, res);
  try {
    await interaction(req, res, m[1], m[2]);
  } catch (err) {
    console.error('demo-idp interaction:', err.message);
    if (!res.headersSent) res.writeHead(400, { 'content-type': 'text/plain' });
    res.end('This sign-in has expired or is invalid: go back to the application and start again.\n');
  }
});
server.listen(port, '0.0.0.0', () => console.log(`demo-idp: ${issuer} (listening on :${port}), ${accounts.size} users`));
// PID 1 in its container: exit at once on docker stop (all state is in memory anyway).
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
