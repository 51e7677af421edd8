// Package routertest runs the Gateway API Inference Extension's own
// endpoint-picker code (v1.5.0, the last release that holds pkg/epp)
// against live finserve processes: its metrics data source and core
// metrics extractor scrape them, and its scheduler, configured from
// deploy/helm/llm-d-router-values.yaml, routes requests to them. A module
// of its own, so that finserve's dependencies stay lean; .ci/run runs it.
package routertest
