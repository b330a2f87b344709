"""The mesh's operations, independent of the protocol that asked for them.

The native HTTP API, the EventMesh-compatible endpoints, the HTTP source and gRPC all call
these, so validation, stamping and metrics happen in exactly one place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from runtime._auth import current_principal, require, require_admin, require_publish
from runtime._bridges import MESH_PATH, has_passed
from runtime._capture import CaptureSink, NullCapture, PublishRecord
from runtime._delivery import Dispatcher, pattern_covers
from runtime._errors import Forbidden, InvalidTopic, SubscriptionNotFound
from runtime._events import CloudEvent
from runtime._metrics import RuntimeMetrics
from runtime._subscriptions import Subscription
from runtime._topics import is_internal, validate_topic
from runtime._tracing import MeshTracing, end_span
from runtime.stores import Store

log = logging.getLogger("meshtap.runtime.mesh")
auth_log = logging.getLogger("meshtap.runtime.auth")


class Mesh:
    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        metrics: RuntimeMetrics,
        capture: CaptureSink | None = None,
        instance: str = "",
        tracing: MeshTracing | None = None,
        mesh_name: str = "",
    ) -> None:
        self.store = store
        self.mesh_name = mesh_name or instance
        """Named in the `meshpath` of events this mesh's bridges forward (`runtime._bridges`)."""
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.capture = capture or NullCapture()
        self.instance = instance
        self.tracing = tracing or MeshTracing()
        self.check_sink: Callable[[str], None] = lambda sink: None
        """The SSRF guard of subscription sinks (set by `Runtime` from its sink policy)."""

    def _authorize(self, check: Callable[[], None]) -> None:
        """Run a rights check for the current client; count and log a denial (no secrets)."""
        try:
            check()
        except Forbidden as e:
            principal = current_principal.get()
            self.metrics.auth_denied.labels("forbidden").inc()
            auth_log.warning(
                "denied: %s (client=%s via %s)",
                e,
                principal.name if principal else "?",
                principal.method if principal else "?",
            )
            raise

    async def publish(
        self,
        topic: str,
        events: Sequence[CloudEvent],
        *,
        producer: str = "",
        protocol: str = "http",
        internal_ok: bool = False,
    ) -> list[CloudEvent]:
        """Store `events` on `topic`; once this returns they are accepted (durable per store).

        Events whose `meshpath` names this mesh are returned as accepted but not stored (a
        bridge loop, see `runtime._bridges`).

        `producer` (who sent them) and `protocol` (how) are recorded by capture. The publish
        span covers the store append; events without a `traceparent` are stamped with their
        creation context from it (see `runtime._tracing`).
        """
        validate_topic(topic)
        if is_internal(topic) and not internal_ok:  # internal_ok: the runtime's own (replies)
            raise InvalidTopic(
                f"topic {topic!r} is reserved for the runtime (names starting with '_', such as "
                "dead-letter topics, cannot be published to); pick a name like 'orders.created'"
            )
        if not internal_ok:
            self._authorize(lambda: require_publish(topic, events))
        looped: list[CloudEvent] = []
        if any(MESH_PATH in e.attributes for e in events):
            events, looped = self._drop_looped(topic, events)
            if not events:
                return looped
        span, stamped = self.tracing.start_publish(
            topic, events, producer=producer, protocol=protocol
        )
        published_ns = time.time_ns()
        try:
            refs = await self.store.append(topic, stamped)
        except BaseException as e:
            end_span(span, e)
            raise
        end_span(span)
        self.metrics.published.labels(topic).inc(len(stamped))
        self.capture.record_publish(
            [
                PublishRecord(
                    event, topic, ref.offset, published_ns, producer, protocol, self.instance
                )
                for event, ref in zip(stamped, refs, strict=True)
            ]
        )
        if not self.dispatcher.knows_topic(topic):
            self.dispatcher.nudge()  # a new topic: let subscribers with matching patterns join now
        return stamped + looped

    def _drop_looped(
        self, topic: str, events: Sequence[CloudEvent]
    ) -> tuple[list[CloudEvent], list[CloudEvent]]:
        """Split off events that were in this mesh before (bridged round a loop back here).

        They are acknowledged to the sender - its bridge is done with them - but not stored:
        the mesh has them already. Counted in `meshtap_bridge_loops_stopped`.
        """
        kept: list[CloudEvent] = []
        looped: list[CloudEvent] = []
        for event in events:
            (looped if has_passed(event, self.mesh_name) else kept).append(event)
        if looped:
            self.metrics.bridge_loops_stopped.labels(topic).inc(len(looped))
            log.info(
                "%d event(s) on %s not stored: their meshpath shows they already passed mesh "
                "%s (a bridge loop), e.g. %s",
                len(looped),
                topic,
                self.mesh_name,
                looped[0].id,
            )
        return kept, looped

    async def subscribe(self, subscription: Subscription) -> Subscription:
        self._authorize(lambda: require("subscribe", subscription.topic))
        self.check_sink(subscription.sink)
        await self.store.put_subscription(subscription.id, subscription.to_document())
        self.dispatcher.nudge()
        return subscription

    async def subscriptions(self) -> list[Subscription]:
        documents = await self.store.subscriptions()
        found = [Subscription.from_document(d) for d in documents.values()]
        principal = current_principal.get()
        if principal is not None and not principal.admin:
            found = [s for s in found if _may_see(s)]
        return sorted(found, key=lambda s: (s.created_ms, s.id))

    async def get_subscription(self, subscription_id: str) -> Subscription:
        documents = await self.store.subscriptions()
        if subscription_id not in documents:
            raise SubscriptionNotFound(
                f"no subscription with id {subscription_id!r}; GET /v1/subscriptions lists them"
            )
        found = Subscription.from_document(documents[subscription_id])
        self._authorize(lambda: require("subscribe", found.topic))
        return found

    async def unsubscribe(self, subscription_id: str, *, keep_group: bool = False) -> Subscription:
        """Remove a subscription. `keep_group` keeps its group's place in the store even when it
        was the group's last subscription (a gRPC stream that went away: when the group comes
        back it gets what was published meanwhile)."""
        if current_principal.get() is not None:
            await self.get_subscription(subscription_id)  # rights on its topic, or Forbidden
        document = await self.store.delete_subscription(subscription_id)
        if document is None:
            raise SubscriptionNotFound(
                f"no subscription with id {subscription_id!r}; GET /v1/subscriptions lists them"
            )
        removed = Subscription.from_document(document)
        if keep_group:
            self.dispatcher.nudge()
            return removed
        remaining = await self.subscriptions()
        if not any(s.group_key == removed.group_key for s in remaining):
            # Nobody consumes for this group key any more: drop its consumer groups so its
            # backlog stops growing. A later subscription starts from its own creation time.
            for topic in await self.store.topics():
                if pattern_covers(removed, topic):
                    await self.store.leave(removed.group_key, topic)
        self.dispatcher.nudge()
        return removed

    async def create_topic(self, topic: str) -> bool:
        validate_topic(topic)
        self._authorize(lambda: require("publish", topic))
        created = await self.store.create_topic(topic)
        self.dispatcher.nudge()
        return created

    async def delete_topic(self, topic: str) -> bool:
        validate_topic(topic)
        self._authorize(lambda: require_admin(f"delete topic {topic!r}"))
        deleted = await self.store.delete_topic(topic)
        self.dispatcher.nudge()
        return deleted

    async def topics(self) -> list[str]:
        return await self.store.topics()


def _may_see(subscription: Subscription) -> bool:
    try:
        require("subscribe", subscription.topic)
    except Forbidden:
        return False
    return True
