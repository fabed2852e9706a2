{{/*
Names, labels and small fragments. Whole objects live in their own template files; the Ray
pod template shared by the head and every worker group is in _raypod.tpl. Pod security
settings follow platform/rayfleet/k8s/pods.py, the canonical definition (what `rayfleet
render` and the operator write); tests/k8s/test_chart.py derives the chart's expected pods
from it.
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
RayCluster and 47 for a RayService (the ModelDeployment's name); at 50 or fewer, the token
Secret KubeRay generates is named exactly like the cluster.
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

{{- define "rayfleet.operatorName" -}}
{{- printf "%s-operator" (include "rayfleet.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/* The ConfigMap of storage settings: envFrom of the chart's Ray pods and the operator's. */}}
{{- define "rayfleet.storageConfigName" -}}
{{- printf "%s-storage" (include "rayfleet.fullname" . | trunc 55 | trimSuffix "-") }}
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

{{- define "rayfleet.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets -}}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
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

{{/* Restricted Pod Security Standard with a read-only root filesystem, on every container
(KubeRay copies the Ray container's to the init container it injects). */}}
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
