// What the page is opened with: /dashboard/#session=NAME&token=JWT. It joins the relay that
// served it, never one a link names: a crafted link could otherwise send the token elsewhere
// (and the page's CSP lets it connect only to its own origin).
// The token stays in the fragment, which the browser never sends to a server, so it is never in
// a request line or a server log; the page hands it over as the WebSocket's first message.

/** @returns {{session: string, token: string, relay: string} | {error: string}} */
export function readParams (location) {
  const fragment = new URLSearchParams(location.hash.replace(/^#/, ''))
  const session = fragment.get('session') || ''
  const token = fragment.get('token') || ''
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(session)) {
    return { error: 'The link names no session: open the URL `kiki session share NAME --dashboard` prints.' }
  }
  if (!token) {
    return { error: 'The link carries no token: open the URL `kiki session share NAME --dashboard` prints.' }
  }
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:'
  // Beside the page: ws://HOST:PORT[/base] for a page at [/base]/dashboard/.
  const base = location.pathname.replace(/\/dashboard(\/.*)?$/, '')
  return { session, token, relay: `${scheme}//${location.host}${base}` }
}

/** The token's claims, read (not verified: the relay verifies) to know who and what we are. */
export function claimsOf (token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')
    const padded = part + '='.repeat((4 - (part.length % 4)) % 4)
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0))
    const claims = JSON.parse(new TextDecoder().decode(bytes))
    return {
      sub: String(claims.sub || ''),
      role: String(claims.role || 'observer'),
      exp: typeof claims.exp === 'number' ? claims.exp : null
    }
  } catch {
    return { sub: '', role: 'observer', exp: null }
  }
}
