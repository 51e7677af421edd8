package charttest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	giev1 "sigs.k8s.io/gateway-api-inference-extension/api/v1"
	"sigs.k8s.io/yaml"
)

// rendered is one render of the chart: its manifests decoded into their
// types, by kind.
type rendered struct {
	kinds       []string
	config      map[string]any // the serve YAML in the ConfigMap
	statefulSet *appsv1.StatefulSet
	deployment  *appsv1.Deployment
	service     *corev1.Service
	pdb         *policyv1.PodDisruptionBudget
	netpol      *networkingv1.NetworkPolicy
	pool        *giev1.InferencePool
	monitors    []map[string]any // ServiceMonitor, PrometheusRule (CRDs of the Prometheus operator)
}

func (r *rendered) pod() corev1.PodTemplateSpec {
	if r.statefulSet != nil {
		return r.statefulSet.Spec.Template
	}
	return r.deployment.Spec.Template
}

// render renders the chart with values set over its defaults and decodes
// every manifest strictly (an unknown field fails).
func render(t *testing.T, set map[string]any) *rendered {
	t.Helper()
	ch, err := loader.Load("../helm/finserve")
	if err != nil {
		t.Fatal(err)
	}
	vals, err := chartutil.CoalesceValues(ch, set)
	if err != nil {
		t.Fatal(err)
	}
	top, err := chartutil.ToRenderValues(ch, vals, chartutil.ReleaseOptions{Name: "finserve", Namespace: "ai", IsInstall: true}, chartutil.DefaultCapabilities)
	if err != nil {
		t.Fatal(err)
	}
	files, err := engine.Render(ch, top)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	r := &rendered{}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		for _, doc := range strings.Split(files[name], "\n---") {
			var head struct{ Kind, APIVersion string }
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				t.Fatalf("%s: %v\n%s", name, err, doc)
			}
			if head.Kind == "" {
				continue // a template that rendered to nothing
			}
			r.kinds = append(r.kinds, head.Kind)
			strict := func(into any) {
				t.Helper()
				if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
					t.Fatalf("%s (%s) does not decode strictly: %v\n%s", name, head.Kind, err, doc)
				}
			}
			switch head.Kind {
			case "ConfigMap":
				var cm corev1.ConfigMap
				strict(&cm)
				if err := yaml.UnmarshalStrict([]byte(cm.Data["finserve.yaml"]), &r.config); err != nil {
					t.Fatalf("the serve YAML: %v\n%s", err, cm.Data["finserve.yaml"])
				}
			case "StatefulSet":
				r.statefulSet = new(appsv1.StatefulSet)
				strict(r.statefulSet)
			case "Deployment":
				r.deployment = new(appsv1.Deployment)
				strict(r.deployment)
			case "Service":
				r.service = new(corev1.Service)
				strict(r.service)
			case "PodDisruptionBudget":
				r.pdb = new(policyv1.PodDisruptionBudget)
				strict(r.pdb)
			case "NetworkPolicy":
				r.netpol = new(networkingv1.NetworkPolicy)
				strict(r.netpol)
			case "InferencePool":
				if head.APIVersion != "inference.networking.k8s.io/v1" {
					t.Errorf("InferencePool apiVersion %s", head.APIVersion)
				}
				r.pool = new(giev1.InferencePool)
				strict(r.pool)
			case "ServiceMonitor", "PrometheusRule":
				var m map[string]any
				strict(&m)
				r.monitors = append(r.monitors, m)
			default:
				t.Fatalf("%s renders an unexpected kind %s", name, head.Kind)
			}
		}
	}
	return r
}

// TestChartKinds: the defaults and each toggle render the kinds they
// should, and no other.
func TestChartKinds(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  map[string]any
		want []string
	}{
		{"defaults", nil, []string{"ConfigMap", "NetworkPolicy", "PodDisruptionBudget", "Service", "StatefulSet"}},
		{"no audit", map[string]any{"audit": map[string]any{"enabled": false}}, []string{"ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget", "Service"}},
		{"gpu", map[string]any{"gpu": map[string]any{"enabled": true}}, []string{"ConfigMap", "NetworkPolicy", "PodDisruptionBudget", "Service", "StatefulSet"}},
		{"mtls", mtls, []string{"ConfigMap", "NetworkPolicy", "PodDisruptionBudget", "Service", "StatefulSet"}},
		{"inference pool and monitoring", map[string]any{"inferencePool": map[string]any{"enabled": true},
			"serviceMonitor": map[string]any{"enabled": true}, "prometheusRule": map[string]any{"enabled": true}},
			[]string{"ConfigMap", "InferencePool", "NetworkPolicy", "PodDisruptionBudget", "PrometheusRule", "Service", "ServiceMonitor", "StatefulSet"}},
		{"bare", map[string]any{"podDisruptionBudget": map[string]any{"enabled": false}, "networkPolicy": map[string]any{"enabled": false}},
			[]string{"ConfigMap", "Service", "StatefulSet"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := slices.Sorted(slices.Values(render(t, tc.set).kinds))
			if !slices.Equal(got, tc.want) {
				t.Errorf("kinds %v, want %v", got, tc.want)
			}
		})
	}
}

var mtls = map[string]any{"tls": map[string]any{"secretName": "finserve-tls", "clientCASecretName": "finserve-client-ca"},
	"apiKeys": map[string]any{"secretName": "finserve-keys"}, "amlConfig": map[string]any{"configMapName": "finserve-aml"},
	"audit": map[string]any{"keySecret": "finserve-audit-key"}}

// TestChartSecurity: under every toggle the pod meets OpenShift's
// restricted-v2 (and Kubernetes' restricted Pod Security Standard): non-root
// without a pinned UID, no privilege escalation, every capability dropped,
// RuntimeDefault seccomp, a read-only root; secrets mounted 0440, which
// serve accepts; no service account token.
func TestChartSecurity(t *testing.T) {
	for name, set := range map[string]map[string]any{"defaults": nil, "mtls": mtls, "gpu": {"gpu": map[string]any{"enabled": true}},
		"model from an image": {"model": map[string]any{"source": "image"}}} {
		t.Run(name, func(t *testing.T) {
			pod := render(t, set).pod().Spec
			if sc := pod.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser != nil || sc.RunAsGroup != nil || sc.FSGroup != nil ||
				sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
				t.Errorf("pod security context %+v", sc)
			}
			if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
				t.Error("the service account token is mounted")
			}
			for _, c := range append(slices.Clone(pod.InitContainers), pod.Containers...) {
				sc := c.SecurityContext
				if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
					sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 ||
					sc.RunAsUser != nil || sc.Privileged != nil && *sc.Privileged {
					t.Errorf("container %s security context %+v", c.Name, sc)
				}
			}
			for _, v := range pod.Volumes {
				if v.Secret != nil && (v.Secret.DefaultMode == nil || *v.Secret.DefaultMode != 0o440) {
					t.Errorf("secret volume %s mode %v, want 0440", v.Name, v.Secret.DefaultMode)
				}
			}
		})
	}
}

// TestChartProbesAndFlags: every key of the serve YAML is a flag of the
// binary (finserve serve --help); the container's ports are the ones
// addr and probe-addr name; probes ask /ready and /health on the port
// that answers without keys or client certificates; FINSERVE_THREADS
// comes from the CPU limit; pods carry the router's engine labels.
func TestChartProbesAndFlags(t *testing.T) {
	help := serveHelp(t)
	for name, set := range map[string]map[string]any{"defaults": nil, "mtls": mtls, "gpu": {"gpu": map[string]any{"enabled": true}}} {
		t.Run(name, func(t *testing.T) {
			r := render(t, set)
			for key := range r.config {
				if !strings.Contains(help, "--"+key+" ") {
					t.Errorf("the serve YAML sets %s, which finserve serve does not take", key)
				}
			}
			c := r.pod().Spec.Containers[0]
			ports := map[string]int32{}
			for _, p := range c.Ports {
				ports[p.Name] = p.ContainerPort
			}
			if port := portOf(t, r.config["addr"]); ports["http"] != port {
				t.Errorf("container port http %d, serve listens on %d", ports["http"], port)
			}
			// one plain port for probes and scrapes, whatever the API
			// port asks (kubelet presents no client certificate)
			const probePort = "probes"
			if ports["probes"] == 0 || ports["probes"] != portOf(t, r.config["probe-addr"]) {
				t.Errorf("container port probes %d, probe-addr %v", ports["probes"], r.config["probe-addr"])
			}
			for name, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
				want := map[string]string{"startup": "/ready", "readiness": "/ready", "liveness": "/health"}[name]
				if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != want || p.HTTPGet.Port.StrVal != probePort || p.HTTPGet.Scheme != corev1.URISchemeHTTP {
					t.Errorf("%s probe %+v, want GET %s on %s", name, p, want, probePort)
				}
			}
			// a 13B model from a network volume: at least ten minutes to start
			if s := c.StartupProbe; time.Duration(s.PeriodSeconds*s.FailureThreshold)*time.Second < 10*time.Minute {
				t.Errorf("startup probe allows %ds", s.PeriodSeconds*s.FailureThreshold)
			}
			threads := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "FINSERVE_THREADS" })
			if threads < 0 || c.Env[threads].ValueFrom == nil || c.Env[threads].ValueFrom.ResourceFieldRef == nil ||
				c.Env[threads].ValueFrom.ResourceFieldRef.Resource != "limits.cpu" || c.Resources.Limits.Cpu().IsZero() {
				t.Errorf("FINSERVE_THREADS is not the CPU limit: %+v", c.Env)
			}
			labels := r.pod().Labels
			if labels["llm-d.ai/engine-type"] != "finserve" || labels["inference.networking.k8s.io/engine-type"] != "finserve" {
				t.Errorf("pod labels %v lack the engine type", labels)
			}
		})
	}
}

// TestChartTracing: without tracing the pods may call nothing; with a
// collector endpoint they get the OTel environment and egress to the
// collector's port and to DNS, and nowhere else.
func TestChartTracing(t *testing.T) {
	off := render(t, nil)
	if eg := off.netpol.Spec.Egress; len(eg) != 0 || !slices.Contains(off.netpol.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
		t.Errorf("egress without tracing: %+v (policy types %v)", eg, off.netpol.Spec.PolicyTypes)
	}
	if slices.ContainsFunc(off.pod().Spec.Containers[0].Env, func(e corev1.EnvVar) bool { return strings.HasPrefix(e.Name, "OTEL_") }) {
		t.Error("OTel settings without tracing")
	}
	on := render(t, map[string]any{"tracing": map[string]any{"endpoint": "http://otel-collector.observability:4318"}})
	env := map[string]string{}
	for _, e := range on.pod().Spec.Containers[0].Env {
		env[e.Name] = e.Value
	}
	if env["OTEL_EXPORTER_OTLP_ENDPOINT"] != "http://otel-collector.observability:4318" || env["OTEL_SERVICE_NAME"] != "finserve" {
		t.Errorf("env with tracing: %v", env)
	}
	var ports []string
	for _, rule := range on.netpol.Spec.Egress {
		if len(rule.To) == 0 {
			t.Errorf("an egress rule to anywhere: %+v", rule)
		}
		for _, p := range rule.Ports {
			ports = append(ports, fmt.Sprintf("%s/%s", p.Port, *p.Protocol))
		}
	}
	if want := []string{"4318/TCP", "53/UDP", "53/TCP"}; !slices.Equal(ports, want) {
		t.Errorf("egress ports %v, want %v", ports, want)
	}
}

// TestChartGrace: the pod's grace period covers preStop, serve's worst
// case stop (shutdown-grace plus 6 s: cancel, then close) and a margin;
// the drain delay fits in the grace; the defaults' worst case stays above
// Kubernetes' default of 30 s only through the chart's own grace period.
func TestChartGrace(t *testing.T) {
	for name, set := range map[string]map[string]any{"defaults": nil,
		"long drain": {"shutdown": map[string]any{"graceSeconds": 120, "preStopSeconds": 15, "drainDelay": "20s"}}} {
		t.Run(name, func(t *testing.T) {
			r := render(t, set)
			pod := r.pod().Spec
			grace := duration(t, r.config["shutdown-grace"])
			drain := duration(t, r.config["drain-delay"])
			preStop := time.Duration(pod.Containers[0].Lifecycle.PreStop.Sleep.Seconds) * time.Second
			worst := preStop + grace + 6*time.Second
			if pod.TerminationGracePeriodSeconds == nil {
				t.Fatal("no terminationGracePeriodSeconds")
			}
			if got := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second; got <= worst {
				t.Errorf("terminationGracePeriodSeconds %v, want more than preStop %v + grace %v + 6s", got, preStop, grace)
			}
			if drain > grace {
				t.Errorf("drain delay %v beyond the grace %v: serve cuts it to the grace", drain, grace)
			}
		})
	}
}

// TestChartVariants: the GPU variant asks for GPUs, runs the CUDA image
// with layers offloaded and tolerates GPU taints; without audit there is
// no volume claim; mTLS mounts the client CA and serves probes apart; the
// InferencePool selects exactly the pods on the API port.
func TestChartVariants(t *testing.T) {
	gpu := render(t, map[string]any{"gpu": map[string]any{"enabled": true, "count": 2}})
	c := gpu.pod().Spec.Containers[0]
	if q := c.Resources.Limits["nvidia.com/gpu"]; q.Cmp(resource.MustParse("2")) != 0 || !strings.HasSuffix(c.Image, ":cuda") || gpu.config["gpu-layers"] != "auto" {
		t.Errorf("gpu: limits %v, image %s, gpu-layers %v", c.Resources.Limits, c.Image, gpu.config["gpu-layers"])
	}
	if !slices.ContainsFunc(gpu.pod().Spec.Tolerations, func(t corev1.Toleration) bool { return t.Key == "nvidia.com/gpu" }) {
		t.Error("gpu: no toleration of nvidia.com/gpu")
	}
	cpu := render(t, nil)
	if _, ok := cpu.pod().Spec.Containers[0].Resources.Limits["nvidia.com/gpu"]; ok || cpu.config["gpu-layers"] != nil {
		t.Error("the CPU default asks for a GPU")
	}
	st := cpu.statefulSet
	if len(st.Spec.VolumeClaimTemplates) != 1 || st.Spec.VolumeClaimTemplates[0].Spec.AccessModes[0] != corev1.ReadWriteOncePod || cpu.config["audit-log"] != "/var/log/finserve/audit.jsonl" {
		t.Errorf("audit volume: %+v, audit-log %v", st.Spec.VolumeClaimTemplates, cpu.config["audit-log"])
	}
	if st.Spec.ServiceName != cpu.service.Name || cpu.service.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Error("the StatefulSet's service is not its headless governing service")
	}
	noAudit := render(t, map[string]any{"audit": map[string]any{"enabled": false}})
	if noAudit.config["audit-log"] != nil || slices.ContainsFunc(noAudit.pod().Spec.Volumes, func(v corev1.Volume) bool { return v.Name == "audit" }) {
		t.Error("audit off still writes an audit log")
	}
	m := render(t, mtls)
	for key, want := range map[string]string{"tls-client-ca": "/etc/finserve/client-ca/ca.crt", "api-keys": "/etc/finserve/keys/keys.json",
		"aml-config": "/etc/finserve/aml/aml.yaml", "audit-key-file": "/etc/finserve/audit-key/audit.key"} {
		if m.config[key] != want {
			t.Errorf("mtls: %s %v, want %s", key, m.config[key], want)
		}
		mounted := slices.ContainsFunc(m.pod().Spec.Containers[0].VolumeMounts, func(v corev1.VolumeMount) bool {
			return strings.HasPrefix(want, v.MountPath+"/") && v.ReadOnly
		})
		if !mounted {
			t.Errorf("mtls: nothing mounts %s read-only", want)
		}
	}
	pool := render(t, map[string]any{"inferencePool": map[string]any{"enabled": true}})
	sel, err := metav1.LabelSelectorAsSelector(&metav1.LabelSelector{MatchLabels: labelsOf(pool.pool.Spec.Selector)})
	if err != nil {
		t.Fatal(err)
	}
	if !sel.Matches(labelSet(pool.pod().Labels)) || len(pool.pool.Spec.TargetPorts) != 1 || int32(pool.pool.Spec.TargetPorts[0].Number) != portOf(t, pool.config["addr"]) {
		t.Errorf("InferencePool %+v does not select the pods on the API port", pool.pool.Spec)
	}
	if ref := pool.pool.Spec.EndpointPickerRef; ref == nil || ref.Port == nil || ref.Port.Number != 9002 || ref.FailureMode != giev1.EndpointPickerFailClose {
		t.Errorf("endpoint picker ref %+v", ref)
	}
}

// TestChartPrometheusRule: the PrometheusRule carries deploy/
// prometheus-rules.yaml's groups unchanged.
func TestChartPrometheusRule(t *testing.T) {
	r := render(t, map[string]any{"prometheusRule": map[string]any{"enabled": true}})
	data, err := os.ReadFile("../prometheus-rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]any
	if err := yaml.Unmarshal(data, &want); err != nil {
		t.Fatal(err)
	}
	for _, m := range r.monitors {
		if m["kind"] == "PrometheusRule" {
			a, _ := json.Marshal(m["spec"])
			b, _ := json.Marshal(want)
			if !bytes.Equal(a, b) {
				t.Errorf("the rule's spec differs from deploy/prometheus-rules.yaml")
			}
			return
		}
	}
	t.Error("no PrometheusRule")
}

type labelSet map[string]string

func (l labelSet) Has(k string) bool              { _, ok := l[k]; return ok }
func (l labelSet) Get(k string) string            { return l[k] }
func (l labelSet) Lookup(k string) (string, bool) { v, ok := l[k]; return v, ok }

func labelsOf(s giev1.LabelSelector) map[string]string {
	m := map[string]string{}
	for k, v := range s.MatchLabels {
		m[string(k)] = string(v)
	}
	return m
}

func portOf(t *testing.T, addr any) int32 {
	t.Helper()
	s, _ := addr.(string)
	i := strings.LastIndex(s, ":")
	p, err := strconv.Atoi(s[i+1:])
	if i < 0 || err != nil {
		t.Fatalf("address %v", addr)
	}
	return int32(p)
}

func duration(t *testing.T, v any) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(fmt.Sprint(v))
	if err != nil {
		t.Fatalf("duration %v: %v", v, err)
	}
	return d
}

// serveHelp is `finserve serve --help` of the binary make build wrote
// (FINSERVE_BIN to name another).
func serveHelp(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("FINSERVE_BIN")
	if bin == "" {
		bin = filepath.Join("..", "..", "bin", "finserve")
	}
	out, err := exec.Command(bin, "serve", "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("%s serve --help (make build first, or set FINSERVE_BIN): %v\n%s", bin, err, out)
	}
	return string(out)
}

// TestRouterValues: the router's values scrape the port the chart serves
// metrics on without keys or TLS, and route to the API port the pool
// names.
func TestRouterValues(t *testing.T) {
	data, err := os.ReadFile("../helm/llm-d-router-values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		InferencePool struct {
			TargetPorts []struct{ Number int32 } `json:"targetPorts"`
		} `json:"inferencePool"`
		InferenceExtension struct {
			Flags map[string]any `json:"flags"`
		} `json:"inferenceExtension"`
	}
	if err := yaml.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	r := render(t, map[string]any{"inferencePool": map[string]any{"enabled": true}, "tls": map[string]any{"secretName": "t"}})
	if got := fmt.Sprint(v.InferenceExtension.Flags["model-server-metrics-port"]); got != fmt.Sprint(portOf(t, r.config["probe-addr"])) {
		t.Errorf("the router scrapes port %s; the chart serves metrics on %v", got, r.config["probe-addr"])
	}
	if len(v.InferencePool.TargetPorts) != 1 || v.InferencePool.TargetPorts[0].Number != int32(r.pool.Spec.TargetPorts[0].Number) {
		t.Errorf("router target ports %v, pool %v", v.InferencePool.TargetPorts, r.pool.Spec.TargetPorts)
	}
}
