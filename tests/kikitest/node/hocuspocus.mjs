// Hocuspocus (npm @hocuspocus/server) with its defaults (in memory, no extensions), for
// tests/bench/bench_sync.py: listens on a free loopback port and prints it.
import { Server } from '@hocuspocus/server'

const server = new Server({ port: 0, address: '127.0.0.1', quiet: true })
await server.listen()
process.stdout.write(`${server.address.port}\n`)
