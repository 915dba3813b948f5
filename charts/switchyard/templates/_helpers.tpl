{{/* Names, labels and images shared by every template. */}}

{{- define "switchyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-switchyard, shortened to <release> when the release name already contains the chart name. */}}
{{- define "switchyard.fullname" -}}
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
A Service's name, <fullname>-<suffix>: a DNS label of at most 63 characters, so the fullname is shortened to make
room for the suffix (with a 53-character release name the fullname alone is 63). Names that fit are unchanged.
*/}}
{{- define "switchyard.serviceName" -}}
{{- $suffix := printf "-%s" .suffix }}
{{- printf "%s%s" (include "switchyard.fullname" .root | trunc (int (sub 63 (len $suffix))) | trimSuffix "-") $suffix }}
{{- end }}

{{- define "switchyard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: only the stable subset (name, instance) plus the component; as JSON (strings stay strings). */}}
{{- define "switchyard.selectorLabelsJson" -}}
{{- toJson (dict "app.kubernetes.io/name" (include "switchyard.name" .root) "app.kubernetes.io/instance" .root.Release.Name "app.kubernetes.io/component" .component) }}
{{- end }}

{{- define "switchyard.selectorLabels" -}}
{{- toYaml (include "switchyard.selectorLabelsJson" . | fromJson) }}
{{- end }}

{{/*
Labels are built as maps and printed once, so a key given twice (commonLabels and podLabels, say) is one label, not
a YAML map with a duplicate key. Precedence, first wins: the selector labels, the narrower values (podLabels,
monitoring.additionalLabels, the sidecar label), the chart's own labels, commonLabels.
*/}}
{{- define "switchyard.ownLabelsJson" -}}
{{- toJson (dict
  "helm.sh/chart" (include "switchyard.chart" .)
  "app.kubernetes.io/name" (include "switchyard.name" .)
  "app.kubernetes.io/instance" .Release.Name
  "app.kubernetes.io/version" .Chart.AppVersion
  "app.kubernetes.io/managed-by" .Release.Service
  "app.kubernetes.io/part-of" "switchyard") }}
{{- end }}

{{/* A component's labels: .root, .component, and optionally .extra (pod labels). */}}
{{- define "switchyard.labels" -}}
{{- $sel := include "switchyard.selectorLabelsJson" . | fromJson }}
{{- $own := include "switchyard.ownLabelsJson" .root | fromJson }}
{{- toYaml (merge (dict) $sel (.extra | default dict) $own (.root.Values.commonLabels | default dict)) }}
{{- end }}

{{/* Labels for ServiceMonitor / PodMonitor / PrometheusRule: the `release` label kube-prometheus-stack selects on. */}}
{{- define "switchyard.monitoringLabels" -}}
{{- $own := include "switchyard.ownLabelsJson" . | fromJson }}
{{- $release := dict }}
{{- with .Values.monitoring.prometheusRelease }}{{ $_ := set $release "release" . }}{{ end }}
{{- toYaml (merge (dict) $own (.Values.monitoring.additionalLabels | default dict) $release (.Values.commonLabels | default dict)) }}
{{- end }}

{{- define "switchyard.monitoringNamespace" -}}
{{- default .Release.Namespace .Values.monitoring.namespace }}
{{- end }}

{{/* image: .root, .image (repository/tag/digest); tag defaults to appVersion, digest wins. */}}
{{- define "switchyard.image" -}}
{{- $repo := .image.repository }}
{{- with .root.Values.imageRegistry }}{{ $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}{{ end }}
{{- if .image.digest }}
{{- printf "%s@%s" $repo .image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .root.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/*
A component's ServiceAccount: .root, .component (operator, router). With serviceAccount.create=false the name is
required: falling back to the namespace's `default` ServiceAccount would bind the operator's RBAC (cluster-wide by
default, Secrets with syncHubTokens) to every pod in the namespace that names no ServiceAccount, the operator's worker
pods included, which run a user-chosen image.
*/}}
{{- define "switchyard.serviceAccount" -}}
{{- $sa := (index .root.Values .component).serviceAccount }}
{{- if $sa.create }}
{{- default (printf "%s-%s" (include "switchyard.fullname" .root) .component) $sa.name }}
{{- else if $sa.name }}
{{- $sa.name }}
{{- else }}
{{- $why := ternary "its RBAC would be bound to the ServiceAccount every pod without one of its own runs as, the operator's worker pods included" "that is the ServiceAccount every pod without one of its own runs as" (eq .component "operator") }}
{{- fail (printf "%s.serviceAccount.create is false but %s.serviceAccount.name is empty: name the existing ServiceAccount the %s should run as, or set %s.serviceAccount.create=true. The chart does not fall back to the namespace's \"default\" ServiceAccount: %s." .component .component .component .component $why) }}
{{- end }}
{{- end }}

{{- define "switchyard.operatorServiceAccount" -}}
{{- include "switchyard.serviceAccount" (dict "root" . "component" "operator") }}
{{- end }}

{{- define "switchyard.routerServiceAccount" -}}
{{- include "switchyard.serviceAccount" (dict "root" . "component" "router") }}
{{- end }}

{{/*
Refuses an upgrade that would change a live Deployment's selector: .root, .component (operator, router). The
selector holds app.kubernetes.io/name, so nameOverride feeds it. Kubernetes refuses a new selector on a Deployment,
but only after Helm has applied the Services, PDBs and NetworkPolicies with the new labels: the release ends failed
with a router Service that selects no pod. Only this release's own Deployment (Helm's ownership annotations) is
compared; lookup is empty under `helm template` and a client-side dry run, where nothing is checked.
*/}}
{{- define "switchyard.assertSelectorUnchanged" -}}
{{- $name := printf "%s-%s" (include "switchyard.fullname" .root) .component }}
{{- $live := lookup "apps/v1" "Deployment" .root.Release.Namespace $name }}
{{- $ann := dig "metadata" "annotations" dict $live }}
{{- if and $live (eq (get $ann "meta.helm.sh/release-name") .root.Release.Name) (eq (get $ann "meta.helm.sh/release-namespace") .root.Release.Namespace) }}
{{- $want := include "switchyard.selectorLabelsJson" . }}
{{- $have := toJson (dig "spec" "selector" "matchLabels" dict $live) }}
{{- if ne $have $want }}
{{- fail (printf "Deployment %s/%s selects pods by %s, and this upgrade would change that to %s. Kubernetes cannot change a Deployment's selector, and Helm would fail only after it has pointed the Services at the new labels, leaving the router Service with no endpoints. Keep nameOverride as installed (the live app.kubernetes.io/name is %q), or uninstall and install the release again." .root.Release.Namespace $name $have $want (dig "spec" "selector" "matchLabels" "app.kubernetes.io/name" "" $live)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Pod-level settings every chart pod shares. */}}
{{- define "switchyard.podSecurity" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}


{{- define "switchyard.routerConfigMap" -}}
{{- default (printf "%s-router" (include "switchyard.fullname" .)) .Values.router.configMapName }}
{{- end }}

{{- define "switchyard.routerHfTokens" -}}
{{- default (printf "%s-router-hf-tokens" (include "switchyard.fullname" .)) .Values.router.hfTokensSecret }}
{{- end }}

{{/*
Pod volume name of a checkpoint claim: ckpt-<claimName> where that is a DNS label (at most 63 characters, no dots),
otherwise ckpt-<a hash of the claim name> (PVC names may be 253 characters long and contain dots).
*/}}
{{- define "switchyard.checkpointVolume" -}}
{{- $name := printf "ckpt-%s" . }}
{{- if and (le (len $name) 63) (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $name) }}
{{- $name }}
{{- else }}
{{- printf "ckpt-%s" (sha256sum . | trunc 20) }}
{{- end }}
{{- end }}

{{/* A Prometheus duration (1m30s, 500ms) in milliseconds. */}}
{{- define "switchyard.durationMs" -}}
{{- $units := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 "d" 86400000 "w" 604800000 "y" 31536000000 }}
{{- $total := 0 }}
{{- range regexFindAll "[0-9]+(ms|s|m|h|d|w|y)" . -1 }}
{{- $unit := regexFind "(ms|s|m|h|d|w|y)$" . }}
{{- $total = add $total (mul (int64 (trimSuffix $unit .)) (get $units $unit)) }}
{{- end }}
{{- $total }}
{{- end }}

{{/* scrapeTimeout for the monitors: monitoring.scrapeTimeout, at most monitoring.interval (as Prometheus does with
its default timeout: a timeout above the interval is a config error, and the Prometheus Operator drops the monitor). */}}
{{- define "switchyard.scrapeTimeout" -}}
{{- $m := .Values.monitoring }}
{{- if gt (int64 (include "switchyard.durationMs" $m.scrapeTimeout)) (int64 (include "switchyard.durationMs" $m.interval)) }}
{{- $m.interval }}
{{- else }}
{{- $m.scrapeTimeout }}
{{- end }}
{{- end }}

{{/*
The worker pods' ports. The operator creates the workers with these fixed ports (WORKER_GRPC_PORT, WORKER_DATA_PORT,
WORKER_METRICS_PORT in operator/src/controller/names.ts), so they are not values: a value that differs would only
point the NetworkPolicy and the alerts at a port no worker listens on. test/src/chart keeps them equal.
*/}}
{{- define "switchyard.workerGrpcPort" -}}50061{{- end }}
{{- define "switchyard.workerDataPort" -}}50062{{- end }}
{{- define "switchyard.workerMetricsPort" -}}9401{{- end }}
