{{- define "finserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "finserve.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "finserve.labels" -}}
{{ include "finserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The labels the router's endpoint picker reads to pick its metric names. */}}
{{- define "finserve.engineLabels" -}}
llm-d.ai/engine-type: finserve
inference.networking.k8s.io/engine-type: finserve
{{- end -}}

{{- define "finserve.image" -}}
{{- $tag := ternary .Values.gpu.image.tag .Values.image.tag .Values.gpu.enabled -}}
{{- if .Values.image.digest -}}{{ .Values.image.repository }}@{{ .Values.image.digest }}{{- else -}}{{ .Values.image.repository }}:{{ $tag }}{{- end -}}
{{- end -}}

{{/* Probes, metrics and the router's endpoint picker use the plain probe port, with or without TLS on the API (kubelet presents no client certificate): one port for every setting. */}}
{{- define "finserve.probePort" -}}probes{{- end -}}
