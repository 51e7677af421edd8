package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/finserve/finserve/aml"
	"github.com/finserve/finserve/apikeys"
	"github.com/finserve/finserve/audit"
	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/server"
)

// serveOptions are the settings of `finserve serve`. Each is a flag, a key
// of the YAML config file (the flag's name) and an environment variable
// (FINSERVE_ and the name in upper case with underscores).
type serveOptions struct {
	models                                 []string // --model, repeatable
	memoryBudget, gpuMemoryBudget          string   // byte sizes
	modelID, addr, chatTemplate, flashAttn string
	parallel, ctx, threads, threadsBatch   int
	batch, ubatch, maxQueue                int
	gpu                                    gpuFlags
	maxTokens, bodyLimitKiB, goProcs       int
	unifiedKV, compress                    bool
	readTimeout, writeTimeout, idleTimeout time.Duration
	shutdownGrace, keepAlive, drainDelay   time.Duration
	apiKeys                                []string

	prefixCache, prefixCompress bool
	prefixHost                  string // a byte size
	prefixBlock                 int
	pinned                      []string // system prompts

	tierSpecs   [engine.NumTiers]string // --tier-NAME: key=value,...
	defaultTier string
	tierAging   time.Duration

	amlConfig   string // file; "" for the built-in configuration
	auditLog    string
	auditKey    string
	auditNoSync bool

	logContent                   bool
	keyFile                      string // --api-keys
	tlsCert, tlsKey, tlsClientCA string
	reloadEvery                  time.Duration
	probeAddr                    string
	metricsAuth                  bool
}

func newServeCmd() *cobra.Command {
	var o serveOptions
	var configPath string
	cmd := &cobra.Command{
		Use:     "serve",
		Example: "  finserve serve --model demo.gguf --addr 127.0.0.1:8080\n  finserve serve --config /etc/finserve/finserve.yaml --log-format json\n  FINSERVE_PARALLEL=8 finserve serve --model model.gguf --api-keys keys.json",
		Short:   "Serve a GGUF model over the OpenAI-compatible HTTP API",
		Long: `Serve a GGUF model over the OpenAI-compatible HTTP API.

The server listens at once. GET /health (liveness) answers 200 while the
process serves; GET /ready (readiness) answers 503 while the model loads
or the server drains, and 200 when it accepts requests. Neither needs an
API key, nor does GET /metrics unless --metrics-auth.

Settings come from, highest precedence first:
  1. command-line flags;
  2. environment variables: FINSERVE_ and the flag name in upper case with
     dashes as underscores (FINSERVE_MODEL_ID, FINSERVE_API_KEY=k1,k2);
  3. the YAML config file named by --config or FINSERVE_CONFIG, whose keys
     are the flag names (model-id: demo, or model_id: demo);
  4. the defaults shown below.

SIGTERM or SIGINT stops accepting requests, lets those in flight finish
for --shutdown-grace, then cancels the rest. SIGHUP reloads the API key
file, the TLS certificate and the AML configuration; a file that fails to
load leaves the one in force.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configPath == "" {
				configPath = os.Getenv("FINSERVE_CONFIG")
			}
			if err := applySettings(cmd, configPath, os.LookupEnv); err != nil {
				return err
			}
			// log-format and log-level are the root's flags, which the
			// file and the environment may have set just now.
			if lf, ll := cmd.Flags().Lookup("log-format"), cmd.Flags().Lookup("log-level"); lf != nil && ll != nil {
				if err := setupLogging(ll.Value.String(), lf.Value.String()); err != nil {
					return err
				}
			}
			return runServe(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configPath, "config", "", "YAML config file (keys are these flags' names)")
	f.StringArrayVar(&o.models, "model", nil, "GGUF model file to serve (required); repeat to serve several, each as [ID=]PATH[,key=value...] with keys "+modelKeys+" (keep-alive as Ollama's: how long it stays loaded idle, -1 for ever, 0 unloads it when idle); the first is the default and loads at start, the others on first use (a YAML list of strings or mappings in the config file)")
	f.StringVar(&o.gpuMemoryBudget, "gpu-memory-budget", "", "with several models, each GPU's bound for the models placed on it at once, NAME=SIZE,... (CUDA0=70GiB; a GPU not named: its free memory at start)")
	f.StringVar(&o.memoryBudget, "memory-budget", "0", "with several models, the memory their loaded models may take together (e.g. 24GiB; estimated per model as model inspect does, or its memory=); the least recently used idle model is unloaded to load another (0: no bound)")
	f.StringVar(&o.modelID, "model-id", "", "model name in the API (default: the file name without .gguf)")
	f.StringVar(&o.addr, "addr", "127.0.0.1:8080", "listen address HOST:PORT")
	f.IntVar(&o.parallel, "parallel", 4, "sequences decoded together (concurrent requests served at once)")
	f.IntVar(&o.ctx, "ctx", 0, "context per sequence in tokens, prompt plus output (0: the model's, at most 4096)")
	f.IntVar(&o.threads, "threads", 0, "CPU threads for decoding (0: the CPUs the process may use: its cgroup's CPU limit, affinity or GOMAXPROCS)")
	f.IntVar(&o.threadsBatch, "threads-batch", 0, "CPU threads for prompt processing (0: --threads)")
	f.IntVar(&o.batch, "batch", 0, "token budget of one engine step (0: 512 on the CPU, 2048 with the model wholly on GPUs)")
	f.IntVar(&o.ubatch, "ubatch", 0, "llama.cpp micro-batch (0: --batch on the CPU, 512 on GPUs)")
	o.gpu.register(f)
	f.StringVar(&o.flashAttn, "flash-attn", "auto", "flash attention: auto, on or off")
	f.BoolVar(&o.unifiedKV, "unified-kv", false, "one KV cache shared by all sequences instead of one per sequence")
	f.IntVar(&o.maxQueue, "max-queue", 1024, "requests that may wait for a sequence before 429")
	f.StringVar(&o.chatTemplate, "chat-template", "", "chat template: a builtin name (chatml, llama3, ...) instead of the model's own")
	f.IntVar(&o.maxTokens, "max-tokens", 4096, "largest max_tokens a request may ask for (and the chat default)")
	f.IntVar(&o.bodyLimitKiB, "body-limit-kib", 4096, "largest request body in KiB (413 above)")
	f.DurationVar(&o.readTimeout, "read-timeout", 30*time.Second, "time to read a request")
	f.DurationVar(&o.writeTimeout, "write-timeout", 0, "time to write a whole response, streams included (0: none)")
	f.DurationVar(&o.idleTimeout, "idle-timeout", 120*time.Second, "how long a keep-alive connection waits for its next request")
	f.DurationVar(&o.shutdownGrace, "shutdown-grace", 30*time.Second, "on SIGTERM, how long requests in flight may finish before they are cancelled")
	f.DurationVar(&o.drainDelay, "drain-delay", 0, "on SIGTERM, keep answering (503 shutting_down, /ready included) at least this long before closing the listener, so that load balancers notice (at most --shutdown-grace)")
	f.DurationVar(&o.keepAlive, "sse-keep-alive", 10*time.Second, "interval of keep-alive comments on an idle event stream")
	f.BoolVar(&o.compress, "compress", true, "compress JSON responses for clients that accept it (never event streams)")
	f.IntVar(&o.goProcs, "go-procs", 0, "CPUs for Go code (HTTP, JSON); 0: the CPUs --threads leaves free, 1 to 4 (GOMAXPROCS in the environment wins)")
	f.StringSliceVar(&o.apiKeys, "api-key", nil, "API keys clients must send as a bearer token (repeat or comma-separate; none: no authentication); each key is a tenant of the prefix cache; TIER:KEY limits a key to that tier and those below")
	f.BoolVar(&o.prefixCache, "prefix-cache", true, "reuse the KV cells of prompt prefixes across requests of a tenant (false: compute every prompt in full)")
	f.StringVar(&o.prefixHost, "prefix-cache-host", "1GiB", "host-RAM tier for prefixes evicted from the KV cache: a byte bound such as 512MiB or 2GB (0: none)")
	f.BoolVar(&o.prefixCompress, "prefix-cache-compress", false, "zstd-compress host-tier entries (fits more in the bound, costs CPU per eviction and restore)")
	f.IntVar(&o.prefixBlock, "prefix-cache-block", 32, "tokens per block of the hash chains that name prefixes; the host tier keeps whole blocks")
	f.StringArrayVar(&o.pinned, "pin-system-prompt", nil, "a system prompt whose prefix is computed at start and always kept, for every tenant (repeatable; a YAML list in the config file)")
	f.StringVar(&o.defaultTier, "default-tier", "standard", "tier of /v1 requests whose API key declares none: realtime, standard or batch")
	f.DurationVar(&o.tierAging, "tier-aging", engine.DefaultAging, "a request held back by higher tiers gains one priority level per this much waiting (0: no aging)")
	f.BoolVar(&o.logContent, "log-content", false, "log each request's prompt and completion (masked for personal data); off: they hold customer data")
	f.StringVar(&o.keyFile, "api-keys", "", "API key file made with 'finserve keys add' (names, allowed tiers, rates; hashes only); reloaded on SIGHUP (see --reload-interval)")
	f.StringVar(&o.tlsCert, "tls-cert", "", "serve HTTPS with this PEM certificate (chain)")
	f.StringVar(&o.tlsKey, "tls-key", "", "the PEM private key of --tls-cert")
	f.StringVar(&o.tlsClientCA, "tls-client-ca", "", "require client certificates signed by these PEM CAs (mutual TLS)")
	f.DurationVar(&o.reloadEvery, "reload-interval", 0, "also reload the API key file, TLS certificate, key and client CA, and --aml-config when they change, checked this often (0: on SIGHUP only; Kubernetes Secret and ConfigMap mounts change in place)")
	f.StringVar(&o.probeAddr, "probe-addr", "", "also answer /health, /ready and /metrics on this plain-HTTP HOST:PORT, without keys or TLS (for kubelet probes and scrapers when --tls-client-ca is on)")
	f.BoolVar(&o.metricsAuth, "metrics-auth", false, "require an API key on /metrics (and leave it off --probe-addr); by default it answers without one, like the probes")
	f.StringVar(&o.amlConfig, "aml-config", "", "AML configuration file: prompt template, FX table, rules (default: the built-in one, which 'finserve aml config' prints)")
	f.StringVar(&o.auditLog, "audit-log", "", "append every AML decision to this hash-chained JSON-lines log, synced before the response ('finserve audit verify' checks it)")
	f.StringVar(&o.auditKey, "audit-key-file", "", "HMAC key of the audit log's chain, from 'finserve audit keygen' (default: AUDIT-LOG.key, made on first start; keep it apart from the log)")
	f.BoolVar(&o.auditNoSync, "audit-no-sync", false, "write audit records without fsync (faster; a power loss may lose the last decisions)")
	defaults := defaultTierSettings()
	for t := range engine.Tier(engine.NumTiers) {
		d := defaults[t]
		f.StringVar(&o.tierSpecs[t], "tier-"+t.String(), "", fmt.Sprintf(
			"%s tier settings as key=value,... over its defaults priority=%d, max-queued=%d, max-running=%d (0: --parallel, -N: --parallel less N), queue-timeout=%s, "+
				"preemptible=%t, ttft-target=%s, max-tokens=%d (0: --max-tokens), default-max-tokens=%d, deterministic=%t (a YAML mapping in the config file)",
			t, d.Priority, d.MaxQueued, d.MaxRunning, d.QueueTimeout, d.Preemptible, d.TTFTTarget, d.MaxTokens, d.DefaultMaxTokens, d.Deterministic))
	}
	return cmd
}

// applySettings fills the flags the command line did not set from the
// environment, then from the config file.
func applySettings(cmd *cobra.Command, configPath string, lookupEnv func(string) (string, bool)) error {
	fs := cmd.Flags()
	file := map[string][]string{}
	if configPath != "" {
		var err error
		if file, err = readConfig(configPath, fs.Lookup); err != nil {
			return err
		}
	}
	var errs []error
	fs.VisitAll(func(fl *pflag.Flag) {
		if fl.Changed || fl.Name == "config" {
			return
		}
		env := "FINSERVE_" + strings.ToUpper(strings.ReplaceAll(fl.Name, "-", "_"))
		if v, ok := lookupEnv(env); ok {
			if err := fl.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", env, v, err))
			}
			return
		}
		for _, v := range file[fl.Name] {
			if err := fl.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %s: %q: %w", configPath, fl.Name, v, err))
			}
		}
	})
	return errors.Join(errs...)
}

func runServe(ctx context.Context, o serveOptions) error {
	if len(o.models) == 0 {
		return errors.New("--model is required (a GGUF file; `finserve model gen --preset tiny --out demo.gguf` makes one)")
	}
	var specs []modelSpec
	for _, m := range o.models {
		ms, err := parseModelSpec(m)
		if err != nil {
			return err
		}
		specs = append(specs, ms)
	}
	// One model without settings of its own is served as ever: a load
	// failure stops the process. Several go through the registry.
	fleet := len(specs) > 1 || specs[0].hasModelOptions
	if fleet && o.modelID != "" {
		return errors.New("--model-id names the one model; with several (or per-model settings) give each its id as --model ID=PATH")
	}
	memBudget, err := parseBytes(o.memoryBudget)
	if err != nil {
		return fmt.Errorf("--memory-budget: %w", err)
	}
	model := specs[0].path
	fa, err := parseFlashAttention(o.flashAttn)
	if err != nil {
		return err
	}
	mo, err := o.gpu.options(engine.ServingShape{Context: o.ctx, Sequences: o.parallel + len(o.pinned), UBatch: o.ubatch})
	if err != nil {
		return err
	}
	id := o.modelID
	if id == "" {
		id = strings.TrimSuffix(filepath.Base(model), ".gguf")
	}
	policies, tierLimits, err := tiers(o.tierSpecs)
	if err != nil {
		return err
	}
	for t := range policies {
		// "All but N" slots with N or fewer slots in all (the batch
		// default keeps one for the tiers above): no slot to keep, no cap.
		if p := &policies[t]; p.MaxRunning < 0 && -p.MaxRunning >= o.parallel {
			slog.Warn("tier cap leaves no slot; the tier may use them all", "tier", engine.Tier(t).String(), "max_running", p.MaxRunning, "parallel", o.parallel)
			p.MaxRunning = 0
		}
	}
	aging := o.tierAging
	if aging == 0 {
		aging = -1 // the engine's "never"
	}
	log := slog.Default()
	info, built := build()
	log.Info("finserve", "version", info.Version, "revision", info.Revision, "built", built, "go", info.GoVersion, "llama_cpp", info.LlamaCpp, "fips140", fipsMode())
	for _, d := range engine.GPUs() {
		log.Info("GPU device", "name", d.Name, "description", d.Description, "free_mib", d.FreeBytes>>20, "total_mib", d.TotalBytes>>20)
	}
	budget, source := cpuBudget() // the cgroup files are read once
	o.threads = computeThreads(o.threads, budget, source, log)
	setGoProcs(o.goProcs, o.threads, budget, log)
	stopTracing, err := setupTracing(ctx, log)
	if err != nil {
		return err
	}
	defer stopTracing()
	amlCfg := aml.DefaultConfig()
	if o.amlConfig != "" {
		if amlCfg, err = aml.LoadConfig(o.amlConfig); err != nil {
			return err
		}
	}
	for _, w := range amlCfg.Expired(time.Now().Format(time.DateOnly)) {
		log.Warn("AML reference data out of date: "+w, "fix", "serve --aml-config FILE with current data (finserve aml config prints the built-in file)")
	}
	var auditLog *audit.Log
	if o.auditLog != "" {
		key, err := auditKey(o.auditLog, o.auditKey, true)
		if err != nil {
			return err
		}
		if o.auditKey == "" {
			log.Warn("audit log key beside the log: anyone who can read it can rewrite the log; pass --audit-key-file with a key kept apart", "key", o.auditLog+".key")
		}
		if auditLog, err = audit.Open(o.auditLog, audit.Options{NoSync: o.auditNoSync, Key: key, Logger: log}); err != nil {
			return err
		}
		defer auditLog.Close()
	} else {
		log.Warn("no --audit-log: AML decisions are not recorded")
	}
	var keySet *apikeys.Set
	if o.keyFile != "" {
		if keySet, err = apikeys.Load(o.keyFile); err != nil {
			return err
		}
	}
	tlsCfg, err := tlsConfig(o.tlsCert, o.tlsKey, o.tlsClientCA)
	if err != nil {
		return err
	}
	srv, err := server.New(server.Config{
		AML: amlCfg, Audit: auditLog, KeyFile: keySet, LogContent: o.logContent,
		ModelID: id, ChatTemplate: o.chatTemplate,
		Limits:      server.Limits{MaxTokens: o.maxTokens},
		BodyLimit:   o.bodyLimitKiB << 10,
		ReadTimeout: o.readTimeout, WriteTimeout: o.writeTimeout, IdleTimeout: o.idleTimeout,
		APIKeys: o.apiKeys, Compress: o.compress, KeepAlive: o.keepAlive, Logger: log,
		Tiers: tierLimits, DefaultTier: o.defaultTier,
		DrainDelay: min(o.drainDelay, o.shutdownGrace), Build: info,
		MetricsAuth: o.metricsAuth,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", o.addr, err)
	}
	rl := &reloads{keyFile: o.keyFile, tlsCert: o.tlsCert, tlsKey: o.tlsKey, tlsCA: o.tlsClientCA,
		amlConfig: o.amlConfig, srv: srv, log: log, every: o.reloadEvery}
	if tlsCfg != nil {
		rl.tls = new(atomic.Pointer[tls.Config])
		rl.tls.Store(tlsCfg)
		ln = tls.NewListener(ln, reloadableTLS(rl.tls))
	}
	served := make(chan error, 2)
	go func() { served <- srv.Serve(ln) }()
	if o.probeAddr != "" {
		pln, err := net.Listen("tcp", o.probeAddr)
		if err != nil {
			shutdown(srv, time.Second)
			return fmt.Errorf("listening on --probe-addr %s: %w", o.probeAddr, err)
		}
		go func() { served <- srv.ServeProbes(pln) }()
		log.Info("probes and metrics on a plain listener", "addr", pln.Addr().String(), "metrics", !o.metricsAuth)
	}
	reloadCtx, stopReload := context.WithCancel(ctx)
	defer stopReload()
	go rl.run(reloadCtx)
	log.Info("listening; loading model", "addr", ln.Addr().String(), "model", model)
	if fleet {
		return runFleet(ctx, o, specs, memBudget, srv, served, log, engine.Options{
			Threads: o.threads, ThreadsBatch: o.threadsBatch, UnifiedKV: o.unifiedKV, UBatch: o.ubatch,
			FlashAttention: fa, MaxQueue: o.maxQueue, Logger: log,
			CacheTypeK: o.gpu.cacheK, CacheTypeV: o.gpu.cacheV,
			Tiers: policies, Aging: aging,
		})
	}

	var last int
	mo.Progress = func(p float32) {
		if pct := int(p * 100); pct >= last+10 || pct == 100 && last != 100 {
			last = pct
			log.Info("loading model", "percent", pct)
			sdNotify(log, fmt.Sprintf("STATUS=loading model: %d%%", pct))
		}
	}
	m, err := engine.LoadModel(ctx, model, mo)
	if err != nil {
		shutdown(srv, time.Second)
		return err // LoadModel's errors name the model and what failed
	}
	defer m.Close()
	pc, err := prefixCacheOptions(o, m)
	if err != nil {
		shutdown(srv, time.Second)
		return err
	}
	e, err := engine.New(m, engine.Options{
		Parallel: o.parallel, Context: o.ctx, Batch: o.batch, UBatch: o.ubatch,
		Threads: o.threads, ThreadsBatch: o.threadsBatch, UnifiedKV: o.unifiedKV,
		FlashAttention: fa, MaxQueue: o.maxQueue, Logger: log, PrefixCache: pc,
		CacheTypeK: o.gpu.cacheK, CacheTypeV: o.gpu.cacheV,
		Tiers: policies, Aging: aging,
	})
	if err != nil {
		shutdown(srv, time.Second)
		return fmt.Errorf("starting engine: %w", err)
	}
	defer e.Close()
	srv.SetEngine(e, id)
	sdNotify(log, "READY=1", "STATUS=serving "+id)

	select {
	case err := <-served:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down", "grace", o.shutdownGrace, "drain_delay", min(o.drainDelay, o.shutdownGrace))
	sdNotify(log, "STOPPING=1", "STATUS=draining")
	return shutdown(srv, o.shutdownGrace)
}

// prefixCacheOptions turns the --prefix-cache settings into the engine's,
// rendering pinned system prompts as chat prompts begin.
func prefixCacheOptions(o serveOptions, m *engine.Model) (engine.PrefixCache, error) {
	host, err := parseBytes(o.prefixHost)
	if err != nil {
		return engine.PrefixCache{}, fmt.Errorf("--prefix-cache-host: %w", err)
	}
	pc := engine.PrefixCache{Disabled: !o.prefixCache, BlockTokens: o.prefixBlock, HostBytes: host, Compress: o.prefixCompress}
	if !o.prefixCache && len(o.pinned) > 0 {
		return pc, errors.New("--pin-system-prompt needs --prefix-cache")
	}
	for i, text := range o.pinned {
		toks, err := server.SystemPrefix(m, o.chatTemplate, text)
		if err != nil {
			return pc, fmt.Errorf("--pin-system-prompt %d: %w", i+1, err)
		}
		pc.Pinned = append(pc.Pinned, engine.PinnedPrefix{Tokens: toks})
	}
	return pc, nil
}

// parseBytes reads a byte size: a number with an optional unit (B, KB,
// MB, GB, TB in powers of 1000; KiB, MiB, GiB, TiB in powers of 1024).
func parseBytes(s string) (int64, error) {
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.TrimSpace(s[i:])
	}
	mult := map[string]float64{"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
		"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}[strings.ToUpper(unit)]
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || mult == 0 || v < 0 || v*mult > 1<<50 {
		return 0, fmt.Errorf("%q is not a byte size (examples: 0, 512MiB, 2GB, 1073741824)", s)
	}
	return int64(v * mult), nil
}

// shutdown drains srv for up to grace. A second SIGTERM or SIGINT ends
// the grace at once (an operator's second Ctrl-C).
func shutdown(srv *server.Server, grace time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	again := make(chan os.Signal, 1)
	signal.Notify(again, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(again)
	go func() {
		select {
		case <-again:
			slog.Warn("second stop signal: ending the shutdown grace now")
			cancel()
		case <-ctx.Done():
		}
	}()
	return srv.Shutdown(ctx, 5*time.Second)
}
