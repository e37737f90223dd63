// The signed-in credential and what it may see. The credential lives in
// memory and in sessionStorage (so a reload keeps the tab signed in), never
// in localStorage or a cookie: closing the tab or signing out forgets it.
import { call, setCredential, type Role, type Workspace } from "./api";

export interface Session {
  workspaces: Workspace[];
  workspace: string;
  // Who the credential acts as ("root" for the root token) and its role in
  // the current workspace.
  caller: string;
  role: Role;
  root: boolean;
}

const tokenKey = "keygate.credential";
const workspaceKey = "keygate.workspace";

export function savedToken(): string {
  return sessionStorage.getItem(tokenKey) ?? "";
}

export async function signIn(token: string): Promise<Session> {
  setCredential(token);
  try {
    const s = await load(sessionStorage.getItem(workspaceKey) ?? "");
    sessionStorage.setItem(tokenKey, token);
    return s;
  } catch (e) {
    setCredential("");
    throw e;
  }
}

export function signOut(): void {
  setCredential("");
  sessionStorage.removeItem(tokenKey);
  sessionStorage.removeItem(workspaceKey);
}

// load lists the workspaces the credential sees and settles on one: the
// wanted one if visible, else the first.
export async function load(want: string): Promise<Session> {
  const list = await call("get", "/v1/workspaces", { query: { pageSize: 1000 } });
  const workspaces = list.workspaces ?? [];
  const ws = workspaces.find((w) => w.id === want)?.id ?? workspaces[0]?.id ?? "";
  if (!ws) {
    // Only the root token sees no workspace at all (an admin key always
    // has its own): it starts by creating one.
    return { workspaces, workspace: "", caller: "root", role: "ROLE_OWNER", root: true };
  }
  const got = await call("get", "/v1/workspaces/{workspace}", { path: { workspace: ws } });
  sessionStorage.setItem(workspaceKey, ws);
  return {
    workspaces,
    workspace: ws,
    caller: got.caller ?? "",
    role: got.callerRole ?? "ROLE_MEMBER",
    root: got.caller === "root",
  };
}

// manager: owners and admins manage every key of the workspace.
export function manager(s: Session): boolean {
  return s.root || s.role === "ROLE_OWNER" || s.role === "ROLE_ADMIN";
}

export function roleName(r?: Role): string {
  switch (r) {
    case "ROLE_OWNER":
      return "owner";
    case "ROLE_ADMIN":
      return "admin";
    case "ROLE_MEMBER":
      return "member";
    default:
      return "none";
  }
}
