{{/* Names: <release> when it contains the chart name, else <release>-keygate. */}}
{{- define "keygate.fullname" -}}
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

{{/* Selector labels of one component: (dict "ctx" $ "component" "edge"). */}}
{{- define "keygate.selectorLabels" -}}
app.kubernetes.io/name: {{ default .ctx.Chart.Name .ctx.Values.nameOverride }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{- define "keygate.labels" -}}
{{ include "keygate.selectorLabels" . }}
app.kubernetes.io/part-of: keygate
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "keygate.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end -}}

{{- define "keygate.rootTokenSecret" -}}
{{- default (printf "%s-root-token" (include "keygate.fullname" .)) .Values.rootToken.existingSecret -}}
{{- end -}}

{{/* Client URLs of etcd, comma-separated: the bundled members or the external ones. */}}
{{- define "keygate.etcdEndpoints" -}}
{{- if .Values.etcd.bundled -}}
{{- $fn := include "keygate.fullname" . -}}
{{- $scheme := ternary "https" "http" .Values.etcd.tls.enabled -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $urls = append $urls (printf "%s://%s-etcd-%d.%s-etcd:2379" $scheme $fn $i $fn) -}}
{{- end -}}
{{- join "," $urls -}}
{{- else -}}
{{- if not .Values.etcd.external.endpoints -}}
{{- fail "etcd.bundled is false: list the client URLs of your etcd in etcd.external.endpoints" -}}
{{- end -}}
{{- join "," .Values.etcd.external.endpoints -}}
{{- end -}}
{{- end -}}

{{- define "keygate.etcdInitialCluster" -}}
{{- $fn := include "keygate.fullname" . -}}
{{- $scheme := ternary "https" "http" .Values.etcd.tls.enabled -}}
{{- $members := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $members = append $members (printf "%s-etcd-%d=%s://%s-etcd-%d.%s-etcd:2380" $fn $i $scheme $fn $i $fn) -}}
{{- end -}}
{{- join "," $members -}}
{{- end -}}

{{/* What every keygate pod shares: identity, security, scheduling. */}}
{{- define "keygate.podSpecCommon" -}}
serviceAccountName: {{ include "keygate.fullname" . }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  fsGroup: 65532
  fsGroupChangePolicy: OnRootMismatch
  seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "keygate.containerSecurityContext" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities: {drop: [ALL]}
{{- end -}}

{{/* Pod annotations: a config change rolls the pods, as kustomize's hash suffix does. */}}
{{- define "keygate.podAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The environment every role but etcd gets: the config and the root token. */}}
{{- define "keygate.roleEnv" -}}
envFrom:
  - configMapRef: {name: {{ include "keygate.fullname" .ctx }}-config}
  {{- if eq .component "edge" }}
  - secretRef: {name: {{ .ctx.Values.providerCredentials.existingSecret }}, optional: true}
  {{- end }}
env:
  - name: OTEL_SERVICE_NAME
    value: {{ include "keygate.fullname" .ctx }}-{{ .component }}
  # keygate collects garbage at 400% (--gc-percent); the container's memory
  # limit as Go's soft limit makes it collect harder before the kernel kills.
  - name: KEYGATE_MEMORY_LIMIT_MIB
    valueFrom:
      resourceFieldRef: {resource: limits.memory, divisor: 1Mi}
  - name: GOMEMLIMIT
    value: $(KEYGATE_MEMORY_LIMIT_MIB)MiB
  - name: KEYGATE_ROOT_TOKEN
    valueFrom:
      secretKeyRef: {name: {{ include "keygate.rootTokenSecret" .ctx }}, key: token}
  - name: KEYGATE_PREVIOUS_ROOT_TOKENS
    valueFrom:
      secretKeyRef: {name: {{ include "keygate.rootTokenSecret" .ctx }}, key: previous, optional: true}
{{- end -}}

{{/* Probes of a gRPC role: native gRPC, or /healthz on the metrics port under TLS. */}}
{{- define "keygate.grpcProbes" -}}
{{- $check := "grpc: {port: 9090}" -}}
{{- if .Values.tls.enabled -}}
{{- $check = "httpGet: {path: /healthz, port: metrics}" -}}
{{- end -}}
startupProbe:
  {{ $check }}
  periodSeconds: 2
  failureThreshold: 30
readinessProbe:
  {{ $check }}
  periodSeconds: 5
  failureThreshold: 2
livenessProbe:
  {{ $check }}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
{{- end -}}

{{- define "keygate.httpProbes" -}}
startupProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 2
  failureThreshold: 30
readinessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 5
  failureThreshold: 2
livenessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
{{- end -}}

{{/* Roles that dial etcd (the gateway does not). */}}
{{- define "keygate.dialsEtcd" -}}
{{- if has .component (list "keystore" "limiter" "usage" "edge") }}true{{ end -}}
{{- end -}}

{{/* TLS mounts of a role: keygate's gRPC TLS and etcd's client certificate. */}}
{{- define "keygate.tlsMounts" -}}
{{- if .ctx.Values.tls.enabled }}
- {name: tls, mountPath: /etc/keygate/tls, readOnly: true}
{{- end }}
{{- if and .ctx.Values.etcd.tls.enabled (include "keygate.dialsEtcd" .) }}
- {name: etcd-client-tls, mountPath: /etc/keygate/etcd-client, readOnly: true}
{{- end }}
{{- end -}}

{{- define "keygate.tlsVolumes" -}}
{{- if .ctx.Values.tls.enabled }}
- name: tls
  secret: {secretName: {{ .ctx.Values.tls.secretName }}, defaultMode: 0440}
{{- end }}
{{- if and .ctx.Values.etcd.tls.enabled (include "keygate.dialsEtcd" .) }}
- name: etcd-client-tls
  secret: {secretName: {{ .ctx.Values.etcd.tls.clientSecretName }}, defaultMode: 0440}
{{- end }}
{{- end -}}

{{/* Spread a role's replicas over zones (and nodes when "hostname" is set). */}}
{{- define "keygate.spread" -}}
topologySpreadConstraints:
  {{- if .hostname }}
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "keygate.selectorLabels" . | nindent 8 }}
  {{- end }}
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "keygate.selectorLabels" . | nindent 8 }}
{{- end -}}

{{/* A role's PodDisruptionBudget: one pod at a time. */}}
{{- define "keygate.pdb" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "keygate.fullname" .ctx }}-{{ .component }}
  labels:
    {{- include "keygate.labels" . | nindent 4 }}
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      {{- include "keygate.selectorLabels" . | nindent 6 }}
{{- end -}}

{{/* Headless Service of a gRPC role: clients resolve every replica and balance
     calls themselves; a ClusterIP would pin each HTTP/2 connection to one pod. */}}
{{- define "keygate.grpcService" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "keygate.fullname" .ctx }}-{{ .component }}
  labels:
    {{- include "keygate.labels" . | nindent 4 }}
spec:
  clusterIP: None
  selector:
    {{- include "keygate.selectorLabels" . | nindent 4 }}
  ports:
    - {name: grpc, port: 9090, targetPort: grpc, appProtocol: grpc}
    - {name: metrics, port: 9464, targetPort: metrics, appProtocol: http}
{{- end -}}

{{/* matchExpressions selecting some roles of one release: (dict "name" … "instance" … "roles" (list …)). */}}
{{- define "keygate.roles" -}}
matchExpressions:
  - {key: app.kubernetes.io/name, operator: In, values: [{{ .name }}]}
  - {key: app.kubernetes.io/instance, operator: In, values: [{{ .instance }}]}
  - {key: app.kubernetes.io/component, operator: In, values: [{{ join ", " .roles }}]}
{{- end -}}
