// How values read on screen: dates in the person's locale, limits as
// "60 rpm", state words. One place, so every page says them the same way.
import type { Key, KeyState, LimitKind, LimitLevel, LimitMode, LimitState, Limits, Policy, ResetPeriod } from "./api";

export function date(ts?: string): string {
  if (!ts) return "—";
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? "—" : d.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
}

export function dateTime(ts?: string): string {
  if (!ts) return "—";
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? "—" : d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

export function num(v?: string | number): number {
  const n = typeof v === "string" ? Number(v) : (v ?? 0);
  return Number.isFinite(n) ? n : 0;
}

export function count(v?: string | number): string {
  return num(v).toLocaleString();
}

// usd reads an exact decimal amount ("5.00", "-2.5") as dollars.
export function usd(v?: string): string {
  if (!v) return "$0";
  return v.startsWith("-") ? `-$${v.slice(1)}` : `$${v}`;
}

// dollars reads an exact decimal amount with at least cents, exactly
// (BigInt, never a float): "5" is "$5.00", "-2.5" is "-$2.50",
// "0.000010" is "$0.00001".
export function dollars(v?: string): string {
  const m = /^(-?)(\d+)(?:\.(\d*))?$/.exec((v ?? "").trim() || "0");
  if (!m) return "—";
  const frac = (m[3] ?? "").replace(/0+$/, "").padEnd(2, "0");
  const neg = m[1] && /[1-9]/.test(m[2] + frac) ? "-" : "";
  return `${neg}$${BigInt(m[2]).toLocaleString()}.${frac}`;
}

// microUsd reads micro-dollars (int64 counts, as the limiter keeps budgets
// and credits) as dollars: 5000000 is "$5.00", 20 is "$0.00002".
export function microUsd(v?: string | number): string {
  const s = String(v ?? "0");
  const m = /^(-?)(\d+)$/.exec(s);
  if (!m) return "—";
  const digits = m[2].padStart(7, "0");
  return dollars(`${m[1]}${digits.slice(0, -6)}.${digits.slice(-6)}`);
}

export const stateNames: Record<KeyState, string> = {
  KEY_STATE_UNSPECIFIED: "unknown",
  KEY_STATE_ACTIVE: "active",
  KEY_STATE_DISABLED: "disabled",
  KEY_STATE_EXPIRED: "expired",
};

export function state(k: Key): string {
  return stateNames[k.state ?? "KEY_STATE_UNSPECIFIED"];
}

export function kind(k: Key): string {
  return k.kind === "KEY_KIND_ADMIN" ? "admin" : "standard";
}

export const periods: [ResetPeriod, string][] = [
  ["RESET_PERIOD_MONTHLY", "monthly"],
  ["RESET_PERIOD_WEEKLY", "weekly"],
  ["RESET_PERIOD_DAILY", "daily"],
  ["RESET_PERIOD_NEVER", "never"],
];

export function period(p?: ResetPeriod): string {
  return periods.find(([v]) => v === p)?.[1] ?? "monthly";
}

export const limitNames = ["rpm", "rpd", "tpm", "tpd"] as const;
export type LimitName = (typeof limitNames)[number];

export const limitLabels: Record<LimitName, string> = {
  rpm: "Requests per minute",
  rpd: "Requests per day",
  tpm: "Tokens per minute",
  tpd: "Tokens per day",
};

// limits reads "60 rpm · 100,000 tpd", or "none" when nothing is limited.
export function limits(l?: Limits): string {
  const parts = limitNames.filter((n) => num(l?.[n]) > 0).map((n) => `${count(l?.[n])} ${n}`);
  return parts.length ? parts.join(" · ") : "none";
}

// policy is every limit of a level (a key, a member, a workspace) at a
// glance: "2 rpd; mock-large: 1 rpm; $5.00 monthly", or "unlimited".
export function policy(p?: Policy): string {
  const parts: string[] = [];
  const g = limits(p?.globalLimits);
  if (g !== "none") parts.push(g);
  for (const m of p?.modelLimits ?? []) parts.push(`${m.model}: ${limits(m.limits)}`);
  if (num(p?.tokenCap?.tokens) > 0) parts.push(`${count(p?.tokenCap?.tokens)} tokens ${period(p?.tokenCap?.resetPeriod)}`);
  if (p?.budget?.amountUsd && num(p.budget.amountUsd) > 0) parts.push(`${usd(p.budget.amountUsd)} ${period(p.budget.resetPeriod)}`);
  return parts.length ? parts.join("; ") : "unlimited";
}

// keyLimits is every limit of a key at a glance.
export function keyLimits(k: Key): string {
  return policy(k);
}

export const levelNames: Record<LimitLevel, string> = {
  LIMIT_LEVEL_UNSPECIFIED: "—",
  LIMIT_LEVEL_KEY: "key",
  LIMIT_LEVEL_MEMBER: "member",
  LIMIT_LEVEL_WORKSPACE: "workspace",
};

// kindNames are the limits' short names, as the edge's
// x-keygate-limited-by header writes them.
export const kindNames: Record<LimitKind, string> = {
  LIMIT_KIND_UNSPECIFIED: "—",
  LIMIT_KIND_RPM: "rpm",
  LIMIT_KIND_RPD: "rpd",
  LIMIT_KIND_TPM: "tpm",
  LIMIT_KIND_TPD: "tpd",
  LIMIT_KIND_TOKEN_CAP: "token_cap",
  LIMIT_KIND_BUDGET: "budget",
  LIMIT_KIND_CREDITS: "credits",
};

export const kindLabels: Record<LimitKind, string> = {
  LIMIT_KIND_UNSPECIFIED: "limit",
  LIMIT_KIND_RPM: "requests per minute",
  LIMIT_KIND_RPD: "requests per day",
  LIMIT_KIND_TPM: "tokens per minute",
  LIMIT_KIND_TPD: "tokens per day",
  LIMIT_KIND_TOKEN_CAP: "token cap",
  LIMIT_KIND_BUDGET: "budget",
  LIMIT_KIND_CREDITS: "credits",
};

export function mode(m?: LimitMode): string {
  return m === "LIMIT_MODE_REPORT" ? "report" : "enforced";
}

// limitedBy names a limit as the edge's header does: "workspace/rpd",
// "key/rpm:mock-small".
export function limitedBy(level?: LimitLevel, kind?: LimitKind, model?: string): string {
  return `${levelNames[level ?? "LIMIT_LEVEL_UNSPECIFIED"]}/${kindNames[kind ?? "LIMIT_KIND_UNSPECIFIED"]}${model ? `:${model}` : ""}`;
}

// quantity reads one amount of a limit's state: budgets and credits are
// micro-dollars, the rest counts.
export function quantity(s: LimitState, v?: string): string {
  return s.kind === "LIMIT_KIND_BUDGET" || s.kind === "LIMIT_KIND_CREDITS" ? microUsd(v) : count(v);
}

const windowNames: Record<string, string> = { "60s": "rolling minute", day: "day (UTC)", week: "week (UTC)", month: "month (UTC)", never: "never resets" };

export function windowName(w?: string): string {
  return windowNames[w ?? ""] ?? w ?? "—";
}

// today is the UTC day as YYYY-MM-DD: days and limits reset at 00:00 UTC.
export function today(): string {
  return new Date().toISOString().slice(0, 10);
}

export function daysAgo(n: number): string {
  return new Date(Date.now() - n * 86_400_000).toISOString().slice(0, 10);
}
