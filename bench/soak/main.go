// The soak's Go side (bench/soak.sh drives it): `relay`, a TCP relay between the proxy
// and the fake API server that can freeze its connections; `load`, the mixed load
// through the proxy with its watch accounting and the proxy's memory over time; and
// `report`, which joins what load saw with the fault log soak.sh kept and writes
// bench/soak.md. Standard library only, so it builds offline.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: soak relay|load|report [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "relay":
		err = relay(os.Args[2:])
	case "load":
		err = load(os.Args[2:])
	case "report":
		err = report(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}
