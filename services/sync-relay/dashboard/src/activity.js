// Every intent in the session (this page's and everyone else's) with who asked and what came
// of it: how two people at two dashboards see each other's actions.
import { el, replaceChildren, timeOf } from './dom.js'

const SHOWN = 50

function describe (intent) {
  const input = intent.input || {}
  if (intent.tool === 'dev.kiki.a11y.act') {
    const value = input.action === 'setValue' ? ` “${input.value ?? ''}”` : ''
    return `${input.action || 'act'} ${input.ref || ''}${value}`
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

export function renderActivity (root, intents, results, me) {
  const all = [...intents.values()]
    .filter((i) => i && typeof i === 'object')
    .sort((a, b) => String(b.createdAt).localeCompare(String(a.createdAt)))
    .slice(0, SHOWN)
  const items = all.map((intent) => {
    const { status, text } = outcome(results.get(intent.id))
    const who = intent.by === me ? `${intent.by} (you)` : intent.by
    return el('li', { 'data-intent': intent.id, 'data-status': status },
      el('span', { class: 'value', text: `${timeOf(intent.createdAt)} ${who}: ` }),
      el('span', { text: describe(intent) }),
      ' — ',
      el('span', { class: `status-${status}`, text }))
  })
  replaceChildren(root, items, el('li', { class: 'empty', text: 'No actions yet.' }))
}
