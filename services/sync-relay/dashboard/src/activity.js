// Every intent in the session (this page's and everyone else's) with who asked and what came
// of it: how two people at two dashboards see each other's actions.
import { el, replaceChildren, timeOf } from './dom.js'

const SHOWN = 50

// A node's name as the screen shows it now, so an action reads "press Save", not "press 1:3".
function namesOf (screen) {
  const names = new Map()
  for (const app of (screen && Array.isArray(screen.apps)) ? screen.apps : []) {
    for (const node of app.nodes || []) if (node.ref && node.name) names.set(node.ref, node.name)
  }
  return names
}

function describe (intent, names) {
  const input = intent.input || {}
  if (intent.tool === 'dev.kiki.a11y.act') {
    const value = input.action === 'setValue' ? ` “${input.value ?? ''}”` : ''
    return `${input.action || 'act'} ${names.get(input.ref) || input.ref || ''}${value}`
  }
  return intent.tool + (Object.keys(input).length ? ` ${JSON.stringify(input)}` : '')
}

function outcome (result) {
  if (!result) return { status: 'pending', text: 'waiting for the device' }
  if (result.status === 'ok') {
    const message = result.output && typeof result.output.message === 'string' ? `: ${result.output.message}` : ''
    return { status: 'ok', text: `ok${message}` }
  }
  if (result.error) return { status: result.status, text: `${result.status}: ${result.error.name}: ${result.error.message}` }
  return { status: result.status, text: result.status }
}

export function renderActivity (root, intents, results, me, screen) {
  const names = namesOf(screen)
  const all = [...intents.values()]
    .filter((i) => i && typeof i === 'object')
    .sort((a, b) => String(b.createdAt).localeCompare(String(a.createdAt)))
    .slice(0, SHOWN)
  const items = all.map((intent) => {
    const { status, text } = outcome(results.get(intent.id))
    const who = intent.by === me ? `${intent.by} (you)` : intent.by
    return el('li', { 'data-intent': intent.id, 'data-status': status },
      el('span', { class: 'value', text: `${timeOf(intent.createdAt)} ${who}: ` }),
      el('span', { text: describe(intent, names) }),
      ' — ',
      el('span', { class: `status-${status}`, text }))
  })
  replaceChildren(root, items, el('li', { class: 'empty', text: 'No actions yet.' }))
}
