// Builds the dashboard into the relay's package data (src/kiki_sync_relay/dashboard/assets):
// index.html, style.css and one bundle of the page's modules with yjs and y-websocket. The
// bundle's and the style sheet's names carry a hash of their content, so the relay can let
// browsers keep them for good, and rebuilding from the lockfile gives the same bytes (a test
// checks the committed files against a fresh build).
//   npm ci && npm run build         (KIKI_DASHBOARD_OUT=DIR to build elsewhere)
import { createHash } from 'node:crypto'
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as esbuild from 'esbuild'

const here = dirname(fileURLToPath(import.meta.url))
const out = process.env.KIKI_DASHBOARD_OUT ||
  join(here, '..', 'src', 'kiki_sync_relay', 'dashboard', 'assets')

const hashed = (name, bytes) => {
  const digest = createHash('sha256').update(bytes).digest('hex').slice(0, 12)
  return name.replace(/\.(\w+)$/, `-${digest}.$1`)
}

const bundle = await esbuild.build({
  entryPoints: [join(here, 'src', 'main.js')],
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: ['es2022'],
  minify: true,
  legalComments: 'none',
  charset: 'utf8',
  write: false,
  logLevel: 'warning'
})
const app = bundle.outputFiles[0].contents
const css = await readFile(join(here, 'src', 'style.css'))
const appName = hashed('app.js', app)
const cssName = hashed('style.css', css)
const html = (await readFile(join(here, 'src', 'index.html'), 'utf8'))
  .replace('src="app.js"', `src="${appName}"`)
  .replace('href="style.css"', `href="${cssName}"`)

await mkdir(out, { recursive: true })
for (const old of await readdir(out)) await rm(join(out, old))
await writeFile(join(out, appName), app)
await writeFile(join(out, cssName), css)
await writeFile(join(out, 'index.html'), html)
console.log(`built ${out}: index.html ${appName} ${cssName}`)
