{{/*
The Ray pod template of the RayCluster's head and of each worker group:
(dict "root" $ "cluster" NAME "group" VALUES "component" ray-head|ray-worker "head" BOOL).
Storage settings from the storage ConfigMap (and storage.existingSecret) as env, hardened,
read-only root filesystem with emptyDirs where Ray writes, the Ray token injected by KubeRay
from authOptions. No Ray container gets a Kubernetes API token: with the autoscaler on, the
head carries one projected token volume that only the sidecar mounts
(autoscalerOptions.volumeMounts in raycluster.yaml).
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
  automountServiceAccountToken: false
  securityContext:
    {{- include "rayfleet.podSecurityContext" $root | nindent 4 }}
  {{- with include "rayfleet.imagePullSecrets" $root }}
  {{- . | nindent 2 }}
  {{- end }}
  {{- $spot := dict }}
  {{- if $g.preemptible }}
  {{- $spot = include "rayfleet.preemptibleScheduling" $root | fromYaml }}
  {{- end }}
  {{- with merge (deepCopy (default dict $g.nodeSelector)) (default dict $spot.nodeSelector) }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with concat (default list $g.tolerations) (default list $spot.tolerations) }}
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
        {{- if $g.preemptible }}
        # Ray 2.60 turns it into the node label ray.io/market-type (a custom label may not
        # use ray.io/): run usage prices these workers at the price table's spot rates.
        - name: RAY_NODE_MARKET_TYPE
          value: spot
        {{- end }}
        {{- range $name, $value := $g.env }}
        - name: {{ $name }}
          value: {{ $value | quote }}
        {{- end }}
      envFrom:
        - configMapRef:
            name: {{ include "rayfleet.storageConfigName" $root }}
        {{- with $root.Values.storage.existingSecret }}
        - secretRef:
            name: {{ . }}
        {{- end }}
      {{- if .head }}
      ports:
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
    {{- /* The standard kube-api-access layout (a bound, expiring token, the cluster CA, the
    namespace): the autoscaler sidecar's credential, mounted by it alone. */}}
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
{{- end }}


{{/*
The node selector and toleration of spot/preemptible nodes on `preemptible.cloud`, added to a
worker group with `preemptible: true` (the group's own nodeSelector wins on the same key).
Labels and taints are each cloud's documented defaults: EKS managed node groups and Karpenter
label spot nodes without a taint; GKE Spot and AKS spot pools are labelled and tainted.
*/}}
{{- define "rayfleet.preemptibleScheduling" -}}
{{- $cloud := .Values.preemptible.cloud -}}
{{- if eq $cloud "aws" }}
nodeSelector:
  eks.amazonaws.com/capacityType: SPOT
{{- else if eq $cloud "karpenter" }}
nodeSelector:
  karpenter.sh/capacity-type: spot
{{- else if eq $cloud "gcp" }}
nodeSelector:
  cloud.google.com/gke-spot: "true"
tolerations:
  - key: cloud.google.com/gke-spot
    operator: Equal
    value: "true"
    effect: NoSchedule
{{- else if eq $cloud "azure" }}
nodeSelector:
  kubernetes.azure.com/scalesetpriority: spot
tolerations:
  - key: kubernetes.azure.com/scalesetpriority
    operator: Equal
    value: spot
    effect: NoSchedule
{{- end }}
{{- end }}
