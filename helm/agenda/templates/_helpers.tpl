{{/*
Chart name, truncated to 63 characters (DNS label limit).
*/}}
{{- define "agenda.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: "<release>-<chart>" (or the release name when it
already contains the chart name), truncated to 63 characters.
*/}}
{{- define "agenda.fullname" -}}
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

{{/*
A name derived from the full name with a suffix, kept within 63 characters.
Usage: include "agenda.suffixed" (list . "migrate")
*/}}
{{- define "agenda.suffixed" -}}
{{- $ctx := index . 0 }}
{{- $suffix := index . 1 }}
{{- printf "%s-%s" (include "agenda.fullname" $ctx | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix }}
{{- end }}

{{/*
Chart label value: "<name>-<version>", "+" replaced as labels do not allow it.
*/}}
{{- define "agenda.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "agenda.labels" -}}
helm.sh/chart: {{ include "agenda.chart" . }}
{{ include "agenda.selectorLabels" . }}
app.kubernetes.io/version: {{ (default .Chart.AppVersion .Values.image.tag) | replace "+" "_" | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agenda
{{- end }}

{{/*
Selector labels: stable across upgrades, never add to them.
*/}}
{{- define "agenda.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agenda.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Selector labels of the agenda server pods: the migration Job and the test
Pod share name and instance but must never receive Service traffic.
*/}}
{{- define "agenda.serverSelectorLabels" -}}
{{ include "agenda.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{/*
ServiceAccount name.
*/}}
{{- define "agenda.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agenda.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}; tag defaults to the given
fallback. Usage: include "agenda.imageRef" (list .Values.image .Chart.AppVersion)
*/}}
{{- define "agenda.imageRef" -}}
{{- $img := index . 0 }}
{{- $tag := default (index . 1) $img.tag }}
{{- if $img.digest }}
{{- printf "%s:%s@%s" $img.repository $tag $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository $tag }}
{{- end }}
{{- end }}

{{/*
Name of the Secret the chart creates for values given inline.
*/}}
{{- define "agenda.secretName" -}}
{{- include "agenda.fullname" . }}
{{- end }}

{{/*
Checks of value combinations the schema cannot express. Renders nothing;
fails with a readable message.
*/}}
{{- define "agenda.validate" -}}
{{- $db := .Values.database }}
{{- if and (not $db.url) (not $db.existingSecret) }}
{{- fail "\n\nagenda: a PostgreSQL database is required: set database.url (the chart stores it in a Secret) or database.existingSecret (+ database.existingSecretKey)." }}
{{- end }}
{{- if and $db.url $db.existingSecret }}
{{- fail "\n\nagenda: set either database.url or database.existingSecret, not both." }}
{{- end }}
{{- $hs := .Values.auth.hs256 }}
{{- $jw := .Values.auth.jwks }}
{{- if not (or $hs.secret $hs.existingSecret $jw.json $jw.existingSecret) }}
{{- fail "\n\nagenda: on PostgreSQL agenda needs a token key: set auth.hs256.secret / auth.hs256.existingSecret (HS256) and/or auth.jwks.json / auth.jwks.existingSecret (JWKS)." }}
{{- end }}
{{- if and $hs.secret $hs.existingSecret }}
{{- fail "\n\nagenda: set either auth.hs256.secret or auth.hs256.existingSecret, not both." }}
{{- end }}
{{- if and $jw.json $jw.existingSecret }}
{{- fail "\n\nagenda: set either auth.jwks.json or auth.jwks.existingSecret, not both." }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- fail "\n\nagenda: tls.enabled needs tls.existingSecret (a Secret with the certificate and key, e.g. from cert-manager)." }}
{{- end }}
{{- if and .Values.tls.clientCA.enabled (not .Values.tls.enabled) }}
{{- fail "\n\nagenda: tls.clientCA.enabled (mTLS) needs tls.enabled." }}
{{- end }}
{{- if and .Values.tests.enabled .Values.tls.clientCA.enabled (not .Values.tests.tlsClientSecret) }}
{{- fail "\n\nagenda: with mTLS on, the helm test needs a client certificate: set tests.tlsClientSecret, or tests.enabled=false." }}
{{- end }}
{{- $grace := add (int .Values.lifecycle.preStopSleepSeconds) (int .Values.config.shutdownGraceSeconds) }}
{{- if and (not (kindIs "invalid" .Values.terminationGracePeriodSeconds)) (le (int .Values.terminationGracePeriodSeconds) (int $grace)) }}
{{- fail (printf "\n\nagenda: terminationGracePeriodSeconds (%d) must be larger than lifecycle.preStopSleepSeconds + config.shutdownGraceSeconds (%d), or in-flight calls are killed." (int .Values.terminationGracePeriodSeconds) (int $grace)) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "\n\nagenda: autoscaling.minReplicas must not exceed autoscaling.maxReplicas." }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: given, or preStop sleep + shutdown grace + 10 s.
*/}}
{{- define "agenda.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add (int .Values.lifecycle.preStopSleepSeconds) (int .Values.config.shutdownGraceSeconds) 10 }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
The database URL env var, shared by the Deployment and the migration Job.
Usage: include "agenda.databaseEnv" (list . "<secret name for a chart-made URL>")
*/}}
{{- define "agenda.databaseEnv" -}}
{{- $ctx := index . 0 }}
{{- $chartSecret := index . 1 -}}
- name: AGENDA_DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- if $ctx.Values.database.existingSecret }}
      name: {{ $ctx.Values.database.existingSecret }}
      key: {{ $ctx.Values.database.existingSecretKey }}
      {{- else }}
      name: {{ $chartSecret }}
      key: database-url
      {{- end }}
{{- end }}

{{/*
One probe. Native gRPC, or a TCP check of the same port when TLS is on (the
kubelet's gRPC probe cannot do TLS). Usage:
include "agenda.probe" (list . .Values.probes.readiness)
*/}}
{{- define "agenda.probe" -}}
{{- $ctx := index . 0 }}
{{- $p := index . 1 }}
{{- if $ctx.Values.tls.enabled -}}
tcpSocket:
  port: {{ int $ctx.Values.containerPorts.grpc }}
{{- else -}}
grpc:
  port: {{ int $ctx.Values.containerPorts.grpc }}
  service: {{ $p.service | quote }}
{{- end }}
periodSeconds: {{ int $p.periodSeconds }}
timeoutSeconds: {{ int $p.timeoutSeconds }}
failureThreshold: {{ int $p.failureThreshold }}
{{- if hasKey $p "successThreshold" }}
successThreshold: {{ int $p.successThreshold }}
{{- end }}
{{- end }}

{{/*
A listen host as it goes before ":port" (IPv6 addresses get brackets).
*/}}
{{- define "agenda.hostPort" -}}
{{- if contains ":" . }}[{{ . }}]{{ else }}{{ . }}{{ end }}
{{- end }}
