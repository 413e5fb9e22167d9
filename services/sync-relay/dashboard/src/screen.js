// The device's screen: each app's accessibility outline, nodes in document order, indented by
// depth. A control the node accepts an action for is a real control here (a button, a text
// field), so the page's own accessibility tree reads as the device's does. Rows are kept by
// node and updated in place: a field someone is typing in keeps its focus and text.
import { el } from './dom.js'

// dev.kiki.a11y.act's `value` is at most this long (its lexicon): longer, the device would
// refuse the intent anyway, and the relay may refuse the write as too large.
export const MAX_VALUE = 16384
const TEXT_ROLES = new Set(['textField', 'searchBox', 'comboBox', 'spinButton'])
// Actions a plain node offers as small buttons of their own (press and setValue make the node
// a control itself; focus and scrolling mean little from afar).
const EXTRA_ACTIONS = ['select', 'expand', 'collapse', 'increment', 'decrement', 'showMenu', 'dismiss']

function kindOf (node) {
  const actions = node.actions || []
  if (TEXT_ROLES.has(node.role) && actions.includes('setValue')) return 'field'
  if (actions.includes('press')) return 'button'
  return 'text'
}

export class ScreenView {
  /**
   * @param {HTMLElement} root
   * @param {(tool: string, input: object) => void} act
   */
  constructor (root, act) {
    this.root = root
    this.act = act
    this.rows = new Map() // `${treeId}:${id}:${kind}` -> {li, control, label}
    this.apps = new Map() // appId -> {section, list}
    this.writable = false
  }

  setWritable (writable) {
    this.writable = writable
    for (const row of this.rows.values()) this.#enable(row)
  }

  #enable (row) {
    const disabled = !this.writable || row.nodeDisabled
    if (row.control) row.control.disabled = disabled
    for (const button of row.extras ? row.extras.children : []) button.disabled = disabled
  }

  render (screen) {
    const apps = (screen && Array.isArray(screen.apps)) ? screen.apps : []
    const seenApps = new Set()
    const seenRows = new Set()
    const sections = []
    for (const app of apps) {
      const appId = String(app.appId ?? app.treeId ?? '?')
      seenApps.add(appId)
      let entry = this.apps.get(appId)
      if (!entry) {
        const headingId = `app-${this.apps.size}-${appId.replace(/[^A-Za-z0-9_-]/g, '_')}`
        const list = el('ul', { class: 'outline', 'aria-labelledby': headingId })
        const section = el('section', { class: 'app' }, el('h3', { id: headingId, text: appId }), list)
        entry = { section, list }
        this.apps.set(appId, entry)
      }
      sections.push(entry.section)
      const items = []
      for (const node of app.nodes || []) {
        const kind = kindOf(node)
        const key = `${node.treeId ?? app.treeId}:${node.id}:${kind}`
        seenRows.add(key)
        let row = this.rows.get(key)
        if (!row) {
          row = this.#row(node, kind)
          this.rows.set(key, row)
        }
        this.#update(row, node)
        items.push(row.li)
      }
      if (app.truncated) items.push(el('li', { class: 'empty', text: 'More nodes than the device sends (truncated).' }))
      this.#place(entry.list, items)
    }
    for (const key of [...this.rows.keys()]) if (!seenRows.has(key)) this.rows.delete(key)
    for (const key of [...this.apps.keys()]) if (!seenApps.has(key)) this.apps.delete(key)
    if (!sections.length) sections.push(el('p', { class: 'empty', text: 'No screen yet.' }))
    this.#place(this.root, sections)
  }

  // Moves only what is out of place: moving a focused input would take its focus away.
  #place (parent, children) {
    children.forEach((child, i) => {
      if (parent.children[i] !== child) parent.insertBefore(child, parent.children[i] || null)
    })
    while (parent.children.length > children.length) parent.lastElementChild.remove()
  }

  #row (node, kind) {
    const row = { li: el('li'), node, kind, control: null, label: null, nodeDisabled: false }
    // A control says what it is itself; a plain node's role is read before its name.
    row.role = el('span', { class: 'role', 'aria-hidden': kind === 'text' ? null : 'true' })
    if (kind === 'button') {
      row.control = el('button', { type: 'button', onclick: () => this.act('dev.kiki.a11y.act', { ref: row.node.ref, action: 'press' }) })
      row.li.append(row.role, row.control)
    } else if (kind === 'field') {
      const input = el('input', { type: 'text', autocomplete: 'off', maxlength: String(MAX_VALUE) })
      // Sent when the person is done with the field (Enter, or leaving it), not per key.
      input.addEventListener('change', () => {
        const value = input.value.slice(0, MAX_VALUE)
        this.act('dev.kiki.a11y.act', { ref: row.node.ref, action: 'setValue', value })
      })
      row.control = input
      row.label = el('label')
      row.labelText = el('span')
      row.label.append(row.labelText, ' ', input)
      row.li.append(row.role, row.label)
    } else {
      row.text = el('span')
      row.value = el('span', { class: 'value' })
      row.extras = el('span', { class: 'extras' })
      row.li.append(row.role, row.text, row.value, row.extras)
    }
    return row
  }

  #update (row, node) {
    row.node = node
    row.li.style.setProperty('--depth', String(Math.max(0, Number(node.depth) || 0)))
    row.role.textContent = node.role || ''
    const name = node.name || ''
    const states = node.states || []
    row.nodeDisabled = states.includes('disabled')
    if (row.kind === 'button') {
      row.control.textContent = name || node.role
      if (node.role === 'toggleButton' || node.role === 'checkBox' || node.role === 'switch') {
        row.control.setAttribute('aria-pressed', String(states.includes('pressed') || states.includes('checked')))
      }
    } else if (row.kind === 'field') {
      row.labelText.textContent = name || node.role
      // The device's value wins unless someone is editing here.
      if (document.activeElement !== row.control) row.control.value = node.value || ''
    } else {
      row.text.textContent = name
      row.value.textContent = node.value ? `= ${node.value}` : ''
      const offered = EXTRA_ACTIONS.filter((a) => (node.actions || []).includes(a))
      if (offered.join() !== row.offered) {
        row.offered = offered.join()
        row.extras.replaceChildren(...offered.map((action) => el('button', {
          type: 'button',
          class: 'extra',
          'aria-label': `${action} ${name || node.role}`,
          text: action,
          onclick: () => this.act('dev.kiki.a11y.act', { ref: row.node.ref, action })
        })))
      } else {
        for (const button of row.extras.children) button.setAttribute('aria-label', `${button.textContent} ${name || node.role}`)
      }
    }
    this.#enable(row)
  }
}
