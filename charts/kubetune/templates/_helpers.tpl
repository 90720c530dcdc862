{{- define "kubetune.fullname" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubetune.labels" -}}
app.kubernetes.io/name: kubetune
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: kubetune
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Rules on the namespaces the operator serves. Write rights are on kubetune.dev resources, on the
children it creates (RayJob, the trainer's ServiceAccount, Role and RoleBinding, the job's
NetworkPolicy) and on events; none on ConfigMaps or Secrets. The FineTuneJobReport verbs are
those it grants the trainer (RBAC forbids granting what one does not hold).
*/}}
{{- define "kubetune.namespacedRules" -}}
- apiGroups: ["kubetune.dev"]
  resources: ["finetunejobs"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["kubetune.dev"]
  resources: ["finetunejobs/status"]
  verbs: ["get", "patch", "update"]
# Clusters that enforce OwnerReferencesPermissionEnforcement need it for blockOwnerDeletion.
- apiGroups: ["kubetune.dev"]
  resources: ["finetunejobs/finalizers"]
  verbs: ["update"]
- apiGroups: ["kubetune.dev"]
  resources: ["finetunejobreports"]
  verbs: ["get", "list", "watch", "create", "update", "patch"]
- apiGroups: ["ray.io"]
  resources: ["rayjobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "create"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create"]
# Read-only, to say why a job's pods do not start (failure classification).
- apiGroups: [""]
  resources: ["pods", "events"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# A queued job (runPolicy.queueName) is suspended and resumed through its Kueue Workload's
# spec.active: Kueue owns the RayJob's spec.suspend once it admitted it.
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["list", "patch"]
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end -}}

{{/* Cluster-scoped and read-only apart from kopf's cluster peering object. */}}
{{- define "kubetune.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end -}}
