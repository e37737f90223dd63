// Workspaces the credential sees, with their key counts; the root token
// creates workspaces and sets their key cap. The current workspace's
// members and roles, which its owners add, change and remove.
import { ApiError, call, explain, type Member, type Role, type Workspace } from "../api";
import { announce, field, h, notice, replace, select, table } from "../dom";
import { count, date } from "../format";
import type { Page } from "../main";
import { roleName } from "../session";

const roles: [Role, string][] = [["ROLE_MEMBER", "member"], ["ROLE_ADMIN", "admin"], ["ROLE_OWNER", "owner"]];

export async function renderWorkspaces(p: Page): Promise<void> {
  const s = p.session;
  // Read afresh: key counts change, and the session's list is from sign-in.
  const list = (await call("get", "/v1/workspaces", { query: { pageSize: 1000 } })).workspaces ?? [];
  const parts: (Node | null)[] = [h("h1", {}, "Workspaces"), workspaceTable(p, list)];
  if (s.root) parts.push(createWorkspace(p));
  if (s.workspace) parts.push(await members(p));
  replace(p.main, ...parts);
}

function workspaceTable(p: Page, list: Workspace[]): HTMLElement {
  if (list.length === 0) return h("p", { class: "empty" }, "No workspace yet.");
  const rows = list.map((w) => [h("strong", {}, w.name ?? ""), h("code", {}, w.id ?? ""), w.kind === "WORKSPACE_KIND_PERSONAL" ? "personal" : "team",
    p.session.root ? capEditor(p, w) : `${count(w.keyCount)} of ${count(w.maxKeys)}`, date(w.createTime)]);
  return table("Workspaces", ["Name", "ID", "Kind", "Keys", "Created"], rows);
}

// capEditor lets the root token raise or lower a workspace's key cap.
function capEditor(p: Page, w: Workspace): HTMLElement {
  const input = h("input", { type: "number", min: 1, max: 100000, value: String(w.maxKeys ?? 10), "aria-label": `Key cap of ${w.name ?? w.id}`, class: "narrow" });
  const save = h("button", { type: "submit" }, "Save cap");
  const form = h("form", { class: "cap" }, `${count(w.keyCount)} of `, input, save);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await call("patch", "/v1/workspaces/{workspace}", { path: { workspace: w.id ?? "" }, query: { updateMask: "max_keys", etag: w.etag }, body: { maxKeys: Number(input.value) } });
      announce(`Key cap of ${w.id} saved`);
      await p.reload();
    } catch (e) {
      form.after(notice("error", explain(e, `change the key cap of ${w.id}`)));
    }
  });
  return form;
}

function createWorkspace(p: Page): HTMLElement {
  const id = h("input", { type: "text", required: true, autocomplete: "off", maxlength: 63 });
  const name = h("input", { type: "text", autocomplete: "off" });
  const owner = h("input", { type: "text", autocomplete: "off" });
  const err = h("div", { "aria-live": "polite" });
  const form = h("form", { class: "toolbar" },
    field("Workspace ID", id, "Lower-case letters, digits and dashes."), field("Name", name), field("First owner (optional)", owner, "A member id, e.g. an email."),
    h("button", { type: "submit", class: "primary" }, "Create workspace"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    replace(err);
    try {
      await call("post", "/v1/workspaces", { body: { id: id.value.trim(), name: name.value.trim() || id.value.trim() }, query: { owner: owner.value.trim() } });
      announce(`Workspace ${id.value} created`);
      await p.reload(id.value.trim());
    } catch (e) {
      replace(err, notice("error", e instanceof ApiError && e.status === 400 ? `Check the fields: ${e.message}.` : explain(e, "create the workspace")));
    }
  });
  return h("section", { "aria-labelledby": "new-ws" }, h("h2", { id: "new-ws" }, "New workspace"), form, err);
}

async function members(p: Page): Promise<HTMLElement> {
  const ws = p.session.workspace;
  const owner = p.session.root || p.session.role === "ROLE_OWNER";
  const section = h("section", { "aria-labelledby": "members-h" }, h("h2", { id: "members-h" }, `Members of ${ws}`));
  let list: Member[];
  try {
    list = (await call("get", "/v1/workspaces/{workspace}/members", { path: { workspace: ws } })).members ?? [];
  } catch (e) {
    section.append(notice("error", explain(e, "list the members")));
    return section;
  }
  const err = h("div", { "aria-live": "polite" });
  const fail = (e: unknown, doing: string) => replace(err, notice("error", explain(e, doing)));
  const setRole = async (member: string, role: Role) => {
    await call("put", "/v1/workspaces/{workspace}/members/{member}", { path: { workspace: ws, member }, body: { role } });
    announce(`${member} is now ${roleName(role)}`);
    await renderWorkspaces(p);
  };
  const rows = list.map((m) => {
    const who = m.member ?? "";
    if (!owner) return [who, roleName(m.role), date(m.createTime)];
    const role = select(roles, m.role);
    role.setAttribute("aria-label", `Role of ${who}`);
    role.addEventListener("change", () => setRole(who, role.value as Role).catch((e) => fail(e, `change the role of ${who}`)));
    const remove = h("button", { type: "button", class: "danger", "aria-label": `Remove ${who}` }, "Remove");
    remove.addEventListener("click", async () => {
      try {
        await call("delete", "/v1/workspaces/{workspace}/members/{member}", { path: { workspace: ws, member: who } });
        announce(`${who} removed`);
        await renderWorkspaces(p);
      } catch (e) {
        fail(e, `remove ${who}`);
      }
    });
    return [who, role, date(m.createTime), remove];
  });
  section.append(err, rows.length ? table(`Members of ${ws}`, owner ? ["Member", "Role", "Added", "Actions"] : ["Member", "Role", "Added"], rows) : h("p", { class: "empty" }, "No members yet."));
  if (owner) section.append(addMember(ws, setRole, fail));
  else section.append(h("p", { class: "hint" }, "Owners add and remove members and change roles."));
  return section;
}

function addMember(ws: string, setRole: (m: string, r: Role) => Promise<void>, fail: (e: unknown, doing: string) => void): HTMLElement {
  const member = h("input", { type: "text", required: true, autocomplete: "off" });
  const role = select(roles, "ROLE_MEMBER");
  const form = h("form", { class: "toolbar" }, field("Member", member, "A user id, an email, or the OIDC subject."), field("Role", role),
    h("button", { type: "submit", class: "primary" }, "Add member"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const who = member.value.trim();
    if (!who) return;
    setRole(who, role.value as Role).catch((e) => fail(e, `add ${who} to ${ws}`));
  });
  return form;
}
