// Bundles the Worker (src/index.js) with esbuild into dist/index.js (KIKI_EDGE_OUT=dir puts it
// elsewhere), with the web dashboard's built files embedded as the module "kiki:dashboard": the
// files the device relay serves (services/sync-relay/src/kiki_sync_relay/dashboard/assets, or
// KIKI_DASHBOARD_ASSETS=dir), so the same Worker serves the same page under workerd and on
// Cloudflare, with no asset store of either.
import { createHash } from "node:crypto";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, extname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { TYPES } from "./src/dashboard-types.js";

const here = dirname(fileURLToPath(import.meta.url));
const assets = resolve(
  process.env.KIKI_DASHBOARD_ASSETS ??
    join(here, "..", "services", "sync-relay", "src", "kiki_sync_relay", "dashboard", "assets"),
);
const out = resolve(process.env.KIKI_EDGE_OUT ?? join(here, "dist"));

/**
 * The dashboard's files of a known type: name -> {etag, body (base64)}. The ETag is the device
 * relay's (the first 32 hex digits of the body's SHA-256), so either end revalidates the other's.
 */
function dashboardFiles() {
  /** @type {Record<string, {etag: string, body: string}>} */
  const files = {};
  for (const name of readdirSync(assets).sort()) {
    const path = join(assets, name);
    // Only names of a known type: a stray file beside them is not published.
    if (!statSync(path).isFile() || !(extname(name) in TYPES)) continue;
    const body = readFileSync(path);
    const etag = `"${createHash("sha256").update(body).digest("hex").slice(0, 32)}"`;
    files[name] = { etag, body: body.toString("base64") };
  }
  if (!("index.html" in files)) {
    throw new Error(`no dashboard in ${assets} (index.html): build it first (see its README)`);
  }
  return files;
}

/** @type {import("esbuild").Plugin} */
const dashboard = {
  name: "kiki-dashboard",
  setup(on) {
    on.onResolve({ filter: /^kiki:dashboard$/ }, (args) => ({
      path: args.path,
      namespace: "kiki-dashboard",
    }));
    on.onLoad({ filter: /.*/, namespace: "kiki-dashboard" }, () => ({
      contents: JSON.stringify(dashboardFiles()),
      loader: "json",
      watchDirs: [assets],
    }));
  },
};

await build({
  entryPoints: [join(here, "src", "index.js")],
  bundle: true,
  format: "esm",
  platform: "neutral",
  mainFields: ["module", "main"],
  external: ["cloudflare:*"],
  outfile: join(out, "index.js"),
  plugins: [dashboard],
  logLevel: "warning",
});
