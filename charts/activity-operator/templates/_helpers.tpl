{{/* The chart's name. */}}
{{- define "activity-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the release name, plus the chart name unless it already contains it. */}}
{{- define "activity-operator.fullname" -}}
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

{{- define "activity-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "activity-operator.labels" -}}
helm.sh/chart: {{ include "activity-operator.chart" . }}
{{ include "activity-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: activity-operator
{{- end }}

{{/* Labels that select the operator's pods. */}}
{{- define "activity-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "activity-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The operator's service account. */}}
{{- define "activity-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "activity-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The leader election Lease (in the release namespace). */}}
{{- define "activity-operator.leaseName" -}}
{{- include "activity-operator.fullname" . }}
{{- end }}

{{/* The operator image: repository@digest, else repository:tag (tag defaults to appVersion). */}}
{{- define "activity-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The operator's rules on Activities, worker pods and events: in a ClusterRole when it watches every
namespace, in a Role per namespace of watchNamespaces otherwise. Exactly what operator/src/runtime/api.rs
calls; nothing else (no secrets, no configmaps, no wildcards).
*/}}
{{- define "activity-operator.rules" -}}
# Activities: list and watch feed the controller's cache; get re-reads an Activity right before
# its finalizer is removed (to patch the current list); patch adds and removes the finalizer
# heartbeat.dev/cancellation; delete removes a finished Activity once ttlSecondsAfterFinished has
# passed. The operator never creates Activities or replaces them (no create, no update).
- apiGroups: ["heartbeat.dev"]
  resources: ["activities"]
  verbs: ["get", "list", "watch", "patch", "delete"]
# Activity status: the operator's part of it (phase, attempt, deadlines, lastFailure, attempts,
# conditions) is written by server-side apply, which is a PATCH of the status subresource.
- apiGroups: ["heartbeat.dev"]
  resources: ["activities/status"]
  verbs: ["patch"]
# Worker pods carry an owner reference to their Activity with blockOwnerDeletion: true (so a
# foreground delete waits for them). Clusters that enable the OwnerReferencesPermissionEnforcement
# admission plugin (OpenShift, some hardened clusters) only allow that to whoever may update the
# owner's finalizers subresource. This grants nothing else: finalizers are patched on the main
# resource (above).
- apiGroups: ["heartbeat.dev"]
  resources: ["activities/finalizers"]
  verbs: ["update"]
# Worker pods: list and watch (label-selected, heartbeat.dev/activity) feed the controller's cache
# of each attempt's pod; get reads the current attempt's pod when the cache does not show it yet
# (before the attempt is judged on its absence); create starts an attempt's pod; patch stops the
# pod of an attempt that ended (activeDeadlineSeconds and the heartbeat.dev/stopped-at annotation:
# its containers stop, its logs stay) and removes its tracking finalizer
# (heartbeat.dev/attempt-tracking) once the status records the attempt; delete removes the pods
# of a canceled or deleted activity.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Events on Activities (AttemptStarted, RetryScheduled, HeartbeatTimedOut, …): create records a
# new event; patch bumps the series count of a repeated one (operator/src/runtime/events.rs).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
