"""The demo apps ``kiki up`` starts: a tool provider and an app with an accessibility tree.

Each runs by itself too (``python -m kiki_cli.demos.<name>``); tests drive them as peers.
"""

# The demo app's app id: it names it in the update that makes its tree (the a11y-server takes
# that only from a publisher a [[publisher]] rule trusts; `kiki up`'s policy does), so a policy
# can show the demo's screen to a session and nothing else of the desktop.
A11Y_APP_ID = "dev.kiki.demo"
