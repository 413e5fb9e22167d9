// The read-only parts of the device's state: notifications, sensors, the tool-call log.
import { el, KeyedList, replaceChildren, setText, svg, timeOf } from './dom.js'

// A notification as the device's events carry it: one seen on the bus (appName, summary,
// body), or what became of one Kiki sent (closed, an action invoked).
function describeNotification (n) {
  const kind = String(n.$type || '').split('#')[1] || ''
  if (kind === 'closed') return { title: `Notification ${n.id} closed`, detail: n.reason ? String(n.reason) : '' }
  if (kind === 'actionInvoked') return { title: `Notification ${n.id}: ${n.key}`, detail: 'action invoked' }
  return { title: n.summary || kind || '(no summary)', app: n.appName, detail: n.body || '' }
}

// Kept by notification (the list is a live region: a new one is announced, not all again).
export class NotificationsView {
  constructor (root) {
    this.list = new KeyedList(root, () => {
      const row = { title: el('strong'), app: el('span', { class: 'value' }), detail: el('div'), at: el('div', { class: 'value' }) }
      row.li = el('li', {}, row.title, row.app, row.detail, row.at)
      return row
    }, (row, n) => {
      const { title, app, detail } = describeNotification(n)
      setText(row.title, String(title))
      setText(row.app, app ? ` · ${app}` : '')
      setText(row.detail, String(detail || ''))
      setText(row.at, n.at ? timeOf(n.at) : '')
      row.app.hidden = !app
      row.detail.hidden = !detail
      row.at.hidden = !n.at
    }, 'None.')
  }

  render (notifications) {
    const seen = new Map()
    const items = (Array.isArray(notifications) ? notifications : []).map((raw) => {
      const n = raw && typeof raw === 'object' ? raw : {}
      // What tells one entry from another; a repeat of the same gets a count of its own.
      const base = JSON.stringify([n.$type, n.id, n.at, n.summary])
      const count = (seen.get(base) || 0) + 1
      seen.set(base, count)
      return [`${base}#${count}`, n]
    })
    this.list.render(items.reverse())
  }
}

const HISTORY = 60 // points per sparkline

export class SensorsView {
  constructor (root) {
    this.root = root
    this.history = new Map() // sensor -> [first channel's values]
    this.seq = new Map() // sensor -> the sample last drawn
  }

  render (sensors) {
    const samples = Array.isArray(sensors) ? sensors : []
    const items = samples.map((sample, i) => {
      const name = String(sample.sensor ?? sample.id ?? sample.name ?? `sensor ${i + 1}`)
      // Fixed point: a value is scaled by 10^scale (see the sensor's layout).
      const divisor = 10 ** (Number(sample.scale) || 0)
      const values = (Array.isArray(sample.values) ? sample.values : []).map((v) => Number(v) / divisor)
      const points = this.history.get(name) || []
      const last = this.seq.get(name)
      if (values.length && last !== sample.seq) points.push(values[0])
      this.seq.set(name, sample.seq)
      while (points.length > HISTORY) points.shift()
      this.history.set(name, points)
      const latest = values.slice(0, 3).map((v) => +v.toPrecision(4)).join(', ') + (values.length > 3 ? ', …' : '') + (sample.unit && sample.unit !== '1' ? ` ${sample.unit}` : '')
      return el('li', {}, el('span', { class: 'role', text: name }), sparkline(points, `${name}: latest ${latest}`), el('span', { text: latest }))
    })
    replaceChildren(this.root, items, el('li', { class: 'empty', text: 'No sensor values yet.' }))
  }
}

function sparkline (points, label) {
  const graph = svg('svg', { viewBox: '0 0 100 24', preserveAspectRatio: 'none', role: 'img', 'aria-label': label })
  if (points.length > 1) {
    const lo = Math.min(...points)
    const span = (Math.max(...points) - lo) || 1
    const coords = points.map((v, i) => `${(i / (points.length - 1)) * 100},${22 - ((v - lo) / span) * 20}`)
    graph.append(svg('polyline', { points: coords.join(' ') }))
  }
  return graph
}

// The audit's caller: the kernel's word for a local peer ({uid, gid, pid, app?}).
function describeCaller (caller) {
  if (typeof caller === 'string') return caller
  if (!caller || typeof caller !== 'object') return ''
  const who = caller.app ? `app:${caller.app}` : caller.uid !== undefined ? `uid:${caller.uid}` : JSON.stringify(caller)
  return caller.pid !== undefined ? `${who} (pid ${caller.pid})` : who
}

export function renderCalls (root, calls) {
  const rows = (Array.isArray(calls) ? calls : []).slice().reverse().map((c) => {
    const behalf = c.onBehalfOf ? (c.onBehalfOf.subject || JSON.stringify(c.onBehalfOf)) : ''
    const caller = describeCaller(c.caller)
    return el('tr', {},
      el('td', { text: timeOf(c.at) }),
      el('td', { text: c.tool || '' }),
      el('td', { text: caller }),
      el('td', { text: behalf }),
      el('td', { class: `status-${c.outcome === 'ok' ? 'ok' : 'error'}`, text: c.outcome || '' }))
  })
  replaceChildren(root, rows, el('tr', {}, el('td', { colspan: '5', class: 'empty', text: 'No calls yet.' })))
}
