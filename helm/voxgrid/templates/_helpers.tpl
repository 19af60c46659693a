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
{{- $name := $cfg.image.name | default .svc -}}
{{- $repo := $cfg.image.repository | default (printf "%s/%s%s" $img.registry $img.repositoryPrefix $name) -}}
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

{{/* Whether a model reference is a hub id (org/name) the download init container fetches. */}}
{{- define "voxgrid.isHubId" -}}
{{- $ref := toString . -}}
{{- if and $ref (not (hasPrefix "/" $ref)) (not (hasPrefix "." $ref)) (eq (len (splitList "/" $ref)) 2) -}}true{{- end -}}
{{- end -}}

{{/* Directory a prefetched hub model lands in (the server loads it from there), or "" when the service
downloads nothing: /models/hub/<org>/<name>/<revision or main>. */}}
{{- define "voxgrid.modelDir" -}}
{{- $ref := include "voxgrid.modelRef" . -}}
{{- if and .root.Values.modelCache.prefetch (include "voxgrid.isHubId" $ref) -}}
{{- $download := (index .root.Values .svc).download | default dict -}}
{{- printf "/models/hub/%s/%s" $ref ($download.revision | default "main") -}}
{{- end -}}
{{- end -}}

{{/* The GPU extended resource of a service: <svc>.gpuResource, else gpu.resourceName. */}}
{{- define "voxgrid.gpuResource" -}}
{{- (index .root.Values .svc).gpuResource | default .root.Values.gpu.resourceName -}}
{{- end -}}

{{/* The pod's affinity: <svc>.affinity plus, for GPU pods, the node labels of gpu.nodeSelection.preset,
ANDed into every required node selector term the operator gave. */}}
{{- define "voxgrid.affinity" -}}
{{- $cfg := index .root.Values .svc -}}
{{- $affinity := deepCopy ($cfg.affinity | default dict) -}}
{{- $exprs := list -}}
{{- if include "voxgrid.usesGpu" . -}}
{{- $sel := .root.Values.gpu.nodeSelection -}}
{{- if eq $sel.preset "gfd" -}}
{{- $exprs = append $exprs (dict "key" "nvidia.com/gpu.present" "operator" "In" "values" (list "true")) -}}
{{- with $sel.gfdProducts -}}
{{- $exprs = append $exprs (dict "key" "nvidia.com/gpu.product" "operator" "In" "values" .) -}}
{{- end -}}
{{- else if eq $sel.preset "gke" -}}
{{- if $sel.gkeAccelerators -}}
{{- $exprs = append $exprs (dict "key" "cloud.google.com/gke-accelerator" "operator" "In" "values" $sel.gkeAccelerators) -}}
{{- else -}}
{{- $exprs = append $exprs (dict "key" "cloud.google.com/gke-accelerator" "operator" "Exists") -}}
{{- end -}}
{{- else if ne $sel.preset "none" -}}
{{- fail (printf "gpu.nodeSelection.preset %q is unknown: use gfd (GPU feature discovery labels), gke (cloud.google.com/gke-accelerator) or none." $sel.preset) -}}
{{- end -}}
{{- end -}}
{{- if $exprs -}}
{{- $node := $affinity.nodeAffinity | default dict -}}
{{- $required := $node.requiredDuringSchedulingIgnoredDuringExecution | default dict -}}
{{- $terms := list -}}
{{- range ($required.nodeSelectorTerms | default (list (dict))) -}}
{{- $terms = append $terms (set (deepCopy .) "matchExpressions" (concat (.matchExpressions | default list) $exprs)) -}}
{{- end -}}
{{- $_ := set $required "nodeSelectorTerms" $terms -}}
{{- $_ := set $node "requiredDuringSchedulingIgnoredDuringExecution" $required -}}
{{- $_ := set $affinity "nodeAffinity" $node -}}
{{- end -}}
{{- with $affinity }}{{ toYaml . }}{{ end -}}
{{- end -}}

{{/* Scheduling fields of a pod spec: priority, runtime class, node selector, tolerations (GPU pods also
get gpu.tolerations), affinity, topology spread. */}}
{{- define "voxgrid.podScheduling" -}}
{{- $cfg := index .root.Values .svc -}}
{{- $gpu := include "voxgrid.usesGpu" . -}}
{{- $tolerations := concat ($cfg.tolerations | default list) (ternary .root.Values.gpu.tolerations list (eq $gpu "true")) -}}
{{- $runtimeClass := $cfg.runtimeClassName | default (ternary .root.Values.gpu.runtimeClassName "" (eq $gpu "true")) -}}
{{- with $cfg.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $runtimeClass }}
runtimeClassName: {{ . }}
{{- end }}
{{- with $cfg.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with include "voxgrid.affinity" . }}
affinity:
  {{- . | nindent 2 }}
{{- end }}
{{- with $cfg.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Pod template metadata: component labels + podLabels; podAnnotations + the given extra annotations. */}}
{{- define "voxgrid.podMetadata" -}}
{{- $cfg := index .root.Values .svc -}}
labels:
  {{- /* The chart's labels win: the selector must keep matching. */}}
  {{- merge (include "voxgrid.componentLabels" . | fromYaml) ($cfg.podLabels | default dict) | toYaml | nindent 2 }}
{{- $annotations := merge (deepCopy ($cfg.podAnnotations | default dict)) (.annotations | default dict) }}
{{- with $annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* One probe (kind: startup | readiness | liveness) of a service: the chart's, with <svc>.probes.<kind>
merged over it. gRPC services: health v1 on 50051, or on the plaintext health port 50052 when TLS is on
(the kubelet's gRPC probe cannot speak TLS); liveness on the `voxgrid.liveness` name. The gateway: HTTP /healthz and /readyz. */}}
{{- define "voxgrid.probe" -}}
{{- $cfg := index .root.Values .svc -}}
{{- $tls := .root.Values.tls.enabled -}}
{{- $probe := dict -}}
{{- if eq .svc "gateway" -}}
{{- $path := ternary "/readyz" "/healthz" (eq .kind "readiness") -}}
{{- $_ := set $probe "httpGet" (dict "path" $path "port" "http" "scheme" (ternary "HTTPS" "HTTP" $tls)) -}}
{{- else -}}
{{- $grpc := dict "port" (ternary 50052 50051 $tls) -}}
{{- /* Liveness asks only "does the process answer" (voxgrid.liveness): loading, draining or a missing backend
must never get a pod restarted. The orchestrator's startup likewise: its readiness waits for backends that
may take many minutes to load. Backends' startup waits for their own model (""). */ -}}
{{- if or (eq .kind "liveness") (and (eq .kind "startup") (eq .svc "orchestrator")) -}}
{{- $_ := set $grpc "service" "voxgrid.liveness" -}}
{{- end -}}
{{- $_ := set $probe "grpc" $grpc -}}
{{- end -}}
{{- if eq .kind "startup" -}}
{{- $probe = merge $probe (dict "periodSeconds" 10 "timeoutSeconds" 5 "failureThreshold" (max 1 (div (add (int $cfg.startupTimeoutSeconds) 9) 10))) -}}
{{- else if eq .kind "readiness" -}}
{{- $probe = merge $probe (dict "periodSeconds" 5 "timeoutSeconds" 3 "failureThreshold" 2) -}}
{{- else -}}
{{- $probe = merge $probe (dict "periodSeconds" 10 "timeoutSeconds" 5 "failureThreshold" 6) -}}
{{- end -}}
{{- $override := deepCopy (index ($cfg.probes | default dict) .kind | default dict) -}}
{{- range $handler := list "grpc" "httpGet" "exec" "tcpSocket" -}}
{{- if hasKey $override $handler -}}
{{- range $chart := list "grpc" "httpGet" "exec" "tcpSocket" }}{{ $_ := unset $probe $chart }}{{ end -}}
{{- end -}}
{{- end -}}
{{- toYaml (mergeOverwrite $probe $override) -}}
{{- end -}}

{{/* Seconds a new pod may take to become ready: the startup probe's whole budget. */}}
{{- define "voxgrid.startupBudget" -}}
{{- $p := include "voxgrid.probe" (dict "root" .root "svc" .svc "kind" "startup") | fromYaml -}}
{{- add (int ($p.initialDelaySeconds | default 0)) (mul (int ($p.periodSeconds | default 10)) (int ($p.failureThreshold | default 3))) -}}
{{- end -}}

{{/* Deployment spec fields of a rollout: the update strategy and a progress deadline that outlasts one
new pod's image pull, model download and load (startup budget + 10 minutes). */}}
{{- define "voxgrid.rollout" -}}
{{- $r := (index .root.Values .svc).rollout -}}
progressDeadlineSeconds: {{ add (include "voxgrid.startupBudget" .) 600 }}
strategy:
  type: RollingUpdate
  rollingUpdate:
    maxSurge: {{ $r.maxSurge }}
    maxUnavailable: {{ $r.maxUnavailable }}
{{- end -}}

{{/* Fewest pods a service runs (autoscaling floor or replicas). */}}
{{- define "voxgrid.minReplicas" -}}
{{- $cfg := index .root.Values .svc -}}
{{- $a := $cfg.autoscaling | default dict -}}
{{- ternary $a.minReplicas $cfg.replicas (eq (toString $a.enabled) "true") | int -}}
{{- end -}}

{{/* Most pods of a service that can run at once (autoscaling ceiling or replicas, plus a rollout's surge). */}}
{{- define "voxgrid.maxPods" -}}
{{- $cfg := index .root.Values .svc -}}
{{- $a := $cfg.autoscaling | default dict -}}
{{- add (ternary $a.maxReplicas $cfg.replicas (eq (toString $a.enabled) "true") | int) (int $cfg.rollout.maxSurge) -}}
{{- end -}}

{{/* How the chart-owned auth Secret is filled: "values" (every token given in values: rendered as is),
"generated" (a hook Job creates it in the cluster), or "" (auth off or an existing Secret). */}}
{{- define "voxgrid.authSource" -}}
{{- $auth := .Values.auth -}}
{{- if and $auth.enabled (not $auth.existingSecret) -}}
{{- if $auth.tokens -}}values{{- else -}}generated{{- end -}}
{{- end -}}
{{- end -}}

{{/* Hugging Face settings every model-loading container shares: cache home, token, offline switch. */}}
{{- define "voxgrid.hubEnv" -}}
{{- $cache := .Values.modelCache -}}
- {name: HF_HOME, value: /models/huggingface}
{{- with $cache.hfTokenSecret }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: {{ $cache.hfTokenSecretKey | default "HF_TOKEN" }}}
{{- end }}
{{- if $cache.offline }}
- {name: HF_HUB_OFFLINE, value: "1"}
{{- end }}
{{- end -}}

{{/* The data folder a service reads at start besides its model: LoRA adapters (llm.adapters) or custom
voices (tts.voices); "" when the service has none or it is off. */}}
{{- define "voxgrid.dataVolume" -}}
{{- $cfg := index .root.Values .svc -}}
{{- if eq .svc "llm" }}{{ with $cfg.adapters }}{{ if ne .type "none" }}adapters{{ end }}{{ end }}{{ end -}}
{{- if eq .svc "tts" }}{{ with $cfg.voices }}{{ if ne .type "none" }}voices{{ end }}{{ end }}{{ end -}}
{{- end -}}

{{- define "voxgrid.dataClaimName" -}}
{{- $data := index (index .root.Values .svc) .name -}}
{{- $data.existingClaim | default (printf "%s-%s-%s" (include "voxgrid.fullname" .root) .svc .name) -}}
{{- end -}}

{{/* The orchestrator's profiles ConfigMap is rendered (orchestrator.profiles is not empty). */}}
{{- define "voxgrid.hasProfiles" -}}
{{- if and .Values.orchestrator.enabled .Values.orchestrator.profiles }}true{{ end -}}
{{- end -}}

{{- /* The port of a stun:/turn:/turns: URL (host[:port][?transport=...]); defaults 3478, turns: 5349. */ -}}
{{- define "voxgrid.iceServerPort" -}}
{{- $rest := regexReplaceAll "\\?.*$" (regexReplaceAll "^[a-z]+:" . "") "" -}}
{{- $port := regexFind ":[0-9]+$" $rest | trimPrefix ":" -}}
{{- $port | default (ternary "5349" "3478" (hasPrefix "turns:" .)) -}}
{{- end -}}
