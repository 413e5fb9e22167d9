"""The broker's own tools: its providers, its audit log, its health."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from kiki_tool_broker.audit import read_entries, verify
from libkiki.errors import NotFound
from libkiki.rpc import RequestContext

if TYPE_CHECKING:
    from kiki_tool_broker.server import Broker

LIST_PROVIDERS: Final = "dev.kiki.tools.listProviders"
READ_AUDIT_LOG: Final = "dev.kiki.tools.readAuditLog"
GET_INFO_TOOL: Final = "dev.kiki.service.getInfo"

# Synchronous: the broker answers its own tools as the request is read (none of them waits).
Impl = Callable[[RequestContext, dict[str, Any]], Any]


class BuiltinTools:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.impls: dict[str, Impl] = {
            LIST_PROVIDERS: self.list_providers,
            READ_AUDIT_LOG: self.read_audit_log,
            GET_INFO_TOOL: self.get_info,
        }

    def register(self) -> None:
        b = self.broker
        b.registry.register(b.self_provider, [b._tool(n, b.self_provider) for n in self.impls])

    def call(self, nsid: str, request: RequestContext, arguments: dict[str, Any]) -> Any:
        try:
            impl = self.impls[nsid]
        except KeyError:
            raise NotFound(f"no built-in tool {nsid}") from None
        return impl(request, arguments)

    def list_providers(self, request: RequestContext, args: dict[str, Any]) -> Any:
        registry = self.broker.registry
        return {"providers": [registry.describe(p) for p in registry.providers()]}

    def read_audit_log(self, request: RequestContext, args: dict[str, Any]) -> Any:
        # The lexicon has already checked the types and bounds of these.
        after: int = args.get("cursor", 0)
        limit: int = args.get("limit", 100)
        tool: str | None = args.get("tool")
        audit = self.broker.audit
        entries = [
            e
            for e in read_entries(audit.path)
            if e.get("seq", 0) > after and (tool is None or e.get("tool") == tool)
        ][:limit]
        result: dict[str, Any] = {"entries": entries}
        if entries:
            result["cursor"] = entries[-1]["seq"]
        if args.get("verify"):
            result["problems"] = [str(p) for p in verify(audit.path, audit.head_path)]
        return result

    def get_info(self, request: RequestContext, args: dict[str, Any]) -> Any:
        return self.broker.ctx.info()
