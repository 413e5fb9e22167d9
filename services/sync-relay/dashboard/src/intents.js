// Intents this page writes, one after another: a press that follows a value being set must not
// overtake it, so each waits until the one before has a final result (or its deadline passes).

const FINAL = new Set(['ok', 'error', 'refused', 'expired'])
// An intent not carried out within this is answered 'expired' by the device; a page that was
// offline meanwhile does not make it happen late.
const DEADLINE_MS = 60_000

export function newIntentId () {
  const bytes = new Uint8Array(16)
  crypto.getRandomValues(bytes) // randomUUID needs a secure context; plain http on a LAN is not
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')
}

/**
 * @param {import('yjs').Doc} doc
 * @param {string} by  the token's subject: the relay checks an intent's `by` against it
 */
export function intentSender (doc, by) {
  const intents = doc.getMap('intents')
  const results = doc.getMap('results')
  let previous = Promise.resolve()
  let stopped = false

  const settled = (id) => new Promise((resolve) => {
    const done = () => {
      const result = results.get(id)
      if ((result && FINAL.has(result.status)) || !intents.has(id)) {
        results.unobserve(done)
        clearTimeout(timer)
        resolve()
      }
    }
    const timer = setTimeout(() => { results.unobserve(done); resolve() }, DEADLINE_MS)
    results.observe(done)
    done()
  })

  // Every intent this page's document got locally (whatever wrote it: the controls, or the
  // console), as opposed to one a relay brought.
  const mine = new Set()
  intents.observe((event) => {
    if (!event.transaction.local) return
    for (const [key, change] of event.changes.keys) if (change.action === 'add') mine.add(key)
  })
  /** This page's intents the device has not answered. */
  const unanswered = () => [...mine].filter((id) => !results.has(id))

  /** Queue `tool(input)`; returns the intent's id at once. */
  function send (tool, input) {
    const id = newIntentId()
    const write = () => {
      // A page the relay refused writes nothing more: it would only be refused again.
      if (stopped) return undefined
      const now = Date.now()
      intents.set(id, {
        id,
        tool,
        input,
        by,
        createdAt: new Date(now).toISOString(),
        deadline: new Date(now + DEADLINE_MS).toISOString()
      })
      return settled(id)
    }
    previous = previous.then(write, write)
    return id
  }
  return { send, unanswered, stop: () => { stopped = true } }
}

export { FINAL }
