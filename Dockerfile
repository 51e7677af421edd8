# finserve container images.
#
#   docker build -t finserve:cpu .                                   # portable CPU (x86-64-v3)
#   docker build -t finserve:cpu --build-arg CPU_LEVEL=x86-64-v4 .   # AVX-512 hosts
#   docker run -p 8080:8080 -v /srv/models:/models:ro finserve:cpu \
#     serve --model /models/chat-13b-q4_k_m.gguf --addr 0.0.0.0:8080
#
#   docker build -t finserve:cuda --target cuda .                    # NVIDIA GPUs
#   docker build -t finserve:cuda --target cuda --build-arg CUDA_ARCHS=90 .   # H100/H200 only
#   docker run --gpus all -p 8080:8080 -v /srv/models:/models:ro finserve:cuda \
#     serve --model /models/chat-13b-q4_k_m.gguf --addr 0.0.0.0:8080 --gpu-layers auto
#
#   docker build -t finserve:cpu-fips --build-arg FIPS=v1.0.0 .     # Go's FIPS 140-3 module, FIPS mode on
#   docker build --build-arg GOPROXY_URL=https://goproxy.bank.internal ...   # the bank's module proxy
#   docker build --build-arg DEBIAN_IMAGE=registry.bank.internal/debian@sha256:... \
#     --build-arg CUDA_DEVEL_IMAGE=...@sha256:... --build-arg CUDA_RUNTIME_IMAGE=...@sha256:... .   # bases by digest
#
# OpenShift's restricted-v2: the runtime stages run as UID 10001 with group
# 0 (any UID the platform assigns works: what it writes, /var/log/finserve
# and /var/lib/finserve, is group-0 writable), and need no writable root
# beyond the audit folder.
#
# The build steps live in scripts/container-build.sh, which CI runs directly
# (no Docker engine there); this file only wraps them. CI runs the CUDA
# target's steps without nvcc (PROVIDER=system, CUDA=0): the same llama.cpp
# build from the ollama module with its CPU backend only. See the README
# ("Deployment and security") for what was and was not verified.

ARG DEBIAN=trixie
ARG CUDA_VERSION=12.8.1
ARG UBUNTU=24.04
# The base images. Tags by default, as no registry can be asked for their
# digests from where this file is written; a release pins them by digest
# (name@sha256:...), which scripts/lint-dockerfile.sh requires with
# REQUIRE_DIGESTS=1.
ARG DEBIAN_IMAGE=debian:${DEBIAN}-slim
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU}
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU}

FROM ${DEBIAN_IMAGE} AS build
ARG CPU_LEVEL=x86-64-v3
# Go comes from the Go module proxy's toolchain module (scripts/prereqs.sh).
ARG GOPROXY_URL=https://proxy.golang.org
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gcc g++ make curl ca-certificates unzip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The context has no .git: pass what finserve version reports, e.g.
# --build-arg VERSION=$(git describe --tags --always) --build-arg REVISION=$(git rev-parse HEAD)
ARG VERSION=
ARG REVISION=
ARG FIPS=
RUN VERSION=${VERSION} REVISION=${REVISION} CPU_LEVEL=${CPU_LEVEL} GOPROXY_URL=${GOPROXY_URL} FIPS=${FIPS} scripts/container-build.sh /out

# CUDA: llama.cpp and ggml's CUDA backend built with CMake and nvcc from the
# sources in the ollama module that go.mod pins, installed in /opt/finserve;
# finserve built against them (system provider).
FROM ${CUDA_DEVEL_IMAGE} AS build-cuda
ARG CPU_LEVEL=x86-64-v3
# Turing, Ampere (A100, A10/A40), Ada (L4/L40S), Hopper (H100/H200).
ARG CUDA_ARCHS="75;80;86;89;90"
ARG GOPROXY_URL=https://proxy.golang.org
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gcc g++ make cmake pkgconf curl ca-certificates unzip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG VERSION=
ARG REVISION=
ARG FIPS=
RUN VERSION=${VERSION} REVISION=${REVISION} PROVIDER=system CUDA=1 CUDA_ARCHS="${CUDA_ARCHS}" LLAMA_PREFIX=/opt/finserve \
    CPU_LEVEL=${CPU_LEVEL} GOPROXY_URL=${GOPROXY_URL} FIPS=${FIPS} scripts/container-build.sh /out

FROM ${CUDA_RUNTIME_IMAGE} AS cuda
LABEL org.opencontainers.image.title="finserve-cuda" \
      org.opencontainers.image.description="On-prem OpenAI-compatible LLM inference server for banks (NVIDIA GPUs)"
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --gid 0 --home-dir /var/lib/finserve --no-create-home finserve \
 && mkdir -p /models /var/log/finserve /var/lib/finserve \
 && chown -R 10001:0 /var/log/finserve /var/lib/finserve \
 && chmod -R g=u /var/log/finserve /var/lib/finserve
COPY --from=build-cuda /out/ /
USER 10001:0
WORKDIR /var/lib/finserve
VOLUME ["/models", "/var/log/finserve"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["/usr/local/bin/finserve"]
CMD ["serve", "--model", "/models/model.gguf", "--addr", "0.0.0.0:8080", "--gpu-layers", "auto", "--log-format", "json", "--audit-log", "/var/log/finserve/audit.jsonl"]

# CPU (the default target): the bundled llama.cpp, portable CPU level.
FROM ${DEBIAN_IMAGE} AS cpu
LABEL org.opencontainers.image.title="finserve" \
      org.opencontainers.image.description="On-prem OpenAI-compatible LLM inference server for banks"
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --gid 0 --home-dir /var/lib/finserve --no-create-home finserve \
 && mkdir -p /models /var/log/finserve /var/lib/finserve \
 && chown -R 10001:0 /var/log/finserve /var/lib/finserve \
 && chmod -R g=u /var/log/finserve /var/lib/finserve
COPY --from=build /out/ /
USER 10001:0
WORKDIR /var/lib/finserve
VOLUME ["/models", "/var/log/finserve"]
EXPOSE 8080
# Liveness: /health answers without a key while the process serves.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["/usr/local/bin/finserve"]
CMD ["serve", "--model", "/models/model.gguf", "--addr", "0.0.0.0:8080", "--log-format", "json", "--audit-log", "/var/log/finserve/audit.jsonl"]
