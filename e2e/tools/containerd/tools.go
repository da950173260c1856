//go:build tools

// Package tools pins containerd (the CRI runtime of the local cluster's nodes, built with
// CGO_ENABLED=0: kubelet v1.37 wants containerd 2.x, Debian bookworm ships 1.6).
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
