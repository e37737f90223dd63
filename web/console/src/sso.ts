// Single sign-on with the configured OIDC issuer: authorization code with
// PKCE. The verifier and state wait in sessionStorage while the browser is
// at the issuer; back here, the gateway exchanges the code (with the
// verifier) for an ID token, which becomes the console's credential.

export interface SSOConfig {
  sso: boolean;
  authorizationEndpoint?: string;
  clientId?: string;
}

const pendingKey = "keygate.sso";

export async function ssoConfig(): Promise<SSOConfig> {
  try {
    const resp = await fetch("config.json", { cache: "no-store" });
    return resp.ok ? ((await resp.json()) as SSOConfig) : { sso: false };
  } catch {
    return { sso: false };
  }
}

function base64url(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function random(n: number): string {
  return base64url(crypto.getRandomValues(new Uint8Array(n)));
}

function redirectURI(): string {
  return location.origin + location.pathname;
}

// startSSO sends the browser to the issuer's sign-in page.
export async function startSSO(c: SSOConfig): Promise<void> {
  const verifier = random(32);
  const state = random(16);
  const challenge = base64url(new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier))));
  sessionStorage.setItem(pendingKey, JSON.stringify({ verifier, state }));
  const q = new URLSearchParams({
    response_type: "code", client_id: c.clientId ?? "", redirect_uri: redirectURI(), scope: "openid email profile",
    state, code_challenge: challenge, code_challenge_method: "S256", nonce: random(16),
  });
  location.assign(`${c.authorizationEndpoint}?${q}`);
}

// finishSSO completes a sign-in the issuer sent back (?code=…&state=…): it
// returns the ID token, "" when the page was not such a return, or throws
// with a sentence for the person.
export async function finishSSO(): Promise<string> {
  const params = new URLSearchParams(location.search);
  if (!params.has("code") && !params.has("error")) return "";
  const pending = JSON.parse(sessionStorage.getItem(pendingKey) ?? "{}") as { verifier?: string; state?: string };
  sessionStorage.removeItem(pendingKey);
  // The code is single-use and must not stay in the address bar or history.
  history.replaceState(null, "", location.pathname + location.hash);
  if (params.has("error")) throw new Error(`Single sign-on did not complete: ${params.get("error_description") ?? params.get("error")}.`);
  if (!pending.verifier || params.get("state") !== pending.state) throw new Error("Single sign-on did not complete: this sign-in was not started here. Try again.");
  const resp = await fetch("sso/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ code: params.get("code"), codeVerifier: pending.verifier, redirectUri: redirectURI() }),
  });
  const body = (await resp.json().catch(() => ({}))) as { idToken?: string; error?: string };
  if (!resp.ok || !body.idToken) throw new Error(`Single sign-on did not complete: ${body.error ?? `HTTP ${resp.status}`}.`);
  return body.idToken;
}
