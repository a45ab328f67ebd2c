# SinFusion gRPC server for NVIDIA GPU hosts.
#
#   docker build -t sinfusion-server .
#   docker run --gpus all -p 50051:50051 -v /srv/bundles:/models:ro sinfusion-server
#   docker run ... sinfusion-server --runtime tensorrt --metrics-port 9100   # extra server flags
#
# Versions (cannot be built on the development machines, which have no GPU and no Docker):
#   base image   nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04: CUDA 13.0.1 runtime libraries, cuDNN 9,
#                Ubuntu 24.04 with Python 3.12; the host needs an NVIDIA driver >= 580 and the NVIDIA
#                Container Toolkit.
#   Python       the project with its `gpu` extra (pyproject.toml): torch 2.13.0, onnxruntime-gpu and
#                TensorRT pinned below to CUDA 13 builds (onnxruntime-gpu 1.31.1, tensorrt 11.4.0.106,
#                which pulls tensorrt-cu13), so ONNX Runtime uses the image's CUDA 13 / cuDNN 9.
# Bundles are mounted at /models (one subfolder per bundle); TensorRT plans are specific to a GPU and
# TensorRT version, so build them on the serving host (`sinfusion-export`, installed here as well).
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

ARG ONNXRUNTIME_GPU_VERSION=1.31.1
ARG TENSORRT_VERSION=11.4.0.106

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/sinfusion/bin:$PATH

# Ubuntu's Python refuses system-wide pip installs (PEP 668): the project lives in its own venv.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/sinfusion

# Code and install in one layer set; .dockerignore keeps tests, caches and local venvs out.
WORKDIR /opt/sinfusion/src
COPY . .
RUN pip install ".[gpu]" "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" "tensorrt==${TENSORRT_VERSION}" \
 && sinfusion-server --help > /dev/null

# A fixed non-root user; the bundle volume only needs to be readable by it.
RUN useradd --system --uid 10001 --create-home --home-dir /home/sinfusion sinfusion \
 && mkdir -p /models && chown sinfusion /models
USER 10001
WORKDIR /home/sinfusion
VOLUME ["/models"]

# 50051: gRPC (sinfusion.v1, grpc.health.v1, reflection); 9100: Prometheus /metrics with --metrics-port 9100
EXPOSE 50051 9100

# Standard grpc.health.v1 over loopback (health needs no token). With --tls-cert the server speaks TLS
# only: override this check (docker run --health-cmd ...) with --tls-ca and a matching address.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["sinfusion", "--address", "127.0.0.1:50051", "--timeout", "4", "-q", "health"]

# SIGTERM (docker stop) drains live streams for --grace seconds, inside docker's 10 s stop timeout.
# Arguments given to `docker run` are appended (argparse: a repeated flag's last value wins).
ENTRYPOINT ["sinfusion-server", "--models", "/models", "--host", "0.0.0.0", "--port", "50051", "--grace", "8"]
CMD []
