// Stock Yjs clients for the sync conformance suite: y-websocket's WebsocketProvider, driven by
// one JSON command per stdin line ({"id", "op", ...}); each answer is one stdout line with the
// same id ({"id", "result"} or {"id", "error"}); close events are lines without an id.
import * as readline from 'node:readline'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

const clients = new Map()
const out = (message) => process.stdout.write(JSON.stringify(message) + '\n')

const synced = (provider) => new Promise((resolve) => {
  if (provider.synced) return resolve()
  const on = (isSynced) => {
    if (isSynced) {
      provider.off('sync', on)
      resolve()
    }
  }
  provider.on('sync', on)
})

const stateOf = (doc) => ({
  text: doc.getText('text').toString(),
  map: doc.getMap('map').toJSON(),
  array: doc.getArray('array').toJSON()
})

const ops = {
  // base: ws://host:port/session, room: the session name; token in the query.
  async open ({ client, base, room, token, presence, wait = true }) {
    const doc = new Y.Doc()
    const provider = new WebsocketProvider(base, room, doc, {
      WebSocketPolyfill: WebSocket,
      params: token ? { token } : {},
      connect: false,
      disableBc: true,
      maxBackoffTime: 500
    })
    // An observer publishes no awareness: the relay closes a reader that writes.
    provider.awareness.setLocalState(presence === undefined ? null : presence)
    provider.on('connection-close', (event) => {
      out({ event: 'close', client, code: event ? event.code : null })
    })
    clients.set(client, { doc, provider })
    provider.connect()
    if (wait) await synced(provider)
    return doc.clientID
  },
  async edit ({ client, kind, index, value, key }) {
    const { doc } = clients.get(client)
    if (kind === 'text') doc.getText('text').insert(index, value)
    else if (kind === 'map') doc.getMap('map').set(key, value)
    else if (kind === 'array') doc.getArray('array').insert(index, [value])
    else throw new Error(`unknown kind ${kind}`)
  },
  async state ({ client }) {
    return stateOf(clients.get(client).doc)
  },
  async presence ({ client, state }) {
    clients.get(client).provider.awareness.setLocalState(state)
  },
  async others ({ client }) {
    const { doc, provider } = clients.get(client)
    const states = []
    provider.awareness.getStates().forEach((state, id) => {
      if (id !== doc.clientID) states.push(state)
    })
    return states
  },
  async disconnect ({ client }) {
    clients.get(client).provider.disconnect()
  },
  async connect ({ client }) {
    const { provider } = clients.get(client)
    provider.connect()
    await synced(provider)
  },
  async connected ({ client }) {
    return clients.get(client).provider.wsconnected
  },
  async destroy ({ client }) {
    const { doc, provider } = clients.get(client)
    provider.destroy()
    doc.destroy()
    clients.delete(client)
  }
}

const lines = readline.createInterface({ input: process.stdin })
lines.on('line', async (line) => {
  const { id, op, ...args } = JSON.parse(line)
  try {
    const result = await ops[op](args)
    out({ id, result: result === undefined ? null : result })
  } catch (error) {
    out({ id, error: String(error && error.stack ? error.stack : error) })
  }
})
lines.on('close', () => {
  for (const { provider } of clients.values()) provider.destroy()
  process.exit(0)
})
