{{- define "zetaback.labels" -}}
app.kubernetes.io/name: zetaback
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "zetaback.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/*
The release's name for cluster-scoped objects (ClusterRoles, ClusterRoleBindings), so that two
releases do not collide: the release name, with "-zetaback" unless it already contains
"zetaback" (release "zetaback" gives "zetaback", release "prod" gives "prod-zetaback").
*/}}
{{- define "zetaback.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
