// Package charttest renders finserve's Helm chart (deploy/helm/finserve)
// with Helm's own Go module and checks every manifest against the
// Kubernetes and Gateway API Inference Extension types. It is a module of
// its own so that finserve's dependencies stay lean; .ci/run runs it.
package charttest
