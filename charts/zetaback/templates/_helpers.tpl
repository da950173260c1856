{{- define "zetaback.labels" -}}
app.kubernetes.io/name: zetaback
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/*
An image built from the Containerfile's target of that name:
include "zetaback.image" (list . "controller") gives <registry>/zetaback-controller:<tag>.
*/}}
{{- define "zetaback.image" -}}
{{- $root := index . 0 -}}
{{- printf "%s/zetaback-%s:%s" $root.Values.image.registry (index . 1) ($root.Values.image.tag | default $root.Chart.AppVersion) -}}
{{- end -}}

{{/*
The release's name for cluster-scoped objects (ClusterRoles, ClusterRoleBindings), so that two
releases do not collide: the release name, with "-zetaback" unless it already contains
"zetaback" (release "zetaback" gives "zetaback", release "prod" gives "prod-zetaback").
*/}}
{{- define "zetaback.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
The release's CertificateSigningRequest signer (tls.mode csr): zetaback.io/<namespace>.<release>,
the same as zetaback_core's release_signer_name. One per release, so that two releases in one
cluster each sign only their own agents' requests (tls.signerName overrides it).
*/}}
{{- define "zetaback.signerName" -}}
{{- .Values.tls.signerName | default (printf "zetaback.io/%s.%s" .Release.Namespace .Release.Name) -}}
{{- end -}}

{{/*
TLS between zetaback's parts (issue 13), for the agent ("agent") or the controller
("controller"): csr (the controller is the CA, agents ask for their node's certificate through
the CertificateSigningRequest API), hostPath (certificate, key and CA mounted at
/etc/zetaback/tls), or the explicit plaintext mode. Anything else fails the install.
*/}}
{{- define "zetaback.tlsArgs" -}}
{{- $root := index . 0 -}}
{{- $role := index . 1 -}}
{{- $tls := $root.Values.tls -}}
{{- if eq $tls.mode "csr" -}}
{{- if eq $role "agent" -}}
- --tls-from-csr
- --tls-ca-configmap={{ $root.Release.Namespace }}/zetaback-ca
- --tls-cert-lifetime={{ $tls.agentCertLifetimeSeconds | int64 }}
- --tls-signer-name={{ include "zetaback.signerName" $root }}
{{- if gt ($tls.agentRenewBeforeSeconds | int64) 0 }}
- --tls-renew-before={{ $tls.agentRenewBeforeSeconds | int64 }}
{{- end -}}
{{- else -}}
- --tls-ca-secret={{ $tls.caSecretName }}
- --agent-service-account={{ $root.Release.Namespace }}/zetaback-agent
- --tls-max-cert-lifetime={{ $tls.maxCertLifetime }}
- --tls-signer-name={{ include "zetaback.signerName" $root }}
{{- end -}}
{{- else if eq $tls.mode "hostPath" -}}
- --tls-cert=/etc/zetaback/tls/tls.crt
- --tls-key=/etc/zetaback/tls/tls.key
- --tls-ca=/etc/zetaback/tls/ca.crt
{{- else if eq $tls.mode "insecure-plaintext" -}}
- --insecure-plaintext
{{- else -}}
{{- fail (printf "tls.mode must be csr, hostPath or insecure-plaintext, not %q" $tls.mode) -}}
{{- end -}}
{{- end -}}
