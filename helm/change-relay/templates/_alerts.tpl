{{/*
The relay's alert rules, as the `groups:` of a Prometheus rule file. The PrometheusRule renders them, and
deploy/prometheus/alerts.yml is generated from them (deploy/tools/generate-alerts.py; a test checks it is current),
so a plain Prometheus and the Prometheus Operator get the same alerts with the same expressions.
Only metrics the relay exposes (relay/metrics.py) and Prometheus' own `up` are used.
*/}}
{{- define "change-relay.ruleGroups" -}}
{{- $rule := .Values.prometheusRule }}
{{- $alerts := $rule.alerts }}
{{- $sel := include "change-relay.alertSelector" . }}
{{- $runbook := $rule.runbookUrl }}
groups:
  - name: change-relay
    rules:
      {{- with $alerts.down }}
      {{- if .enabled }}
      - alert: ChangeRelayDown
        expr: up{ {{- $sel -}} } == 0 or absent(up{ {{- $sel -}} })
        for: {{ .for }}
        labels:
          severity: {{ .severity }}
          {{- with $rule.additionalLabels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: change-relay is down
          description: >-
            Prometheus cannot scrape the relay {{ "{{ $labels.instance }}" }} (or no relay target exists at all):
            no changes are being published.
          {{- with $runbook }}
          runbook_url: {{ printf "%s#ChangeRelayDown" . }}
          {{- end }}
      {{- end }}
      {{- end }}
      {{- with $alerts.notReady }}
      {{- if .enabled }}
      - alert: ChangeRelayNotReady
        expr: relay_ready{ {{- $sel -}} } == 0
        for: {{ .for }}
        labels:
          severity: {{ .severity }}
          {{- with $rule.additionalLabels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: change-relay is not ready
          description: >-
            The relay {{ "{{ $labels.instance }}" }} has not been ready for {{ .for }}: its state is not restored,
            Kafka is unreachable, or it was fenced. See its /readyz and logs.
          {{- with $runbook }}
          runbook_url: {{ printf "%s#ChangeRelayNotReady" . }}
          {{- end }}
      {{- end }}
      {{- end }}
      {{- with $alerts.pollsFailing }}
      {{- if .enabled }}
      - alert: ChangeRelayPollsFailing
        expr: |-
          sum by (namespace, job, resource) (rate(relay_polls_total{ {{- $sel -}} ,outcome!~"success|cursor_rejected"}[15m]))
          /
          sum by (namespace, job, resource) (rate(relay_polls_total{ {{- $sel -}} }[15m]))
          > {{ .ratio }}
        for: {{ .for }}
        labels:
          severity: {{ .severity }}
          {{- with $rule.additionalLabels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: change-relay polls of {{ "{{ $labels.resource }}" }} are failing
          description: >-
            {{ "{{ $value | humanizePercentage }}" }} of the polls of {{ "{{ $labels.resource }}" }} failed over the
            last 15 minutes (see relay_polls_total by outcome, and relay_source_requests_total by code).
          {{- with $runbook }}
          runbook_url: {{ printf "%s#ChangeRelayPollsFailing" . }}
          {{- end }}
      {{- end }}
      {{- end }}
      {{- with $alerts.watermarkLag }}
      {{- if .enabled }}
      - alert: ChangeRelayWatermarkLagHigh
        expr: |-
          (time() - relay_watermark_timestamp_seconds{ {{- $sel -}} } > {{ .thresholdSeconds }})
          and relay_watermark_timestamp_seconds{ {{- $sel -}} } > 0
        for: {{ .for }}
        labels:
          severity: {{ .severity }}
          {{- with $rule.additionalLabels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: change-relay lags behind on {{ "{{ $labels.resource }}" }}
          description: >-
            The committed watermark of {{ "{{ $labels.resource }}" }} is {{ "{{ $value | humanizeDuration }}" }}
            old: changes reach Kafka late, or not at all.
          {{- with $runbook }}
          runbook_url: {{ printf "%s#ChangeRelayWatermarkLagHigh" . }}
          {{- end }}
      {{- end }}
      {{- end }}
      {{- with $alerts.integrationUnhealthy }}
      {{- if .enabled }}
      - alert: ChangeRelayIntegrationUnhealthy
        expr: relay_integrations{ {{- $sel -}} ,health="unhealthy"} > 0
        for: {{ .for }}
        labels:
          severity: {{ .severity }}
          {{- with $rule.additionalLabels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: change-relay has unhealthy integrations
          description: >-
            {{ "{{ $value }}" }} integration(s) of {{ "{{ $labels.instance }}" }} cannot be polled (the others go on).
            The relay's /status names them and their last error.
          {{- with $runbook }}
          runbook_url: {{ printf "%s#ChangeRelayIntegrationUnhealthy" . }}
          {{- end }}
      {{- end }}
      {{- end }}
      {{- with $alerts.pairStuck }}
      {{- if .enabled }}
      - alert: ChangeRelayPairStuck
        expr: |-
          sum by (namespace, job, resource, outcome) (increase(relay_polls_total{ {{- $sel -}} ,outcome=~"internal_error|invalid_page|record_too_large"}[{{ .window }}]))
          > 0
        for: {{ .for }}
        labels:
          severity: {{ .severity }}
          {{- with $rule.additionalLabels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: change-relay polls of {{ "{{ $labels.resource }}" }} keep failing with {{ "{{ $labels.outcome }}" }}
          description: >-
            Polls of {{ "{{ $labels.resource }}" }} have ended as {{ "{{ $labels.outcome }}" }} within every
            {{ .window }} for {{ .for }}: a pair backs off again and again instead of catching up (internal_error is a
            bug of the relay, invalid_page a source sending bad pages or a looping cursor, record_too_large a record
            Kafka refuses). The relay's /status names the pair and its last error; its logs have the traceback.
          {{- with $runbook }}
          runbook_url: {{ printf "%s#ChangeRelayPairStuck" . }}
          {{- end }}
      {{- end }}
      {{- end }}
      {{- with $alerts.fenced }}
      {{- if .enabled }}
      - alert: ChangeRelayFenced
        expr: max_over_time(relay_fenced{ {{- $sel -}} }[15m]) > 0
        labels:
          severity: {{ .severity }}
          {{- with $rule.additionalLabels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: change-relay was fenced by another instance
          description: >-
            Another relay with the same Kafka transactional id took over from {{ "{{ $labels.instance }}" }}, which
            stopped: it runs a release from before the fleet, when one instance owned everything. Once, during the
            upgrade to the fleet, this is the new replicas fencing the old instance; otherwise two relays are
            configured alike: find the other one (or set RELAY_TRANSACTIONAL_ID apart). Replicas of a fleet never
            report this: a state partition that moves to another replica is no fault.
          {{- with $runbook }}
          runbook_url: {{ printf "%s#ChangeRelayFenced" . }}
          {{- end }}
      {{- end }}
      {{- end }}
      {{- with $alerts.partitionUnowned }}
      {{- if .enabled }}
      - alert: ChangeRelayPartitionUnowned
        expr: |-
          sum by (namespace, job) (relay_owned_partitions{ {{- $sel -}} })
          <
          max by (namespace, job) (relay_state_partitions{ {{- $sel -}} })
        for: {{ .for }}
        labels:
          severity: {{ .severity }}
          {{- with $rule.additionalLabels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: state partitions of {{ "{{ $labels.job }}" }} are owned by no replica
          description: >-
            The replicas of {{ "{{ $labels.job }}" }} own {{ "{{ $value }}" }} state-topic partitions between them,
            fewer than relay_state_partitions: the integrations of the others are polled by nobody. A replica that
            is gone loses its partitions after RELAY_GROUP_SESSION_TIMEOUT_SECONDS (10 s by default) and another
            claims them once it has read their state (a handover), so {{ .for }}, several session
            timeouts, is longer than a normal handover. See each replica's /status (fleet) and the group's
            rebalances.
          {{- with $runbook }}
          runbook_url: {{ printf "%s#ChangeRelayPartitionUnowned" . }}
          {{- end }}
      {{- end }}
      {{- end }}
      {{- with $alerts.rebalanceStorm }}
      {{- if .enabled }}
      - alert: ChangeRelayRebalanceStorm
        expr: |-
          max by (namespace, job) (increase(relay_rebalances_total{ {{- $sel -}} }[{{ .window }}]))
          > {{ .threshold }}
        for: {{ .for }}
        labels:
          severity: {{ .severity }}
          {{- with $rule.additionalLabels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: the replicas of {{ "{{ $labels.job }}" }} keep rebalancing
          description: >-
            The consumer group of {{ "{{ $labels.job }}" }} rebalanced more than {{ .threshold }} times within
            {{ .window }}, for {{ .for }} (the count of the replica that took part in the most: every member counts
            each rebalance). Each one stops the polls of the partitions that change hands: look for replicas
            restarting or losing their session (RELAY_GROUP_SESSION_TIMEOUT_SECONDS), in their logs and /status.
          {{- with $runbook }}
          runbook_url: {{ printf "%s#ChangeRelayRebalanceStorm" . }}
          {{- end }}
      {{- end }}
      {{- end }}
{{- end }}
