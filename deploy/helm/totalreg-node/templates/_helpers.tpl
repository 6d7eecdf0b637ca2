{{/* Chart name, truncated to 63 characters (a DNS label). */}}
{{- define "totalreg.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: <release>-<chart> unless the release name already contains the chart name. */}}
{{- define "totalreg.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "totalreg.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "totalreg.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels; the caller adds app.kubernetes.io/component. */}}
{{- define "totalreg.selectorLabels" -}}
app.kubernetes.io/name: {{ include "totalreg.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "totalreg.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "totalreg.databaseSecret" -}}
{{- default (printf "%s-db" (include "totalreg.fullname" .)) .Values.database.existingSecret -}}
{{- end -}}

{{- define "totalreg.claimName" -}}
{{- default (printf "%s-data" (include "totalreg.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/* Environment shared by receiver and workers: writable caches on the read-only root file system. */}}
{{- define "totalreg.env" -}}
- name: PYTHONUNBUFFERED
  value: "1"
- name: HOME
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/.cache
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
{{- end -}}

{{/* Volumes shared by receiver and workers. */}}
{{- define "totalreg.volumes" -}}
- name: config
  configMap:
    name: {{ include "totalreg.fullname" . }}-config
- name: data
  persistentVolumeClaim:
    claimName: {{ include "totalreg.claimName" . }}
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "totalreg.volumeMounts" -}}
- name: config
  mountPath: /etc/totalreg
  readOnly: true
- name: data
  mountPath: /var/lib/totalreg
- name: tmp
  mountPath: /tmp
{{- end -}}
