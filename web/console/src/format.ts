// How values read on screen: dates in the person's locale, limits as
// "60 rpm", state words. One place, so every page says them the same way.
import type { Key, KeyState, Limits, ResetPeriod } from "./api";

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

export function usd(v?: string): string {
  return v ? `$${v}` : "$0";
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

// keyLimits is every limit of a key at a glance.
export function keyLimits(k: Key): string {
  const parts: string[] = [];
  const g = limits(k.globalLimits);
  if (g !== "none") parts.push(g);
  for (const m of k.modelLimits ?? []) parts.push(`${m.model}: ${limits(m.limits)}`);
  if (num(k.tokenCap?.tokens) > 0) parts.push(`${count(k.tokenCap?.tokens)} tokens ${period(k.tokenCap?.resetPeriod)}`);
  if (k.budget?.amountUsd && num(k.budget.amountUsd) > 0) parts.push(`${usd(k.budget.amountUsd)} ${period(k.budget.resetPeriod)}`);
  return parts.length ? parts.join("; ") : "unlimited";
}

// today is the UTC day as YYYY-MM-DD: days and limits reset at 00:00 UTC.
export function today(): string {
  return new Date().toISOString().slice(0, 10);
}

export function daysAgo(n: number): string {
  return new Date(Date.now() - n * 86_400_000).toISOString().slice(0, 10);
}
