// Every intent in the session (this page's and everyone else's) with who asked and what came
// of it: how two people at two dashboards see each other's actions. Rows are kept by intent id
// and updated in place (the list is a live region: only what is new or changed is announced).
import { el, KeyedList, setAttr, setText, timeOf } from './dom.js'

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
  const input = intent.input && typeof intent.input === 'object' ? intent.input : {}
  if (intent.tool === 'dev.kiki.a11y.act') {
    const value = input.action === 'setValue' ? ` “${String(input.value ?? '')}”` : ''
    return `${String(input.action || 'act')} ${names.get(input.ref) || String(input.ref || '')}${value}`
  }
  return String(intent.tool) + (Object.keys(input).length ? ` ${JSON.stringify(input)}` : '')
}

function outcome (result, refused) {
  if (!result) {
    if (refused) return { status: 'refused', text: `not delivered: refused by the relay (${refused})` }
    return { status: 'pending', text: 'waiting for the device' }
  }
  if (result.status === 'ok') {
    const message = result.output && typeof result.output.message === 'string' ? `: ${result.output.message}` : ''
    return { status: 'ok', text: `ok${message}` }
  }
  const status = String(result.status)
  if (result.error) return { status, text: `${status}: ${result.error.name}: ${result.error.message}` }
  return { status, text: status }
}

const timeMs = (iso) => {
  const t = Date.parse(iso)
  return Number.isNaN(t) ? 0 : t
}

export class ActivityView {
  constructor (root) {
    this.list = new KeyedList(root, () => {
      const row = { when: el('span', { class: 'value' }), what: el('span'), status: el('span') }
      row.li = el('li', {}, row.when, row.what, ' — ', row.status)
      return row
    }, (row, { id, result, who, what, refused }) => {
      const { status, text } = outcome(result, refused)
      setAttr(row.li, 'data-intent', id)
      setAttr(row.li, 'data-status', status)
      // The device's time for a result; this page's for an intent not answered yet. (An
      // intent's own createdAt is its writer's claim.)
      setText(row.when, `${timeOf(result && result.at ? result.at : new Date(this.arrival.get(id)).toISOString())} ${who}: `)
      setText(row.what, what)
      setAttr(row.status, 'class', `status-${status}`)
      setText(row.status, text)
    }, 'No actions yet.')
    this.arrival = new Map() // intent id -> when this page first saw it (ms, its own clock)
    this.seen = 0
    this.refused = new Map() // intent id -> why the relay refused the write carrying it
  }

  /** The page's own intents not answered when the relay refused its writes. */
  markRefused (ids, why) {
    for (const id of ids) this.refused.set(id, why)
  }

  /**
   * Newest first: intents still waiting (by when this page saw them), then answered ones by the
   * device's result time (then by arrival). A writer's createdAt orders nothing, so no one
   * pins an entry on top.
   */
  render (intents, results, me, screen) {
    const names = namesOf(screen)
    const now = Date.now()
    const entries = []
    for (const [id, intent] of intents.entries()) {
      if (!intent || typeof intent !== 'object') continue
      if (!this.arrival.has(id)) this.arrival.set(id, now + (this.seen++) / 1000)
      const result = results.get(id)
      const answered = result && typeof result === 'object' ? result : null
      entries.push({
        id,
        intent,
        result: answered,
        pending: !answered,
        order: answered ? timeMs(answered.at) : this.arrival.get(id),
        arrival: this.arrival.get(id),
        refused: this.refused.get(id),
        who: intent.by === me ? `${String(intent.by)} (you)` : String(intent.by),
        what: describe(intent, names)
      })
    }
    entries.sort((a, b) => (b.pending - a.pending) || (b.order - a.order) || (b.arrival - a.arrival))
    this.list.render(entries.slice(0, SHOWN).map((e) => [e.id, e]))
  }
}
