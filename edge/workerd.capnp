# workerd config: the Worker and its Session objects, run offline.
#
#   npm run build
#   KIKI_TRUSTED_KEYS='[{"kty":"OKP","crv":"Ed25519","x":"...","kid":"..."}]' \
#     npx workerd serve workerd.capnp -d storage=/var/tmp/kiki-edge -s http=127.0.0.1:8787
#
# -d points the object storage at a directory (SQLite files, one per object; the SQL API
# needs localDisk storage), -s the listening address (--socket-fd http=FD takes a bound one).
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .worker),
    (name = "storage", disk = (path = "/var/tmp/kiki-edge", writable = true)),
  ],
  sockets = [(name = "http", address = "127.0.0.1:8787", http = (), service = "main")],
);

const worker :Workerd.Worker = (
  modules = [(name = "index.js", esModule = embed "dist/index.js")],
  compatibilityDate = "2026-11-01",
  bindings = [
    (name = "SESSION", durableObjectNamespace = "Session"),
    (name = "KIKI_TRUSTED_KEYS", fromEnvironment = "KIKI_TRUSTED_KEYS"),
    (name = "KIKI_MAX_MESSAGE", fromEnvironment = "KIKI_MAX_MESSAGE"),
    (name = "KIKI_MAX_CLIENTS", fromEnvironment = "KIKI_MAX_CLIENTS"),
    (name = "KIKI_MAX_PENDING_CLIENTS", fromEnvironment = "KIKI_MAX_PENDING_CLIENTS"),
    (name = "KIKI_MAX_DOCUMENT", fromEnvironment = "KIKI_MAX_DOCUMENT"),
    (name = "KIKI_AUTH_TIMEOUT_MS", fromEnvironment = "KIKI_AUTH_TIMEOUT_MS"),
    (name = "KIKI_COMPACT_ROWS", fromEnvironment = "KIKI_COMPACT_ROWS"),
    (name = "KIKI_COMPACT_BYTES", fromEnvironment = "KIKI_COMPACT_BYTES"),
    (name = "KIKI_MAX_AWARENESS_CLIENTS", fromEnvironment = "KIKI_MAX_AWARENESS_CLIENTS"),
    (name = "KIKI_RATE", fromEnvironment = "KIKI_RATE"),
    (name = "KIKI_BURST", fromEnvironment = "KIKI_BURST"),
  ],
  durableObjectNamespaces = [
    (className = "Session", uniqueKey = "kiki-edge-session", enableSql = true),
  ],
  durableObjectStorage = (localDisk = "storage"),
);
