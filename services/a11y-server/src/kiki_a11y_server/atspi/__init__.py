"""The AT-SPI bridge: every accessible desktop app, mirrored into Kiki's tree.

``kiki-atspi-bridge`` runs once per user session. It reads the accessibility bus's address from
the session bus (``org.a11y.Bus.GetAddress``), lists the apps the AT-SPI registry knows, walks
each one's tree, and publishes it to ``a11y.sock`` as an ordinary publisher, one connection
(one Kiki tree) per app; AT-SPI events then become Kiki's incremental updates, and actions on
a bridged node become AT-SPI calls.

    roles.py    sans-I/O: AT-SPI's role, state and action names, and the tables to Kiki's
    model.py    sans-I/O: one app's mirror (ids, nodes, what an event makes dirty, updates)
    actions.py  sans-I/O: the AT-SPI call that performs a Kiki action
    cache.py    Cache.GetItems' answer as the tree's structure
    walk.py     fetching new subtrees level by level (I/O injected)
    calls.py    the AT-SPI calls over dbus-fast (no introspection): fetch, list, act
    app.py      asyncio: one app's walk, event batches, stale handling, actions, its publisher
    bridge.py   asyncio: the buses, the registry, apps coming and going, event routing
    main.py     the console script ``kiki-atspi-bridge``
"""
