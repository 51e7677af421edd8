# finserve container images.
#
#   docker build -t finserve:cpu .                                   # portable CPU (x86-64-v3)
#   docker build -t finserve:cpu --build-arg CPU_LEVEL=x86-64-v4 .   # AVX-512 hosts
#   docker run -p 8080:8080 -v /srv/models:/models:ro finserve:cpu \
#     serve --model /models/chat-13b-q4_k_m.gguf --addr 0.0.0.0:8080
#
# The build steps live in scripts/container-build.sh, which CI runs directly
# (no Docker engine there); this file only wraps them. The CUDA image is
# not built here yet: see the README ("Deployment").

ARG DEBIAN=trixie

FROM debian:${DEBIAN}-slim AS build
ARG CPU_LEVEL=x86-64-v3
# Go comes from the Go module proxy's toolchain module (scripts/prereqs.sh).
ARG GOPROXY_URL=https://proxy.golang.org
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gcc g++ make curl ca-certificates unzip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN CPU_LEVEL=${CPU_LEVEL} GOPROXY_URL=${GOPROXY_URL} scripts/container-build.sh /out

FROM debian:${DEBIAN}-slim
LABEL org.opencontainers.image.title="finserve" \
      org.opencontainers.image.description="On-prem OpenAI-compatible LLM inference server for banks"
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libgomp1 curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system finserve \
 && useradd --system --gid finserve --home-dir /var/lib/finserve --create-home finserve \
 && mkdir -p /models /var/log/finserve \
 && chown finserve:finserve /var/log/finserve
COPY --from=build /out/ /
USER finserve
WORKDIR /var/lib/finserve
VOLUME ["/models", "/var/log/finserve"]
EXPOSE 8080
# Liveness: /health answers without a key while the process serves.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["/usr/local/bin/finserve"]
CMD ["serve", "--model", "/models/model.gguf", "--addr", "0.0.0.0:8080", "--log-format", "json", "--audit-log", "/var/log/finserve/audit.jsonl"]
