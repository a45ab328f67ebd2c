"""Prometheus metrics of one server, in a registry of its own (several servers may share a process).

Exposed over HTTP on --metrics-port when given (server.metrics_http). Names:
  sinfusion_frames_total{model,rpc,synthesized}     frames sent to clients
  sinfusion_rpc_seconds{rpc,code}                   whole-RPC latency (streams: until the last frame)
  sinfusion_first_frame_seconds{model,rpc}          from the request to its first frame
  sinfusion_live_streams{model}                     streaming RPCs in progress
  sinfusion_batch_size{model,role}                  live requests per engine call (before padding)
  sinfusion_engine_batch{model,role}                engine batch size used (after padding)
  sinfusion_engine_seconds{model,role,runtime}      time of one engine call
  sinfusion_bundles{state}                          bundles found under --models: served, refused
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames = Counter("sinfusion_frames", "Frames sent to clients",
                              ["model", "rpc", "synthesized"], registry=r)
        self.rpc_seconds = Histogram("sinfusion_rpc_seconds", "Latency of whole RPCs",
                                     ["rpc", "code"], buckets=LATENCY_BUCKETS, registry=r)
        self.first_frame = Histogram("sinfusion_first_frame_seconds",
                                     "Time from a streaming request to its first frame",
                                     ["model", "rpc"], buckets=LATENCY_BUCKETS, registry=r)
        self.live_streams = Gauge("sinfusion_live_streams", "Streaming RPCs in progress", ["model"],
                                  registry=r)
        self.batch_size = Histogram("sinfusion_batch_size", "Live requests per engine call",
                                    ["model", "role"], buckets=BATCH_BUCKETS, registry=r)
        self.engine_batch = Histogram("sinfusion_engine_batch", "Engine batch size per call (padded)",
                                      ["model", "role"], buckets=BATCH_BUCKETS, registry=r)
        self.engine_seconds = Histogram("sinfusion_engine_seconds", "Time of one engine call",
                                        ["model", "role", "runtime"], buckets=LATENCY_BUCKETS,
                                        registry=r)
        self.bundles = Gauge("sinfusion_bundles", "Bundles found under --models, by state", ["state"],
                             registry=r)

    def batch_hook(self, model: str, runtime: str):
        """A scheduler callback recording one engine call of `model`."""
        def record(role: str, live: int, batch: int, seconds: float) -> None:
            self.batch_size.labels(model, role).observe(live)
            self.engine_batch.labels(model, role).observe(batch)
            self.engine_seconds.labels(model, role, runtime).observe(seconds)
        return record
