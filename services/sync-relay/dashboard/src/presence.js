// Who else is here: every awareness state the session carries (controllers and the device;
// an observer may not write, so it cannot announce itself).
import { el, replaceChildren } from './dom.js'

export function renderPresence (root, awareness) {
  const items = []
  awareness.getStates().forEach((state, clientId) => {
    const user = state && state.user
    if (!user) return
    const you = clientId === awareness.clientID ? ' (you)' : ''
    items.push(el('li', { 'data-client': String(clientId) },
      el('span', { text: `${user.name}${you}` }),
      el('span', { class: 'value', text: ` · ${user.role || ''}` })))
  })
  replaceChildren(root, items, el('li', { class: 'empty', text: 'No one announced.' }))
}
