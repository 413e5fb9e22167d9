// The few DOM helpers the views share. Text always goes in as text: what the device sends (app
// names, notification bodies) is never parsed as markup.

export function el (tag, attrs = {}, ...children) {
  const node = document.createElement(tag)
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue
    if (key === 'class') node.className = value
    else if (key === 'text') node.textContent = value
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value)
    else node.setAttribute(key, value === true ? '' : String(value))
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child)
  }
  return node
}

export function svg (tag, attrs = {}) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag)
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value))
  return node
}

export function replaceChildren (parent, children, empty) {
  parent.replaceChildren(...(children.length ? children : empty ? [empty] : []))
}

export function timeOf (iso) {
  const when = new Date(iso)
  return Number.isNaN(when.getTime()) ? '' : when.toLocaleTimeString()
}

/** A section's "source lost" note, shown while the device lists `key` in `stale`. */
export function markStale (sectionId, stale) {
  const note = document.querySelector(`#${sectionId} .stale-note`)
  if (note) note.hidden = !stale
}

/** Sets a node's text only when it differs: a live region announces every text change. */
export function setText (node, text) {
  if (node.textContent !== text) node.textContent = text
}

/** Sets (or removes, for null) an attribute only when it differs. */
export function setAttr (node, name, value) {
  if (value === null || value === undefined) {
    if (node.hasAttribute(name)) node.removeAttribute(name)
  } else if (node.getAttribute(name) !== String(value)) {
    node.setAttribute(name, String(value))
  }
}

/**
 * A list whose rows are kept by key and updated in place, so a live region announces what is
 * new or changed, not the whole list again on every change. Only rows out of place are moved.
 */
export class KeyedList {
  /**
   * @param {HTMLElement} root
   * @param {(key: string) => {li: HTMLElement}} make  builds a row's elements once
   * @param {(row: object, item: any) => void} update  sets a row's text from an item
   * @param {string} emptyText
   */
  constructor (root, make, update, emptyText) {
    this.root = root
    this.make = make
    this.update = update
    this.rows = new Map()
    this.empty = el('li', { class: 'empty', text: emptyText })
    root.replaceChildren(this.empty)
  }

  /** @param {Array<[string, any]>} items  in the order shown; keys unique */
  render (items) {
    const seen = new Set()
    const wanted = []
    for (const [key, item] of items) {
      seen.add(key)
      let row = this.rows.get(key)
      if (!row) {
        row = this.make(key)
        this.rows.set(key, row)
      }
      this.update(row, item)
      wanted.push(row.li)
    }
    for (const key of [...this.rows.keys()]) if (!seen.has(key)) this.rows.delete(key)
    if (!wanted.length) wanted.push(this.empty)
    placeChildren(this.root, wanted)
  }
}

/** Puts `children` in `parent` in that order, moving only what is out of place. */
export function placeChildren (parent, children) {
  const keep = new Set(children)
  for (const child of [...parent.children]) if (!keep.has(child)) child.remove()
  children.forEach((child, i) => {
    if (parent.children[i] !== child) parent.insertBefore(child, parent.children[i] || null)
  })
}
