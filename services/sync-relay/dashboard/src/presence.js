// Who else is here: every awareness state the session carries (controllers and the device;
// an observer may not write, so it cannot announce itself). A state's name and role are what
// its writer says of itself: the relay checks who owns a state, not what it says, so anyone
// may announce "alice, device". Only this page's own entry is shown as its token says (the
// relay verified that token); every other is marked as self-declared. Rows are kept by client
// (the list is a live region).
import { el, KeyedList, setAttr, setText } from './dom.js'

const clip = (value) => String(value ?? '').slice(0, 64)

export class PresenceView {
  /**
   * @param {HTMLElement} root
   * @param {{sub: string, role: string}} me  this page's token's claims
   */
  constructor (root, me) {
    this.me = me
    this.list = new KeyedList(root, () => {
      const row = { name: el('span'), role: el('span', { class: 'value' }) }
      row.li = el('li', {}, row.name, row.role)
      return row
    }, (row, { clientId, own, user }) => {
      setAttr(row.li, 'data-client', clientId)
      setAttr(row.li, 'data-verified', own ? 'true' : 'false')
      if (own) {
        setText(row.name, `${this.me.sub} (you)`)
        setText(row.role, ` · ${this.me.role}`)
      } else {
        setText(row.name, `“${clip(user.name)}”`)
        setText(row.role, ` · ${clip(user.role)} (self-declared)`)
      }
    }, 'No one announced.')
  }

  render (awareness) {
    const items = []
    awareness.getStates().forEach((state, clientId) => {
      const user = state && state.user
      if (!user || typeof user !== 'object') return
      items.push([String(clientId), { clientId, own: clientId === awareness.clientID, user }])
    })
    this.list.render(items)
  }
}
