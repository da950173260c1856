// Command coredns is CoreDNS with only the plugins the local cluster's DNS uses (kubernetes,
// forward, cache, errors, health, ready, loop, reload, log, loadbalance): the cluster DNS of
// e2e/scripts/cluster.sh, built from CoreDNS's Go module.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func init() {
	// The server type's directive order, restricted to the plugins linked in above.
	dnsserver.Directives = []string{"reload", "health", "ready", "errors", "log", "loadbalance", "cache", "loop", "kubernetes", "forward"}
}

func main() { coremain.Run() }
