// What a client was told it used, one JSON line per answer, appended to
// the file KEYGATE_TOLD names. The Go test that runs these clients sums the
// file and compares it with the key's usage in keygate's ledger.
import { appendFileSync } from "node:fs";

export function told(prompt, completion) {
  if (!(Number.isInteger(prompt) && Number.isInteger(completion))) {
    throw new Error(`usage not reported: prompt ${prompt}, completion ${completion}`);
  }
  appendFileSync(process.env.KEYGATE_TOLD, JSON.stringify({ prompt, completion }) + "\n");
}

export const edgeURL = process.env.KEYGATE_EDGE_URL;
export const apiKey = process.env.KEYGATE_KEY;
// A key allowed one request a minute, for the rate-limit errors.
export const limitedKey = process.env.KEYGATE_LIMITED_KEY;
export const wrongKey = apiKey.slice(0, -1) + (apiKey.endsWith("x") ? "y" : "x");
