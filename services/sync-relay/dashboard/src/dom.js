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
