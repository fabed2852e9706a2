{{/*
Names, labels and the pieces every Ray pod shares. The security settings here are the twin
of platform/rayfleet/k8s/pods.py (what `rayfleet render` writes); tests/k8s compares them.
*/}}

{{- define "rayfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rayfleet.fullname" -}}
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

{{- define "rayfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rayfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rayfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "rayfleet.labels" -}}
helm.sh/chart: {{ include "rayfleet.chart" . }}
{{ include "rayfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rayfleet
{{- end }}

{{/*
Cluster names. KubeRay wants DNS-1035 names (a letter first), at most 53 characters for a
RayCluster and 47 for a RayService; at 50 or fewer, the token Secret KubeRay generates is
named exactly like the cluster.
*/}}
{{- define "rayfleet.clusterName" -}}
{{- $name := include "rayfleet.fullname" . | trunc 50 | trimSuffix "-" }}
{{- if not (regexMatch "^[a-z]" $name) }}
{{- fail (printf "cluster name %q must start with a lowercase letter (KubeRay needs DNS-1035 names); set fullnameOverride" $name) }}
{{- end }}
{{- $name }}
{{- end }}

{{- define "rayfleet.serveName" -}}
{{- printf "%s-serve" (include "rayfleet.clusterName" . | trunc 41 | trimSuffix "-") }}
{{- end }}

{{- define "rayfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rayfleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the Ray token of a cluster: (dict "root" $ "cluster" NAME). */}}
{{- define "rayfleet.authSecretName" -}}
{{- default .cluster .root.Values.auth.existingSecret }}
{{- end }}

{{/* (dict "root" $ "gpu" BOOL) */}}
{{- define "rayfleet.image" -}}
{{- $v := .root.Values.image }}
{{- if .gpu }}
{{- printf "%s:%s" $v.repository (default (printf "%s-py311-gpu" .root.Chart.AppVersion) $v.gpuTag) }}
{{- else }}
{{- printf "%s:%s" $v.repository (default (printf "%s-py311" .root.Chart.AppVersion) $v.tag) }}
{{- end }}
{{- end }}

{{- define "rayfleet.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Restricted Pod Security Standard, on every container (KubeRay copies the Ray
container's to the init container it injects). */}}
{{- define "rayfleet.containerSecurityContext" -}}
allowPrivilegeEscalation: false
capabilities:
  drop:
    - ALL
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
readOnlyRootFilesystem: true
{{- end }}

{{/*
Where containers with a read-only root filesystem write (pods.py TMP and HOME): /tmp, and a
HOME below /home/ray, where the rayproject/ray image keeps its Python (an emptyDir on
/home/ray itself would hide it). Ray's own temp dir (/tmp/ray) is the ray-tmp volume.
*/}}
{{- define "rayfleet.home" -}}
/home/ray/work
{{- end }}

{{- define "rayfleet.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: {{ include "rayfleet.home" . }}
{{- end }}

{{- define "rayfleet.scratchVolumes" -}}
- name: tmp
  emptyDir: {}
- name: home
  emptyDir: {}
{{- end }}

{{/*
The Kubernetes API credential of the autoscaler sidecar alone: the standard kube-api-access
layout (a bound, expiring token, the cluster CA, the namespace), as a volume of the head pod
that only autoscalerOptions.volumeMounts mounts. The pod itself turns automounting off, so
the Ray container, where job drivers and Serve replicas run, has no token.
*/}}
{{- define "rayfleet.apiTokenVolume" -}}
- name: kube-api-access
  projected:
    defaultMode: 0444
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: 3607
      - configMap:
          name: kube-root-ca.crt
          items:
            - key: ca.crt
              path: ca.crt
      - downwardAPI:
          items:
            - path: namespace
              fieldRef:
                apiVersion: v1
                fieldPath: metadata.namespace
{{- end }}

{{/* Storage settings as env: the same variables the rayfleet CLI reads locally. */}}
{{- define "rayfleet.storageEnv" -}}
{{- with .Values.storage }}
{{- if .bucket }}
- name: RAYFLEET_STORAGE
  value: {{ printf "s3://%s/%s" .bucket (trimAll "/" .prefix) | trimSuffix "/" | quote }}
{{- end }}
{{- if .region }}
- name: AWS_REGION
  value: {{ .region | quote }}
{{- end }}
{{- if .endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ .endpoint | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A Ray pod template: (dict "root" $ "cluster" NAME "group" VALUES "component" ray-head|ray-worker
"head" BOOL "serve" BOOL "serveToken" SECRET). Storage env on the Ray container, hardened,
logs and /dev/shm on emptyDirs, the Ray token injected by KubeRay from authOptions, the Serve
token (when serveToken names a Secret) as RAYFLEET_SERVE_TOKEN.
*/}}
{{- define "rayfleet.rayPod" -}}
{{- $root := .root }}
{{- $g := .group }}
{{- $gpus := int (default 0 $g.gpus) }}
{{- $labels := merge (dict "rayfleet.io/cluster" .cluster "app.kubernetes.io/component" .component "app.kubernetes.io/part-of" "rayfleet") (include "rayfleet.selectorLabels" $root | fromYaml) (default dict $g.labels) -}}
metadata:
  labels:
    {{- toYaml $labels | nindent 4 }}
  {{- with $g.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "rayfleet.serviceAccountName" $root }}
  {{- /* No Ray container gets an API token; the autoscaler sidecar mounts its own
  (rayfleet.apiTokenVolume). */}}
  automountServiceAccountToken: false
  securityContext:
    {{- include "rayfleet.podSecurityContext" $root | nindent 4 }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  {{- with $g.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ .component }}
      image: {{ include "rayfleet.image" (dict "root" $root "gpu" (gt $gpus 0)) }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      workingDir: {{ include "rayfleet.home" $root }}
      env:
        - name: HOME
          value: {{ include "rayfleet.home" $root }}
        {{- with include "rayfleet.storageEnv" $root }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- range $name, $value := $g.env }}
        - name: {{ $name }}
          value: {{ $value | quote }}
        {{- end }}
        {{- with .serveToken }}
        - name: RAYFLEET_SERVE_TOKEN
          valueFrom:
            secretKeyRef:
              name: {{ . }}
              key: token
        {{- end }}
      {{- with $root.Values.storage.existingSecret }}
      envFrom:
        - secretRef:
            name: {{ . }}
      {{- end }}
      {{- if or .head .serve }}
      ports:
        {{- if .head }}
        - name: gcs-server
          containerPort: 6379
          protocol: TCP
        - name: dashboard
          containerPort: 8265
          protocol: TCP
        - name: client
          containerPort: 10001
          protocol: TCP
        {{- end }}
        {{- if .serve }}
        - name: serve
          containerPort: 8000
          protocol: TCP
        {{- end }}
      {{- end }}
      {{- $resources := deepCopy (default dict $g.resources) }}
      {{- if gt $gpus 0 }}
      {{- $_ := set $resources "limits" (merge (dict "nvidia.com/gpu" (toString $gpus)) (default dict $resources.limits)) }}
      {{- end }}
      resources:
        {{- toYaml $resources | nindent 8 }}
      securityContext:
        {{- include "rayfleet.containerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        - name: ray-tmp
          mountPath: /tmp/ray
        - name: shm
          mountPath: /dev/shm
        {{- include "rayfleet.scratchMounts" $root | nindent 8 }}
  volumes:
    - name: ray-tmp
      emptyDir: {}
    - name: shm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $g.shmSize }}
    {{- include "rayfleet.scratchVolumes" $root | nindent 4 }}
    {{- if and .head $root.Values.autoscaling.enabled }}
    {{- include "rayfleet.apiTokenVolume" $root | nindent 4 }}
    {{- end }}
{{- end }}

{{/*
A RayClusterSpec (RayCluster.spec, RayService.spec.rayClusterConfig):
(dict "root" $ "cluster" NAME "groups" WORKER_GROUPS "serve" BOOL "serveToken" SECRET).
*/}}
{{- define "rayfleet.clusterSpec" -}}
{{- $root := .root }}
{{- $cluster := .cluster }}
{{- $serve := .serve }}
{{- $token := .serveToken -}}
rayVersion: {{ $root.Values.rayVersion | quote }}
enableInTreeAutoscaling: {{ $root.Values.autoscaling.enabled }}
{{- with $root.Values.autoscaling }}
{{- if .enabled }}
autoscalerOptions:
  upscalingMode: {{ .upscalingMode }}
  idleTimeoutSeconds: {{ .idleTimeoutSeconds }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  resources:
    {{- toYaml .resources | nindent 4 }}
  securityContext:
    {{- include "rayfleet.containerSecurityContext" $root | nindent 4 }}
  env:
    - name: HOME
      value: {{ include "rayfleet.home" $root }}
  # KubeRay appends these to the sidecar it injects: the head's /tmp/ray (shared, so the
  # autoscaler's events reach the Ray logs), scratch space, and the only API token in the pod.
  volumeMounts:
    - name: ray-tmp
      mountPath: /tmp/ray
    {{- include "rayfleet.scratchMounts" $root | nindent 4 }}
    - name: kube-api-access
      mountPath: /var/run/secrets/kubernetes.io/serviceaccount
      readOnly: true
{{- end }}
{{- end }}
authOptions:
  {{- if $root.Values.auth.enabled }}
  mode: token
  {{- with $root.Values.auth.existingSecret }}
  secretName: {{ . }}
  {{- end }}
  {{- else }}
  mode: disabled
  {{- end }}
headGroupSpec:
  serviceType: ClusterIP
  rayStartParams:
    {{- range $k, $v := $root.Values.head.rayStartParams }}
    {{ $k }}: {{ $v | quote }}
    {{- else }} {}
    {{- end }}
  template:
    {{- include "rayfleet.rayPod" (dict "root" $root "cluster" $cluster "group" $root.Values.head "component" "ray-head" "head" true "serve" $serve "serveToken" $token) | nindent 4 }}
workerGroupSpecs:
{{- range $name, $g := .groups }}
{{- if $g.enabled }}
{{- if not (and (le (int $g.minReplicas) (int $g.replicas)) (le (int $g.replicas) (int $g.maxReplicas))) }}
{{- fail (printf "workerGroups.%s: needs minReplicas <= replicas <= maxReplicas (got %v, %v, %v)" $name $g.minReplicas $g.replicas $g.maxReplicas) }}
{{- end }}
  - groupName: {{ $name }}
    replicas: {{ $g.replicas }}
    minReplicas: {{ $g.minReplicas }}
    maxReplicas: {{ $g.maxReplicas }}
    rayStartParams:
      {{- range $k, $v := $g.rayStartParams }}
      {{ $k }}: {{ $v | quote }}
      {{- else }} {}
      {{- end }}
    template:
      {{- include "rayfleet.rayPod" (dict "root" $root "cluster" $cluster "group" $g "component" "ray-worker" "head" false "serve" $serve "serveToken" $token) | nindent 6 }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The NetworkPolicy around one cluster: (dict "root" $ "cluster" NAME "serve" BOOL).
*/}}
{{- define "rayfleet.networkPolicy" -}}
{{- $root := .root }}
{{- $np := $root.Values.networkPolicy -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ .cluster }}
  labels:
    {{- include "rayfleet.labels" $root | nindent 4 }}
    app.kubernetes.io/component: network-policy
spec:
  podSelector:
    matchLabels:
      rayfleet.io/cluster: {{ .cluster }}
  policyTypes:
    - Ingress
    {{- if $np.egress.enabled }}
    - Egress
    {{- end }}
  ingress:
    # Ray's own traffic: every port between the cluster's pods (GCS, raylets, object store).
    - from:
        - podSelector:
            matchLabels:
              rayfleet.io/cluster: {{ .cluster }}
    # Clients (helm tests, submitters): GCS, dashboard/Jobs API, Ray client.
    - from:
        - podSelector:
            matchLabels:
              rayfleet.io/client-of: {{ .cluster }}
        {{- range $name, $peer := $np.submitters }}
        {{- toYaml (list $peer) | nindent 8 }}
        {{- end }}
      ports:
        - protocol: TCP
          port: 6379
        - protocol: TCP
          port: 8265
        - protocol: TCP
          port: 10001
    # The KubeRay operator reads job and Serve status from the dashboard, and (serving)
    # checks the head's Serve proxy health to put it behind the serve Service.
    - from:
        - namespaceSelector:
            matchLabels:
              kubernetes.io/metadata.name: {{ $np.operatorNamespace }}
          podSelector:
            matchLabels:
              app.kubernetes.io/name: kuberay-operator
      ports:
        - protocol: TCP
          port: 8265
        {{- if .serve }}
        - protocol: TCP
          port: 8000
        {{- end }}
    {{- if .serve }}
    # Serve: only the peers the values name (and clients).
    - from:
        - podSelector:
            matchLabels:
              rayfleet.io/client-of: {{ .cluster }}
        {{- range $name, $peer := $np.serveFrom }}
        {{- toYaml (list $peer) | nindent 8 }}
        {{- end }}
      ports:
        - protocol: TCP
          port: 8000
    {{- end }}
  {{- if $np.egress.enabled }}
  egress:
    - to:
        - podSelector:
            matchLabels:
              rayfleet.io/cluster: {{ .cluster }}
    # DNS, wherever the cluster's resolver runs (kube-dns, node-local caches).
    - ports:
        - protocol: UDP
          port: 53
        - protocol: TCP
          port: 53
    {{- with $np.egress.ports }}
    - ports:
        {{- range . }}
        - protocol: TCP
          port: {{ . }}
        {{- end }}
      {{- with $np.egress.cidrs }}
      to:
        {{- range . }}
        - ipBlock:
            cidr: {{ . }}
        {{- end }}
      {{- end }}
    {{- end }}
  {{- end }}
{{- end }}

{{/* The head's PodDisruptionBudget: (dict "root" $ "cluster" NAME). */}}
{{- define "rayfleet.headPdb" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .cluster }}-head
  labels:
    {{- include "rayfleet.labels" .root | nindent 4 }}
    app.kubernetes.io/component: ray-head
spec:
  minAvailable: 1
  selector:
    matchLabels:
      rayfleet.io/cluster: {{ .cluster }}
      ray.io/node-type: head
{{- end }}

{{/*
The Serve config of the RayService (serveConfigV2), built as data from typed values and
written with toYaml: one application running rayfleet's ModelDeployment builder, what
`rayfleet.serve.deployment.application_config` produces for the same spec (tests/k8s
compares them). Replica counts sit in the deployment overrides, outside `args`, so scaling
changes them in place without restarting replicas.
*/}}
{{- define "rayfleet.serveConfig" -}}
{{- $s := .Values.serve }}
{{- if ne (len $s.source) 1 }}
{{- fail "serve.source: set exactly one of run (a run name), sweep (a sweep name) or checkpoint (a URI), e.g. --set serve.source.run=digits" }}
{{- end }}
{{- $batching := dict "maxBatchSize" $s.batching.maxBatchSize "batchWaitTimeoutS" $s.batching.batchWaitTimeoutS }}
{{- $spec := dict "source" $s.source "batching" $batching "cpusPerReplica" $s.cpusPerReplica "gpusPerReplica" $s.gpusPerReplica "maxRequestBytes" $s.maxRequestBytes "routePrefix" $s.routePrefix }}
{{- with $s.auth.tokenSecretName }}
{{- $_ := set $spec "auth" (dict "tokenSecretName" .) }}
{{- end }}
{{- $doc := dict "apiVersion" "rayfleet.io/v1alpha1" "kind" "ModelDeployment" "metadata" (dict "name" $s.name) "spec" $spec }}
{{- $actor := dict "num_cpus" $s.cpusPerReplica "num_gpus" $s.gpusPerReplica }}
{{- /* max_ongoing_requests is left to the builder, which derives it from the spec (as
`rayfleet serve` does), so its formula lives in one place. */}}
{{- $deployment := dict "name" "ModelServer" "ray_actor_options" $actor }}
{{- if $s.autoscaling.enabled }}
{{- $a := $s.autoscaling }}
{{- if gt (int $a.minReplicas) (int $a.maxReplicas) }}
{{- fail (printf "serve.autoscaling: minReplicas (%v) is above maxReplicas (%v)" $a.minReplicas $a.maxReplicas) }}
{{- end }}
{{- $_ := set $deployment "autoscaling_config" (dict "min_replicas" $a.minReplicas "max_replicas" $a.maxReplicas "initial_replicas" (max 1 (int $a.minReplicas)) "target_ongoing_requests" $a.targetOngoingRequests) }}
{{- else }}
{{- $_ := set $deployment "num_replicas" $s.replicas }}
{{- end }}
{{- $app := dict "name" $s.name "route_prefix" $s.routePrefix "import_path" "rayfleet.serve.deployment:application" "args" (dict "spec" $doc) "deployments" (list $deployment) }}
{{- toYaml (dict "applications" (list $app)) }}
{{- end }}

{{/*
A `helm test` pod running a Python check with the rayfleet image:
(dict "root" $ "cluster" NAME "test" SHORT_NAME "script" PYTHON "env" ENV_YAML).
Labelled a client of the cluster so the NetworkPolicy admits it; hardened like the Ray pods.
*/}}
{{- define "rayfleet.testPod" -}}
{{- $root := .root -}}
apiVersion: v1
kind: Pod
metadata:
  name: {{ printf "%s-test-%s" .cluster .test }}
  labels:
    {{- include "rayfleet.labels" $root | nindent 4 }}
    app.kubernetes.io/component: test
    rayfleet.io/client-of: {{ .cluster }}
  annotations:
    helm.sh/hook: test
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext:
    {{- include "rayfleet.podSecurityContext" $root | nindent 4 }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  containers:
    - name: {{ .test }}
      image: {{ include "rayfleet.image" (dict "root" $root "gpu" false) }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      command:
        - python
        - -c
        - |
          {{- .script | nindent 10 }}
      env:
        - name: HOME
          value: /tmp
        {{- .env | nindent 8 }}
      resources:
        {{- toYaml $root.Values.tests.resources | nindent 8 }}
      securityContext:
        {{- include "rayfleet.containerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: tmp
      emptyDir: {}
{{- end }}
