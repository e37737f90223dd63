// Typed calls to the REST gateway. Every path, parameter, body and answer
// type comes from api.gen.ts, generated from the gateway's OpenAPI document
// (make console): a change of the contract fails the console's build.
import type { definitions, paths } from "./api.gen";

export type Key = definitions["v1Key"];
export type Limits = definitions["v1Limits"];
export type ModelLimits = definitions["v1ModelLimits"];
export type Workspace = definitions["v1Workspace"];
export type Member = definitions["v1Member"];
export type Role = definitions["v1Role"];
export type Model = definitions["v1Model"];
export type Provider = definitions["v1Provider"];
export type ProviderKind = definitions["v1ProviderKind"];
export type ResetPeriod = definitions["v1ResetPeriod"];
export type Budget = definitions["v1Budget"];
export type TokenCap = definitions["v1TokenCap"];
export type KeyState = definitions["v1KeyState"];
export type UsageRecord = definitions["v1UsageRecord"];
export type AuditEvent = definitions["v1AuditEvent"];
export type Usage = definitions["v1GetUsageResponse"];
export type UsagePoint = definitions["v1UsagePoint"];
export type UsageRow = definitions["v1UsageRow"];
export type CreateKeyBody = definitions["KeystoreServiceCreateKeyBody"];
export type Policy = definitions["v1Policy"];
export type Override = definitions["v1Override"];
export type LimitEditors = definitions["v1LimitEditors"];
export type LimitLevel = definitions["v1LimitLevel"];
export type LimitKind = definitions["v1LimitKind"];
export type LimitMode = definitions["v1LimitMode"];
export type LimitState = definitions["v1LimitState"];
export type Explained = definitions["v1ExplainKeyResponse"];
export type Credits = definitions["v1GetCreditsResponse"];
export type CreditEntry = definitions["v1CreditEntry"];
export type CreditEntryKind = definitions["v1CreditEntryKind"];
export type Webhook = definitions["v1Webhook"];
export type Alert = definitions["v1Alert"];
export type AlertDeliveryState = definitions["v1AlertDeliveryState"];

type Method = "get" | "post" | "put" | "patch" | "delete";
type Params<O> = O extends { parameters: infer X } ? X : object;
type PathOf<O> = Params<O> extends { path: infer X } ? X : never;
type QueryOf<O> = Params<O> extends { query: infer X } ? X : object;
type BodyOf<O> = Params<O> extends { body: infer X } ? X[keyof X] : never;
type Result<O> = O extends { responses: { 200: { schema: infer S } } } ? S : never;

// updateMask is a query parameter of every update that grpc-gateway takes
// but does not list in the document (the patch's fields set it otherwise).
type Args<O> = ([PathOf<O>] extends [never] ? object : { path: PathOf<O> }) &
  ([BodyOf<O>] extends [never] ? object : { body: BodyOf<O> }) & { query?: QueryOf<O> & { updateMask?: string } };

// ApiError is a failed call, with the gateway's status and message.
export class ApiError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
  // field is the request field a 400 names ("name: must be…",
  // "alert_thresholds[1]: …"), if any, without indexes.
  get field(): string {
    if (this.status !== 400) return "";
    const m = /^([a-z_][a-z0-9_.[\]]*):\s/.exec(this.message);
    return m ? m[1].replace(/\[\d+\]/g, "") : "";
  }
}

// Unauthorized is raised on 401 so the shell can return to sign-in.
let onUnauthorized: () => void = () => {};
export function whenUnauthorized(f: () => void): void {
  onUnauthorized = f;
}

let credential = "";
export function setCredential(token: string): void {
  credential = token;
}

export async function call<P extends keyof paths, M extends Method & keyof paths[P]>(
  method: M, path: P, args: Args<paths[P][M]>,
): Promise<Result<paths[P][M]>> {
  const a = args as { path?: Record<string, string>; query?: Record<string, unknown>; body?: unknown };
  let url = String(path).replace(/\{(\w+)\}/g, (_, name: string) => encodeURIComponent(a.path?.[name] ?? ""));
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(a.query ?? {})) {
    if (v !== undefined && v !== "" && v !== null) q.set(k, String(v));
  }
  if ([...q].length) url += `?${q}`;
  const init: RequestInit = { method: method.toUpperCase(), headers: { Authorization: `Bearer ${credential}` }, cache: "no-store" };
  if (a.body !== undefined) {
    init.body = JSON.stringify(a.body);
    (init.headers as Record<string, string>)["Content-Type"] = "application/json";
  }
  let resp: Response;
  try {
    resp = await fetch(url, init);
  } catch {
    throw new ApiError(0, "NETWORK", "keygate could not be reached; check the connection and try again.");
  }
  const text = await resp.text();
  const body = text ? safeJSON(text) : {};
  if (!resp.ok) {
    const e = (body as { error?: { status?: string; message?: string } }).error ?? {};
    const err = new ApiError(resp.status, e.status ?? "", e.message ?? resp.statusText);
    if (resp.status === 401) onUnauthorized();
    throw err;
  }
  return body as Result<paths[P][M]>;
}

function safeJSON(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return {};
  }
}

// explain turns a failed call into a sentence for the person: who may do
// it, why it conflicted, or what to try next.
export function explain(err: unknown, doing: string): string {
  if (!(err instanceof ApiError)) return `Could not ${doing}: ${String(err)}`;
  switch (err.status) {
    case 0:
      return err.message;
    case 400:
      return `Could not ${doing}: ${err.message}.`;
    case 401:
      return "Your credential is no longer accepted (revoked, expired or mistyped). Sign in again.";
    case 403:
      return `You may not ${doing}: ${err.message}. Owners and admins of a workspace manage all its keys and members; members manage their own standard keys; only the root token edits models and providers.`;
    case 404:
      return `Could not ${doing}: not found. It may have been deleted, or belong to a workspace your credential cannot see.`;
    case 409:
      if (err.code === "ABORTED") return `Could not ${doing}: someone changed it since this page loaded. Reload and try again.`;
      return `Could not ${doing}: ${err.message}.`;
    case 412:
      if (/maximum number of keys/.test(err.message)) return `Could not ${doing}: the workspace holds its maximum number of keys. Delete a key, or ask the root operator to raise the workspace's cap.`;
      return `Could not ${doing}: ${err.message}.`;
    case 429:
    case 503:
    case 504:
      return `Could not ${doing}: keygate is busy or unavailable right now (${err.message}). Try again in a moment.`;
    default:
      return `Could not ${doing}: ${err.message} (HTTP ${err.status}).`;
  }
}
