// Command dunlinctl shows what Dunlin made of a cluster, in Kubernetes terms and in OVN's: reachability
// of NB and SB, nodes and their chassis, the NB and SB rows of a pod, node or Service, an ovn-trace of a
// packet between pods, Services and addresses, and the removal of every NB row Dunlin owns. It reads
// the kubeconfig as kubectl does, and the NB/SB addresses from the dunlin-config ConfigMap unless given.
// Nothing is written but by `dunlinctl uninstall --yes`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

const usage = `dunlinctl shows and debugs Dunlin's view of the cluster.

Usage:
  dunlinctl status                      NB/SB reachability, RAFT leaders, ovn-northd, controller, nodes and chassis
  dunlinctl show pod NAME [-n NS]       a pod's annotations, NB rows, SB port binding, OVS interface (--ovs)
  dunlinctl show node NAME              a node's annotations, NB rows, SB chassis
  dunlinctl show service NAME [-n NS]   a Service's annotations and load balancers
  dunlinctl trace SRC DST               ovn-trace a packet from pod SRC (NS/NAME) to DST: a pod (NS/NAME),
                                        a Service (svc/NS/NAME) or IP:PORT/PROTO; --port, --proto, --raw
  dunlinctl uninstall [--yes]           list (dry run) or, with --yes, delete every NB row Dunlin owns

Flags (anywhere on the command line):
`

// errUsage is a command line error: the usage is printed with it.
var errUsage = errors.New("usage")

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout); err != nil {
		if errors.Is(err, errUsage) {
			fmt.Fprintf(os.Stderr, "dunlinctl: %v\n", err)
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "dunlinctl: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	o := newOptions()
	fs := o.flagSet()
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if len(pos) == 0 {
		fs.Usage()
		return fmt.Errorf("%w: no command", errUsage)
	}
	if o.output != "" && o.output != "json" && o.output != "table" {
		return fmt.Errorf("%w: -o must be json or table, not %q", errUsage, o.output)
	}
	ctx, cancel := context.WithTimeout(ctx, o.overall())
	defer cancel()
	e := &env{o: o, out: out}
	switch cmd, rest := pos[0], pos[1:]; cmd {
	case "status":
		return e.status(ctx)
	case "show":
		if len(rest) != 2 {
			return fmt.Errorf("%w: show pod|node|service NAME", errUsage)
		}
		return e.show(ctx, rest[0], rest[1])
	case "trace":
		if len(rest) != 2 {
			return fmt.Errorf("%w: trace SRC DST", errUsage)
		}
		return e.trace(ctx, rest[0], rest[1])
	case "uninstall":
		if len(rest) != 0 {
			return fmt.Errorf("%w: uninstall takes no argument", errUsage)
		}
		return e.uninstall(ctx)
	default:
		return fmt.Errorf("%w: unknown command %q", errUsage, cmd)
	}
}

// parseInterleaved parses flags that come before, between and after positional arguments
// (`dunlinctl show pod web -n prod`), which the flag package alone stops at.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// overall bounds a whole command: a few connections of --timeout each, large requests, and ovn-trace.
func (o *options) overall() time.Duration { return 6*o.timeout + 2*bigRequestTimeout + o.traceTimeout }

// oneLine keeps the first line of an error message: the endpoint and what failed.
func oneLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
