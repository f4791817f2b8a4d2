{{/* Names --------------------------------------------------------------- */}}

{{- define "spindle.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's base name; every object is named "<fullname>[-suffix]". */}}
{{- define "spindle.fullname" -}}
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

{{- define "spindle.routerName" -}}{{ include "spindle.fullname" . }}-router{{- end -}}
{{- define "spindle.redisName" -}}{{ include "spindle.fullname" . }}-redis{{- end -}}

{{/*
A pool's StatefulSet and headless Service name. StatefulSet names must stay
within 52 characters (the controller-revision-hash label appends 11), and
truncating could make two pools collide, so a long name is an error.
Call with (dict "root" $ "pool" $pool).
*/}}
{{- define "spindle.poolName" -}}
{{- $name := printf "%s-worker-%s" (include "spindle.fullname" .root) .pool.name -}}
{{- if gt (len $name) 52 -}}
{{- fail (printf "worker pool name %q is too long: %q must be at most 52 characters (shorten the pool name or fullnameOverride)" .pool.name $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{- define "spindle.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "spindle.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels -------------------------------------------------------------- */}}

{{- define "spindle.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spindle.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "spindle.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "spindle.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: spindle
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Pod template labels: selector labels plus stable ones. No chart version:
a chart upgrade that changes nothing in a pod must not restart workers
(and reload their models) just to relabel them.
*/}}
{{- define "spindle.podLabels" -}}
{{ include "spindle.selectorLabels" . }}
app.kubernetes.io/part-of: spindle
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: router, worker or redis. Call with (dict "root" $ "component" "router"). */}}
{{- define "spindle.componentSelectorLabels" -}}
{{ include "spindle.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Selector labels of one worker pool. Call with (dict "root" $ "pool" $pool). */}}
{{- define "spindle.poolSelectorLabels" -}}
{{ include "spindle.componentSelectorLabels" (dict "root" .root "component" "worker") }}
spindle/pool: {{ .pool.name }}
{{- end -}}

{{/* Images -------------------------------------------------------------- */}}

{{/* The spindle image. Call with (dict "root" $ "image" $override "gpu" bool); a GPU pool gets the CUDA build (tag + cudaSuffix) unless its own tag is set. */}}
{{- define "spindle.image" -}}
{{- $img := .root.Values.image -}}
{{- $override := .image | default dict -}}
{{- $repo := $override.repository | default $img.repository -}}
{{- $tag := "" -}}
{{- if $override.tag -}}
{{- $tag = $override.tag -}}
{{- else -}}
{{- $tag = $img.tag | default .root.Chart.AppVersion -}}
{{- if .gpu -}}{{- $tag = printf "%s%s" $tag $img.cudaSuffix -}}{{- end -}}
{{- end -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{/* Worker pools ------------------------------------------------------- */}}

{{/*
Deep-merge .src into .dst in place. Unlike sprig's merge/mergeOverwrite it
keeps explicit false, 0 and "" from .src (mergo treats those as "unset"), so
a pool can turn off what workers.poolDefaults turns on, or ask for 0 replicas.
Lists are replaced, not appended.
*/}}
{{- define "spindle.deepMerge" -}}
{{- range $k, $v := .src -}}
{{- $cur := get $.dst $k -}}
{{- if and (kindIs "map" $v) (kindIs "map" $cur) -}}
{{- include "spindle.deepMerge" (dict "dst" $cur "src" $v) -}}
{{- else -}}
{{- $_ := set $.dst $k (deepCopy $v) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Every pool with workers.poolDefaults filled in, as YAML: {pools: [...]}. */}}
{{- define "spindle.pools" -}}
{{- $pools := list -}}
{{- $seen := dict -}}
{{- range $i, $p := .Values.workers.pools -}}
{{- if not $p.name -}}
{{- fail (printf "workers.pools[%d] has no name" $i) -}}
{{- end -}}
{{- if hasKey $seen $p.name -}}
{{- fail (printf "workers.pools: two pools are named %q" $p.name) -}}
{{- end -}}
{{- $_ := set $seen $p.name true -}}
{{- $merged := deepCopy $.Values.workers.poolDefaults -}}
{{- include "spindle.deepMerge" (dict "dst" $merged "src" $p) -}}
{{- $pools = append $pools $merged -}}
{{- end -}}
{{- if not $pools -}}
{{- fail "workers.pools is empty: the router needs at least one worker pool" -}}
{{- end -}}
{{- toYaml (dict "pools" $pools) -}}
{{- end -}}

{{/*
llama.cpp threads for a pool: `threads` when set, else a whole-CPU limit
(or request) such as 4 or "4000m". Without either the worker uses every
core of the node, which a CPU limit would then throttle hard.
*/}}
{{- define "spindle.poolThreads" -}}
{{- if .threads -}}
{{- .threads -}}
{{- else -}}
{{- $res := .resources | default dict -}}
{{- $cpu := dig "limits" "cpu" (dig "requests" "cpu" "" $res) $res | toString -}}
{{- if regexMatch "^[1-9][0-9]*$" $cpu -}}
{{- $cpu -}}
{{- else if regexMatch "^[1-9][0-9]*000m$" $cpu -}}
{{- trimSuffix "000m" $cpu -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Redis --------------------------------------------------------------- */}}

{{/* The Secret and key holding the Redis password (empty name: no password). */}}
{{- define "spindle.redisPasswordSecret" -}}
{{- if .Values.redis.auth.enabled -}}
{{- .Values.redis.auth.existingSecret | default (printf "%s-redis" (include "spindle.fullname" .)) -}}
{{- end -}}
{{- end -}}

{{- define "spindle.redisPasswordKey" -}}
{{- if .Values.redis.auth.existingSecret -}}
{{- .Values.redis.auth.existingSecretKey -}}
{{- else -}}
redis-password
{{- end -}}
{{- end -}}

{{/* host:port of the bundled Redis Service (FQDN: no search-path lookups). */}}
{{- define "spindle.redisBundledAddr" -}}
{{- printf "%s.%s.svc.%s:%d" (include "spindle.redisName" .) .Release.Namespace .Values.clusterDomain (int .Values.redis.bundled.port) -}}
{{- end -}}

{{/*
SPINDLE_REDIS_URL for the router, with "$(REDIS_PASSWORD)" where the password
goes: Kubernetes expands it from the REDIS_PASSWORD env var (a secretKeyRef
defined just before), so the password is in neither args nor the manifest.
The password must be URL-safe (the generated one is alphanumeric); for
anything else put the whole URL in a Secret (redis.external.urlSecret).
A cluster is several comma-separated seed URLs.
*/}}
{{- define "spindle.redisUrl" -}}
{{- $auth := ternary ":$(REDIS_PASSWORD)@" "" .Values.redis.auth.enabled -}}
{{- if eq .Values.redis.mode "bundled" -}}
{{- printf "redis://%s%s" $auth (include "spindle.redisBundledAddr" .) -}}
{{- else -}}
{{- $ext := .Values.redis.external -}}
{{- if $ext.clusterSeeds -}}
{{- $scheme := ternary "rediss" "redis" $ext.tls -}}
{{- $urls := list -}}
{{- range $ext.clusterSeeds -}}
{{- $urls = append $urls (printf "%s://%s%s" $scheme $auth .) -}}
{{- end -}}
{{- join "," $urls -}}
{{- else if $ext.url -}}
{{- if not (regexMatch "^rediss?://" $ext.url) -}}
{{- fail (printf "redis.external.url %q must start with redis:// or rediss://" $ext.url) -}}
{{- end -}}
{{- if and .Values.redis.auth.enabled (contains "@" $ext.url) -}}
{{- fail "redis.external.url carries credentials: put the password in redis.auth (or the whole URL in redis.external.urlSecret), not in the URL" -}}
{{- end -}}
{{- regexReplaceAll "^(rediss?://)" $ext.url (printf "${1}%s" $auth) -}}
{{- else -}}
{{- fail "redis.mode=external needs redis.external.url, redis.external.clusterSeeds or redis.external.urlSecret.name" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Auth ---------------------------------------------------------------- */}}

{{- define "spindle.apiKeysSecret" -}}
{{- .Values.auth.existingSecret | default (printf "%s-api-keys" (include "spindle.fullname" .)) -}}
{{- end -}}

{{- define "spindle.apiKeysKey" -}}
{{- if .Values.auth.existingSecret -}}{{ .Values.auth.existingSecretKey }}{{- else -}}api-keys{{- end -}}
{{- end -}}

{{/* Pods ---------------------------------------------------------------- */}}

{{/* Soft/hard anti-affinity spreading one component's pods over nodes. Call with (dict "preset" "soft" "labels" <selector labels YAML>). */}}
{{- define "spindle.antiAffinity" -}}
{{- if eq .preset "soft" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels: {{- .labels | nindent 12 }}
{{- else if eq .preset "hard" -}}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels: {{- .labels | nindent 10 }}
{{- end -}}
{{- end -}}

{{/* prometheus.io/* pod annotations, for Prometheus setups without the operator. */}}
{{- define "spindle.scrapeAnnotations" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end -}}
