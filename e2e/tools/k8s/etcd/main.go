// Command etcd is upstream etcd's server main, built from go.etcd.io/etcd/server/v3
// so the test control plane runs the etcd version Kubernetes pins.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
