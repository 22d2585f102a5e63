"""``GET /metrics``: Prometheus text format (prometheus_client).

A custom collector reads the live state when scraped, so nothing is counted twice and
the hot path updates no metric objects: per channel the server's datagrams, records and
multicast loss, and the relay's counters (accepted datagrams, records, rejected, kernel
drops, cache bytes) from its last stats message; the server's clients and frames.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics"]


class _Collector:
    def __init__(self, server: Any):
        self.server = server

    def collect(self):
        srv = self.server
        intake, hub = srv.intake, srv.hub
        ch_labels = ["channel", "relay"]
        dg = CounterMetricFamily("speeddata_server_datagrams", "multicast datagrams taken "
                                 "by the live server", labels=ch_labels)
        rec = CounterMetricFamily("speeddata_server_records", "records decoded by the live "
                                  "server", labels=ch_labels)
        lost = CounterMetricFamily("speeddata_server_multicast_lost_datagrams",
                                   "datagrams missing from the relay's sequence numbers",
                                   labels=ch_labels)
        gaps = CounterMetricFamily("speeddata_server_multicast_gaps",
                                   "places where datagrams were missing", labels=ch_labels)
        bad = CounterMetricFamily("speeddata_server_rejected_datagrams",
                                  "multicast datagrams the server could not decode with "
                                  "the announced schema", labels=ch_labels)
        mem = GaugeMetricFamily("speeddata_server_window_bytes", "memory of the live window "
                                "and summaries", labels=ch_labels)
        if intake is not None:
            for ch in intake.channels.values():
                lab = [ch.name, ch.relay]
                dg.add_metric(lab, ch.datagrams)
                rec.add_metric(lab, ch.records)
                lost.add_metric(lab, ch.loss.datagrams)
                gaps.add_metric(lab, ch.loss.n_gaps)
                mem.add_metric(lab, ch.nbytes)
                bad.add_metric(lab, ch.rejected)
        yield from (dg, rec, lost, gaps, mem, bad)
        relay = srv.relay_stats or {}
        rl = ["channel"]
        fams = {
            "datagrams": CounterMetricFamily("speeddata_relay_datagrams",
                                             "datagrams accepted by the relay", labels=rl),
            "records": CounterMetricFamily("speeddata_relay_records",
                                           "records accepted by the relay", labels=rl),
            "rejected": CounterMetricFamily("speeddata_relay_rejected",
                                            "datagrams refused by the relay, by reason "
                                            "(validator: not whole records of the schema; "
                                            "framing: shared-port framing or fingerprint)",
                                            labels=["channel", "reason"]),
            "kernel_drops": CounterMetricFamily("speeddata_relay_kernel_drops",
                                                "datagrams dropped by the kernel "
                                                "(SO_RXQ_OVFL)", labels=rl),
            "multicast_errors": CounterMetricFamily("speeddata_relay_multicast_errors",
                                                    "multicast sends that failed", labels=rl),
            "store_failed": CounterMetricFamily("speeddata_relay_store_failed",
                                                "datagrams not stored", labels=rl),
        }
        cache_bytes = GaugeMetricFamily("speeddata_cache_bytes", "bytes of the cache",
                                        labels=rl)
        for ch in relay.get("channels", []) or []:
            counters = ch.get("counters") or {}
            for key, fam in fams.items():
                labels = [str(ch.get("name"))] + (["validator"] if key == "rejected" else [])
                fam.add_metric(labels, float(counters.get(key, 0)))
            cache = ch.get("cache") or {}
            cache_bytes.add_metric([str(ch.get("name"))], float(cache.get("bytes") or 0))
        shared = (relay.get("shared") or {}).get("counters") or {}
        if shared:
            fams["rejected"].add_metric(["(shared port)", "framing"],
                                        float(shared.get("rejected", 0)))
            fams["kernel_drops"].add_metric(["(shared port)"],
                                            float(shared.get("kernel_drops", 0)))
        yield from fams.values()
        yield cache_bytes
        total = GaugeMetricFamily("speeddata_cache_total_bytes", "bytes of the whole cache")
        total.add_metric([], float((relay.get("cache") or {}).get("bytes") or 0))
        yield total
        clients = GaugeMetricFamily("speeddata_server_clients", "websocket clients")
        clients.add_metric([], len(hub.clients) if hub else 0)
        yield clients
        frames = CounterMetricFamily("speeddata_server_frames", "binary frames sent")
        frames.add_metric([], hub.n_frames if hub else 0)
        yield frames
        fbytes = CounterMetricFamily("speeddata_server_frame_bytes", "bytes of frames sent")
        fbytes.add_metric([], hub.n_frame_bytes if hub else 0)
        yield fbytes
        lag = CounterMetricFamily("speeddata_server_lagging_closed",
                                  "clients closed for not taking frames")
        lag.add_metric([], hub.n_lagging if hub else 0)
        yield lag
        unknown = CounterMetricFamily("speeddata_server_unannounced_datagrams",
                                      "datagrams of channels not announced yet")
        unknown.add_metric([], intake.n_unknown if intake else 0)
        yield unknown


class Metrics:
    """The server's registry; ``render()`` -> (body, content type)."""

    def __init__(self, server: Any):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(server))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
