{{/*
Names and labels shared by every template.
*/}}

{{/* The chart name (nameOverride wins). */}}
{{- define "kube-xdp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name, the prefix of every object name: fullnameOverride, else the release name
when it already contains the chart name (release "kube-xdp" -> "kube-xdp"), else
<release>-<chart>. Truncated to 54 so "-operator" still fits in 63 characters.
*/}}
{{- define "kube-xdp.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* name-version for the helm.sh/chart label. */}}
{{- define "kube-xdp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: the stable subset (name + instance). Selectors are immutable, so they
never carry the version. Workload selectors add app.kubernetes.io/component
("kube-xdp.componentSelectorLabels"): the operator Deployment and the agent DaemonSet
must not select each other's pods.
*/}}
{{- define "kube-xdp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kube-xdp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Call with (dict "root" $ "component" "operator"). */}}
{{- define "kube-xdp.componentSelectorLabels" -}}
{{ include "kube-xdp.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The standard labels of every object. */}}
{{- define "kube-xdp.labels" -}}
helm.sh/chart: {{ include "kube-xdp.chart" . }}
{{ include "kube-xdp.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kube-xdp
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The standard labels plus the component. Call with (dict "root" $ "component" "agent"). */}}
{{- define "kube-xdp.componentLabels" -}}
{{ include "kube-xdp.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
A component's ServiceAccount name: the configured name, else <fullname>-<component>
when the chart creates it, else "default". Call with (dict "root" $ "component" "agent").
*/}}
{{- define "kube-xdp.serviceAccountName" -}}
{{- $sa := (index .root.Values .component).serviceAccount }}
{{- if $sa.create }}
{{- default (printf "%s-%s" (include "kube-xdp.fullname" .root) .component) $sa.name }}
{{- else }}
{{- default "default" $sa.name }}
{{- end }}
{{- end }}

{{/* The image reference: repository@digest, else repository:tag (tag defaults to appVersion). */}}
{{- define "kube-xdp.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}
