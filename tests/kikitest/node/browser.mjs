// Real browsers for the dashboard's tests: Debian's chromium driven by playwright-core, one JSON
// command per stdin line ({"id", "op", ...}), each answered by one stdout line with the same id
// ({"id", "result"} or {"id", "error"}). Each `page` is its own browser context (its own
// storage), as two people at two computers would be.
import * as readline from 'node:readline'
import { chromium } from 'playwright-core'

const TIMEOUT = 15000
const pages = new Map()
let browser = null
const out = (message) => process.stdout.write(JSON.stringify(message) + '\n')

const pageOf = (name) => {
  const page = pages.get(name)
  if (!page) throw new Error(`no page ${name}`)
  return page
}

const ops = {
  async launch ({ executable = '/usr/bin/chromium' }) {
    browser = await chromium.launch({
      executablePath: executable,
      // As root chromium needs --no-sandbox; the pages are our own.
      args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage']
    })
    return browser.version()
  },
  async open ({ page: name, url }) {
    const context = await browser.newContext({ viewport: { width: 1200, height: 900 } })
    const page = await context.newPage()
    page.setDefaultTimeout(TIMEOUT)
    page.on('console', (m) => out({ event: 'console', page: name, type: m.type(), text: m.text() }))
    page.on('pageerror', (e) => out({ event: 'pageerror', page: name, text: String(e) }))
    pages.set(name, page)
    await page.goto(url)
    return null
  },
  // Wait until the element `selector` holds `text` (a substring of its text).
  async waitText ({ page, selector, text }) {
    await pageOf(page).locator(selector).filter({ hasText: text }).first().waitFor()
    return null
  },
  // Wait until no element `selector` shows `text` any more: gone or hidden (within `timeout` ms).
  async waitGone ({ page, selector, text, timeout = TIMEOUT }) {
    await pageOf(page).locator(selector).filter({ hasText: text }).waitFor({ state: 'hidden', timeout })
    return null
  },
  async text ({ page, selector }) {
    return await pageOf(page).locator(selector).first().innerText()
  },
  async fill ({ page, label, value }) {
    await pageOf(page).getByRole('textbox', { name: label, exact: true }).fill(value)
    return null
  },
  async click ({ page, role, name }) {
    await pageOf(page).getByRole(role, { name, exact: true }).click()
    return null
  },
  // The accessible controls named `name` with `role`: whether each is disabled.
  async controls ({ page, role, name }) {
    const found = pageOf(page).getByRole(role, { name, exact: true })
    await found.first().waitFor()
    const states = []
    for (const one of await found.all()) states.push(await one.isDisabled())
    return states
  },
  // The page's accessibility tree under `selector`, as Playwright's ARIA snapshot writes it.
  async aria ({ page, selector = 'body' }) {
    return await pageOf(page).locator(selector).ariaSnapshot()
  },
  async evaluate ({ page, expression }) {
    return await pageOf(page).evaluate(expression)
  },
  async screenshot ({ page, path }) {
    await pageOf(page).screenshot({ path, fullPage: true })
    return path
  },
  async close ({ page }) {
    await pageOf(page).context().close()
    pages.delete(page)
    return null
  }
}

const lines = readline.createInterface({ input: process.stdin })
lines.on('line', async (line) => {
  const { id, op, ...args } = JSON.parse(line)
  try {
    const result = await ops[op](args)
    out({ id, result: result === undefined ? null : result })
  } catch (error) {
    out({ id, error: String(error && error.stack ? error.stack : error) })
  }
})
lines.on('close', async () => {
  if (browser) await browser.close()
  process.exit(0)
})
