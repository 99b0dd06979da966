// Try Portcullis in front of the real OpenClaw gateway with no Docker engine and no account
// anywhere (demo-only values). scripts/demo builds Portcullis and installs Node 24 + OpenClaw,
// then runs this (on Node 24): the test suite's identity provider (oidc-provider), the OpenClaw
// gateway from npm on 127.0.0.1 in trusted-proxy mode, and Portcullis with a self-signed
// certificate. It prints the URL and the demo login, and stops everything on Ctrl-C.
//
// The URL uses this machine's network address, not localhost: OpenClaw refuses identity from a
// proxy whose client is loopback (a local process could forge it), so the browser must reach
// Portcullis over a real interface. DEMO_HOST picks the address; DEMO_ECHO=1 puts the Rust echo
// (which shows the headers Portcullis sends) behind Portcullis instead of OpenClaw.
import crypto from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import {
  openclawConfig, startEcho, startIdp, startOpenClaw, startPortcullis, tmpdir, USERS,
} from './lib.mjs';

function firstAddress() {
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list || []) {
      if (a.family === 'IPv4' && !a.internal) return a.address;
    }
  }
  return undefined;
}

const port = Number(process.env.DEMO_PORT || 8443);
const idpPort = Number(process.env.DEMO_IDP_PORT || 9071);
const echoMode = process.env.DEMO_ECHO === '1';
const host = process.env.DEMO_HOST || (echoMode ? 'localhost' : firstAddress());
if (!host) {
  console.error('demo: this machine has no non-loopback IPv4 address; set DEMO_HOST (OpenClaw refuses loopback clients), or DEMO_ECHO=1');
  process.exit(1);
}
const origin = port === 443 ? `https://${host}` : `https://${host}:${port}`;
const dir = tmpdir('portcullis-demo-');

const idp = await startIdp({
  port: idpPort,
  host: host === 'localhost' ? '127.0.0.1' : host,
  redirectUris: [`${origin}/.portcullis/callback`],
  postLogoutRedirectUris: [`${origin}/.portcullis/signed_out`],
});
const stops = [() => idp.close()];

let upstream;
if (echoMode) {
  const echo = await startEcho('demo-upstream');
  stops.push(() => echo.stop());
  upstream = echo.url;
} else {
  console.log('Starting the OpenClaw gateway (about 15 s)…');
  const gateway = await startOpenClaw({ dir, config: (gwPort) => openclawConfig({ port: gwPort, origin }) });
  stops.unshift(() => gateway.stop());
  upstream = `http://127.0.0.1:${gateway.port}`;
}

// Demo-only secret, fresh each run: never reuse it.
const cookieSecret = crypto.randomBytes(32).toString('base64');
const yaml = `# Demo only (scripts/demo): generated ${new Date().toISOString()}
address: ${host === 'localhost' ? '127.0.0.1' : '0.0.0.0'}:${port}
data_dir: ${path.join(dir, 'data')}
cookie_secret: ${cookieSecret}
idp_provider_url: ${idp.issuer}
idp_client_id: portcullis
idp_client_secret: e2e-client-secret
routes:
  - from: https://${host}
    to: ${upstream}
    allow_websockets: true
    pass_identity_headers: true
    jwt_claims_headers:
      X-Forwarded-User: ${echoMode ? 'email' : 'issuer_subject'}
    policy:
      - allow:
          or:
            - domain: { is: example.com }
`;
const proxy = await startPortcullis({ dir, yaml, waitForIdp: true });
stops.unshift(() => proxy.stop());
console.log(`
Portcullis demo is running${echoMode ? ' (echo upstream)' : ' in front of the OpenClaw gateway'}.
  Open:    ${origin}/   (self-signed certificate: accept the browser's warning)
  Sign in: login "alice" (allowed, ${USERS.alice.email}) or "bob" (refused, ${USERS.bob.email}); any password
  Who am I: ${origin}/.portcullis/     Sign out: ${origin}/.portcullis/sign_out
  Config:  ${path.join(dir, 'config.yaml')}   (edit it: the running proxy reloads)
Ctrl-C stops everything.
`);

let stopping = false;
async function stop(code = 0) {
  if (stopping) return;
  stopping = true;
  for (const s of stops) await s();
  process.exit(code);
}
process.on('SIGINT', () => stop(0));
process.on('SIGTERM', () => stop(0));
proxy.child.on('exit', () => { if (!stopping) { console.error(proxy.logs.join('')); stop(1); } });
