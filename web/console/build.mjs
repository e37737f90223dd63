// Builds the console into services/gateway/console/dist, where the Go
// binary embeds it. The output depends only on the sources and the pinned
// esbuild, so `make check-console` can compare it with the committed files.
import { build } from "esbuild";
import { copyFile, mkdir, rm } from "node:fs/promises";

const out = "../../services/gateway/console/dist";

await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
await build({
  entryPoints: { console: "src/main.ts" },
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  legalComments: "none",
  outdir: out,
  logLevel: "warning",
});
await build({
  entryPoints: { console: "src/console.css" },
  bundle: true,
  minify: true,
  outdir: out,
  logLevel: "warning",
});
await copyFile("src/index.html", `${out}/index.html`);
