package main

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/dunlinplugin/dunlin/test/harness"
)

const (
	httpTimeout = 15 * time.Second // a lost SYN is resent after 1, 3 and 7 s
	probeAtOnce = 16               // pairs probed in parallel; a ping waits most of its time
)

// pingArgs are the ping flags of every probe: two echoes, so that a neighbour resolution dropping the
// first does not count as unreachable.
var pingArgs = []string{"ping", "-c", "2", "-i", "0.2", "-W", "2"}

// httpGet does GET http://hostPort/ from inside the pod's netns and returns the body without its
// trailing newline.
func httpGet(ctx context.Context, sb harness.Sandbox, hostPort string) (string, error) {
	body, err := sb.HTTPGet(ctx, "http://"+hostPort+"/", httpTimeout)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(body)), nil
}

// pair is a source and a destination pod.
type pair struct{ src, dst *pod }

// result is what a probe of a pair found; nil means reachable.
type result struct{ http, ping error }

// probe checks that src gets dst's name from dst's podserver, and that dst answers ping.
func probe(ctx context.Context, pr pair) result {
	var r result
	addr := net.JoinHostPort(pr.dst.sb.IP, fmt.Sprint(podPort))
	if got, err := httpGet(ctx, pr.src.sb, addr); err != nil {
		r.http = err
	} else if got != pr.dst.name {
		r.http = fmt.Errorf("%s answered %q, want %q", addr, got, pr.dst.name)
	}
	argv := append(append([]string{"ip", "netns", "exec", pr.src.sb.NetnsName}, pingArgs...), pr.dst.sb.IP)
	if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
		r.ping = fmt.Errorf("%w: %s", err, lastLines(strings.TrimSpace(string(out)), 2))
	}
	return r
}

// probeAll probes the pairs, a few at a time.
func probeAll(ctx context.Context, pairs []pair) map[pair]result {
	results := make(map[pair]result, len(pairs))
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, probeAtOnce)
	for _, pr := range pairs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			r := probe(ctx, pr)
			mu.Lock()
			results[pr] = r
			mu.Unlock()
		}()
	}
	wg.Wait()
	return results
}

// connectivity probes every ordered pair of pods, itself included, and prints an HTTP and a ping matrix.
func (d *demo) connectivity(ctx context.Context) error {
	heading("Connectivity: every pod to every pod")
	var pairs []pair
	for _, src := range d.pods {
		for _, dst := range d.pods {
			pairs = append(pairs, pair{src, dst})
		}
	}
	if err := d.waitDatapath(ctx); err != nil {
		return err
	}
	var results map[pair]result
	err := timed(fmt.Sprintf("Probing %d×%d pairs", len(d.pods), len(d.pods)), func() error {
		results = probeAll(ctx, pairs)
		return ctx.Err()
	})
	if err != nil {
		return err
	}
	fmt.Printf("\nHTTP: GET http://<destination IP>:%d/ from inside the source pod's netns; ok = the answer is the destination pod's name.\n", podPort)
	fmt.Println("Rows: source pod; columns: destination pod. Blocks on the diagonal are same-node pairs, the others cross a")
	fmt.Printf("%s tunnel; the diagonal itself is each pod reaching its own IP.\n", d.o.encap)
	printMatrix("from \\ to", podRows(d.pods, func(src, dst *pod) error { return results[pair{src, dst}].http }), d.pods)
	d.summarize("HTTP", pairs, func(pr pair) error { return results[pr].http })
	fmt.Printf("\nping: ip netns exec <source pod netns> %s <destination IP>\n", shellJoin(pingArgs))
	printMatrix("from \\ to", podRows(d.pods, func(src, dst *pod) error { return results[pair{src, dst}].ping }), d.pods)
	d.summarize("ping", pairs, func(pr pair) error { return results[pr].ping })
	return nil
}

// waitDatapath waits until every node's ovn-controller has the flows for NB as it is now, before the
// first packet of a probe: a pod is Running once its own node has its port, not yet every other node.
func (d *demo) waitDatapath(ctx context.Context) error {
	return timed("Waiting until every node's ovn-controller has installed the flows (ovn-nbctl --wait=hv sync)", func() error {
		return d.cluster.WaitDatapath(ctx)
	})
}

// summarize prints how many pairs passed, same-node and cross-node apart, and records the failures.
func (d *demo) summarize(what string, pairs []pair, get func(pair) error) {
	var ok, same, sameOK, cross, crossOK int
	var failed []string
	for _, pr := range pairs {
		err := get(pr)
		if pr.src.node == pr.dst.node {
			same++
		} else {
			cross++
		}
		if err != nil {
			failed = append(failed, fmt.Sprintf("%s %s -> %s (%s): %v", what, pr.src.name, pr.dst.name, pr.dst.sb.IP, err))
			continue
		}
		ok++
		if pr.src.node == pr.dst.node {
			sameOK++
		} else {
			crossOK++
		}
	}
	fmt.Printf("  %s: %d of %d pairs ok (same node %d/%d, cross-node %d/%d)\n", what, ok, len(pairs), sameOK, same, crossOK, cross)
	for _, f := range firstN(failed, maxListed) {
		fmt.Println("    " + f)
	}
	d.failures = append(d.failures, failed...)
}

// matrixRow is a row of a matrix: a label, a group (a rule separates groups) and a result per column.
type matrixRow struct {
	label string
	group any
	cell  func(col *pod) error
}

// podRows makes a row per source pod, grouped by node.
func podRows(srcs []*pod, get func(src, dst *pod) error) []matrixRow {
	rows := make([]matrixRow, len(srcs))
	for i, src := range srcs {
		rows[i] = matrixRow{label: src.name, group: src.node, cell: func(dst *pod) error { return get(src, dst) }}
	}
	return rows
}

// printMatrix prints the rows with a column per pod, grouped by node: a column is headed by its node
// and the pod's letter, and rules separate the nodes.
func printMatrix(corner string, rows []matrixRow, cols []*pod) {
	printMatrixMarks(corner, rows, cols, "FAIL")
}

// printMatrixMarks is printMatrix marking failed cells with failMark.
func printMatrixMarks(corner string, rows []matrixRow, cols []*pod, failMark string) {
	const cellWidth = 5 // "FAIL" and a space
	labelWidth := len(corner)
	for _, r := range rows {
		labelWidth = max(labelWidth, len(r.label))
	}
	groups := groupByNode(cols)
	var nodeLine, podLine, rule strings.Builder
	fmt.Fprintf(&nodeLine, "  %-*s", labelWidth, corner)
	fmt.Fprintf(&podLine, "  %-*s", labelWidth, "")
	rule.WriteString("  " + strings.Repeat("-", labelWidth))
	widths := make([]int, len(groups))
	for i, g := range groups {
		widths[i] = max(cellWidth*len(g), len(g[0].node.Name)+1)
		fmt.Fprintf(&nodeLine, " | %-*s", widths[i], g[0].node.Name)
		var letters strings.Builder
		for _, p := range g {
			fmt.Fprintf(&letters, "%-*s", cellWidth, strings.TrimPrefix(p.name, p.node.Name+"-"))
		}
		fmt.Fprintf(&podLine, " | %-*s", widths[i], letters.String())
		rule.WriteString("-+-" + strings.Repeat("-", widths[i]))
	}
	fmt.Println(strings.TrimRight(nodeLine.String(), " "))
	fmt.Println(strings.TrimRight(podLine.String(), " "))
	for i, r := range rows {
		if i == 0 || r.group != rows[i-1].group {
			fmt.Println(rule.String())
		}
		var line strings.Builder
		fmt.Fprintf(&line, "  %-*s", labelWidth, r.label)
		for gi, g := range groups {
			var cells strings.Builder
			for _, c := range g {
				mark := "ok"
				if r.cell(c) != nil {
					mark = failMark
				}
				fmt.Fprintf(&cells, "%-*s", cellWidth, mark)
			}
			fmt.Fprintf(&line, " | %-*s", widths[gi], cells.String())
		}
		fmt.Println(strings.TrimRight(line.String(), " "))
	}
}

// groupByNode splits pods, which are in node order, into runs on the same node.
func groupByNode(pods []*pod) [][]*pod {
	var groups [][]*pod
	for i, p := range pods {
		if i == 0 || p.node != pods[i-1].node {
			groups = append(groups, nil)
		}
		groups[len(groups)-1] = append(groups[len(groups)-1], p)
	}
	return groups
}
