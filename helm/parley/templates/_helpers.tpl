{{/* Names, labels and what each service reads. */}}

{{- define "parley.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "parley.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The services, in start order. */}}
{{- define "parley.serviceNames" -}}
presence receipt notification message gateway
{{- end -}}

{{/*
What each binary reads besides the shared settings: whether it has a
database (and so a migration), which other services it calls, and how it
reaches Redis. Kept in step with the binaries by scripts/chart_check.py.
*/}}
{{- define "parley.facts" -}}
gateway: {database: false, calls: [message, receipt, presence, notification], redis: PARLEY_BUS_URL}
message: {database: true, calls: [receipt, presence, notification], redis: PARLEY_BUS_URL}
presence: {database: false, calls: [], redis: PARLEY_PRESENCE_REDIS_URL}
receipt: {database: true, calls: [presence, message], redis: PARLEY_BUS_URL}
notification: {database: true, calls: [presence, receipt, message], redis: ""}
{{- end -}}

{{- define "parley.chartLabel" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every resource. */}}
{{- define "parley.labels" -}}
helm.sh/chart: {{ include "parley.chartLabel" . }}
app.kubernetes.io/name: {{ include "parley.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: parley
{{- end -}}

{{/* Selector labels of one service: (dict "root" $ "service" "gateway"). */}}
{{- define "parley.selectorLabels" -}}
app.kubernetes.io/name: {{ include "parley.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{- define "parley.serviceFullname" -}}
{{- printf "%s-%s" (include "parley.fullname" .root) .service | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "parley.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "parley.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "parley.secretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else -}}
{{- printf "%s-secrets" (include "parley.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "parley.image" -}}
{{- printf "%s/parley-%s:%s" .root.Values.image.repository .service (default .root.Chart.AppVersion .root.Values.image.tag) -}}
{{- end -}}

{{/* An env entry from the credentials Secret: (dict "root" $ "name" "PARLEY_X" "key" "k" "optional" true). */}}
{{- define "parley.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "parley.secretName" .root }}
      key: {{ .key }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end -}}

{{/* The env entries of one service's credentials: (dict "root" $ "service" "message"). */}}
{{- define "parley.credentialsEnv" -}}
{{- $facts := get (include "parley.facts" .root | fromYaml) .service -}}
{{- if $facts.database }}
{{ include "parley.secretEnv" (dict "root" .root "name" (printf "PARLEY_%s_DATABASE_URL" (upper .service)) "key" (printf "%s-database-url" .service)) }}
{{- end }}
{{- if $facts.redis }}
{{ include "parley.secretEnv" (dict "root" .root "name" $facts.redis "key" "redis-url") }}
{{- end }}
{{- if not .root.Values.devMode }}
{{ include "parley.secretEnv" (dict "root" .root "name" "PARLEY_SERVICE_KEY" "key" (printf "%s-service-key" .service)) }}
{{ include "parley.secretEnv" (dict "root" .root "name" "PARLEY_SERVICE_PUBLIC_KEYS" "key" "service-public-keys") }}
{{- end }}
{{- if and (eq .service "gateway") (not .root.Values.jwt.rs256PublicKeySecret) }}
{{ include "parley.secretEnv" (dict "root" .root "name" "PARLEY_GATEWAY_JWT_HS256_SECRET" "key" "jwt-hs256-secret") }}
{{- end }}
{{- end -}}

{{/* Container security context. */}}
{{- define "parley.containerSecurity" -}}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
{{- end -}}

{{/* What a production install must provide, refused at render time unless
devMode is set: the service credentials (an existing Secret, or a created one
whose keys the schema checks) and the NetworkPolicies. */}}
{{- define "parley.requireProduction" -}}
{{- if not .Values.devMode -}}
{{- if not (or .Values.secrets.existingSecret .Values.secrets.create) -}}
{{- fail "service credentials are required: set secrets.existingSecret to a Secret holding each <service>-service-key and service-public-keys (`parley keys` prints a set), or secrets.create with secrets.values; devMode=true runs a trial without them" -}}
{{- end -}}
{{- if not .Values.networkPolicy.enabled -}}
{{- fail "networkPolicy.enabled is false: a production install keeps the internal services reachable only from the release; devMode=true runs a trial without them" -}}
{{- end -}}
{{- end -}}
{{- end -}}
