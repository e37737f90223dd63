// The console's shell: sign-in, the header with the workspace picker, the
// page navigation and a hash router (#/keys …), so the gateway serves one
// static index.html and needs no server-side routes.
import { ApiError, explain, whenUnauthorized } from "./api";
import { announce, field, h, notice, replace, select } from "./dom";
import { load, manager, roleName, savedToken, type Session, signIn, signOut } from "./session";
import { finishSSO, ssoConfig, startSSO } from "./sso";
import { renderKeys } from "./pages/keys";
import { renderUsage } from "./pages/usage";
import { renderRequests } from "./pages/requests";
import { renderAudit } from "./pages/audit";
import { renderWorkspaces } from "./pages/workspaces";
import { renderModels } from "./pages/models";
import { renderLimits } from "./pages/limits";
import { renderCredits } from "./pages/credits";
import { renderAlerts } from "./pages/alerts";

// Page is what every page gets: the session, its main element, and a way
// to reload the session (after creating a workspace, say).
export interface Page {
  session: Session;
  main: HTMLElement;
  reload(workspace?: string): Promise<void>;
}

// inWorkspace pages show one workspace's data: with none yet (a root
// token on a fresh keygate) they say where to create one.
const pages: { path: string; title: string; render: (p: Page) => Promise<void>; inWorkspace?: boolean }[] = [
  { path: "keys", title: "API keys", render: renderKeys, inWorkspace: true },
  { path: "usage", title: "Usage", render: renderUsage, inWorkspace: true },
  { path: "limits", title: "Limits", render: renderLimits, inWorkspace: true },
  { path: "credits", title: "Credits", render: renderCredits, inWorkspace: true },
  { path: "alerts", title: "Alerts", render: renderAlerts, inWorkspace: true },
  { path: "requests", title: "Request log", render: renderRequests, inWorkspace: true },
  { path: "audit", title: "Audit log", render: renderAudit, inWorkspace: true },
  { path: "workspaces", title: "Workspaces", render: renderWorkspaces },
  { path: "models", title: "Models", render: renderModels },
];

const app = document.getElementById("app") as HTMLElement;
let session: Session | null = null;

whenUnauthorized(() => {
  if (!session) return;
  signOut();
  session = null;
  showSignIn("Your credential is no longer accepted (revoked, expired or mistyped). Sign in again.");
});

async function start(): Promise<void> {
  let token = savedToken();
  try {
    token = (await finishSSO()) || token;
  } catch (e) {
    return showSignIn(e instanceof Error ? e.message : String(e));
  }
  if (!token) return showSignIn("");
  try {
    session = await signIn(token);
    showShell();
  } catch (e) {
    signOut();
    showSignIn(explain(e, "sign in"));
  }
}

function showSignIn(message: string): void {
  const input = h("input", { type: "password", name: "credential", autocomplete: "off", spellcheck: "false", required: true });
  const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h("form", {}, field("Root token or admin key", input, "kgr_… (root token) or kga_… (admin key). Kept only in this tab until you sign out."), submit);
  const err = h("div", { "aria-live": "polite" }, message ? notice("error", message) : null);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    replace(err);
    try {
      session = await signIn(input.value.trim());
      input.value = "";
      showShell();
      announce("Signed in");
    } catch (e) {
      const msg = e instanceof ApiError && e.status === 401 ? "That credential was not accepted. Check it and try again." : explain(e, "sign in");
      replace(err, notice("error", msg));
      submit.disabled = false;
      input.focus();
    }
  });
  document.title = "Sign in · keygate console";
  const sso = h("div", {});
  replace(app, h("main", { id: "main", class: "signin", tabindex: -1 }, h("h1", {}, "Sign in to keygate"), err, form, sso));
  input.focus();
  offerSSO(sso, err);
}

// offerSSO adds the single sign-on button when the gateway has an issuer.
async function offerSSO(slot: HTMLElement, err: HTMLElement): Promise<void> {
  const c = await ssoConfig();
  if (!c.sso) return;
  const button = h("button", { type: "button", class: "primary" }, "Sign in with single sign-on");
  button.addEventListener("click", () => {
    button.disabled = true;
    startSSO(c).catch((e) => {
      button.disabled = false;
      replace(err, notice("error", `Could not start single sign-on: ${e}`));
    });
  });
  replace(slot, h("p", { class: "or" }, "or"), button);
}

function showShell(): void {
  const s = session as Session;
  // data-workspace says which workspace the shell shows (a switch re-renders it).
  const main = h("main", { id: "main", tabindex: -1, "data-workspace": s.workspace });
  const nav = h("nav", { class: "pages", "aria-label": "Pages" }, h("ul", {}, pages.map((p) => h("li", {}, h("a", { href: `#/${p.path}`, "data-page": p.path }, p.title)))));
  const wsPicker = select(s.workspaces.map((w) => [w.id ?? "", w.name ? `${w.name} (${w.id})` : (w.id ?? "")]), s.workspace);
  wsPicker.id = "workspace-picker";
  wsPicker.addEventListener("change", async () => {
    await reload(wsPicker.value);
    announce(`Workspace ${wsPicker.value}`);
  });
  const header = h("header", { class: "top" },
    h("span", { class: "brand" }, "keygate console"),
    s.workspaces.length ? h("span", { class: "picker" }, h("label", { for: "workspace-picker" }, "Workspace"), wsPicker) : null,
    h("span", { class: "who" }, s.root ? "Signed in with the root token" : `Signed in as ${s.caller} (${roleName(s.role)}${manager(s) ? "" : ", own keys only"})`),
    h("button", { type: "button", onclick: () => { signOut(); session = null; showSignIn(""); announce("Signed out"); } }, "Sign out"),
  );
  replace(app, header, nav, main);
  route(main, false);
}

async function reload(workspace?: string): Promise<void> {
  if (!session) return;
  try {
    session = await load(workspace ?? session.workspace);
    showShell();
  } catch (e) {
    const main = document.getElementById("main");
    if (main) replace(main, notice("error", explain(e, "load the workspace")));
  }
}

async function route(main: HTMLElement, moveFocus: boolean): Promise<void> {
  if (!session) return;
  const path = location.hash.startsWith("#/") ? location.hash.slice(2) : "keys";
  const page = pages.find((p) => p.path === path) ?? pages[0];
  for (const a of document.querySelectorAll<HTMLAnchorElement>("nav.pages a")) {
    if (a.dataset.page === page.path) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = `${page.title} · keygate console`;
  if (page.inWorkspace && !session.workspace) {
    replace(main, h("h1", {}, page.title), notice("info", "No workspace yet. Create one on the Workspaces page."));
    return;
  }
  replace(main, h("h1", {}, page.title), h("p", { class: "hint" }, "Loading…"));
  try {
    await page.render({ session, main, reload: (w?: string) => reload(w) });
  } catch (e) {
    replace(main, h("h1", {}, page.title), notice("error", explain(e, `load ${page.title.toLowerCase()}`)));
  }
  if (moveFocus) main.focus();
}

window.addEventListener("hashchange", () => {
  // Other hashes (the skip link's #main) are not routes.
  if (!location.hash.startsWith("#/")) return;
  const main = document.getElementById("main");
  if (main && session) route(main, true);
});

start();
