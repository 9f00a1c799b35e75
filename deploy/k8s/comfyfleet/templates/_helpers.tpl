{{/* Names, labels and the pieces every pod shares. */}}

{{- define "comfyfleet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Name of one part: (dict "root" $ "part" "gateway") */}}
{{- define "comfyfleet.name" -}}
{{- printf "%s-%s" (include "comfyfleet.fullname" .root) .part | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "comfyfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .part }}
{{- end -}}

{{- define "comfyfleet.labels" -}}
{{ include "comfyfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "comfyfleet.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end -}}

{{/* Pod-level security: non-root, RuntimeDefault seccomp, no service account token. */}}
{{- define "comfyfleet.podSecurity" -}}
automountServiceAccountToken: false
securityContext:
  runAsNonRoot: true
  runAsUser: {{ .Values.securityContext.runAsUser }}
  runAsGroup: {{ .Values.securityContext.runAsGroup }}
  fsGroup: {{ .Values.securityContext.fsGroup }}
  seccompProfile:
    type: RuntimeDefault
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Container-level security: read-only root filesystem, every capability dropped. */}}
{{- define "comfyfleet.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  capabilities:
    drop: ["ALL"]
{{- end -}}

{{/* Scheduling knobs of a part: (dict "nodeSelector" ... "tolerations" ...) */}}
{{- define "comfyfleet.placement" -}}
{{- with .nodeSelector }}
nodeSelector:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "comfyfleet.schedulerAddress" -}}
{{ include "comfyfleet.name" (dict "root" . "part" "scheduler") }}:{{ .Values.scheduler.port }}
{{- end -}}

{{- define "comfyfleet.storageAddress" -}}
{{ include "comfyfleet.name" (dict "root" . "part" "storage") }}:{{ .Values.storage.port }}
{{- end -}}

{{/* A NetworkPolicy ingress peer: the pods of one part of this release. */}}
{{- define "comfyfleet.peer" -}}
- podSelector:
    matchLabels:
      {{- include "comfyfleet.selectorLabels" . | nindent 6 }}
{{- end -}}

{{/* A NetworkPolicy ingress peer: Prometheus' namespace. */}}
{{- define "comfyfleet.prometheusPeer" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .Values.metrics.serviceMonitor.prometheusNamespace }}
{{- end -}}

{{/* HorizontalPodAutoscaler of a Deployment: (dict "root" $ "part" "gateway" "hpa" .Values.gateway.autoscaling) */}}
{{- define "comfyfleet.hpa" -}}
{{- if .hpa.enabled }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "comfyfleet.name" . }}
  labels:
    {{- include "comfyfleet.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "comfyfleet.name" . }}
  minReplicas: {{ .hpa.minReplicas }}
  maxReplicas: {{ .hpa.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ .hpa.targetCPUUtilizationPercentage }}
{{- end }}
{{- end -}}

{{/* PodDisruptionBudget: (dict "root" $ "part" "gateway" "pdb" .Values.gateway.pdb) */}}
{{- define "comfyfleet.pdb" -}}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "comfyfleet.name" . }}
  labels:
    {{- include "comfyfleet.labels" . | nindent 4 }}
spec:
  {{- toYaml .pdb | nindent 2 }}
  selector:
    matchLabels:
      {{- include "comfyfleet.selectorLabels" . | nindent 6 }}
{{- end -}}


{{/* The suite's service token (services/common/service_auth.py): Secret serviceTokenSecret,
     key "token", mounted read-only as a file. Storage refuses every call without it; the
     gateway, the scheduler and the runners show it to storage. */}}
{{- define "comfyfleet.serviceTokenEnv" -}}
- { name: COMFYFLEET_SERVICE_TOKEN_FILE, value: /var/run/comfyfleet/service-token/token }
{{- end -}}
{{- define "comfyfleet.serviceTokenMount" -}}
- { name: service-token, mountPath: /var/run/comfyfleet/service-token, readOnly: true }
{{- end -}}
{{- define "comfyfleet.serviceTokenVolume" -}}
- name: service-token
  secret: { secretName: {{ .Values.serviceTokenSecret }}, defaultMode: 288 }  # 0440: group fsGroup reads it
{{- end -}}
