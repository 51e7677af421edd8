package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/models"
	"github.com/finserve/finserve/registry"
	"github.com/finserve/finserve/server"
)

// modelSpec is one --model: [ID=]PATH[,key=value...], or, in the config
// file, a mapping with id, path and the same keys.
type modelSpec struct {
	id, path        string
	parallel, ctx   int
	batch           int
	keepAlive       time.Duration // Ollama's keep_alive: negative for ever, 0 at once
	keepAliveSet    bool
	preload         bool
	memory          int64 // overrides the estimate
	hasModelOptions bool  // any key=value given
}

// modelKeys are the per-model settings of --model.
var modelKeys = "id, path, parallel, ctx, batch, keep-alive, preload, memory"

func parseModelSpec(s string) (modelSpec, error) {
	var m modelSpec
	for i, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		k, v, hasEq := strings.Cut(part, "=")
		k = strings.ReplaceAll(strings.TrimSpace(k), "_", "-")
		v = strings.TrimSpace(v)
		var err error
		switch {
		case !hasEq && i == 0:
			m.path = part
			continue
		case !hasEq:
			return m, fmt.Errorf("--model %q: %q is not key=value (keys: %s)", s, part, modelKeys)
		}
		switch k {
		case "id":
			m.id = v
		case "path":
			m.path = v
		case "parallel":
			m.parallel, err = strconv.Atoi(v)
		case "ctx":
			m.ctx, err = strconv.Atoi(v)
		case "batch":
			m.batch, err = strconv.Atoi(v)
		case "keep-alive":
			m.keepAliveSet = true
			if v == "-1" || v == "forever" {
				m.keepAlive = -1
			} else if m.keepAlive, err = time.ParseDuration(v); err == nil && m.keepAlive < 0 {
				m.keepAlive = -1
			}
		case "preload":
			m.preload, err = strconv.ParseBool(v)
		case "memory":
			m.memory, err = parseBytes(v)
		default:
			if i == 0 {
				m.id, m.path = k, v // ID=PATH
				continue
			}
			return m, fmt.Errorf("--model %q: unknown setting %q (keys: %s)", s, k, modelKeys)
		}
		if err != nil {
			return m, fmt.Errorf("--model %q: %s: %w", s, k, err)
		}
		m.hasModelOptions = true
	}
	switch {
	case m.path == "":
		return m, fmt.Errorf("--model %q: no path", s)
	case m.parallel < 0 || m.ctx < 0 || m.batch < 0:
		return m, fmt.Errorf("--model %q: parallel, ctx and batch must not be negative", s)
	}
	if m.id == "" {
		m.id = strings.TrimSuffix(filepath.Base(m.path), ".gguf")
	}
	return m, nil
}

// registrySpecs turns the --model settings into the registry's specs:
// the server-wide engine options with each model's own over them, the
// GPU placement for its shape, and its memory estimate (weights, KV cache
// for parallel x ctx cells, buffers; see `finserve model inspect`).
func registrySpecs(o serveOptions, ms []modelSpec, base engine.Options, gpus []engine.Device, log *slog.Logger) ([]registry.Spec, error) {
	var specs []registry.Spec
	for _, m := range ms {
		eo := base
		eo.Parallel = cmp.Or(m.parallel, o.parallel)
		eo.Context = cmp.Or(m.ctx, o.ctx)
		eo.Batch = cmp.Or(m.batch, o.batch)
		eo.PrefixCache.Pinned = nil // rendered with a model's template: not across models
		mo, err := o.gpu.options(engine.ServingShape{Context: eo.Context, Sequences: eo.Parallel, UBatch: o.ubatch})
		if err != nil {
			return nil, err
		}
		s := registry.Spec{ID: m.id, Path: m.path, Model: mo, Engine: eo, Preload: m.preload, Bytes: m.memory}
		// Ollama's keep_alive: negative keeps the model, 0 unloads it when idle
		switch {
		case !m.keepAliveSet || m.keepAlive < 0:
			s.KeepAlive = 0
		case m.keepAlive == 0:
			s.KeepAlive = -1
		default:
			s.KeepAlive = m.keepAlive
		}
		if s.Bytes == 0 {
			f, err := models.Check(m.path)
			if err != nil {
				// served as a failed model: the others start
				log.Error("model file unusable; it will fail to load and the other models serve on", "model", m.id, "err", err)
			} else {
				sum := models.Summarize(m.path, f)
				ctx := int64(eo.Context)
				if ctx == 0 {
					ctx = min(sum.ContextLength, 4096)
				}
				ub := int64(cmp.Or(o.ubatch, cmp.Or(eo.Batch, 512)))
				total := sum.MemoryFor(ctx, int64(eo.Parallel), ub).Total()
				if len(gpus) > 0 {
					// what the placement puts on each GPU; the rest on the host
					if plan, err := mo.Plan(f, gpus); err == nil {
						s.Devices = map[string]int64{}
						for _, d := range plan.Devices {
							if n := d.Weights + d.KV + d.Compute; n > 0 {
								s.Devices[d.Name] = n
								total -= n
							}
						}
					}
				}
				// and the host tier of its prefix cache, which may fill
				s.Bytes = max(total, 0) + eo.PrefixCache.HostBytes
			}
		}
		specs = append(specs, s)
	}
	return specs, nil
}

// serveFleet serves several models from a registry until ctx ends; it
// reports ready (systemd) once the default model has loaded or failed.
func serveFleet(ctx context.Context, reg *registry.Registry, log *slog.Logger) {
	reg.Preload()
	lease, err := reg.Acquire(ctx, "")
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return
		}
		log.Error("the default model did not load; the other models serve", "model", reg.Default(), "err", err)
	} else {
		lease.Release()
	}
	sdNotify(log, "READY=1", "STATUS=serving "+strings.Join(reg.IDs(), ", "))
}

// runFleet serves the models of specs through a registry until ctx ends.
func runFleet(ctx context.Context, o serveOptions, ms []modelSpec, budget int64, srv *server.Server, served <-chan error,
	log *slog.Logger, base engine.Options) error {
	if len(o.pinned) > 0 {
		return errors.New("--pin-system-prompt renders the prompt with one model's template: it is for one model, not several")
	}
	pc, err := prefixCacheOptions(o, nil)
	if err != nil {
		shutdown(srv, time.Second)
		return err
	}
	base.PrefixCache = pc
	gpus := engine.GPUs()
	deviceBudgets, err := gpuBudgets(o.gpuMemoryBudget, gpus)
	if err != nil {
		shutdown(srv, time.Second)
		return err
	}
	specs, err := registrySpecs(o, ms, base, gpus, log)
	if err != nil {
		shutdown(srv, time.Second)
		return err
	}
	reg, err := registry.New(specs, registry.Options{Budget: budget, DeviceBudgets: deviceBudgets, Logger: log})
	if err != nil {
		shutdown(srv, time.Second)
		return err
	}
	defer reg.Close()
	for _, s := range specs {
		log.Info("model", "id", s.ID, "path", s.Path, "memory_mib", s.Bytes>>20, "gpu_mib", s.Devices, "keep_alive", s.KeepAlive.String(), "preload", s.Preload)
	}
	srv.SetModels(reg)
	go serveFleet(ctx, reg, log)
	select {
	case err := <-served:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down", "grace", o.shutdownGrace, "drain_delay", min(o.drainDelay, o.shutdownGrace))
	sdNotify(log, "STOPPING=1", "STATUS=draining")
	return shutdown(srv, o.shutdownGrace)
}

// gpuBudgets reads --gpu-memory-budget, NAME=SIZE,... (CUDA0=70GiB): each
// GPU's bound for the models loaded on it at once. A GPU it does not name
// is bounded by its free memory when the server starts.
func gpuBudgets(spec string, gpus []engine.Device) (map[string]int64, error) {
	out := map[string]int64{}
	for _, d := range gpus {
		out[d.Name] = int64(d.FreeBytes)
	}
	if strings.TrimSpace(spec) == "" {
		return out, nil
	}
	for _, part := range strings.Split(spec, ",") {
		name, size, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("--gpu-memory-budget %q: want NAME=SIZE,... (CUDA0=70GiB)", spec)
		}
		n, err := parseBytes(size)
		if err != nil {
			return nil, fmt.Errorf("--gpu-memory-budget %s: %w", name, err)
		}
		out[name] = n
	}
	return out, nil
}
