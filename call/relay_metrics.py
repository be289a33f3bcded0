"""The relay's Prometheus metrics, read from its state when scraped (nothing is added to the
forwarding path but the counters the relay keeps anyway).

``metrics_route(relay)`` is an HTTP route for the relay's own port (``GET /metrics``); a node
of a cluster reports its own rooms and peers, so sum over nodes for the service's totals.
No torch here: the relay imports it.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

PATH = "/metrics"

DROPS = {
    "malformed": "malformed", "oversized": "oversized", "out_of_order": "out_of_order",
    "dropped_slow_peer": "slow_peer_queue_full",
    "cluster_dropped_backlog": "cluster_backlog_full", "cluster_dropped_link_down": "cluster_link_down",
    "cluster_dropped_publish": "cluster_publish_failed", "cluster_dropped_inbound": "cluster_slow_consumer",
}
"""Counter of the relay (or its cluster link) → ``reason`` label of ``relay_dropped_messages_total``."""
REFUSALS = ("refused_room", "refused_query_token", "refused_throttled", "refused_auth", "refused_full")


class RelayCollector:
    """Reads a ``server.Relay`` (rooms, counters, queues, cluster link) at each scrape."""

    def __init__(self, relay: Any) -> None:
        self.relay = relay

    def collect(self) -> Iterator[Metric]:
        relay, counters = self.relay, self.relay.counters
        peers = [peer for room in relay.rooms.values() for peer in room.values()]
        yield GaugeMetricFamily("relay_rooms", "Rooms with a peer on this node", value=len(relay.rooms))
        yield GaugeMetricFamily("relay_peers", "Peers connected to this node", value=len(peers))
        for name, key, text in (("relay_messages_in", "forwarded", "Messages accepted from peers"),
                                ("relay_bytes_in", "bytes_in", "Bytes of messages accepted from peers"),
                                ("relay_messages_out", "messages_out", "Messages handed to peers' send queues"),
                                ("relay_bytes_out", "bytes_out", "Bytes handed to peers' send queues"),
                                ("relay_throttled", "throttled", "Times a peer sending too fast was held back")):
            yield CounterMetricFamily(name, text, value=counters[key])
        drops = CounterMetricFamily("relay_dropped_messages", "Messages dropped, by reason", labels=["reason"])
        cluster_counters = relay.cluster.counters if relay.cluster is not None else {}
        for key, reason in DROPS.items():
            live = sum(peer.dropped for peer in peers) if key == "dropped_slow_peer" else 0
            drops.add_metric([reason], counters[key] + cluster_counters.get(key, 0) + live)
        yield drops
        refused = CounterMetricFamily("relay_refused_handshakes", "Handshakes refused, by reason", labels=["reason"])
        for key in REFUSALS:
            refused.add_metric([key.removeprefix("refused_")], counters[key])
        yield refused
        depths = [len(peer.queue) for peer in peers]
        yield GaugeMetricFamily("relay_queued_messages", "Messages waiting in all peers' send queues", value=sum(depths))
        yield GaugeMetricFamily("relay_queue_depth_max", "Longest peer send queue", value=max(depths, default=0))
        yield from self._cluster(relay.cluster)

    @staticmethod
    def _cluster(cluster: Any) -> Iterator[Metric]:
        if cluster is None:
            return
        yield GaugeMetricFamily("relay_cluster_link_up", "1 while this node is connected to NATS", value=int(cluster.up))
        yield GaugeMetricFamily("relay_cluster_nodes", "Other relay nodes heard from", value=len(cluster.seen))
        yield GaugeMetricFamily("relay_cluster_remote_peers", "Peers on other nodes in this node's rooms",
                                value=len(cluster.remote))
        yield GaugeMetricFamily("relay_cluster_backlog", "Messages waiting to be published to NATS",
                                value=len(cluster.outbound))
        for name, key, text in (("relay_cluster_published", "cluster_published", "Messages published to NATS"),
                                ("relay_cluster_received", "cluster_received", "Peer messages received from NATS")):
            yield CounterMetricFamily(name, text, value=cluster.counters[key])


def metrics_route(relay: Any) -> Callable[[Any, Request], Response | None]:
    """A route (``server.Route``) answering ``GET /metrics`` in Prometheus' text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(relay))

    def route(_connection: Any, request: Request) -> Response | None:
        if request.path.partition("?")[0] != PATH:
            return None
        body = generate_latest(registry)
        headers = Headers([("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
        return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, body)

    return route
