// Command etcd is etcd's own server main (server/main.go upstream). go install cannot build etcd because its
// go.mod files carry path replaces, so this wrapper module requires go.etcd.io/etcd/server/v3 at a pinned tag.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
