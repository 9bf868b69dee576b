// Command etcd is the etcd server for the test bed, built from the go.etcd.io/etcd/server/v3
// release that the pinned k8s.io/kubernetes requires, so it needs no release binary download.
// It takes etcd's usual flags (--data-dir, --listen-client-urls, ...).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
