// Usage: for one key, today against every limit, the current budget and
// token-cap periods, a daily chart and the per-model breakdown; for the
// workspace, the same chart summed over its keys and totals by key, model
// and member.
import { call, explain, type Key, type Usage, type UsagePoint } from "../api";
import { barChart } from "../chart";
import { inferenceKeys, keyNames, keyOptions, listKeys } from "../data";
import { field, h, notice, replace, select, table } from "../dom";
import { count, daysAgo, num, today, usd } from "../format";
import type { Page } from "../main";

type Metric = "requests" | "tokens" | "spend";
const view = { key: "", from: daysAgo(13), to: today(), metric: "requests" as Metric };

export async function renderUsage(p: Page): Promise<void> {
  const ws = p.session.workspace;
  const keys = inferenceKeys(await listKeys(ws));
  if (view.key && !keys.some((k) => k.id === view.key)) view.key = "";
  const keySel = select(keyOptions(keys, "Whole workspace"), view.key);
  const from = h("input", { type: "date", value: view.from, max: today() });
  const to = h("input", { type: "date", value: view.to, max: today() });
  const metric = select([["requests", "Requests"], ["tokens", "Tokens"], ["spend", "Spend (USD)"]], view.metric);
  const out = h("div", { "aria-live": "polite" });
  const update = async () => {
    Object.assign(view, { key: keySel.value, from: from.value || daysAgo(13), to: to.value || today(), metric: metric.value as Metric });
    replace(out, h("p", { class: "hint" }, "Loading…"));
    try {
      replace(out, ...(await (view.key ? keyUsage(ws, keys.find((k) => k.id === view.key) as Key) : workspaceUsage(ws, keys))));
    } catch (e) {
      replace(out, notice("error", explain(e, "load usage")));
    }
  };
  for (const c of [keySel, from, to, metric]) c.addEventListener("change", update);
  replace(p.main, h("h1", {}, "Usage"),
    h("div", { class: "toolbar" }, field("Key", keySel), field("From", from), field("To", to), field("Chart", metric)),
    h("p", { class: "hint" }, "Days are UTC; today's counts reset at 00:00 UTC."),
    out);
  await update();
}

function pointValue(pt: UsagePoint): Record<Metric, number> {
  return { requests: num(pt.requests), tokens: num(pt.promptTokens) + num(pt.completionTokens), spend: num(pt.spendUsd) };
}

function chart(points: UsagePoint[]): HTMLElement {
  const labels: Record<Metric, string> = { requests: "Requests", tokens: "Tokens", spend: "Spend (USD)" };
  return barChart({
    label: labels[view.metric],
    days: points.map((pt) => pt.day ?? ""),
    values: points.map((pt) => pointValue(pt)[view.metric]),
    format: view.metric === "spend" ? (v) => `$${v.toFixed(4)}` : (v) => count(v),
  });
}

async function series(ws: string, key: string): Promise<UsagePoint[]> {
  const r = await call("get", "/v1/workspaces/{workspace}/keys/{key}/usage:series", { path: { workspace: ws, key }, query: { startDate: view.from, endDate: view.to } });
  return r.points ?? [];
}

// against reads "3 of 100" with a meter, or "3 (no limit)".
function against(label: string, used: number, limit: number, fmt: (n: number) => string = count): HTMLElement {
  return h("div", { class: "card", role: "group", "aria-label": label }, h("div", {}, label),
    h("div", { class: "big" }, limit > 0 ? `${fmt(used)} of ${fmt(limit)}` : fmt(used)),
    limit > 0 ? h("meter", { min: 0, max: limit, value: Math.min(used, limit), high: limit * 0.8, "aria-label": `${label}: ${fmt(used)} of ${fmt(limit)}` }) : h("div", { class: "hint" }, "no limit"));
}

async function keyUsage(ws: string, k: Key): Promise<(Node | string)[]> {
  const [u, points]: [Usage, UsagePoint[]] = await Promise.all([
    call("get", "/v1/workspaces/{workspace}/keys/{key}/usage", { path: { workspace: ws, key: k.id ?? "" } }),
    series(ws, k.id ?? ""),
  ]);
  const money = (n: number) => `$${n.toFixed(6).replace(/\.?0+$/, "")}`;
  const models = (u.models ?? []).map((m) => [m.model ?? "", `${count(m.requestsToday)}${num(m.requestLimitToday) ? ` / ${count(m.requestLimitToday)}` : ""}`,
    `${count(m.tokensToday)}${num(m.tokenLimitToday) ? ` / ${count(m.tokenLimitToday)}` : ""}`, usd(m.spendTodayUsd), count(m.periodTokens), usd(m.periodSpendUsd)]);
  return [
    h("h2", {}, `Today (${u.day ?? today()}) for ${k.name}`),
    h("div", { class: "cards" },
      against("Requests today", num(u.requestsToday), num(u.requestLimitToday)),
      against("Tokens today", num(u.tokensToday), num(u.tokenLimitToday)),
      h("div", { class: "card" }, h("div", {}, "Spend today"), h("div", { class: "big" }, usd(u.spendTodayUsd))),
      against("Spend this budget period", num(u.spendUsd), num(u.budgetUsd), money),
      against("Tokens this cap period", num(u.periodTokens), num(u.tokenCap)),
    ),
    h("h2", {}, "Per day"),
    chart(points),
    h("h2", {}, "Per model today"),
    models.length ? table("Usage per model today", ["Model", "Requests", "Tokens", "Spend", "Tokens this period", "Spend this period"], models, [1, 2, 3, 4, 5]) : h("p", { class: "empty" }, "No requests today."),
  ];
}

async function workspaceUsage(ws: string, keys: Key[]): Promise<(Node | string)[]> {
  const q = { startDate: view.from, endDate: view.to };
  const [byKey, byModel, byOwner, perKey] = await Promise.all([
    call("get", "/v1/workspaces/{workspace}/usage", { path: { workspace: ws }, query: { ...q, groupBy: "GROUP_BY_KEY" } }),
    call("get", "/v1/workspaces/{workspace}/usage", { path: { workspace: ws }, query: { ...q, groupBy: "GROUP_BY_MODEL" } }),
    call("get", "/v1/workspaces/{workspace}/usage", { path: { workspace: ws }, query: { ...q, groupBy: "GROUP_BY_OWNER" } }),
    Promise.all(keys.map((k) => series(ws, k.id ?? ""))),
  ]);
  const names = keyNames(keys);
  const rows = (r: typeof byKey, name: (g: string) => string) => (r.rows ?? []).map((row) => [name(row.group ?? ""), count(row.requests), count(row.promptTokens), count(row.completionTokens), usd(row.spendUsd)]);
  const head = ["Requests", "Prompt tokens", "Completion tokens", "Spend"];
  const total = (label: string, r: (string | number)[][]) => r.length ? table(`Usage by ${label.toLowerCase()}`, [label, ...head], r, [1, 2, 3, 4]) : h("p", { class: "empty" }, "No usage in this range.");
  return [
    h("h2", {}, "Per day, all keys"),
    chart(sumSeries(perKey)),
    h("h2", {}, "By key"), total("Key", rows(byKey, (g) => names.get(g) ?? g)),
    h("h2", {}, "By model"), total("Model", rows(byModel, (g) => g)),
    h("h2", {}, "By member"), total("Member", rows(byOwner, (g) => g)),
  ];
}

// sumSeries adds the keys' daily points day by day.
function sumSeries(all: UsagePoint[][]): UsagePoint[] {
  const byDay = new Map<string, { requests: number; prompt: number; completion: number; spend: number }>();
  for (const pts of all) {
    for (const pt of pts) {
      const d = byDay.get(pt.day ?? "") ?? { requests: 0, prompt: 0, completion: 0, spend: 0 };
      d.requests += num(pt.requests);
      d.prompt += num(pt.promptTokens);
      d.completion += num(pt.completionTokens);
      d.spend += num(pt.spendUsd);
      byDay.set(pt.day ?? "", d);
    }
  }
  return [...byDay.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([day, d]) => ({
    day, requests: String(d.requests), promptTokens: String(d.prompt), completionTokens: String(d.completion), spendUsd: d.spend.toFixed(6),
  }));
}
