"""`/v1/bridges`: create, list, show and delete bridges (`runtime._bridges`) over HTTP.

Bridges are subscriptions in the store, so this is a thin layer over `Mesh.subscribe` and
`Mesh.unsubscribe` that knows bridges by name. The `--bridge` flag goes through `Bridges` too.
"""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from runtime._bridges import bridge_json, parse_bridge
from runtime._errors import BridgeExists, BridgeNotFound
from runtime._http_api import MESH_KEY, read_json
from runtime._mesh import Mesh
from runtime._subscriptions import Subscription


class Bridges:
    """Bridge CRUD over the mesh's subscriptions (what `/v1/bridges` and `--bridge` call)."""

    def __init__(self, mesh: Mesh) -> None:
        self._mesh = mesh

    async def list(self) -> list[Subscription]:
        return [s for s in await self._mesh.subscriptions() if s.bridge is not None]

    async def get(self, name: str) -> Subscription:
        for subscription in await self.list():
            if subscription.bridge is not None and subscription.bridge.name == name:
                return subscription
        raise BridgeNotFound(f"no bridge named {name!r}; GET /v1/bridges lists them")

    async def create(self, bridge: Subscription, *, replace_existing: bool = False) -> Subscription:
        """Store `bridge`. A bridge of the same name is an error unless `replace_existing` (the
        `--bridge` flag at every start): then it is updated in place, keeping its creation time
        and so its position in the topics it already forwards."""
        assert bridge.bridge is not None
        try:
            existing: Subscription | None = await self.get(bridge.bridge.name)
        except BridgeNotFound:
            existing = None
        if existing is not None:
            if not replace_existing:
                raise BridgeExists(
                    f"a bridge named {bridge.bridge.name!r} already exists (to {existing.sink}); "
                    f"DELETE /v1/bridges/{bridge.bridge.name} first or pick another name"
                )
            bridge = replace(bridge, created_ms=existing.created_ms)
        return await self._mesh.subscribe(bridge)

    async def delete(self, name: str) -> Subscription:
        found = await self.get(name)
        return await self._mesh.unsubscribe(found.id)


async def create_bridge(request: web.Request) -> web.Response:
    bridge = parse_bridge(await read_json(request))
    created = await Bridges(request.app[MESH_KEY]).create(bridge)
    assert created.bridge is not None
    response = web.json_response(bridge_json(created), status=201)
    response.headers["Location"] = f"/v1/bridges/{created.bridge.name}"
    return response


async def list_bridges(request: web.Request) -> web.Response:
    found = await Bridges(request.app[MESH_KEY]).list()
    return web.json_response(
        {"mesh": request.app[MESH_KEY].mesh_name, "bridges": [bridge_json(b) for b in found]}
    )


async def get_bridge(request: web.Request) -> web.Response:
    found = await Bridges(request.app[MESH_KEY]).get(request.match_info["name"])
    return web.json_response(bridge_json(found))


async def delete_bridge(request: web.Request) -> web.Response:
    removed = await Bridges(request.app[MESH_KEY]).delete(request.match_info["name"])
    assert removed.bridge is not None
    return web.json_response({"deleted": removed.bridge.name})


def add_bridge_routes(app: web.Application) -> None:
    app.router.add_post("/v1/bridges", create_bridge)
    app.router.add_get("/v1/bridges", list_bridges)
    app.router.add_get("/v1/bridges/{name}", get_bridge)
    app.router.add_delete("/v1/bridges/{name}", delete_bridge)
