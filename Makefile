# finserve build. `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

# Go from PATH, /usr/local/go, or the copy scripts/prereqs.sh installs;
# whichever it is fetches and runs this toolchain from the Go module proxy
# (1.27.3 carries the standard-library security fixes govulncheck asks for).
export PATH := $(CURDIR)/.tools/go/bin:/usr/local/go/bin:$(PATH)
export GOTOOLCHAIN := go1.27.3
GO ?= go

# CPU level for the bundled llama.cpp: native for this machine, or a
# portable level such as x86-64-v3 for images that run elsewhere.
CPU_LEVEL ?= native
ARCH := $(shell uname -m)
LLAMA_FLAGS := -O3 -march=$(CPU_LEVEL)
ifeq ($(ARCH),x86_64)
# This ggml has AMX removed; -march=native on an AMX CPU would fail to link.
LLAMA_FLAGS += -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
endif
# ggml's kernels are C and C++: both need the flags.
export CGO_ENABLED := 1
export CGO_CFLAGS := $(LLAMA_FLAGS)
export CGO_CXXFLAGS := $(LLAMA_FLAGS)
export CGO_CPPFLAGS := -DGGML_USE_CPU_REPACK

# What `finserve version` and finserve_build_info report. In a git
# checkout the Go toolchain stamps the revision itself; a build from a
# tree without .git (the container's context) gets them from here, as
# make variables or build arguments.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)
BUILD_DATE ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS := -X main.buildVersion=$(VERSION) -X main.buildRevision=$(REVISION) -X main.buildDate=$(BUILD_DATE)

# The slowest package takes under a minute beside a second race run on 2
# cores (one compute thread per test engine): 10 minutes only bounds a hang.
TEST_FLAGS ?= -race -timeout 10m
MODELS := testdata/models

env: ## print the build environment: eval "$$(make -s env)" to use go directly
	@echo 'export PATH="$(PATH)" GOTOOLCHAIN=$(GOTOOLCHAIN) CGO_ENABLED=1 CGO_CFLAGS="$(CGO_CFLAGS)" CGO_CXXFLAGS="$(CGO_CXXFLAGS)" CGO_CPPFLAGS="$(CGO_CPPFLAGS)"'

.PHONY: env help prereqs headers build test test-deploy test-system build-system demo smoke fuzz bench peer-bench serve-bench prefix-bench tier-bench aml-bench container-build container-build-system gpu-carry lint-dockerfile llama-lib clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

prereqs: ## install the compiler and Go if missing
	@scripts/prereqs.sh

third_party/include/llama.h: go.mod go.sum
	@third_party/stage-headers.sh

headers: prereqs third_party/include/llama.h ## stage llama.cpp headers from the module cache

GO_BUILD_OUT ?= bin/finserve
# FIPS=v1.0.0 builds against Go's FIPS 140-3 Cryptographic Module of that
# version (GOFIPS140; the toolchain's lib/fips140 lists those it holds)
# and turns FIPS mode on by default (GODEBUG fips140=on).
FIPS ?=
build: headers ## build bin/finserve (bundled llama.cpp; FIPS=v1.0.0 for a FIPS 140-3 build)
	$(if $(FIPS),GOFIPS140=$(FIPS)) $(GO) build -ldflags "$(LDFLAGS)" -o $(GO_BUILD_OUT) ./cmd/finserve

container-build: ## the container image's build steps without Docker: portable binary, smoke run, staged into bin/image
	scripts/container-build.sh bin/image

container-build-system: ## the CUDA image's build steps without nvcc: llama.cpp from the ollama module (CPU backend), system-provider binary, smoke run, staged into bin/image-system
	PROVIDER=system scripts/container-build.sh bin/image-system

gpu-carry: ## stage the GPU check for a GPU host into gpu-carry/ (scripts/gpu-check.sh: binary, llama.cpp sources, recipe)
	scripts/gpu-check.sh stage gpu-carry

test-deploy: build ## the deploy modules: the Helm chart rendered for each toggle and decoded into Kubernetes and GIE types; GIE's endpoint picker against live finserve processes
	cd deploy/charttest && FINSERVE_BIN=$(CURDIR)/bin/finserve $(GO) test -count=1 ./...
	cd deploy/routertest && FINSERVE_BIN=$(CURDIR)/bin/finserve $(GO) test -count=1 -v ./...

lint-dockerfile: ## lint the Dockerfile (dockerfile_lint from npm, plus per-stage USER and HEALTHCHECK)
	scripts/lint-dockerfile.sh

test: headers ## gofmt, vet and run every test (race detector on)
	@unformatted=$$(gofmt -l $$(find . -name '*.go' -not -path './.tools/*' -not -path './bin/*')); \
		[ -z "$$unformatted" ] || { echo "gofmt -w needed: $$unformatted"; exit 1; }
	$(GO) vet ./...
	$(GO) test $(TEST_FLAGS) ./...

# The system provider: an installed llama.cpp found by pkg-config. Run it
# where libllama-dev is installed, e.g. ../shared/peers/sid-root.sh run make test-system
# Or one built from the ollama module's sources (CPU, or CUDA=1 with nvcc):
#   make llama-lib && PKG_CONFIG_PATH=$PWD/.tools/llama/lib/pkgconfig make build-system
NO_LLAMA_PC := no llama.pc: install libllama-dev, run inside the sid root, or make llama-lib and set PKG_CONFIG_PATH=$(CURDIR)/.tools/llama/lib/pkgconfig
SYSTEM_BUILD_OUT ?= bin/finserve-system
# pkg-config's flags repeated in CGO_CFLAGS and CGO_LDFLAGS: the Go build
# cache keys on those variables but not on what `#cgo pkg-config` returns,
# so without them a build against another llama.pc (another prefix) reuses
# the engine compiled and linked for the previous one.
SYSTEM_CGO = CGO_CFLAGS="-O3 -march=$(CPU_LEVEL) $$(pkg-config --cflags llama)" CGO_CXXFLAGS="-O3 -march=$(CPU_LEVEL)" \
	CGO_CPPFLAGS= CGO_LDFLAGS="$$(pkg-config --libs llama)"
build-system: ## build bin/finserve-system against pkg-config llama
	@pkg-config --exists llama || { echo "$(NO_LLAMA_PC)"; exit 1; }
	$(SYSTEM_CGO) $(if $(FIPS),GOFIPS140=$(FIPS)) $(GO) build -tags llama_system -ldflags "$(LDFLAGS) -X github.com/finserve/finserve/engine.systemLlama=$$(pkg-config --modversion llama)" -o $(SYSTEM_BUILD_OUT) ./cmd/finserve

LLAMA_CPU_LEVEL ?= x86-64-v3
llama-lib: prereqs ## build llama.cpp shared libraries from the ollama module into .tools/llama (CUDA=1: with the CUDA backend)
	CPU_LEVEL=$(LLAMA_CPU_LEVEL) scripts/build-llama.sh .tools/llama

test-system: ## run the engine and model tests against pkg-config llama
	@pkg-config --exists llama || { echo "$(NO_LLAMA_PC)"; exit 1; }
	$(SYSTEM_CGO) $(GO) test -tags llama_system $(TEST_FLAGS) ./engine/... ./models/... ./server/... ./quality/...

DEMO_PRESET ?= tiny
DEMO_ADDR ?= 127.0.0.1:8080
demo: build ## build, generate a demo model and serve it on DEMO_ADDR (Ctrl-C stops)
	@mkdir -p $(MODELS)
	@test -f $(MODELS)/demo-$(DEMO_PRESET).gguf || bin/finserve model gen --preset $(DEMO_PRESET) --type q8_0 --out $(MODELS)/demo-$(DEMO_PRESET).gguf
	bin/finserve serve --model $(MODELS)/demo-$(DEMO_PRESET).gguf --model-id demo --addr $(DEMO_ADDR)

smoke: build ## generate a tiny model and generate text on it with the CLI
	@mkdir -p $(MODELS)
	@test -f $(MODELS)/tiny-q8_0.gguf || bin/finserve model gen --preset tiny --type q8_0 --out $(MODELS)/tiny-q8_0.gguf
	bin/finserve model inspect $(MODELS)/tiny-q8_0.gguf --ctx 2048 --parallel 4
	bin/finserve generate --model $(MODELS)/tiny-q8_0.gguf --chat --prompt "请问我的账户余额是多少? What is my balance?" --max-tokens 32

FUZZTIME ?= 30s
# Targets whose inputs are large (a YAML file, an audit log, an AML case)
# spend a minute minimizing each new input by default: 10 tries keep them
# fuzzing (FuzzParseConfig: 9 executions a minute, and 137,000 in 30 s).
fuzz: headers ## run each fuzz target for FUZZTIME
	$(GO) test ./models -run '^$$' -fuzz FuzzRead -fuzztime $(FUZZTIME)
	$(GO) test ./engine -run '^$$' -fuzz FuzzTokenize -fuzztime $(FUZZTIME)
	$(GO) test ./engine -run '^$$' -fuzz FuzzTextAssembler -fuzztime $(FUZZTIME)
	$(GO) test ./engine -run '^$$' -fuzz FuzzParseTensorSplit -fuzztime $(FUZZTIME)
	$(GO) test ./engine -run '^$$' -fuzz FuzzCheckGrammar -fuzztime $(FUZZTIME)
	$(GO) test ./engine -run '^$$' -fuzz FuzzGrammarSampling -fuzztime $(FUZZTIME)
	$(GO) test ./server -run '^$$' -fuzz FuzzChatRequest -fuzztime $(FUZZTIME)
	$(GO) test ./server -run '^$$' -fuzz FuzzCompletionRequest -fuzztime $(FUZZTIME)
	$(GO) test ./server -run '^$$' -fuzz FuzzEmbeddingRequest -fuzztime $(FUZZTIME)
	$(GO) test ./server -run '^$$' -fuzz FuzzChatContent -fuzztime $(FUZZTIME)
	$(GO) test ./server -run '^$$' -fuzz FuzzReplyStream -fuzztime $(FUZZTIME)
	$(GO) test ./prefixcache -run '^$$' -fuzz FuzzCommon -fuzztime $(FUZZTIME)
	$(GO) test ./bench -run '^$$' -fuzz FuzzParseTarget -fuzztime $(FUZZTIME)
	$(GO) test ./aml -run '^$$' -fuzz FuzzDecodeCases -fuzztime $(FUZZTIME)
	$(GO) test ./pii -run '^$$' -fuzz FuzzMask -fuzztime $(FUZZTIME)
	$(GO) test ./apikeys -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME)
	$(GO) test ./audit -run '^$$' -fuzz FuzzVerify -fuzztime $(FUZZTIME) -fuzzminimizetime 10x
	$(GO) test ./aml -run '^$$' -fuzz FuzzParseConfig -fuzztime $(FUZZTIME) -fuzzminimizetime 10x
	$(GO) test ./cmd/finserve -run '^$$' -fuzz FuzzServeSettings -fuzztime $(FUZZTIME) -fuzzminimizetime 10x
	$(GO) test ./cmd/finserve -run '^$$' -fuzz FuzzTierSpec -fuzztime $(FUZZTIME)
	$(GO) test ./cmd/finserve -run '^$$' -fuzz FuzzParseBytes -fuzztime $(FUZZTIME)
	$(GO) test ./cmd/finserve -run '^$$' -fuzz FuzzCgroupCPULimit -fuzztime $(FUZZTIME)
	$(GO) test ./gbnf -run '^$$' -fuzz FuzzFromSchema -fuzztime $(FUZZTIME)
	$(GO) test ./chattemplate -run '^$$' -fuzz FuzzRender -fuzztime $(FUZZTIME)
	$(GO) test ./server -run '^$$' -fuzz FuzzAuthHeaders -fuzztime $(FUZZTIME)
	$(GO) test ./server -run '^$$' -fuzz FuzzAMLHandler -fuzztime $(FUZZTIME) -fuzzminimizetime 10x

bench: headers ## engine micro-benchmarks (go test -bench)
	$(GO) test ./engine -run '^$$' -bench . -benchtime 3x
	$(GO) test ./server -run '^$$' -bench . -count 3

peer-bench: build ## finserve vs llama-bench / llama-batched-bench on the bench model (needs the sid root)
	scripts/peer-bench.sh

serve-bench: build ## finserve (both providers) vs llama-server, q8_0 and Q4_K_M: short at concurrency 1-16, chat, 4 arriving together on a long prompt, batch documents: writes bench/RESULTS.md (needs the sid root)
	scripts/serve-bench.sh

prefix-bench: build ## prefix cache on/off vs llama-server: shared system prompt and multi-turn TTFT (needs the sid root)
	scripts/prefix-bench.sh

tier-bench: build ## realtime TTFT idle and beside 16 batch streams, finserve tiers vs llama-server (needs the sid root)
	scripts/tier-bench.sh

aml-bench: build ## AML case with exact Shapley (256 coalitions) vs the naive 256 requests, and cases/s (needs the sid root)
	scripts/aml-bench.sh

clean: ## remove build outputs, staged headers and generated models
	rm -rf bin third_party/include $(MODELS)
