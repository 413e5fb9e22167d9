// Kiki's dashboard: a session's device, live. Joins the session document as a Yjs client and
// draws its parts (see the sync relay's README): `device` (the device's state, written by the
// device only), `intents` (what people ask; a controller adds entries, with `by` = its token's
// subject) and `results` (what came of them).
import { claimsOf, readParams } from './params.js'
import { connect } from './connection.js'
import { intentSender } from './intents.js'
import { ScreenView } from './screen.js'
import { mediaControls, renderNowPlaying } from './media.js'
import { NotificationsView, SensorsView, renderCalls } from './panels.js'
import { ActivityView } from './activity.js'
import { PresenceView } from './presence.js'
import { el, markStale } from './dom.js'

const $ = (id) => document.getElementById(id)

const STATE_TEXT = {
  connecting: 'Connecting…',
  live: 'Live',
  offline: 'Offline: reconnecting…',
  refused: 'Refused by the relay'
}

function start () {
  const params = readParams(window.location)
  const status = $('connection')
  if ('error' in params) {
    status.dataset.state = 'refused'
    status.textContent = params.error
    return
  }
  const claims = claimsOf(params.token)
  const canAct = claims.role === 'controller' || claims.role === 'device'
  $('session-name').textContent = params.session
  $('identity').textContent = `${claims.sub || 'unknown'} · ${claims.role}` + (canAct ? '' : ' (read only)')
  document.title = `Kiki · ${params.session}`

  let stopped = false
  // Drawn once the views exist (the connection may report before).
  let refreshControls = null
  let drawActivity = null
  const activity = new ActivityView($('activity'))
  const session = connect({ ...params, exp: claims.exp }, ({ state, detail }) => {
    status.dataset.state = state
    status.textContent = STATE_TEXT[state] + (detail ? `: ${detail}` : '')
    document.body.classList.toggle('offline', state !== 'live')
    if (state === 'refused' && !stopped) {
      stopped = true
      sender.stop()
      // What this page asked that never reached the device is marked so, not left waiting.
      activity.markRefused(sender.unanswered(), detail)
      drawActivity?.()
      // A fresh document is a fresh page: the refused update is in this one's.
      status.after(el('button', { type: 'button', id: 'rejoin', text: 'Rejoin', onclick: () => window.location.reload() }))
    }
    refreshControls?.()
  })
  const { doc, awareness } = session
  const device = doc.getMap('device')
  const intents = doc.getMap('intents')
  const results = doc.getMap('results')

  // An observer may not write to the document at all, awareness included.
  if (canAct) awareness.setLocalState({ user: { name: claims.sub, role: claims.role } })
  else awareness.setLocalState(null)

  const sender = intentSender(doc, claims.sub)
  const act = (tool, input) => { if (canAct && !stopped) sender.send(tool, input) }
  const screen = new ScreenView($('screen'), act)
  const setPlayer = mediaControls(act)
  const sensors = new SensorsView($('sensors'))
  const notifications = new NotificationsView($('notifications'))
  const presence = new PresenceView($('presence'), claims)

  // Controls are enabled for a controller whose device lists the tool (when it lists tools).
  function allowed (tool) {
    const tools = device.get('tools')
    return canAct && !stopped && (!Array.isArray(tools) || tools.includes(tool))
  }
  refreshControls = function () {
    screen.setWritable(allowed('dev.kiki.a11y.act'))
    for (const button of document.querySelectorAll('#media-section [data-tool]')) {
      button.disabled = !allowed(button.dataset.tool) || !device.get('nowPlaying')
    }
  }

  const views = {
    screen: () => screen.render(device.get('screen')),
    nowPlaying: () => setPlayer(renderNowPlaying($('now-playing'), device.get('nowPlaying'))),
    notifications: () => notifications.render(device.get('notifications')),
    sensors: () => sensors.render(device.get('sensors')),
    calls: () => renderCalls($('calls'), device.get('calls'))
  }
  const sectionOf = { screen: 'screen-section', nowPlaying: 'media-section', notifications: 'notifications-section', sensors: 'sensors-section', calls: 'calls-section' }
  function drawStale () {
    const stale = new Set(device.get('stale') || [])
    for (const [key, id] of Object.entries(sectionOf)) markStale(id, stale.has(key))
  }

  device.observe((event) => {
    for (const key of event.keysChanged) views[key]?.()
    if (event.keysChanged.has('stale')) drawStale()
    refreshControls()
  })
  drawActivity = () => activity.render(intents, results, claims.sub, device.get('screen'))
  intents.observe(drawActivity)
  results.observe(drawActivity)
  awareness.on('change', () => presence.render(awareness))

  for (const draw of Object.values(views)) draw()
  drawStale()
  drawActivity()
  presence.render(awareness)
  refreshControls()
  // For people poking at the page from the console, and for the browser tests.
  window.kikiDashboard = { doc, provider: session.provider, claims }
}

start()
