// The audit log: who did what to which key or member, and when. Values are
// the objects before and after, which never hold a secret or a hash.
import { call, explain, type AuditEvent, type Key } from "../api";
import { keyNames, keyOptions, listKeys } from "../data";
import { field, h, notice, replace, select, table } from "../dom";
import { dateTime } from "../format";
import type { Page } from "../main";

let filterKey = "";

export async function renderAudit(p: Page): Promise<void> {
  const ws = p.session.workspace;
  const keys = await listKeys(ws);
  const keySel = select(keyOptions(keys, "Every event"), filterKey);
  const out = h("div", {});
  keySel.addEventListener("change", () => { filterKey = keySel.value; load(ws, keys, out, ""); });
  replace(p.main, h("h1", {}, "Audit log"), h("div", { class: "toolbar" }, field("Key", keySel)), out);
  await load(ws, keys, out, "");
}

async function load(ws: string, keys: Key[], out: HTMLElement, pageToken: string): Promise<void> {
  let resp;
  try {
    resp = filterKey
      ? await call("get", "/v1/workspaces/{workspace}/keys/{key}/auditEvents", { path: { workspace: ws, key: filterKey }, query: { pageSize: 50, pageToken } })
      : await call("get", "/v1/workspaces/{workspace}/auditEvents", { path: { workspace: ws }, query: { pageSize: 50, pageToken } });
  } catch (e) {
    replace(out, notice("error", explain(e, "load the audit log")));
    return;
  }
  const names = keyNames(keys);
  const rows = (resp.events ?? []).map((e: AuditEvent) => [dateTime(e.time), e.actor ?? "", e.credential ?? "", e.action ?? "",
    e.key ? (names.get(e.key) ?? e.key) : "", change(e)]);
  const more = resp.nextPageToken
    ? h("button", { type: "button", onclick: () => { more?.remove(); load(ws, keys, out, resp.nextPageToken ?? ""); } }, "Load more")
    : null;
  const part = rows.length
    ? table(pageToken ? "Audit log, more" : "Audit log", ["Time", "Actor", "Credential", "Action", "Key", "Change"], rows)
    : h("p", { class: "empty" }, pageToken ? "No more events." : "No events yet.");
  if (pageToken) out.append(part, more ?? "");
  else replace(out, part, more);
}

// change lists the fields an event changed, old → new.
function change(e: AuditEvent): Node | string {
  const before = parse(e.oldValue);
  const after = parse(e.newValue);
  const fields = [...new Set([...Object.keys(before), ...Object.keys(after)])]
    .filter((f) => !["etag", "updateTime"].includes(f) && JSON.stringify(before[f]) !== JSON.stringify(after[f]));
  if (fields.length === 0) return "";
  return h("ul", { class: "changes" }, fields.map((f) => h("li", {}, h("code", {}, f), `: ${show(before[f])} → ${show(after[f])}`)));
}

function parse(v?: string): Record<string, unknown> {
  if (!v) return {};
  try {
    const o = JSON.parse(v);
    return o && typeof o === "object" ? o : {};
  } catch {
    return {};
  }
}

function show(v: unknown): string {
  if (v === undefined) return "—";
  const s = typeof v === "string" ? v : JSON.stringify(v);
  return s.length > 60 ? `${s.slice(0, 57)}…` : s;
}
