// The read-only parts of the device's state: notifications, sensors, the tool-call log.
import { el, replaceChildren, svg, timeOf } from './dom.js'

export function renderNotifications (root, notifications) {
  const items = (Array.isArray(notifications) ? notifications : []).slice().reverse().map((n) =>
    el('li', {},
      el('strong', { text: n.summary || '(no summary)' }),
      n.appName ? el('span', { class: 'value', text: ` · ${n.appName}` }) : null,
      n.body ? el('div', { text: n.body }) : null,
      n.at ? el('div', { class: 'value', text: timeOf(n.at) }) : null))
  replaceChildren(root, items, el('li', { class: 'empty', text: 'None.' }))
}

const HISTORY = 60 // points per sparkline

export class SensorsView {
  constructor (root) {
    this.root = root
    this.history = new Map() // sensor -> [first channel's values]
  }

  render (sensors) {
    const samples = Array.isArray(sensors) ? sensors : []
    const items = samples.map((sample, i) => {
      const name = String(sample.sensor ?? sample.id ?? sample.name ?? `sensor ${i + 1}`)
      const values = Array.isArray(sample.values) ? sample.values : []
      const points = this.history.get(name) || []
      if (values.length) points.push(Number(values[0]))
      while (points.length > HISTORY) points.shift()
      this.history.set(name, points)
      const latest = values.join(', ')
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

export function renderCalls (root, calls) {
  const rows = (Array.isArray(calls) ? calls : []).slice().reverse().map((c) => {
    const behalf = c.onBehalfOf ? (c.onBehalfOf.subject || JSON.stringify(c.onBehalfOf)) : ''
    const caller = typeof c.caller === 'string' ? c.caller : JSON.stringify(c.caller ?? '')
    return el('tr', {},
      el('td', { text: timeOf(c.at) }),
      el('td', { text: c.tool || '' }),
      el('td', { text: caller }),
      el('td', { text: behalf }),
      el('td', { class: `status-${c.outcome === 'ok' ? 'ok' : 'error'}`, text: c.outcome || '' }))
  })
  replaceChildren(root, rows, el('tr', {}, el('td', { colspan: '5', class: 'empty', text: 'No calls yet.' })))
}
