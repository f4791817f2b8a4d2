{{- define "spindle.fullname" -}}{{ .Release.Name }}-spindle{{- end -}}
{{- define "spindle.labels" -}}
app.kubernetes.io/name: spindle
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
