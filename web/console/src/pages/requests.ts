// The request log: recent inference requests, newest first, filterable by
// key, by member (the key's owner) and by model. Prompts and secrets are
// never recorded, so there are none to show.
import { call, explain, type Key, type UsageRecord } from "../api";
import { inferenceKeys, keyNames, keyOptions, listKeys, listModels } from "../data";
import { field, h, notice, replace, select, table } from "../dom";
import { count, dateTime, usd } from "../format";
import type { Page } from "../main";

const filters = { key: "", owner: "", model: "" };

const statusNames: Record<string, string> = {
  REQUEST_STATUS_OK: "ok",
  REQUEST_STATUS_CLIENT_CANCELLED: "client cancelled",
  REQUEST_STATUS_UPSTREAM_ERROR: "upstream error",
};

export async function renderRequests(p: Page): Promise<void> {
  const ws = p.session.workspace;
  const [keys, models] = await Promise.all([listKeys(ws).then(inferenceKeys), listModels().catch(() => [])]);
  const keySel = select(keyOptions(keys, "All keys"), filters.key);
  const owner = h("input", { type: "text", value: filters.owner, autocomplete: "off", placeholder: "any member" });
  const modelSel = select([["", "All models"], ...models.map((m): [string, string] => [m.id ?? "", m.id ?? ""])], filters.model);
  const out = h("div", {});
  const form = h("form", { class: "toolbar" }, field("Key", keySel), field("Member (key owner)", owner), field("Model", modelSel),
    h("button", { type: "submit" }, "Apply filters"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    Object.assign(filters, { key: keySel.value, owner: owner.value.trim(), model: modelSel.value });
    load(ws, keys, out, "");
  });
  for (const s of [keySel, modelSel]) s.addEventListener("change", () => form.requestSubmit());
  replace(p.main, h("h1", {}, "Request log"), form, out);
  await load(ws, keys, out, "");
}

// load shows one page of the log; "Load more" appends the next.
async function load(ws: string, keys: Key[], out: HTMLElement, pageToken: string): Promise<void> {
  let resp;
  try {
    resp = await call("get", "/v1/workspaces/{workspace}/requests", { path: { workspace: ws }, query: { ...filters, pageSize: 50, pageToken } });
  } catch (e) {
    replace(out, notice("error", explain(e, "load the request log")));
    return;
  }
  const names = keyNames(keys);
  const rows = (resp.requests ?? []).map((r: UsageRecord) => [dateTime(r.time), names.get(r.key ?? "") ?? r.key ?? "", r.owner ?? "", r.model ?? "",
    statusNames[r.status ?? ""] ?? "", count(r.promptTokens), count(r.completionTokens), latency(r.latency), usd(r.costUsd), h("code", {}, r.requestId ?? "")]);
  const more = resp.nextPageToken
    ? h("button", { type: "button", onclick: () => { more?.remove(); load(ws, keys, out, resp.nextPageToken ?? ""); } }, "Load more")
    : null;
  const part = rows.length
    ? table(pageToken ? "Request log, more" : "Request log", ["Time", "Key", "Member", "Model", "Status", "Prompt tokens", "Completion tokens", "Latency", "Cost", "Request id"], rows, [5, 6, 7, 8])
    : h("p", { class: "empty" }, pageToken ? "No more requests." : "No request matches the filters.");
  if (pageToken) out.append(part, more ?? "");
  else replace(out, part, more);
}

// latency reads a protobuf duration ("0.0014s") in milliseconds.
function latency(d?: string): string {
  const secs = Number.parseFloat(d ?? "");
  return Number.isFinite(secs) ? `${(secs * 1000).toLocaleString(undefined, { maximumFractionDigits: 1 })} ms` : "—";
}
