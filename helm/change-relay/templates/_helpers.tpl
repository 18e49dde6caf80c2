{{/*
Names and labels, following the chart conventions of `helm create`.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "change-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
A fully qualified name for the release's objects: fullnameOverride, or <release>-<chart> unless the release name
already contains the chart name. Truncated to 63 characters, the DNS label limit of some name fields.
*/}}
{{- define "change-relay.fullname" -}}
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

{{/* name-version, for the helm.sh/chart label. */}}
{{- define "change-relay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The labels every object of the relay carries. */}}
{{- define "change-relay.labels" -}}
{{ include "change-relay.baseLabels" . }}
app.kubernetes.io/component: relay
{{- end }}

{{/* The labels every object carries, less app.kubernetes.io/component. */}}
{{- define "change-relay.baseLabels" -}}
helm.sh/chart: {{ include "change-relay.chart" . }}
app.kubernetes.io/name: {{ include "change-relay.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/version: {{ include "change-relay.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: change-relay
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The labels that select the relay's pods: never change them on upgrade (a Deployment's selector is immutable). The
component keeps the `helm test` pod out of the Service.
*/}}
{{- define "change-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "change-relay.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: relay
{{- end }}

{{/* The ServiceAccount the pod runs as. */}}
{{- define "change-relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "change-relay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image tag: image.tag, or the chart's appVersion. */}}
{{- define "change-relay.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* The image reference: repository:tag, or repository@digest when a digest is given (it wins over the tag). */}}
{{- define "change-relay.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "change-relay.imageTag" .) }}
{{- end }}
{{- end }}

{{/*
A number as the relay reads it. Helm reads every number in the values as a float, which prints 1000000 as 1e+06, and
an integer setting would refuse that: whole numbers are printed as integers.
*/}}
{{- define "change-relay.number" -}}
{{- if eq (float64 .) (float64 (int64 .)) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- end }}

{{/* The Secret the chart creates for secrets given inline in the values. */}}
{{- define "change-relay.secretName" -}}
{{- printf "%s-secrets" (include "change-relay.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Where the secret files are mounted: one projected volume, so every secret is a file directly under it and the
paths stay the same whichever Secret each comes from.
*/}}
{{- define "change-relay.secretsDir" -}}
/var/run/secrets/change-relay
{{- end }}

{{/* Whether the chart's own Secret holds anything (a value given inline), so is rendered at all. */}}
{{- define "change-relay.ownSecretNeeded" -}}
{{- if or (and .Values.apiKey.value (not .Values.apiKey.existingSecret)) (and (include "change-relay.sasl" .) .Values.kafka.sasl.password (not .Values.kafka.sasl.existingSecret)) (and (include "change-relay.webhooks" .) .Values.webhooks.secret.value (not .Values.webhooks.secret.existingSecret)) -}}
true
{{- end }}
{{- end }}

{{/* Non-empty when the security protocol uses SASL. */}}
{{- define "change-relay.sasl" -}}
{{- if has .Values.kafka.securityProtocol (list "SASL_PLAINTEXT" "SASL_SSL") -}}
true
{{- end }}
{{- end }}

{{/* Non-empty when the security protocol uses TLS. */}}
{{- define "change-relay.tls" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") -}}
true
{{- end }}
{{- end }}

{{/* Non-empty when the Kombo webhook endpoint is on (webhooks.enabled; validate checks it has a secret). */}}
{{- define "change-relay.webhooks" -}}
{{- if and .Values.webhooks.enabled (or .Values.webhooks.secret.value .Values.webhooks.secret.existingSecret) -}}
true
{{- end }}
{{- end }}

{{/*
Non-empty when the PodDisruptionBudget is rendered: podDisruptionBudget.enabled, or, when that is null, whenever more
than one replica may run.
*/}}
{{- define "change-relay.pdbEnabled" -}}
{{- $enabled := .Values.podDisruptionBudget.enabled }}
{{- if kindIs "invalid" $enabled }}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) -}}
true
{{- end }}
{{- else if $enabled -}}
true
{{- end }}
{{- end }}

{{/* Non-empty when the admin HTTP API is on (admin.enabled; validate checks it has a Secret). */}}
{{- define "change-relay.admin" -}}
{{- if and .Values.admin.enabled .Values.admin.existingSecret -}}
true
{{- end }}
{{- end }}

{{/* Non-empty when any secret is configured, so the projected volume of secret files is mounted. */}}
{{- define "change-relay.secretFiles" -}}
{{- if or (include "change-relay.hasApiKey" .) (include "change-relay.sasl" .) (and (include "change-relay.tls" .) .Values.kafka.tls.existingSecret) (include "change-relay.webhooks" .) (include "change-relay.admin" .) -}}
true
{{- end }}
{{- end }}

{{/*
The volume of secret files: every secret as a file directly under change-relay.secretsDir, whichever Secret it comes
from. The relay's pods and the `helm test` pod that runs the relay's CLI mount the same, so that the *_FILE settings
of the ConfigMap hold in both.
*/}}
{{- define "change-relay.secretsVolume" -}}
{{- $kafka := .Values.kafka }}
{{- $saslSecret := default (include "change-relay.secretName" .) $kafka.sasl.existingSecret }}
{{- $saslKey := ternary $kafka.sasl.existingSecretPasswordKey "kafka-sasl-password" (ne $kafka.sasl.existingSecret "") }}
{{- $webhookSecret := .Values.webhooks.secret -}}
- name: secrets
  projected:
    # 0440 (288 in decimal): read-only for the owner and for the group, which is fsGroup.
    defaultMode: 288
    sources:
      {{- if include "change-relay.hasApiKey" . }}
      - secret:
          name: {{ default (include "change-relay.secretName" .) .Values.apiKey.existingSecret }}
          items:
            - key: {{ ternary .Values.apiKey.existingSecretKey "api-key" (ne .Values.apiKey.existingSecret "") }}
              path: api-key
      {{- end }}
      {{- if include "change-relay.sasl" . }}
      - secret:
          name: {{ $saslSecret }}
          items:
            - key: {{ $saslKey }}
              path: kafka-sasl-password
      {{- end }}
      {{- if and (include "change-relay.tls" .) $kafka.tls.existingSecret }}
      - secret:
          name: {{ $kafka.tls.existingSecret }}
          items:
            {{- with $kafka.tls.caKey }}
            - key: {{ . }}
              path: kafka-tls-ca.crt
            {{- end }}
            {{- with $kafka.tls.certKey }}
            - key: {{ . }}
              path: kafka-tls-client.crt
            {{- end }}
            {{- with $kafka.tls.keyKey }}
            - key: {{ . }}
              path: kafka-tls-client.key
            {{- end }}
            {{- with $kafka.tls.keyPasswordKey }}
            - key: {{ . }}
              path: kafka-tls-key-password
            {{- end }}
      {{- end }}
      {{- if include "change-relay.webhooks" . }}
      - secret:
          name: {{ default (include "change-relay.secretName" .) $webhookSecret.existingSecret }}
          items:
            - key: {{ ternary $webhookSecret.existingSecretKey "kombo-webhook-secret" (ne $webhookSecret.existingSecret "") }}
              path: kombo-webhook-secret
      {{- end }}
      {{- if include "change-relay.admin" . }}
      - secret:
          name: {{ .Values.admin.existingSecret }}
          items:
            - key: {{ .Values.admin.existingSecretKey }}
              path: admin-token
      {{- end }}
{{- end }}

{{/* The environment of a container running the relay (or its CLI): the ConfigMap, extraEnvFrom and extraEnv. */}}
{{- define "change-relay.containerEnv" -}}
envFrom:
  - configMapRef:
      name: {{ include "change-relay.fullname" . }}
  {{- with .Values.extraEnvFrom }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with .Values.extraEnv }}
env:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Whether an API key is configured at all. */}}
{{- define "change-relay.hasApiKey" -}}
{{- if or .Values.apiKey.value .Values.apiKey.existingSecret -}}
true
{{- end }}
{{- end }}

{{/*
The label matchers that pick this release's series in the alert expressions: prometheusRule.selector, or the job the
ServiceMonitor gives the targets (the Service's name).
*/}}
{{- define "change-relay.alertSelector" -}}
{{- default (printf "job=%q" (include "change-relay.fullname" .)) .Values.prometheusRule.selector }}
{{- end }}

{{/*
Checks that no schema can express: fail the render with a message naming the values to fix.
*/}}
{{- define "change-relay.validate" -}}
{{- $relay := .Values.relay }}
{{- if le (float64 .Values.terminationGracePeriodSeconds) (float64 $relay.shutdownGraceSeconds) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed relay.shutdownGraceSeconds (%v): Kubernetes kills the relay at the end of the grace period, before it has finished its work in flight" .Values.terminationGracePeriodSeconds $relay.shutdownGraceSeconds) }}
{{- end }}
{{- $partitions := int .Values.kafka.stateTopicPartitions }}
{{- $autoscaling := .Values.autoscaling }}
{{- if $autoscaling.enabled }}
{{- if gt (int $autoscaling.minReplicas) (int $autoscaling.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas (%v) must not exceed autoscaling.maxReplicas (%v)" $autoscaling.minReplicas $autoscaling.maxReplicas) }}
{{- end }}
{{- if gt (int $autoscaling.maxReplicas) $partitions }}
{{- fail (printf "autoscaling.maxReplicas (%v) must not exceed kafka.stateTopicPartitions (%v): a replica owns whole state-topic partitions, so one beyond their count would idle" $autoscaling.maxReplicas $partitions) }}
{{- end }}
{{- if not (and .Values.resources .Values.resources.requests .Values.resources.requests.cpu) }}
{{- fail "autoscaling.enabled needs resources.requests.cpu: the autoscaler's CPU target is a percentage of it" }}
{{- end }}
{{- else if gt (int .Values.replicaCount) $partitions }}
{{- fail (printf "replicaCount (%v) must not exceed kafka.stateTopicPartitions (%v): a replica owns whole state-topic partitions, so one beyond their count would idle" .Values.replicaCount $partitions) }}
{{- end }}
{{- $sasl := .Values.kafka.sasl }}
{{- if include "change-relay.sasl" . }}
{{- if not $sasl.mechanism }}
{{- fail (printf "kafka.sasl.mechanism is required with kafka.securityProtocol=%s" .Values.kafka.securityProtocol) }}
{{- end }}
{{- if not $sasl.username }}
{{- fail (printf "kafka.sasl.username is required with kafka.securityProtocol=%s" .Values.kafka.securityProtocol) }}
{{- end }}
{{- if not (or $sasl.password $sasl.existingSecret) }}
{{- fail (printf "kafka.sasl.password or kafka.sasl.existingSecret is required with kafka.securityProtocol=%s" .Values.kafka.securityProtocol) }}
{{- end }}
{{- else if or $sasl.mechanism $sasl.username $sasl.password $sasl.existingSecret }}
{{- fail (printf "kafka.sasl.* is set, but kafka.securityProtocol=%s does not use SASL (SASL_PLAINTEXT or SASL_SSL)" .Values.kafka.securityProtocol) }}
{{- end }}
{{- $tls := .Values.kafka.tls }}
{{- if and (not (include "change-relay.tls" .)) $tls.existingSecret }}
{{- fail (printf "kafka.tls.existingSecret is set, but kafka.securityProtocol=%s does not use TLS (SSL or SASL_SSL)" .Values.kafka.securityProtocol) }}
{{- end }}
{{- if and $tls.existingSecret (not (or $tls.caKey $tls.certKey $tls.keyKey $tls.keyPasswordKey)) }}
{{- fail "kafka.tls.existingSecret is set, but none of kafka.tls.caKey, certKey, keyKey, keyPasswordKey names a key of it" }}
{{- end }}
{{- if and $tls.existingSecret (or $tls.keyKey $tls.keyPasswordKey) (not $tls.certKey) }}
{{- fail "kafka.tls.keyKey and kafka.tls.keyPasswordKey need kafka.tls.certKey (the client certificate)" }}
{{- end }}
{{- $webhooks := .Values.webhooks }}
{{- if $webhooks.enabled }}
{{- if not (or $webhooks.secret.value $webhooks.secret.existingSecret) }}
{{- fail "webhooks.enabled needs webhooks.secret.existingSecret or webhooks.secret.value: without a secret the relay serves no webhook endpoint" }}
{{- end }}
{{- else }}
{{- if or $webhooks.secret.value $webhooks.secret.existingSecret }}
{{- fail "webhooks.secret.* is set, but webhooks.enabled is false" }}
{{- end }}
{{- if $webhooks.ingress.enabled }}
{{- fail "webhooks.ingress.enabled needs webhooks.enabled: the relay serves no webhook endpoint without it" }}
{{- end }}
{{- end }}
{{- if and .Values.admin.enabled (not .Values.admin.existingSecret) }}
{{- fail "admin.enabled needs admin.existingSecret (a Secret holding the admin API's bearer token): without a token the relay serves no admin API" }}
{{- end }}
{{- if and .Values.admin.existingSecret (not .Values.admin.enabled) }}
{{- fail "admin.existingSecret is set, but admin.enabled is false" }}
{{- end }}
{{- end }}
