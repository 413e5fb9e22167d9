// Now playing, and the three buttons that ask the device's player to move.
import { el, replaceChildren } from './dom.js'

export function renderNowPlaying (root, nowPlaying) {
  if (!nowPlaying || !nowPlaying.player) {
    replaceChildren(root, [], el('p', { class: 'empty', text: 'Nothing is playing.' }))
    return null
  }
  const { player, track = {} } = nowPlaying
  const artists = Array.isArray(track.artists) ? track.artists.join(', ') : ''
  const status = player.status || 'Stopped'
  replaceChildren(root, [
    el('p', { class: 'track' }, el('strong', { text: track.title || '(untitled)' }), artists ? ` — ${artists}` : ''),
    el('p', { class: 'value', text: `${status} in ${player.identity || player.player}` + (track.album ? ` · ${track.album}` : '') })
  ])
  return player.player || null
}

/** Wires the buttons; returns the setter of the player they name. */
export function mediaControls (act) {
  let player = null
  for (const button of document.querySelectorAll('#media-section [data-tool]')) {
    button.addEventListener('click', () => act(button.dataset.tool, player ? { player } : {}))
  }
  return (name) => { player = name }
}
