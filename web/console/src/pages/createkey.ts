// The "Create API key" dialog: name, optional expiration date, kind (admin
// keys only for owners and admins), owner, limits; then the secret, once.
import { call, type CreateKeyBody, type Model } from "../api";
import { buttons, openDialog } from "../dialog";
import { field, h, select } from "../dom";
import { today } from "../format";
import { FieldError, Fields, settingsFields } from "../keyform";
import type { Page } from "../main";
import { manager } from "../session";
import { showSecret } from "../secret";
import { listModels } from "../data";

// models is the catalog for the per-model choices; without it (an error)
// the rest of the form still works.
export async function models(): Promise<Model[]> {
  return listModels().catch(() => []);
}

export async function openCreateKey(p: Page, refresh: () => void): Promise<void> {
  const f = createForm(p, await models());
  const d = openDialog("Create API key", f.form);
  f.cancel.addEventListener("click", () => d.close());
  f.form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    f.fields.clear();
    let body: CreateKeyBody;
    try {
      body = f.read();
    } catch (e) {
      if (e instanceof FieldError) f.fields.show(e.field, e.message)?.focus();
      return;
    }
    f.submit.disabled = true;
    try {
      const resp = await call("post", "/v1/workspaces/{workspace}/keys", { path: { workspace: p.session.workspace }, body });
      d.onClose(refresh);
      showSecret(d, resp.key?.name ?? body.name ?? "", resp.secret ?? "");
    } catch (e) {
      f.submit.disabled = false;
      (f.fields.fail(e, "create the key") ?? f.name).focus();
    }
  });
}

// createForm builds the dialog's form; read() turns it into a request, or
// throws a FieldError naming what to fix.
function createForm(p: Page, catalog: Model[]) {
  const general = h("p", { class: "error", role: "alert" });
  const fields = new Fields(general);
  const name = h("input", { type: "text", required: true, autocomplete: "off", maxlength: 100 });
  fields.add("name", name);
  const expires = h("input", { type: "date", min: today() });
  fields.add("expire_time", expires);
  const isManager = manager(p.session);
  const kinds: [string, string][] = [["KEY_KIND_STANDARD", "Standard (inference)"]];
  if (isManager) kinds.push(["KEY_KIND_ADMIN", "Admin (management)"]);
  const kindSel = select(kinds);
  fields.add("kind", kindSel);
  const owner = h("input", { type: "text", autocomplete: "off", placeholder: p.session.root ? "root" : p.session.caller });
  fields.add("owner", owner);
  const settings = settingsFields(fields, catalog);
  const submit = h("button", { type: "submit", class: "primary" }, "Create key");
  const cancel = h("button", { type: "button" }, "Cancel");
  const form = h("form", { novalidate: true },
    general,
    field("Name", name, "Unique in the workspace; any printable text but '/'."),
    h("div", { class: "grid2" },
      field("Expiration date (optional)", expires, "The key stops working at the end of this day, UTC."),
      field("Kind", kindSel, isManager ? "Admin keys manage keys over the REST API; they never serve inference." : "Only owners and admins create admin keys."),
    ),
    isManager ? field("Owner (optional)", owner, "The member the key belongs to; empty for yourself.") : null,
    settings.el,
    buttons(cancel, submit),
  );
  const read = (): CreateKeyBody => {
    if (!name.value.trim()) throw new FieldError("name", "Give the key a name.");
    const body: CreateKeyBody = { name: name.value.trim(), kind: kindSel.value as CreateKeyBody["kind"], ...settings.read() };
    if (expires.value) body.expireTime = `${expires.value}T23:59:59Z`;
    if (owner.value.trim()) body.owner = owner.value.trim();
    return body;
  };
  return { form, fields, name, submit, cancel, read };
}
