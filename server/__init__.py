"""The SinFusion gRPC server (sinfusion.v1): bundles in, frames streamed out.

Modules, one concern each:
  config     ServerConfig, the runtime order
  runtimes   picking and loading a runtime per bundle (tensorrt, onnxruntime-cuda/cpu, torch-cuda/cpu)
  served     the served bundles (ServedModel), loaded once at startup
  scheduler  batches one pending diffusion step of every live stream into engine calls
  requests   validation of request messages, with messages naming the field and range
  wire       request bytes that do not decode: INVALID_ARGUMENT naming the field, never UNKNOWN
  service    the thin grpc.aio servicer
  standard   health checking (with List, per-model names) and reflection v1 and v1alpha
  auth       TLS credentials and the bearer-token interceptor
  metrics    Prometheus metrics
  metrics_http  the /metrics endpoint, with the gRPC port's host, TLS and token
  app        serve(config): the assembled server as an async context manager; the drain
  cli        `sinfusion-server`
  process    the server as a child process (start, wait for its port file, stop): demo, tests
"""

from .app import Running, serve
from .config import ConfigError, ServerConfig

__all__ = ["ConfigError", "Running", "ServerConfig", "serve"]
