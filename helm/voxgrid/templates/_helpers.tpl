{{/* Names, labels and the per-service pieces every template shares. */}}

{{- define "voxgrid.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "voxgrid.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Every service the chart knows, backends first. */}}
{{- define "voxgrid.services" -}}stt llm tts duplex orchestrator{{- end -}}
{{- define "voxgrid.backends" -}}stt llm tts duplex{{- end -}}

{{- define "voxgrid.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ include "voxgrid.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: voxgrid
{{- end -}}

{{/* Selector labels of one service; call with (dict "root" $ "svc" "stt"). */}}
{{- define "voxgrid.selectorLabels" -}}
app.kubernetes.io/name: {{ include "voxgrid.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .svc }}
{{- end -}}

{{- define "voxgrid.componentLabels" -}}
{{ include "voxgrid.labels" .root }}
app.kubernetes.io/component: {{ .svc }}
{{- end -}}

{{/* Name of a service's Deployment and of the headless Service the orchestrator discovers. */}}
{{- define "voxgrid.componentName" -}}
{{- printf "%s-%s" (include "voxgrid.fullname" .root) .svc -}}
{{- end -}}

{{- define "voxgrid.headlessName" -}}
{{- if eq .svc "orchestrator" -}}
{{- printf "%s-orchestrator-headless" (include "voxgrid.fullname" .root) -}}
{{- else -}}
{{- include "voxgrid.componentName" . -}}
{{- end -}}
{{- end -}}

{{/* "true" when this service runs on a GPU: the vLLM engine, a cuda device, or device auto with GPUs given. */}}
{{- define "voxgrid.usesGpu" -}}
{{- $cfg := index .root.Values .svc -}}
{{- $settings := $cfg.settings | default dict -}}
{{- $device := toString ($settings.device | default "") -}}
{{- if and (eq .svc "llm") (eq (toString $settings.engine) "vllm") -}}true
{{- else if hasPrefix "cuda" $device -}}true
{{- else if and (eq $device "auto") (ge (int ($cfg.gpu | default 0)) 1) -}}true
{{- end -}}
{{- end -}}

{{/* Why usesGpu said so, for error messages. */}}
{{- define "voxgrid.gpuReason" -}}
{{- $settings := (index .root.Values .svc).settings | default dict -}}
{{- if and (eq .svc "llm") (eq (toString $settings.engine) "vllm") -}}engine vllm{{- else -}}device {{ $settings.device }}{{- end -}}
{{- end -}}

{{- define "voxgrid.image" -}}
{{- $cfg := index .root.Values .svc -}}
{{- $img := .root.Values.image -}}
{{- $repo := $cfg.image.repository | default (printf "%s/%s%s" $img.registry $img.repositoryPrefix .svc) -}}
{{- $tag := $cfg.image.tag | default $img.tag | default .root.Chart.AppVersion -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{/* The model a service loads (stt, llm, duplex); TTS voices ship in its image or come as paths. */}}
{{- define "voxgrid.modelRef" -}}
{{- if has .svc (list "stt" "llm" "duplex") -}}
{{- ((index .root.Values .svc).settings | default dict).model | default "" -}}
{{- end -}}
{{- end -}}

{{/* Seconds the pod gets after deletion: preStop sleep + drain grace + margin, or the explicit value. */}}
{{- define "voxgrid.terminationGrace" -}}
{{- $cfg := index .root.Values .svc -}}
{{- $needed := add (int $cfg.preStopSleepSeconds) (int $cfg.drainGraceSeconds) 15 -}}
{{- if kindIs "invalid" $cfg.terminationGracePeriodSeconds -}}
{{- $needed -}}
{{- else if lt (int $cfg.terminationGracePeriodSeconds) (int (add $cfg.preStopSleepSeconds $cfg.drainGraceSeconds)) -}}
{{- fail (printf "%s.terminationGracePeriodSeconds=%d is shorter than preStopSleepSeconds + drainGraceSeconds (%d): live calls would be killed mid-drain. Raise it or leave it empty to use %d." .svc (int $cfg.terminationGracePeriodSeconds) (int (add $cfg.preStopSleepSeconds $cfg.drainGraceSeconds)) (int $needed)) -}}
{{- else -}}
{{- int $cfg.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* A values scalar as an env string: integral floats without exponent, lists comma-joined. */}}
{{- define "voxgrid.envValue" -}}
{{- $v := . -}}
{{- if kindIs "bool" $v -}}{{ ternary "true" "false" $v }}
{{- else if and (kindIs "float64" $v) (eq $v (floor $v)) -}}{{ int64 $v }}
{{- else if kindIs "slice" $v -}}{{ join "," $v }}
{{- else -}}{{ toString $v }}
{{- end -}}
{{- end -}}

{{/* Discovery string the orchestrator uses for one backend kind, or "" when there is none. */}}
{{- define "voxgrid.discovery" -}}
{{- $orch := .root.Values.orchestrator -}}
{{- $external := index ($orch.externalBackends | default dict) .svc | default "" -}}
{{- $cfg := index .root.Values .svc -}}
{{- if $external -}}
{{- $external -}}
{{- else if $cfg.enabled -}}
{{- $name := include "voxgrid.headlessName" . -}}
{{- if eq $orch.discovery "k8s" -}}
{{- printf "k8s:%s/%s:50051" .root.Release.Namespace $name -}}
{{- else -}}
{{- printf "dns:%s.%s.svc.%s:50051" $name .root.Release.Namespace .root.Values.clusterDomain -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Whether the orchestrator needs the EndpointSlice Role (some in-chart backend is watched). */}}
{{- define "voxgrid.needsRbac" -}}
{{- $root := . -}}
{{- if and .Values.orchestrator.enabled (eq .Values.orchestrator.discovery "k8s") -}}
{{- range $svc := splitList " " (include "voxgrid.backends" .) -}}
{{- if hasPrefix "k8s:" (include "voxgrid.discovery" (dict "root" $root "svc" $svc)) -}}true{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "voxgrid.authSecretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "voxgrid.fullname" .)) -}}
{{- end -}}

{{- define "voxgrid.modelClaimName" -}}
{{- .Values.modelCache.existingClaim | default (printf "%s-models" (include "voxgrid.fullname" .)) -}}
{{- end -}}

{{/* Per-pod capacity the autoscalers aim at: maxSessions x targetUtilization, at least 1. */}}
{{- define "voxgrid.targetSessions" -}}
{{- $cfg := index .root.Values .svc -}}
{{- max 1 (int (floor (mulf (float64 $cfg.maxSessions) (float64 $cfg.autoscaling.targetUtilization)))) -}}
{{- end -}}

{{/* Where the gateway finds orchestrators: gateway.orchestratorBackends, else this release's
orchestrator headless Service by DNS (every ready pod's A record; no API access needed). */}}
{{- define "voxgrid.gatewayBackends" -}}
{{- if .Values.gateway.orchestratorBackends -}}
{{- .Values.gateway.orchestratorBackends -}}
{{- else -}}
{{- $name := include "voxgrid.headlessName" (dict "root" . "svc" "orchestrator") -}}
{{- printf "dns:%s.%s.svc.%s:50051" $name .Release.Namespace .Values.clusterDomain -}}
{{- end -}}
{{- end -}}

{{/* The port of a discovery string (the last one of a static: list). */}}
{{- define "voxgrid.discoveryPort" -}}
{{- regexFind "[0-9]+$" . -}}
{{- end -}}
