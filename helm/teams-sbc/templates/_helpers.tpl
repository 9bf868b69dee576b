{{/* Names and labels shared by the templates. */}}

{{- define "teams-sbc.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name, reused for the operator's objects. */}}
{{- define "teams-sbc.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "teams-sbc.operatorName" -}}
{{- printf "%s-operator" (include "teams-sbc.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "teams-sbc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "teams-sbc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: teams-sbc
{{- end }}

{{- define "teams-sbc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "teams-sbc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "teams-sbc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "teams-sbc.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}
