// Lists several pages need (the workspace's keys for pickers, the model
// catalog), read the same way everywhere.
import { call, type Key, type Model } from "./api";

export async function listKeys(workspace: string): Promise<Key[]> {
  return (await call("get", "/v1/workspaces/{workspace}/keys", { path: { workspace }, query: { pageSize: 1000 } })).keys ?? [];
}

export async function listModels(): Promise<Model[]> {
  return (await call("get", "/v1/models", {})).models ?? [];
}

// inferenceKeys are the keys that can have usage: admin keys never serve
// inference (and a member may not read another's admin key at all).
export function inferenceKeys(keys: Key[]): Key[] {
  return keys.filter((k) => k.kind !== "KEY_KIND_ADMIN");
}

// keyNames maps key ids to names, for tables that hold ids.
export function keyNames(keys: Key[]): Map<string, string> {
  return new Map(keys.map((k) => [k.id ?? "", k.name ?? ""]));
}

export function keyOptions(keys: Key[], all: string): [string, string][] {
  return [["", all], ...keys.map((k): [string, string] => [k.id ?? "", k.name ?? ""])];
}
