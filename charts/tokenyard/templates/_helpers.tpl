{{/* Chart name, overridable. */}}
{{- define "tokenyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every resource name: the release name, with the chart name unless it already holds it. */}}
{{- define "tokenyard.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* A component's resource name: (dict "root" $ "component" "gateway"). Short enough for any kind. */}}
{{- define "tokenyard.componentName" -}}
{{- printf "%s-%s" (include "tokenyard.fullname" .root | trunc (int (sub 62 (len .component)))  | trimSuffix "-") .component }}
{{- end }}

{{- define "tokenyard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of a component: (dict "root" $ "component" "gateway"). */}}
{{- define "tokenyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenyard.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All standard labels of a component: (dict "root" $ "component" "gateway"). */}}
{{- define "tokenyard.labels" -}}
helm.sh/chart: {{ include "tokenyard.chart" .root }}
{{ include "tokenyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: tokenyard
{{- end }}

{{/* An image reference: (dict "image" .Values.operator.image "root" $). A digest wins over the tag. */}}
{{- define "tokenyard.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (.image.tag | default .root.Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/* True (non-empty) when the operator and the gateway watch every namespace. */}}
{{- define "tokenyard.allNamespaces" -}}
{{- if not .Values.operator.watchNamespaces }}true{{ end }}
{{- end }}

{{/* Pod-level security context of tokenyard's own images (operator, gateway): their user is uid/gid 1000. */}}
{{- define "tokenyard.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
fsGroup: 1000
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level security context of every container in the chart. */}}
{{- define "tokenyard.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Spread a component's replicas over nodes where the scheduler can: (dict "root" $ "component" "gateway"). */}}
{{- define "tokenyard.defaultAffinity" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "tokenyard.selectorLabels" . | nindent 12 }}
{{- end }}

{{- define "tokenyard.redis.url" -}}
{{- if .Values.redis.enabled }}
{{- printf "redis://%s:6379/0" (include "tokenyard.componentName" (dict "root" . "component" "redis")) }}
{{- else }}
{{- .Values.redis.external.url }}
{{- end }}
{{- end }}

{{/* The gateway's database URL, without a password where one comes from a Secret (libpq reads PGPASSWORD). */}}
{{- define "tokenyard.database.url" -}}
{{- if .Values.postgres.enabled }}
{{- $host := include "tokenyard.componentName" (dict "root" . "component" "postgres") }}
{{- printf "postgresql://%s@%s:5432/%s" (.Values.postgres.auth.username | urlquery) $host (.Values.postgres.auth.database | urlquery) }}
{{- else }}
{{- .Values.postgres.external.url }}
{{- end }}
{{- end }}

{{/* The Secret holding the bundled PostgreSQL's password. */}}
{{- define "tokenyard.postgres.secretName" -}}
{{- .Values.postgres.auth.existingSecret | default (include "tokenyard.componentName" (dict "root" . "component" "postgres")) }}
{{- end }}

{{- define "tokenyard.postgres.secretKey" -}}
{{- if .Values.postgres.auth.existingSecret }}{{ .Values.postgres.auth.existingSecretPasswordKey }}{{ else }}password{{ end }}
{{- end }}

{{/* The gateway's YAML configuration: gateway.config plus the stores' URLs. */}}
{{- define "tokenyard.gateway.config" -}}
{{- $config := deepCopy .Values.gateway.config }}
{{- with include "tokenyard.redis.url" . }}
{{- $_ := set $config "redis_url" . }}
{{- end }}
{{- with include "tokenyard.database.url" . }}
{{- $_ := set $config "database_url" . }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* The Secret and key of the password the gateway hands libpq as PGPASSWORD; empty when there is none. */}}
{{- define "tokenyard.gateway.pgpasswordRef" -}}
{{- if .Values.postgres.enabled }}
name: {{ include "tokenyard.postgres.secretName" . }}
key: {{ include "tokenyard.postgres.secretKey" . }}
{{- else if .Values.postgres.external.existingSecret }}
name: {{ .Values.postgres.external.existingSecret }}
key: {{ .Values.postgres.external.existingSecretPasswordKey }}
{{- end }}
{{- end }}

{{/* The Secret and key of the key the gateway sends its upstreams; empty when there is none. */}}
{{- define "tokenyard.gateway.upstreamKeyRef" -}}
{{- $key := .Values.gateway.upstreamApiKey }}
{{- if $key.existingSecret }}
name: {{ $key.existingSecret }}
key: {{ $key.existingSecretKey }}
{{- else if $key.create }}
name: {{ include "tokenyard.componentName" (dict "root" . "component" "upstream-api-key") }}
key: api-key
{{- end }}
{{- end }}
