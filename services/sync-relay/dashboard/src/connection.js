// The session as a Yjs client: y-websocket's provider over a WebSocket whose first frame is the
// token (the relay waits for it before relaying anything), with the connection's life told to
// one listener as a small state: connecting, live, offline, refused.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import * as awarenessProtocol from 'y-protocols/awareness'
import * as encoding from 'lib0/encoding'

// Closes that refuse what the page sent: 1008 (an invalid, expired or revoked token, or a write
// its role may not make), 1009 (a message larger than the relay takes), 1007 (one it could not
// read). Rejoining would be refused the same way: the refused update stays in this page's
// Y.Doc, and y-websocket sends the whole document again on every reconnect. So the page stops;
// rejoining needs a fresh document (a reload).
const REFUSALS = new Map([
  [1007, 'the relay could not read a message from this page'],
  [1008, 'not allowed'],
  [1009, 'a message from this page was larger than the relay takes']
])

export function refusalText (code, reason) {
  const known = REFUSALS.get(code)
  if (reason && known && code !== 1008) return `${reason} (${known})`
  return reason || known || `closed with code ${code}`
}

function tokenSocket (token) {
  return class TokenSocket extends WebSocket {
    constructor (url, protocols) {
      super(url, protocols)
      // Registered before the provider sets onopen, so the token goes before its sync step 1.
      this.addEventListener('open', () => this.send(JSON.stringify({ token })), { once: true })
    }
  }
}

const MESSAGE_AWARENESS = 1

// y-websocket sends every awareness change it applies, other clients' included. The relay lets
// only a state's owner change it: another person's state this browser drops as outdated (their
// tab asleep for 30 s) would go out as a removal of a state this page does not own, and the
// relay would close the page. So only this client's own state is sent.
function ownAwarenessOnly (provider, doc) {
  const awareness = provider.awareness
  awareness.off('update', provider._awarenessUpdateHandler)
  awareness.on('update', ({ added, updated, removed }) => {
    if (![...added, ...updated, ...removed].includes(doc.clientID)) return
    const ws = provider.ws
    if (!provider.wsconnected || !ws || ws.readyState !== ws.OPEN) return
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, MESSAGE_AWARENESS)
    encoding.writeVarUint8Array(encoder, awarenessProtocol.encodeAwarenessUpdate(awareness, [doc.clientID]))
    ws.send(encoding.toUint8Array(encoder))
  })
}

/**
 * @param {{session: string, token: string, relay: string, exp: number | null}} params
 * @param {(state: {state: string, detail: string}) => void} onState
 */
export function connect (params, onState) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(`${params.relay}/session`, params.session, doc, {
    WebSocketPolyfill: tokenSocket(params.token),
    disableBc: true,
    maxBackoffTime: 4000,
    // A quiet session still answers a step 1, so the provider's no-message watchdog does not
    // drop a healthy connection.
    resyncInterval: 10000,
    shouldReconnect: (event) => !REFUSALS.has(event.code)
  })
  ownAwarenessOnly(provider, doc)
  let refused = null
  const tell = () => {
    if (refused) return onState({ state: 'refused', detail: refused })
    if (provider.wsconnected && provider.synced) return onState({ state: 'live', detail: '' })
    if (provider.wsconnected || (provider.wsconnecting && provider.wsUnsuccessfulReconnects === 0)) {
      return onState({ state: 'connecting', detail: '' })
    }
    const why = navigator.onLine ? 'the relay is unreachable' : 'this browser is offline'
    return onState({ state: 'offline', detail: why })
  }
  provider.on('status', tell)
  provider.on('sync', tell)
  provider.on('connection-close', tell)
  const stop = (why) => {
    if (refused) return
    refused = why
    provider.shouldConnect = false
    provider.disconnect()
    tell()
  }
  provider.on('closed', (event) => stop(refusalText(event.code, event.reason)))
  window.addEventListener('online', () => {
    if (!refused) provider.connect()
    tell()
  })
  window.addEventListener('offline', tell)
  // Told once the caller has what it draws with.
  queueMicrotask(tell)
  // Past its token's expiry the relay refuses this page anyway; stop before it acts on a
  // control that can no longer work. (A timer is capped near 24.8 days.)
  if (params.exp) {
    const left = params.exp * 1000 - Date.now()
    const expired = () => stop('the token expired')
    if (left <= 0) queueMicrotask(expired)
    else if (left < 2 ** 31) setTimeout(expired, left)
  }
  return { doc, provider, awareness: provider.awareness, refused: () => refused }
}
