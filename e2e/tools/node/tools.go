//go:build tools

// Package tools pins the upstream Kubernetes node commands of the local multi-node cluster
// (e2e/scripts/cluster.sh): the same Kubernetes module and version as the control plane's
// (e2e/tools/k8s), kept in its own module so that build-tools.sh's cache key stays unchanged.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
