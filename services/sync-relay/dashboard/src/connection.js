// The session as a Yjs client: y-websocket's provider over a WebSocket whose first frame is the
// token (the relay waits for it before relaying anything), with the connection's life told to
// one listener as a small state: connecting, live, offline, refused.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import * as awarenessProtocol from 'y-protocols/awareness'
import * as encoding from 'lib0/encoding'

// 1008 is PermissionDenied: an invalid, expired or revoked token, or a write our role may not
// make. Trying again would be refused the same way.
const REFUSED = 1008

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
 * @param {{session: string, token: string, relay: string}} params
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
    shouldReconnect: (event) => event.code !== REFUSED
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
  provider.on('closed', (event) => {
    refused = event.reason || `closed with code ${event.code}`
    tell()
  })
  window.addEventListener('online', () => {
    if (!refused) provider.connect()
    tell()
  })
  window.addEventListener('offline', tell)
  // Told once the caller has what it draws with.
  queueMicrotask(tell)
  return { doc, provider, awareness: provider.awareness }
}
