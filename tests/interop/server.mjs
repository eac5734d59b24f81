// A real authorization server that nobody on the tokend team wrote: panva's
// oidc-provider (an OpenID Certified implementation), configured the way a
// stock deployment would be, plus a minimal MCP-style protected resource
// (RFC 9728 metadata, a 401 challenge, RFC 8707 audience check).
//
// Listens on 127.0.0.1 on an ephemeral port and prints one JSON line:
// {"ready": true, "issuer": ..., "server": "oidc-provider", "version": ...}.
// Then every provider event tokend's tests look at, one JSON line each:
// {"event": "grant.revoked", ...}.
//
// The login and consent pages answer at once (a user who always says yes),
// so a "browser" only has to follow redirects with cookies.
//
// Environment: INTEROP_REDIRECT_URIS (comma-separated, for the
// pre-registered clients), INTEROP_CLIENT_SECRET, INTEROP_ACCESS_TTL.
// INTEROP_SIGNING_KEYS=1: signing keys made at start (RSA 2048, EC P-256,
// Ed25519), so a client may ask for RS256, PS256, ES256 or EdDSA ID tokens
// (else oidc-provider's development key: RS256 only). Then also, for
// tokend's server-mode sign-in tests: POST /test/tamper {client_id, how}
// makes the token endpoint's ID tokens for that client come out altered
// (how: signature, kid, none, hs256), and every JWKS fetch is an event.
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';

import Provider, { errors } from 'oidc-provider';

const require = createRequire(import.meta.url);
const entry = require.resolve('oidc-provider');
const pkgFile = path.join(entry.slice(0, entry.lastIndexOf('node_modules') + 'node_modules'.length), 'oidc-provider',
  'package.json');
const pkg = JSON.parse(readFileSync(pkgFile, 'utf8'));

const redirectUris = (process.env.INTEROP_REDIRECT_URIS || 'http://127.0.0.1:8976/callback').split(',');
const clientSecret = process.env.INTEROP_CLIENT_SECRET || 'cs-interop-secret';
const accessTtl = Number(process.env.INTEROP_ACCESS_TTL || 3600);

function emit(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const mcp = `${issuer}/mcp`;
  const prmPath = '/.well-known/oauth-protected-resource/mcp';

  const deviceForm = async (ctx, form) => {
    ctx.body = `<!DOCTYPE html><html><body>${form}</body></html>`;
  };

  const signingKeys = process.env.INTEROP_SIGNING_KEYS === '1';
  const keyOf = (type, options, kid) => ({
    ...generateKeyPairSync(type, options).privateKey.export({ format: 'jwk' }), kid, use: 'sig',
  });
  const extra = signingKeys ? {
    jwks: {
      keys: [keyOf('rsa', { modulusLength: 2048 }, 'rsa-1'), keyOf('ec', { namedCurve: 'P-256' }, 'ec-1'),
        keyOf('ed25519', {}, 'ed-1')],
    },
    enabledJWA: { idTokenSigningAlgValues: ['RS256', 'PS256', 'ES256', 'EdDSA'] },
  } : {};
  const tamper = new Map(); // client_id -> how

  const provider = new Provider(issuer, {
    ...extra,
    clients: [
      {
        client_id: 'web-app',
        client_secret: clientSecret,
        application_type: 'native',
        redirect_uris: redirectUris,
        grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
        response_types: ['code'],
        token_endpoint_auth_method: 'client_secret_basic',
      },
      {
        client_id: 'public-app',
        application_type: 'native',
        redirect_uris: redirectUris,
        grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
        response_types: ['code'],
        token_endpoint_auth_method: 'none',
      },
    ],
    async findAccount(ctx, sub) {
      return {
        accountId: sub,
        async claims() {
          return { sub, name: 'Interop User', email: 'interop@example.com' };
        },
      };
    },
    claims: { openid: ['sub'], profile: ['name'], email: ['email'] },
    scopes: ['openid', 'offline_access', 'profile', 'email'],
    cookies: { keys: ['tokend-interop-cookie-key'] },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    features: {
      devInteractions: { enabled: false },
      deviceFlow: {
        enabled: true,
        userCodeInputSource: deviceForm,
        userCodeConfirmSource: deviceForm,
        successSource: async (ctx) => { ctx.body = '<!DOCTYPE html><html><body>Device signed in</body></html>'; },
      },
      revocation: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      introspection: { enabled: true },
      registration: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (ctx, client, oneOf) => (oneOf ? oneOf[0] : undefined),
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resourceIndicator) => {
          if (resourceIndicator !== mcp) throw new errors.InvalidTarget();
          return { scope: 'mcp:tools', audience: mcp, accessTokenFormat: 'opaque', accessTokenTTL: accessTtl };
        },
      },
    },
    // Every refresh rotates, and a consumed refresh token used again revokes
    // the whole grant (the provider's reuse detection).
    rotateRefreshToken: () => true,
    pkce: { required: () => true },
    ttl: { AccessToken: accessTtl, Interaction: 600, Session: 3600, Grant: 86400, RefreshToken: 86400 },
  });

  // The token endpoint's ID token altered after signing, for clients the
  // test named; each JWKS fetch reported.
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  provider.use(async (ctx, next) => {
    await next();
    if (signingKeys && ctx.path === '/jwks') emit({ event: 'jwks.fetched' });
    const how = signingKeys && ctx.path === '/token' && ctx.oidc?.client ? tamper.get(ctx.oidc.client.clientId) : undefined;
    if (!how || !ctx.body || typeof ctx.body.id_token !== 'string') return;
    const [h, p, sig] = ctx.body.id_token.split('.');
    const header = JSON.parse(Buffer.from(h, 'base64url').toString());
    let out;
    if (how === 'signature') {
      const bytes = Buffer.from(sig, 'base64url');
      bytes[bytes.length - 1] ^= 1;
      out = `${h}.${p}.${bytes.toString('base64url')}`;
    } else if (how === 'kid') {
      out = `${b64({ ...header, kid: 'rotated-away' })}.${p}.${sig}`;
    } else if (how === 'none') {
      out = `${b64({ alg: 'none' })}.${p}.`;
    } else if (how === 'hs256') {
      out = `${b64({ ...header, alg: 'HS256' })}.${p}.${sig}`;
    }
    ctx.body = { ...ctx.body, id_token: out };
    emit({ event: 'id_token.tampered', how });
  });

  for (const name of ['grant.success', 'grant.error', 'grant.revoked', 'revocation.error',
    'refresh_token.consumed', 'refresh_token.destroyed', 'registration_create.success',
    'registration_create.error', 'authorization.success', 'server_error']) {
    provider.on(name, (ctx, arg) => {
      const out = { event: name };
      if (ctx?.oidc?.client) out.client_id = ctx.oidc.client.clientId;
      if (ctx?.oidc?.params?.grant_type) out.grant_type = ctx.oidc.params.grant_type;
      if (name === 'grant.revoked' || name === 'grant.error' || name === 'revocation.error' ||
        name === 'registration_create.error' || name === 'server_error') {
        out.detail = typeof arg === 'string' ? arg : (arg && (arg.error_description || arg.message)) || null;
        if (arg && arg.error) out.error = arg.error;
      }
      if (name === 'registration_create.success' && ctx?.oidc?.body) {
        out.application_type = ctx.oidc.body.application_type ?? null;
      }
      emit(out);
    });
  }

  // A user who signs in and consents to everything asked.
  async function interaction(req, res) {
    const details = await provider.interactionDetails(req, res);
    const { prompt, params, session } = details;
    if (prompt.name === 'login') {
      await provider.interactionFinished(req, res, { login: { accountId: 'interop-user' } },
        { mergeWithLastSubmission: false });
      return;
    }
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const d = prompt.details;
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    if (d.missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(d.missingResourceScopes)) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
    }
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }

  // The MCP-style protected resource: RFC 9728 metadata and a Bearer
  // challenge naming it; a token is good only with this resource's audience.
  async function resource(req, res) {
    const json = (status, body, headers = {}) => {
      res.writeHead(status, { 'content-type': 'application/json', ...headers });
      res.end(JSON.stringify(body));
    };
    if (req.url === prmPath) {
      json(200, { resource: mcp, authorization_servers: [issuer], scopes_supported: ['mcp:tools'] });
      return;
    }
    const challenge = `Bearer resource_metadata="${issuer}${prmPath}"`;
    const auth = req.headers.authorization || '';
    const token = auth.startsWith('Bearer ') ? auth.slice(7) : '';
    const at = token ? await provider.AccessToken.find(token) : undefined;
    if (!at || at.isExpired) {
      json(401, { error: 'invalid_token' }, { 'www-authenticate': `${challenge}, error="invalid_token"` });
      return;
    }
    if (at.aud !== mcp && !(Array.isArray(at.aud) && at.aud.includes(mcp))) {
      json(401, { error: 'invalid_token', error_description: 'wrong audience' },
        { 'www-authenticate': `${challenge}, error="invalid_token"` });
      return;
    }
    json(200, { jsonrpc: '2.0', id: 1, result: { scope: at.scope, aud: at.aud } });
  }

  const callback = provider.callback();
  server.on('request', (req, res) => {
    const done = (err) => {
      emit({ event: 'handler_error', detail: String(err && err.message) });
      if (!res.headersSent) res.writeHead(500);
      res.end();
    };
    if (signingKeys && req.method === 'POST' && req.url === '/test/tamper') {
      let body = '';
      req.on('data', (chunk) => { body += chunk; });
      req.on('end', () => {
        const { client_id: clientId, how } = JSON.parse(body);
        if (how) tamper.set(clientId, how); else tamper.delete(clientId);
        emit({ event: 'tamper.set' });
        res.writeHead(204);
        res.end();
      });
    } else if (req.url.startsWith('/interaction/')) {
      interaction(req, res).catch(done);
    } else if (req.url === '/mcp' || req.url.startsWith('/mcp?') || req.url === prmPath) {
      resource(req, res).catch(done);
    } else {
      callback(req, res);
    }
  });
  emit({ ready: true, issuer, mcp, server: 'oidc-provider', version: pkg.version, node: process.version });
});
