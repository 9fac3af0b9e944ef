{{/* Names and labels shared by every template. */}}
{{- define "apflow.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "apflow.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: apflow
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Selector labels of one component: include with (list $ "ingest"). */}}
{{- define "apflow.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: apflow
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "apflow.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "apflow.bootstrapServers" -}}
{{- .Values.kafka.bootstrapServers | default (printf "%s-kafka-bootstrap:9093" .Values.kafka.clusterName) -}}
{{- end -}}

{{- define "apflow.apdbUrl" -}}
{{- .Values.apdb.url | default (printf "scylla://%s-client:9042/%s" .Values.scylla.name .Values.apdb.keyspace) -}}
{{- end -}}

{{- define "apflow.caSecret" -}}
{{- .Values.kafka.security.caSecret.name | default (printf "%s-cluster-ca-cert" .Values.kafka.clusterName) -}}
{{- end -}}

{{/* Pod-level pieces every apflow container shares: config, Kafka secrets. */}}
{{- define "apflow.volumes" -}}
- name: config
  configMap:
    name: {{ include "apflow.fullname" . }}-config
- name: kafka-password
  secret:
    secretName: {{ .Values.kafka.security.passwordSecret.name }}
    items:
      - key: {{ .Values.kafka.security.passwordSecret.key }}
        path: password
- name: kafka-ca
  secret:
    secretName: {{ include "apflow.caSecret" . }}
    items:
      - key: {{ .Values.kafka.security.caSecret.key }}
        path: ca.crt
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "apflow.volumeMounts" -}}
- name: config
  mountPath: /etc/apflow
  readOnly: true
- name: kafka-password
  mountPath: /run/secrets/kafka
  readOnly: true
- name: kafka-ca
  mountPath: /etc/kafka
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "apflow.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 10
  failureThreshold: 6
readinessProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 5
{{- end -}}

{{/* The full alert stream's topic for schema major version $major: (list . $major). */}}
{{- define "apflow.alertTopic" -}}
{{- $root := index . 0 -}}
{{- printf "%s%s" $root.Values.kafka.topicPrefix ($root.Values.alerts.topicTemplate | replace "{major}" (toString (index . 1))) -}}
{{- end -}}

{{/* Where pods go: nodeSelector, tolerations, affinity (pod spec level). */}}
{{- define "apflow.placement" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
